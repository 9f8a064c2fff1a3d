"""Structured fuzzing of the HTTP API (Hypothesis): no request a client can send gets a
500, every refusal is a JSON error, and a valid request still gets its answer after.

The bodies are near misses of the real formats (row/columnar :predict with ids from
far outside int64 to in range, :classify text with lone surrogates and control
characters), arbitrary JSON, raw bytes, and random Content-Encoding/Content-Type
headers. Bounded: 300 examples, about half a minute on loopback.
"""

import http.client
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_serving_support import tiny_artifact

from bertc.serving.server import BackgroundServer, ServerConfig

NAME = "tiny"
VALID = {"instances": [{"input_ids": [101, 2000, 2001, 102]}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    config = ServerConfig(model=tiny_artifact(tmp_path_factory), model_name=NAME, port=0,
                          parallel=1, max_batch_delay_ms=1, max_instances=8,
                          max_body_bytes=64 * 1024, body_timeout_s=1.0)
    with BackgroundServer(config) as background:
        yield background


def _send(url, method, path, raw, headers):
    host, port = url[len("http://"):].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=raw, headers=headers)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


INTS = st.one_of(st.integers(0, 30521), st.integers(-2 ** 40, 2 ** 40),
                 st.integers(-2 ** 80, 2 ** 80), st.sampled_from([2 ** 31, 2 ** 63, -2 ** 63 - 1]))
TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["\ud800", "a\udfffb", "\x00\x01",
                                                         " ", "hello world"]))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, st.floats(allow_nan=True), TEXT)
KEYS = st.sampled_from(["instances", "inputs", "input_ids", "input_mask", "segment_ids",
                        "signature_name", "text", "text_a", "text_b", "x"])
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(KEYS, inner, max_size=4), max_leaves=24)
ROW = st.fixed_dictionaries({"input_ids": st.lists(INTS, min_size=0, max_size=70)},
                            optional={"input_mask": st.lists(INTS, max_size=8),
                                      "segment_ids": st.lists(INTS, max_size=8)})
PREDICT = st.one_of(st.fixed_dictionaries({"instances": st.lists(ROW, max_size=10)}),
                    st.fixed_dictionaries({"inputs": st.dictionaries(
                        KEYS, st.lists(st.lists(INTS, max_size=6), max_size=4), max_size=3)}))
CLASSIFY = st.one_of(st.fixed_dictionaries({"text": JSON}),
                     st.fixed_dictionaries({"text_a": TEXT}, optional={"text_b": JSON}),
                     st.fixed_dictionaries({"instances": st.lists(
                         st.fixed_dictionaries({"text": TEXT}), max_size=10)}))


def _encoded(doc):
    return json.dumps(doc).encode()  # ensure_ascii: lone surrogates travel as \ud800


BODIES = st.one_of(PREDICT.map(_encoded), CLASSIFY.map(_encoded), JSON.map(_encoded),
                   st.binary(max_size=200),
                   st.integers(1, 30000).map(lambda n: b"[" * n + b"]" * n),
                   st.integers(4000, 6000).map(lambda n: b'{"instances": [{"input_ids": ['
                                               + b"9" * n + b"]}]}"))
HEADERS = st.fixed_dictionaries({}, optional={
    "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity", "zstd", "x"]),
    "Content-Type": st.sampled_from(["application/json", "text/plain", "x/y; charset=zz"])})
PATHS = st.sampled_from([f"/v1/models/{NAME}:predict", f"/v1/models/{NAME}:classify",
                         f"/v1/models/{NAME}/versions/1:predict", "/v1/models/x:classify"])


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(path=PATHS, raw=BODIES, headers=HEADERS)
def test_no_generated_request_gets_a_500(server, path, raw, headers):
    status, content_type, body = _send(server.url, "POST", path, raw, headers)
    assert status < 500, (status, body[:300])
    assert content_type.startswith("application/json"), (status, body[:300])
    answer = json.loads(body)
    if status >= 400:
        assert set(answer) == {"error"} and ": " in answer["error"], answer


def test_a_valid_request_still_works_after_the_fuzzing(server):
    """Runs after the fuzz test (file order): the same answer as a fresh request."""
    status, _, body = _send(server.url, "POST", f"/v1/models/{NAME}:predict",
                            json.dumps(VALID).encode(), {})
    assert status == 200, body
    assert len(json.loads(body)["predictions"][0]) == 32
