"""`bertc serve --engine ray` on a local two-node Ray cluster started by this module.

The cluster (ray.cluster_utils.Cluster: a head node and one worker node, separate
raylets, 127.0.0.1 only, no dashboard, 2 logical CPUs each) starts once for the
module and is shut down at teardown, whatever the tests did. Answers are compared
with the artifact's SavedModels run directly (OfflineModel), as in test_serving.py.

Which requests a killed replica may fail: those Serve had handed to it, at most
its max_ongoing_requests; each must be a 503 `replica: lost ...` JSON error. Every
other request must be answered correctly; none may be lost (no answer, a connection
error, a timeout, another status).
"""

import asyncio
import dataclasses
import os
import shutil
import socket
import sys
import tempfile
import time

import numpy as np
import pytest

# Ray turns a 127.0.0.1 address into the host's outward IP, where a loopback-only
# cluster does not listen; with this (read when ray is imported) it keeps 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
aiohttp = pytest.importorskip("aiohttp")

import bertc_testing as bt  # noqa: E402
from test_serving_support import BATCH, OfflineModel, tiny_artifact  # noqa: E402

from bertc.serving import ray_engine  # noqa: E402

NAME = "tiny"
ATOL = 1e-5
ONGOING = 2 * BATCH     # each replica's max_ongoing_requests (the engine's default)
REQUEST_TIMEOUT_S = 90  # one request; a lost request shows up as this timeout
DEADLINE_S = 120        # a replica replaced, a scale-up finished


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster
    temp_root = tempfile.mkdtemp(prefix="bertc-ray-", dir="/tmp")  # socket paths < 108 chars
    os.makedirs(os.path.join(temp_root, "ray"))
    old_env = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_TMPDIR")}
    # Workers of both raylets import bertc from this checkout; Ray's files stay in
    # temp_root (not /tmp/ray, which other Ray users of this machine may own).
    os.environ["PYTHONPATH"] = bt.REPO_ROOT + (os.pathsep + old_env["PYTHONPATH"]
                                               if old_env["PYTHONPATH"] else "")
    os.environ["RAY_TMPDIR"] = temp_root
    node = dict(num_cpus=2, node_ip_address="127.0.0.1", temp_dir=os.path.join(
        temp_root, "ray"), object_store_memory=100 * 1024 * 1024)
    started = None
    try:
        started = Cluster(initialize_head=True,
                          head_node_args=dict(node, include_dashboard=False))
        started.add_node(**node)
        ray.init(address=started.address, logging_level="WARNING", log_to_driver=False)
        yield started
    finally:
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            if started is not None:
                started.shutdown()
            for key, value in old_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            shutil.rmtree(temp_root, ignore_errors=True)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return tiny_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def offline(artifact):
    return OfflineModel(artifact)


@pytest.fixture(scope="module")
def port(cluster):
    return _free_port()


def options(artifact, port, replicas):
    return ray_engine.RayServeOptions(model=artifact, model_name=NAME, num_replicas=replicas,
                                      port=port, max_batch_delay_ms=5, max_instances=8,
                                      max_body_bytes=64 * 1024)


@pytest.fixture(scope="module")
def app(cluster, artifact, port):
    return ray_engine.deploy(options(artifact, port, 2))


