"""`bertc serve --grpc_port` against the real clients of each protocol, over sockets.

A `bertc serve` subprocess (127.0.0.1, ports chosen by the OS and read from its
log) serves the tiny random artifact over REST and gRPC. The clients are the
published ones (tests/protocol_clients.py): tensorflow-serving-api's
PredictionServiceStub, tritonclient.http, tritonclient.grpc, and plain REST.
Answers are compared with the artifact's SavedModels run directly (OfflineModel);
refusals with each protocol's own error (gRPC status / HTTP status, field named).
"""

import collections
import http.client
import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

import bertc_testing as bt
import protocol_clients as pc
from test_serving import request as http_request
from test_serving_support import OfflineModel, tiny_artifact

NAME = "tiny"
ATOL = 1e-5
CLIENTS = 48
REQUESTS_PER_CLIENT = 4
RETRIES = 20  # a client refused for a full queue waits and sends again (Retry-After)


class Served:
    """A `bertc serve` subprocess: its REST url, gRPC target and log."""

    def __init__(self, artifact, *flags):
        self.proc = subprocess.Popen(
            bt.cli_command("serve", "--model", artifact, "--model_name", NAME, "--port", "0",
                           "--grpc_port", "0", *flags),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=bt.cli_env())
        found, self.lines = bt.wait_for_log(
            self.proc, url=r" on (http://127\.0\.0\.1:\d+) ",
            grpc_target=r"over gRPC on (127\.0\.0\.1:\d+)")
        self.url, self.grpc_target = found["url"], found["grpc_target"]
        self._reader = threading.Thread(target=self._drain_log, daemon=True)
        self._reader.start()

    def _drain_log(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def stop(self, timeout=60):
        """SIGTERM (drain), then the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return tiny_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def offline(artifact):
    return OfflineModel(artifact)


@pytest.fixture(scope="module")
def served(artifact):
    # --max_queue 16: the least the server takes (8 instances x 2); 48 clients overfill it,
    # so the load test also sees RESOURCE_EXHAUSTED / 503 refusals and their retries.
    server = Served(artifact, "--parallel", "2", "--max_batch_delay_ms", "5",
                    "--max_instances", "8", "--max_queue", "16")
    yield server
    assert server.stop() == 0, "".join(server.lines[-20:])


def random_request(rng, rows=None, length=None):
    """{input name: int32 [B, L]}: B rows of L real tokens (mask all ones)."""
    rows = rows or int(rng.integers(1, 3))
    length = length or int(rng.integers(3, 65))
    ids = rng.integers(1000, 30522, (rows, length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    segments = np.zeros_like(ids)
    segments[:, length // 2:] = 1
    return {"input_ids": ids, "input_mask": np.ones_like(ids), "segment_ids": segments}


def offline_embeddings(offline, requests):
    """The offline embedding of every row of `requests`, run per bucket in full batches."""
    by_bucket = collections.defaultdict(list)
    for r, arrays in enumerate(requests):
        length = arrays["input_ids"].shape[1]
        for i in range(arrays["input_ids"].shape[0]):
            by_bucket[32 if length <= 32 else 64].append(
                ((r, i), [arrays[n][i].tolist() for n in ("input_ids", "input_mask",
                                                            "segment_ids")]))
    expected = {}
    for seq_len, items in by_bucket.items():
        results = offline.run_rows(seq_len, [row for _, row in items])
        expected.update({key: result["embedding"] for (key, _), result in zip(items, results)})
    return expected


# --- 48 concurrent clients, every protocol, answers equal offline ----------------------

def test_48_concurrent_clients_of_every_protocol_get_offline_answers(served, offline):
    rng = np.random.default_rng(18)
    plan = [(pc.PROTOCOLS[c % len(pc.PROTOCOLS)],
             [random_request(rng) for _ in range(REQUESTS_PER_CLIENT)])
            for c in range(CLIENTS)]
    answers = {}   # (client, request) -> {output: array}
    counts = {p: collections.Counter() for p in pc.PROTOCOLS}
    lock = threading.Lock()
    failures = []

    def client(c, protocol, requests):
        try:
            connection = pc.make(protocol, served.url, served.grpc_target)
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(f"{protocol} client {c}: {e!r}")
            return
        try:
            for j, arrays in enumerate(requests):
                if j == 1:  # one bad request per client, among the good ones
                    with lock:
                        counts[protocol]["sent"] += 1
                    try:
                        connection.infer({"input_ids": arrays["input_ids"].astype(np.float32)})
                        outcome, error = "lost", "a float input was answered"
                    except pc.Refused as e:
                        clear = e.code in ("INVALID_ARGUMENT", 400) and "input_ids" in e.message
                        outcome, error = ("rejected", None) if clear else ("lost", str(e))
                    with lock:
                        counts[protocol][outcome] += 1
                    if error:
                        failures.append(f"{protocol}: {error}")
                for _ in range(RETRIES):
                    with lock:
                        counts[protocol]["sent"] += 1
                    try:
                        outputs = connection.infer(arrays)
                    except pc.Refused as e:
                        full = e.code in ("RESOURCE_EXHAUSTED", 503) and "queue" in e.message
                        with lock:
                            counts[protocol]["rejected" if full else "lost"] += 1
                        if not full:
                            failures.append(f"{protocol}: {e}")
                            break
                        time.sleep(0.05 * (1 + rng.random()))
                        continue
                    except Exception as e:  # noqa: BLE001 - timeouts, resets: lost
                        with lock:
                            counts[protocol]["lost"] += 1
                        failures.append(f"{protocol}: {e!r}")
                        break
                    with lock:
                        counts[protocol]["answered"] += 1
                    answers[(c, j)] = outputs
                    break
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(c, p, reqs))
               for c, (p, reqs) in enumerate(plan)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    wall = time.monotonic() - start
    print_table("48 concurrent clients x (4 good + 1 bad request), max_queue 16", counts,
                wall)
    assert not failures, failures[:5]
    assert len(answers) == CLIENTS * REQUESTS_PER_CLIENT
    flat = [arrays for _, requests in plan for arrays in requests]
    expected = offline_embeddings(offline, flat)
    for (c, j), outputs in answers.items():
        r = c * REQUESTS_PER_CLIENT + j
        got = outputs["embedding"]
        assert got.shape == (flat[r]["input_ids"].shape[0], 32), (plan[c][0], got.shape)
        for i in range(got.shape[0]):
            np.testing.assert_allclose(got[i], expected[(r, i)], atol=ATOL,
                                       err_msg=f"{plan[c][0]} client {c} request {j} row {i}")


def print_table(title, counts, wall):
    print(f"\n{title} ({wall:.1f} s)\n| protocol | sent | answered | rejected | lost |\n"
          "|---|---|---|---|---|")
    for protocol, count in counts.items():
        print(f"| {protocol} | {count['sent']} | {count['answered']} | {count['rejected']} | "
              f"{count['lost']} |")


# --- bad requests get their protocol's error, naming the field -------------------------

def _good():
    return random_request(np.random.default_rng(1), rows=1, length=6)


def _renamed():
    arrays = _good()
    arrays["input_maks"] = arrays.pop("input_mask")
    return arrays


def _as(dtype):
    return {"input_ids": _good()["input_ids"].astype(dtype)}


def _flat():
    return {"input_ids": _good()["input_ids"][0]}


BAD = {  # case -> (arrays, infer() keywords, field named in the message)
    "wrong input name": (_renamed, {}, "input_maks"),
    "wrong dtype": (lambda: _as(np.float32), {}, "input_ids"),
    "wrong shape": (_flat, {}, "input_ids"),
    "token id out of range": (lambda: {"input_ids": np.array([[101, 40000, 102]], np.int32)},
                              {}, "[0][1]"),
    "unknown model": (_good, {"model": "nope"}, "'nope' not found"),
    "unknown version": (_good, {"version": "7"}, "'7' not found"),
    "unknown signature": (_good, {"signature": "classify"}, "signature_name"),
    "missing output": (_good, {"outputs": ["logits"]}, "'logits' not an output"),
}
#: protocol -> case -> expected code. Plain TF Serving REST has no output filter, and
#: v2 no signatures (those cases are not sent there). REST reads floats as a type error
#: of the JSON values, the others as the tensor's dtype.
EXPECTED = {
    "tfs_grpc": {"unknown model": "NOT_FOUND", "unknown version": "NOT_FOUND"},
    "v2_grpc": {"unknown model": "NOT_FOUND", "unknown version": "NOT_FOUND"},
    "v2_http": {"unknown model": 404, "unknown version": 404},
    "rest": {"unknown model": 404, "unknown version": 404},
}
NOT_SENT = {("v2_http", "unknown signature"), ("v2_grpc", "unknown signature"),
            ("rest", "missing output")}


def _cases():
    for protocol in pc.PROTOCOLS:
        for case in BAD:
            if (protocol, case) not in NOT_SENT:
                yield pytest.param(protocol, case, id=f"{protocol}-{case}")


@pytest.mark.parametrize("protocol,case", list(_cases()))
def test_bad_request_gets_the_protocol_error(served, protocol, case):
    make_arrays, keywords, field = BAD[case]
    bad_code = "INVALID_ARGUMENT" if "grpc" in protocol else 400
    expected_code = EXPECTED[protocol].get(case, bad_code)
    connection = pc.make(protocol, served.url, served.grpc_target)
    try:
        with pytest.raises(pc.Refused) as refused:
            connection.infer(make_arrays(), **keywords)
    finally:
        connection.close()
    assert refused.value.code == expected_code, refused.value
    assert field in refused.value.message, refused.value
    if case == "wrong dtype" and protocol != "rest":
        assert "dtype" in refused.value.message or "datatype" in refused.value.message
    if case == "wrong shape" and protocol != "rest":
        assert ".shape" in refused.value.message


def test_metadata_and_health_through_the_real_clients(served):
    import grpc
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http
    from tensorflow_serving.apis import (get_model_metadata_pb2, prediction_service_pb2_grpc)
    from tensorflow.core.framework import types_pb2
    with grpc.insecure_channel(served.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["signature_def"])
        request.model_spec.name = NAME
        response = stub.GetModelMetadata(request, timeout=30)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        assert response.metadata["signature_def"].Unpack(signatures)
        signature = signatures.signature_def["serving_default"]
        assert sorted(signature.inputs) == ["input_ids", "input_mask", "segment_ids"]
        assert signature.inputs["input_ids"].dtype == types_pb2.DT_INT32
        assert [d.size for d in signature.outputs["embedding"].tensor_shape.dim] == [-1, 32]
        request.model_spec.name = "nope"
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetModelMetadata(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    for module, where in ((triton_http, served.url[len("http://"):]),
                          (triton_grpc, served.grpc_target)):
        client = module.InferenceServerClient(where)
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(NAME) and not client.is_model_ready("nope")
        metadata = client.get_model_metadata(NAME)
        if module is triton_grpc:
            metadata = {"name": metadata.name, "outputs": [
                {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
                for o in metadata.outputs]}
        assert metadata["name"] == NAME
        assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32",
                                        "shape": [-1, 32]}]
        client.close()


# --- a full queue, then a drain, on every protocol --------------------------------------

def test_full_queue_is_refused_and_held_requests_drain(artifact, offline):
    """6 rows wait out a 10 s delay (3 per bucket, under the batch of 4; held by a TF
    Serving gRPC and a v2 gRPC client); --max_queue 8, so a 4-row request is refused
    at once on every protocol; SIGTERM then runs the held rows and answers them."""
    server = Served(artifact, "--parallel", "1", "--max_batch_delay_ms", "10000",
                    "--max_instances", "4", "--max_queue", "8")
    try:
        rng = np.random.default_rng(5)
        held = {"tfs_grpc": random_request(rng, rows=3, length=20),
                "v2_grpc": random_request(rng, rows=3, length=50)}
        results = {}

        def hold(protocol):
            connection = pc.make(protocol, server.url, server.grpc_target)
            try:
                results[protocol] = connection.infer(held[protocol])
            except Exception as e:  # noqa: BLE001 - asserted below
                results[protocol] = e
            finally:
                connection.close()

        holders = [threading.Thread(target=hold, args=(p,)) for p in held]
        for t in holders:
            t.start()
        def depth():
            host, port = server.url[len("http://"):].split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("GET", f"/v1/models/{NAME}")
            doc = json.loads(conn.getresponse().read())
            conn.close()
            return doc["bertc"]["queue_depth"]

        deadline = time.monotonic() + 30
        while depth() < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert depth() == 6
        for protocol in pc.PROTOCOLS:
            connection = pc.make(protocol, server.url, server.grpc_target)
            start = time.monotonic()
            with pytest.raises(pc.Refused) as refused:
                connection.infer(random_request(rng, rows=4, length=10))
            connection.close()
            assert time.monotonic() - start < 5  # at once, not after the delay
            full = "RESOURCE_EXHAUSTED" if "grpc" in protocol else 503
            assert refused.value.code == full, refused.value
            assert "queue: full" in refused.value.message and "--max_queue 8" in \
                refused.value.message
        start = time.monotonic()
        assert server.stop() == 0, "".join(server.lines[-20:])
        assert time.monotonic() - start < 8  # drained without waiting out the delay
        for t in holders:
            t.join(30)
        expected = offline_embeddings(offline, list(held.values()))
        for r, (protocol, arrays) in enumerate(held.items()):
            got = results[protocol]
            assert isinstance(got, dict), (protocol, got)
            for i in range(3):
                np.testing.assert_allclose(got["embedding"][i], expected[(r, i)], atol=ATOL)
        log = "".join(server.lines)
        assert "draining 6 queued row(s)" in log and "drained; stopped" in log
    finally:
        server.kill()


# --- a gRPC client that cancels: its rows are dropped, the server keeps serving -----------

def _metrics(url):
    return http_request(url, "GET", "/metrics")[2]


def test_cancelled_grpc_calls_drop_their_rows_and_count_as_cancelled(artifact, offline):
    """3 rows of a TF Serving gRPC call (bucket 32) and 3 of a v2 gRPC call (bucket 64)
    wait out a 10 s delay (batch 4); both clients cancel (grpc Future.cancel,
    tritonclient's CallContext.cancel).  Each call is counted CANCELLED; then a 4-row
    call per bucket fills a batch and is answered at once with the offline answer,
    which only happens if the cancelled rows were dropped (else they would take the
    batch and leave the new rows to wait out the delay); 8 real rows were run in all."""
    import grpc
    import tritonclient.grpc as triton_grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    server = Served(artifact, "--parallel", "1", "--max_batch_delay_ms", "10000",
                    "--max_instances", "4")
    try:
        rng = np.random.default_rng(11)
        channel = grpc.insecure_channel(server.grpc_target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        tfs_call = stub.Predict.future(
            pc.tfs_predict_request(random_request(rng, rows=3, length=20), NAME), timeout=60)
        triton = triton_grpc.InferenceServerClient(server.grpc_target)
        v2_call = triton.async_infer(
            NAME, pc.triton_inputs(triton_grpc, random_request(rng, rows=3, length=50)),
            callback=lambda result, error: None, client_timeout=60)
        waiting = ['bertc_queue_depth{seq_len="32"} 3.0', 'bertc_queue_depth{seq_len="64"} 3.0']
        deadline = time.monotonic() + 30
        while not all(w in _metrics(server.url) for w in waiting) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        text = _metrics(server.url)
        assert all(w in text for w in waiting), [line for line in text.splitlines()
                                                 if line.startswith("bertc_queue_depth")]
        tfs_call.cancel()
        v2_call.cancel()
        for route in ("grpc_predict", "v2_grpc_infer"):
            needle = f'bertc_requests_total{{route="{route}",status="CANCELLED"}} 1.0'
            while needle not in _metrics(server.url) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert needle in _metrics(server.url), route
        kept = [random_request(rng, rows=4, length=20), random_request(rng, rows=4, length=50)]
        connection = pc.make("tfs_grpc", server.url, server.grpc_target)
        got = []
        for arrays in kept:
            start = time.monotonic()
            got.append(connection.infer(arrays))
            assert time.monotonic() - start < 5  # a full batch of live rows, not the delay
        connection.close()
        expected = offline_embeddings(offline, kept)
        for r in range(2):
            for i in range(4):
                np.testing.assert_allclose(got[r]["embedding"][i], expected[(r, i)], atol=ATOL)
        text = _metrics(server.url)
        for seq_len in (32, 64):
            assert f'bertc_inferences_total{{seq_len="{seq_len}"}} 4.0' in text, seq_len
        assert 'status="INTERNAL"' not in text
        channel.close()
        triton.close()
        assert server.stop() == 0, "".join(server.lines[-20:])
    finally:
        server.kill()


# --- bertc client --protocol: the same pairs, the same answers over every protocol -----

def test_load_client_protocols_answer_as_classify(served, artifact):
    """`bertc client --protocol P` tokenizes here and sends ids; its cosine of each pair
    equals the server's own :classify answer (tokenized and compared in the server)."""
    from bertc.client import loadgen, report
    from bertc.text.pairs import Pair
    pairs = [Pair(label=i % 2, text_a=f"The {w} sat on the mat number {i}.",
                  text_b=f"A {w} was sitting on mat {i}.")
             for i, w in enumerate(["cat", "dog", "bird", "fox", "cow", "owl"])]
    reference = {}
    for protocol in ("classify", "rest", "grpc", "v2", "v2_grpc"):
        result = loadgen.run(served.url, pairs, clients=3, cycle=2, model_name=NAME,
                             protocol=protocol, grpc_target=served.grpc_target,
                             vocab=os.path.join(artifact, "vocab.txt"))
        summary = report.summarize(result)
        assert summary["ok"] == 6 and not summary["errors"], summary
        similarities = {o.index: o.answer["similarity"] for o in result.outcomes}
        if protocol == "classify":
            reference = similarities
            continue
        assert sorted(similarities) == sorted(reference)
        for index, similarity in similarities.items():
            assert abs(similarity - reference[index]) < 1e-5, (protocol, index)


def test_a_taken_grpc_port_is_one_line_naming_grpc_port(artifact):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = bt.run_cli("serve", "--model", artifact, "--port", "0", "--grpc_port", port,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    bt.assert_one_error(proc, "--grpc_port", str(port),
                        "expected a free port")


def test_v2_rest_json_bodies(served, offline):
    """v2 REST without the binary extension: nested `data`, JSON outputs; bad bodies 400."""
    host, port = served.url[len("http://"):].split(":")

    def post(body, headers=None):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request("POST", f"/v2/models/{NAME}/infer", body=raw, headers=headers or {})
        response = conn.getresponse()
        doc = json.loads(response.read())
        conn.close()
        return response.status, doc

    arrays = random_request(np.random.default_rng(3), rows=2, length=40)
    inputs = [{"name": n, "datatype": "INT64", "shape": list(a.shape), "data": a.tolist()}
              for n, a in arrays.items()]
    status, doc = post({"id": "r1", "inputs": inputs, "outputs": [{"name": "embedding"}]})
    assert status == 200, doc
    assert doc["id"] == "r1" and doc["outputs"][0]["shape"] == [2, 32]
    got = np.asarray(doc["outputs"][0]["data"], np.float32).reshape(2, 32)
    expected = offline_embeddings(offline, [arrays])
    for i in range(2):
        np.testing.assert_allclose(got[i], expected[(0, i)], atol=ATOL)
    floats = [dict(inputs[0], data=[[1.5] * 40] * 2)]
    assert post({"inputs": floats}) == (400, {"error": 'inputs["input_ids"].data[0]: '
                                              "expected an integer, got number"})
    assert post({"inputs": []})[0] == 400
    status, doc = post({"inputs": inputs}, {"Inference-Header-Content-Length": "99999"})
    assert status == 400 and doc["error"].startswith("Inference-Header-Content-Length"), doc
