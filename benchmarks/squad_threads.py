"""Thread settings for question answering, measured: --intra_op_threads x
--inter_op_threads for verify/benchmark runs and for `bertc serve`, TensorFlow and the
OpenVINO target, and the served `:answer` throughput and latency.

    python benchmarks/squad_threads.py [--shape minilm] [--seq_lens 128,256,384]
        [--batch 8] [--questions 48] [--clients 8] [--rounds 2] [--parts offline,served]
        [--workdir DIR]

A random checkpoint of `--shape` (MiniLM-L6-sized by default: H 384, 6 layers, 12 heads,
I 1536, BERT's 30,522-word vocabulary) with run_squad's span head is built twice,
`bertc build --head span` (TensorFlow, float32) and `--target openvino` (its default
precision), at the given buckets.  The traffic is SQuAD-like (squad.squad_questions:
a context of 100-300 MRPC dev words and a question; windows cut at the longest bucket).

offline   one batch of `--batch` windows at the longest bucket, run as verify and the
          benchmarks run an artifact: one TensorFlow Session (runner.RunConfig served)
          with intra x inter threads, and OpenVINO compiled with `streams` streams of
          `threads` threads in all (streams > 1: that many infer requests in flight,
          the batch split between them); all timed in turns (best pass of each).
served    `bertc serve` in a child process with each --parallel / --intra_op_threads /
          --inter_op_threads combination, one after the other (each `--rounds` times,
          best kept), driven by the library of `bertc client --squad` (`--clients` at
          a time, every question once, after a warm-up of 4 questions): questions/s,
          windows/s and latency percentiles.
The CPU model and ISA flags and the load average are printed; the machine is shared.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import squad  # noqa: E402
import throughput  # noqa: E402
from bertc.runtime import machine  # noqa: E402

#: (parallel, intra, inter) of `bertc serve` on the TensorFlow artifact.
TF_SERVED = ((1, 2, 1), (1, 2, 2), (2, 1, 1), (2, 1, 2), (1, 1, 1))
#: (parallel, intra) of `bertc serve` on the OpenVINO artifact (one stream per replica).
OV_SERVED = ((1, 2), (2, 1), (1, 1))
#: (intra, inter) of one TensorFlow Session; (streams, threads) of OpenVINO.
TF_OFFLINE = ((1, 1), (2, 1), (1, 2), (2, 2))
OV_OFFLINE = ((1, 1), (1, 2), (2, 2))


def build(ckpt: str, out: str, seq_lens: str, batch: int, target: str) -> str:
    if not os.path.isdir(out):
        subprocess.run([sys.executable, "-m", "bertc.cli", "build", "--ckpt", ckpt, "--output",
                        out, "--head", "span", "--seq_len", seq_lens, "--batch_size",
                        str(batch), "--target", target, "--noverify"], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def ov_fn(xml: str, precision: str, streams: int, threads: int):
    """run(b) of the IR compiled with `streams` streams: b holds `streams` batches of
    the IR's (static) batch size, one per infer request, all in flight at once."""
    import openvino as ov
    from bertc.runtime import openvino_settings
    compiled = ov.Core().compile_model(xml, "CPU", openvino_settings.compile_properties(
        precision, streams, threads))
    names = [i.get_any_name() for i in compiled.inputs]
    queue = ov.AsyncInferQueue(compiled, streams)

    def run(b):
        for part in np.array_split(np.arange(len(b["input_ids"])), streams):
            queue.start_async({n: b[n][part] for n in names})
        queue.wait_all()
    return run


def offline(tf_art: str, ov_art: str, seq: int, rows: dict, rounds: int) -> None:
    from bertc.runtime import runner as runners
    from bertc.runtime import openvino_settings
    from bertc.builder.targets import openvino as target
    runs = {}
    for intra, inter in TF_OFFLINE:
        run = runners.saved_model_runner(os.path.join(tf_art, f"seq_{seq}", "1"),
                                         runners.RunConfig(runners.SERVED, intra, inter))
        runs[f"TF intra {intra} inter {inter}"] = (run, [rows])
    precision = openvino_settings.precision(target.default_dtype())
    xml = os.path.join(ov_art, "openvino", f"seq_{seq}", "model.xml")
    for streams, threads in OV_OFFLINE:
        batches = {n: np.concatenate([v] * streams) for n, v in rows.items()}
        runs[f"OV {precision} {streams} stream(s) {threads} thread(s)"] = (
            ov_fn(xml, precision, streams, threads), [batches])
    print(f"offline: {len(rows['input_ids'])} windows at seq {seq}, timed in turns; "
          f"{squad.load()}", flush=True)
    rates = throughput.interleaved_rates(runs, rounds, 0.0)
    for label, rate in rates.items():
        print(f"offline {label:<32} {rate:7.2f} windows/s", flush=True)
    print(f"offline done; {squad.load()}", flush=True)


