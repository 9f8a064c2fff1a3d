"""--intra_op_threads / --inter_op_threads reach the runtimes: every TensorFlow Session
that `bertc serve` and `bertc verify` open is created with them (a spy on
tf.compat.v1.Session records each ConfigProto), and OpenVINO compiles verify's IR
with inter-op streams of intra-op threads (read back from the compiled model)."""

import os

import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from bertc.sources import hf_convert
    out = str(tmp_path_factory.mktemp("threads") / "google")
    hf_convert.convert(os.path.join(FIXTURES, "qa_tiny"), out)
    return out


def _build(ckpt, out, **kw):
    import bertc
    bertc.build(bertc.BuildOptions(output=out, ckpt=ckpt, batch_size=2, seq_lens=(64,),
                                   verify=False, **kw))
    return out


@pytest.fixture
def sessions(monkeypatch):
    """The ConfigProto of every tf.compat.v1.Session opened while the test runs."""
    import tensorflow as tf
    seen = []
    original = tf.compat.v1.Session.__init__

    def spy(self, target="", graph=None, config=None):
        seen.append(config)
        original(self, target, graph, config)

    monkeypatch.setattr(tf.compat.v1.Session, "__init__", spy)
    return seen


def test_serve_sessions_get_the_thread_flags(ckpt, tmp_path, sessions):
    from bertc.serving.server import BackgroundServer, ServerConfig
    from test_serving import request
    art = _build(ckpt, str(tmp_path / "cpu"))
    config = ServerConfig(model=art, model_name="t", port=0, parallel=2,
                          intra_op_threads=1, inter_op_threads=3)
    with BackgroundServer(config) as background:
        status, _, meta = request(background.url, "GET", "/v1/models/t")
    served = [c for c in sessions if c is not None and c.inter_op_parallelism_threads == 3]
    assert len(served) == 2  # one Session per replica
    assert all(c.intra_op_parallelism_threads == 1 and c.use_per_session_threads
               for c in served)
    assert status == 200 and meta["bertc"]["inter_op_threads"] == 3
    assert meta["bertc"]["intra_op_threads"] == 1


def test_verify_served_run_gets_the_thread_flags_and_records_them(ckpt, tmp_path, sessions):
    from bertc.verify import artifact as verify_artifact
    art = _build(ckpt, str(tmp_path / "cpu"))
    report = verify_artifact.verify_artifact(art, rows=2, random_rows=2,
                                             intra_op_threads=1, inter_op_threads=2)
    run = report["per_seq_len"]["64"]["runs"]["served"]["config"]
    assert run["intra_op_threads"] == 1 and run["inter_op_threads"] == 2
    assert any(c is not None and c.inter_op_parallelism_threads == 2
               and c.intra_op_parallelism_threads == 1 for c in sessions)


def test_verify_on_openvino_compiles_streams_of_threads(ckpt, tmp_path):
    pytest.importorskip("openvino")
    from bertc.verify import artifact as verify_artifact
    art = _build(ckpt, str(tmp_path / "ov"), target="openvino", dtype="float32")
    report = verify_artifact.verify_artifact(art, rows=2, random_rows=2,
                                             intra_op_threads=1, inter_op_threads=2)
    run = report["per_seq_len"]["64"]["runs"]["openvino"]["config"]
    assert run["properties"]["NUM_STREAMS"] == "2"
    assert run["properties"]["INFERENCE_NUM_THREADS"] == "2"
    effective = run["effective_properties"]  # what the compiled model says it runs
    assert effective["NUM_STREAMS"] == "2" and effective["INFERENCE_NUM_THREADS"] == "2"


def test_bad_thread_values_are_refused_naming_the_flag(tmp_path):
    import bertc_testing as bt
    proc = bt.run_cli("verify", str(tmp_path), "--inter_op_threads", "0")
    assert proc.returncode != 0 and "--inter_op_threads" in proc.stderr