def predict_row(rng, length, vocab=30522):
    ids = [101] + rng.integers(1000, vocab, length - 2).tolist() + [102]
    return {"input_ids": ids, "input_mask": [1] * length,
            "segment_ids": [0] * (length // 2) + [1] * (length - length // 2)}


def expected_embeddings(offline, rows):
    """Offline embedding of each row (bucket 32 or 64), in full batches of real rows."""
    expected = {}
    for seq_len in (32, 64):
        members = [i for i, r in enumerate(rows)
                   if (32 if len(r["input_ids"]) <= 32 else 64) == seq_len]
        outs = offline.run_rows(seq_len, [(rows[i]["input_ids"], rows[i]["input_mask"],
                                           rows[i]["segment_ids"]) for i in members])
        expected.update({i: o["embedding"] for i, o in zip(members, outs)})
    return [expected[i] for i in range(len(rows))]


async def _send(session, url, row):
    """(status, body) of one :predict of one row; (None, repr) if no answer came."""
    try:
        async with session.post(f"{url}/v1/models/{NAME}:predict",
                                json={"instances": [row]}) as response:
            return response.status, await response.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        return None, repr(e)


def load(url, per_client, during=None, after_answers=0):
    """48 clients, each sending its rows one after the other; `during()` runs (in a
    thread) once `after_answers` answers came back. Returns outcomes in row order."""
    async def main():
        done = 0
        trigger = asyncio.Event()

        async def client(session, rows):
            nonlocal done
            outcomes = []
            for row in rows:
                outcomes.append(await _send(session, url, row))
                done += 1
                if done >= after_answers:
                    trigger.set()
            return outcomes

        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            tasks = [asyncio.ensure_future(client(session, rows)) for rows in per_client]
            side = None
            if during is not None:
                await trigger.wait()
                side = await asyncio.get_running_loop().run_in_executor(None, during)
            results = await asyncio.gather(*tasks)
        return [o for outcomes in results for o in outcomes], side

    return asyncio.run(main())


def rows_for(seed, clients=48, each=3):
    rng = np.random.default_rng(seed)
    return [[predict_row(rng, int(rng.integers(3, 65))) for _ in range(each)]
            for _ in range(clients)]


def check_answers(outcomes, rows, offline):
    """(answered, failed by a lost replica); asserts that nothing else happened."""
    expected = expected_embeddings(offline, rows)
    answered, lost_replica, other = 0, 0, []
    for i, (status, body) in enumerate(outcomes):
        if status == 200:
            np.testing.assert_allclose(body["predictions"][0], expected[i], atol=ATOL,
                                       err_msg=f"row {i}")
            answered += 1
        elif status == 503 and body["error"].startswith("replica: lost while it held"):
            lost_replica += 1
        else:
            other.append((i, status, body))
    assert not other, f"requests neither answered nor failed by the lost replica: {other[:5]}"
    return answered, lost_replica


def wait_for(predicate, what):
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {DEADLINE_S} s")


def replica_nodes():
    """{pid: node_id} of BertcModel replicas seen by 40 calls through Serve's handle."""
    handle = serve.get_deployment_handle("BertcModel", ray_engine.APP_NAME)
    seen = [handle.where.remote().result(timeout_s=30) for _ in range(40)]
    return {w["pid"]: w["node_id"] for w in seen}


# --- tests ------------------------------------------------------------------------

def test_48_concurrent_clients_get_offline_answers_from_replicas_on_both_nodes(
        app, offline, cluster):
    per_client = rows_for(0)
    outcomes, _ = load(app, per_client)
    flat = [r for rows in per_client for r in rows]
    answered, lost = check_answers(outcomes, flat, offline)
    assert (answered, lost) == (144, 0)
    got = [tuple(np.round(b["predictions"][0], 4)) for _, b in outcomes]
    assert len(set(got)) == len(got)  # distinct inputs, distinct answers: no swaps
    nodes = replica_nodes()
    assert len(nodes) == 2 and len(set(nodes.values())) == 2, nodes


@pytest.mark.parametrize("method,path,body,status,needle", [
    ("POST", f"/v1/models/{NAME}:predict",
     {"instances": [{"input_ids": [101, 7, 102], "input_mask": [1, 3, 1]}]}, 400,
     "instances[0].input_mask[1]"),
    ("POST", f"/v1/models/{NAME}:predict", {"instances": []}, 400, "instances: empty"),
    ("POST", "/v1/models/other:predict", {"instances": [{"input_ids": [1]}]}, 404,
     "model: 'other' not found"),
    ("POST", f"/v1/models/{NAME}:classify", {"txt": "a"}, 400, "txt: unknown field"),
    ("GET", f"/v1/models/{NAME}:predict", None, 405, "method not allowed"),
    ("GET", "/nowhere", None, 404, "no such path"),
])
def test_bad_requests_get_the_same_json_errors_as_bertc_serve(app, method, path, body,
                                                              status, needle):
    from test_serving import request
    got_status, _, got = request(app, method, path, body)
    assert got_status == status, got
    assert needle in got["error"], got


def test_malformed_json_and_metadata_and_classify(app, offline):
    from test_serving import request
    status, _, got = request(app, "POST", f"/v1/models/{NAME}:predict", raw=b"{oops")
    assert status == 400 and got["error"].startswith("body: malformed JSON"), got
    status, _, meta = request(app, "GET", f"/v1/models/{NAME}")
    assert status == 200 and meta["bertc"]["engine"] == "ray", meta
    assert meta["bertc"]["seq_lens"] == [32, 64] and meta["bertc"]["batch_size"] == BATCH
    status, _, got = request(app, "POST", f"/v1/models/{NAME}:classify",
                             {"text": "the cat sat on the mat"})
    assert status == 200, got
    answer = got["predictions"][0]
    assert answer["seq_lens"] == [32] and not answer["truncated"]
    np.testing.assert_allclose(np.linalg.norm(answer["embedding"]), 1.0, atol=1e-5)


def test_a_replica_killed_mid_load_fails_only_requests_in_its_hands(app, offline):
    names_before = ray_engine.replica_actor_names()
    assert len(names_before) == 2, names_before
    victim = names_before[0]

    def kill():
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        return time.monotonic()

    per_client = rows_for(1, each=6)
    outcomes, killed_at = load(app, per_client, during=kill, after_answers=48)
    flat = [r for rows in per_client for r in rows]
    answered, lost_replica = check_answers(outcomes, flat, offline)
    print(f"\nreplica kill: sent {len(flat)}, answered {answered}, failed with "
          f"'replica: lost' {lost_replica}, lost 0")
    assert answered + lost_replica == len(flat) == 288
    assert lost_replica <= ONGOING, (lost_replica, ONGOING)
    # Serve replaces it: two live replicas again, one of them new.
    wait_for(lambda: len(names := ray_engine.replica_actor_names()) == 2
             and victim not in names, "the killed replica replaced")
    outcomes, _ = load(app, rows_for(2, clients=8, each=2))
    assert all(status == 200 for status, _ in outcomes), outcomes[:3]


def test_scale_from_1_to_2_replicas_under_load_drops_nothing(app, artifact, port, offline):
    ray_engine.deploy(options(artifact, port, 1))
    wait_for(lambda: len(ray_engine.replica_actor_names()) == 1, "scaled down to 1")

    def scale_up():
        ray_engine.deploy(options(artifact, port, 2))
        wait_for(lambda: len(ray_engine.replica_actor_names()) == 2, "scaled up to 2")

    per_client = rows_for(3, each=6)
    outcomes, _ = load(app, per_client, during=scale_up, after_answers=24)
    flat = [r for rows in per_client for r in rows]
    assert check_answers(outcomes, flat, offline) == (288, 0)
    assert len(replica_nodes()) == 2


def test_config_file_builder_takes_string_args_and_names_bad_ones(artifact):
    """`serve run` / `serve deploy` pass a config file's args, possibly as strings."""
    from ray.serve import Application
    from bertc.errors import BertcError
    app = ray_engine.build_app({"model": artifact, "num_replicas": "3",
                                "max_batch_delay_ms": "2.5", "batching": "serve"})
    assert isinstance(app, Application)
    opts = ray_engine.RayServeOptions.from_args({"model": artifact, "num_replicas": "3"})
    assert opts.num_replicas == 3
    for args, needle in [({"model": artifact, "replicas": 2}, "`replicas`: not an option"),
                         ({"num_replicas": 2}, "`model` is required"),
                         ({"model": artifact, "num_replicas": "two"}, "`num_replicas` 'two'"),
                         ({"model": artifact, "batching": "tf"}, "`batching` 'tf'"),
                         ({"model": "/nonexistent"}, "`model` /nonexistent: not a directory")]:
        with pytest.raises(BertcError, match=None) as raised:
            ray_engine.build_app(args)
        assert needle in str(raised.value), (args, str(raised.value))


def test_skip_checksums_reaches_every_load_of_the_artifact(artifact, tmp_path):
    """A copy whose vocab.txt differs from its recorded sha256: the Ray engine refuses
    it naming the file, as `bertc serve` does, and with skip_checksums (a config file's
    string or the flag's bool) builds the application."""
    from ray.serve import Application
    from bertc.errors import BertcError
    copy = str(tmp_path / "copy")
    shutil.copytree(artifact, copy)
    with open(os.path.join(copy, "vocab.txt"), "a") as f:
        f.write("appended\n")
    with pytest.raises(BertcError, match=r"vocab.txt: sha256 differs.*`skip_checksums`"):
        ray_engine.build_app({"model": copy})
    for value in ("true", "1", True):
        assert isinstance(ray_engine.build_app({"model": copy, "skip_checksums": value}),
                          Application)
    for value, needle in (("yes please", "`skip_checksums` 'yes please': expected true or "
                           "false"), ("false", "vocab.txt: sha256 differs")):
        with pytest.raises(BertcError) as raised:
            ray_engine.build_app({"model": copy, "skip_checksums": value})
        assert needle in str(raised.value)
    # what the cluster builds from the bound options: the replica and the ingress load too
    for skip in (False, True):
        opts = ray_engine.RayServeOptions(model=copy, batching="serve", skip_checksums=skip)
        for build in (lambda: ray_engine.ModelReplica(opts),
                      lambda: ray_engine.Ingress(opts, None)):
            if skip:
                assert build().art.path == os.path.abspath(copy)
            else:
                with pytest.raises(BertcError, match="vocab.txt: sha256 differs"):
                    build()


def test_each_replica_runs_the_probe_and_skip_probe_reaches_it(minilm_artifact, tmp_path):
    """A replica holds the build's probe to verify's bounds on its own node (here: the
    probe's reference rows reversed, checksums skipped so the probe is what catches it);
    skip_probe, from a config file's string too, lets it load."""
    from bertc.errors import BertcError, CheckFailed
    copy = bt.reversed_probe_copy(minilm_artifact, tmp_path / "minilm")
    opts = ray_engine.RayServeOptions(model=copy, batching="serve", skip_checksums=True)
    with pytest.raises(CheckFailed, match=r"seq \d+ probe .*min cosine.*`skip_probe`"):
        ray_engine.ModelReplica(opts)
    parsed = ray_engine.RayServeOptions.from_args({"model": copy, "batching": "serve",
                                                   "skip_checksums": "true",
                                                   "skip_probe": "true"})
    assert parsed.skip_probe is True
    assert ray_engine.ModelReplica(parsed).art.path == os.path.abspath(copy)
    with pytest.raises(BertcError, match="`skip_probe` 'maybe': expected true or false"):
        ray_engine.RayServeOptions.from_args({"model": copy, "skip_probe": "maybe"})


def test_a_replica_that_fails_its_probe_is_one_line_from_deploy(cluster, port, minilm_artifact,
                                                                tmp_path):
    """On the cluster: the replicas refuse the artifact whose probe rows were reversed,
    and deploy (what `bertc serve --engine ray` calls) raises their one line, not Ray's
    "Deploying application failed" (which the CLI would call an internal error)."""
    from bertc.errors import CheckFailed
    copy = bt.reversed_probe_copy(minilm_artifact, tmp_path / "minilm")
    bad = dataclasses.replace(options(copy, port, 1), skip_checksums=True)
    try:
        with pytest.raises(CheckFailed) as raised:
            ray_engine.deploy(bad)
        message = str(raised.value)
        assert message.startswith(f"replica: {copy}: seq ") and "probe" in message
        assert "min cosine" in message and "`skip_probe`" in message
    finally:
        serve.delete(ray_engine.APP_NAME)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q", "-s"]))