def start_server(artifact: str, parallel: int, intra: int, inter: int):
    cmd = [sys.executable, "-m", "bertc.cli", "serve", "--model", artifact, "--port", "0",
           "--model_name", "qa", "--parallel", str(parallel), "--intra_op_threads",
           str(intra), "--inter_op_threads", str(inter)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if m:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError(f"bertc serve did not start: {proc.stderr.read()}")


def served_once(artifact, parallel, intra, inter, questions, clients) -> dict:
    from bertc.client import squad as squad_client
    proc, url = start_server(artifact, parallel, intra, inter)
    try:
        squad_client.run(url, questions[:4], clients=4, model_name="qa")  # warm-up
        return squad_client.run(url, questions, clients=clients, model_name="qa")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def served(tf_art, ov_art, questions, windows: int, clients: int, rounds: int) -> None:
    configs = [("TF", tf_art, p, a, e) for p, a, e in TF_SERVED]
    configs += [("OV", ov_art, p, a, 1) for p, a in OV_SERVED]
    best = {}
    for r in range(rounds):
        for kind, art, p, a, e in (configs if r % 2 == 0 else configs[::-1]):
            summary = served_once(art, p, a, e, questions, clients)
            assert summary["errors"] == 0, summary["error_examples"]
            key = (kind, p, a, e)
            if key not in best or summary["throughput_qps"] > best[key]["throughput_qps"]:
                best[key] = summary
            print(f"served round {r}: {kind} parallel {p} intra {a} inter {e}: "
                  f"{summary['throughput_qps']:.2f} questions/s; {squad.load()}", flush=True)
    print(f"served: {len(questions)} questions ({windows} windows), {clients} clients, "
          f"best of {rounds}", flush=True)
    for (kind, p, a, e), s in best.items():
        lat = s["latency_ms"]
        print(f"served {kind} parallel {p} intra {a} inter {e}: {s['throughput_qps']:6.2f} "
              f"questions/s {s['throughput_qps'] * windows / len(questions):6.2f} windows/s  "
              f"p50 {lat['p50']:.0f} p90 {lat['p90']:.0f} p99 {lat['p99']:.0f} ms", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="minilm")
    parser.add_argument("--layers", type=int, default=0)
    parser.add_argument("--seq_lens", default="128,256,384")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--parts", default="offline,served")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    print(machine.header(), flush=True)
    seq = max(int(s) for s in args.seq_lens.split(","))
    work = args.workdir or tempfile.mkdtemp(prefix="bertc_squad_threads_")
    os.makedirs(work, exist_ok=True)
    ckpt = os.path.join(work, "ckpt")
    if not os.path.isdir(ckpt):
        squad.make_checkpoint(ckpt, args.layers, seq, args.shape)
    tf_art = build(ckpt, os.path.join(work, "tf"), args.seq_lens, args.batch, "cpu")
    ov_art = build(ckpt, os.path.join(work, "ov"), args.seq_lens, args.batch, "openvino")
    print(f"{args.shape}-shaped span model, buckets {args.seq_lens}, batch {args.batch}; "
          f"{squad.load()}", flush=True)
    vocab = os.path.join(ckpt, "vocab.txt")
    if "offline" in args.parts:
        offline(tf_art, ov_art, seq, squad.squad_rows(vocab, seq, args.batch), args.rounds)
    if "served" in args.parts:
        from bertc.client import squad as squad_client
        from bertc.text import question_answering as qa
        from bertc.text.tokenization import WordPieceTokenizer
        tok = WordPieceTokenizer.from_vocab_file(vocab, True)
        pairs = squad.squad_questions(args.questions, seed=5)
        windows = sum(len(qa.windows(tok, q, c, seq).features["input_ids"]) for q, c in pairs)
        questions = [squad_client.Question(f"q{i}", q, c, ("-",))
                     for i, (q, c) in enumerate(pairs)]
        served(tf_art, ov_art, questions, windows, args.clients, args.rounds)


if __name__ == "__main__":
    main()
