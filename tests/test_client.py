"""Tests for `bertc client` against a real `bertc serve` (tiny artifact, 127.0.0.1)."""

import io
import json
import os
import socket
import subprocess
import sys

import pytest

from test_serving_support import tiny_artifact

from bertc.client import command, loadgen, progress, report
from bertc.errors import BertcError
from bertc.serving.server import BackgroundServer, ServerConfig
from bertc.text.pairs import Pair, default_mrpc_path

NAME = "tiny"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    artifact = tiny_artifact(tmp_path_factory)
    with BackgroundServer(ServerConfig(model=artifact, model_name=NAME, port=0)) as bg:
        yield bg


@pytest.fixture(scope="module")
def mrpc():
    path = default_mrpc_path()
    if path is None:
        pytest.skip("../shared/data/glue_mrpc_dev.tsv not found")
    return path


def _cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "bertc.cli", "client", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_client_reports_throughput_latency_and_accuracy(server, mrpc):
    pairs = command.pairs_from_flags(mrpc, None, [])
    summary, text = command.run_client(url=server.url, model_name=NAME, pairs=pairs,
                                       clients=8, cycle=6, timeout_s=30, seed=0,
                                       progress=False, plot=None)
    assert (summary["requests"], summary["ok"], summary["errors"]) == (48, 48, {})
    assert summary["throughput_rps"] > 0
    lat = summary["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    acc = summary["accuracy"]
    assert acc["graded"] == 48 and 0 <= acc["accuracy"] <= 1
    assert 0.5 <= acc["majority_baseline"] <= 1
    assert "accuracy:" in text and "majority baseline" in text and "p99" in text
    answer = summary["example_answer"]
    assert {"label", "similarity", "threshold", "paraphrase"} <= set(answer)


def test_accuracy_counts_every_pair_sent():
    outcomes = [loadgen.Outcome(index=i, status=200, latency_s=0.01, expected=e, label=l)
                for i, (e, l) in enumerate([(1, 1), (1, 1), (0, 1), (1, 0)])]
    outcomes.append(loadgen.Outcome(index=9, status=503, latency_s=0.01, expected=1,
                                    error="HTTP 503: queue: full"))
    result = loadgen.LoadResult(url="u", model_name="m", clients=1, cycle=5, wall_s=1.0,
                                outcomes=outcomes)
    summary = report.summarize(result)
    assert summary["accuracy"]["accuracy"] == 0.5 and summary["accuracy"]["graded"] == 4
    assert summary["accuracy"]["majority_baseline"] == 0.8  # 4 of 5 sent are positive
    assert summary["errors"] == {"503": 1} and summary["throughput_rps"] == 4.0
    assert "503: 1" in report.format_text(summary)


def test_cli_json_summary_parses(server, mrpc):
    done = _cli("--url", server.url, "--model_name", NAME, "--clients", "4", "--cycle", "3",
                "--tsv", mrpc, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["requests"] == 12 and summary["ok"] == 12
    assert set(summary["latency_ms"]) >= {"p50", "p90", "p99"}
    assert summary["accuracy"]["graded"] == 12
    assert "[" not in done.stderr  # no progress bar when stderr is not a terminal


def _requests_served(url):
    """The server's count of answered :classify requests, from /metrics."""
    import urllib.request
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("bertc_requests_total") and 'route="classify"' in line)


def test_cli_pair_sends_one_request_and_prints_the_decision(server):
    before = _requests_served(server.url)
    done = _cli("--url", server.url, "--pair", "The cat sat on the mat.",
                "A cat was on the mat.")
    assert done.returncode == 0, done.stderr
    assert _requests_served(server.url) - before == 1  # one request, not a load test
    first, latency = done.stdout.strip().splitlines()[:2]
    assert first.startswith(f"model '{NAME}' at {server.url}: similarity ")
    assert "threshold 0.6800" in first and "paraphrase (label " in first
    assert latency.startswith("latency: ") and latency.endswith(" ms")
    assert "requests" not in done.stdout and "accuracy" not in done.stdout
    as_json = json.loads(_cli("--url", server.url, "--pair", "a b", "c d", "--json").stdout)
    assert as_json["answer"]["label"] in (0, 1) and as_json["latency_ms"] > 0


def test_cli_pair_refuses_load_test_flags(server):
    before = _requests_served(server.url)
    done = _cli("--url", server.url, "--pair", "a", "b", "--clients", "2")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "bertc: error: --clients: a load-test flag; --pair sends one request (for a load "
        "test leave out --pair)")
    assert _requests_served(server.url) == before


def test_cli_pair_of_an_unknown_model_fails_the_check(server):
    done = _cli("--url", server.url, "--model_name", "nope", "--pair", "a", "b")
    assert done.returncode == 1
    assert "bertc: error: --url" in done.stderr and "HTTP 404" in done.stderr


def test_cli_load_test_progress_bar(server, mrpc):
    done = _cli("--url", server.url, "--clients", "2", "--cycle", "1", "--progress",
                "--tsv", mrpc)
    assert done.returncode == 0, done.stderr
    assert "2 requests (2 clients x 1)" in done.stdout and f"model '{NAME}'" in done.stdout
    assert "2/2 requests" in done.stderr  # --progress forces the bar


def test_cli_fails_when_every_request_fails(server, mrpc):
    done = _cli("--url", server.url, "--model_name", "nope", "--clients", "2", "--cycle", "1",
                "--tsv", mrpc)
    assert done.returncode == 1
    assert "errors: 404: 2" in done.stdout
    assert "none of 2 requests succeeded" in done.stderr


def test_connection_errors_are_counted():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    result = loadgen.run(f"http://127.0.0.1:{port}", [Pair(1, "a", "b")], clients=2, cycle=1,
                         model_name=NAME, timeout_s=5)
    summary = report.summarize(result)
    assert summary["ok"] == 0 and summary["errors"] == {"connection": 2}


def test_pair_flags_are_checked():
    with pytest.raises(BertcError, match="--pair expects two sentences"):
        command.pairs_from_flags(None, "only one", [])
    with pytest.raises(BertcError, match="--pair and --tsv"):
        command.pairs_from_flags("x.tsv", "a", ["b"])
    assert command.pairs_from_flags(None, "a", ["b"]) == [Pair(None, "a", "b")]


def test_plot_needs_matplotlib_or_writes_a_png(server, tmp_path):
    path = str(tmp_path / "latency.png")
    args = dict(url=server.url, model_name=NAME, pairs=[Pair(1, "a b c", "a b d")],
                clients=2, cycle=2, timeout_s=30, seed=0, progress=False, plot=path)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(BertcError, match="pip install matplotlib"):
            command.run_client(**args)
        return
    summary, _ = command.run_client(**args)
    assert summary["plot"] == path and os.path.getsize(path) > 0


def test_progress_bar_only_when_asked_or_a_terminal():
    stream = io.StringIO()
    bar = progress.ProgressBar(3, enabled=True, stream=stream)
    for ok in (True, False, True):
        bar.update(ok)
    bar.close()
    assert "3/3 requests" in stream.getvalue() and "errors 1" in stream.getvalue()
    assert not progress.should_show(False, io.StringIO())
    assert progress.should_show(True, io.StringIO())
