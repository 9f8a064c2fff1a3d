"""Tests for TF Serving scale-out files, paraphrase thresholds and server flag checks."""

import dataclasses
import json
import os
import re

import pytest

from bertc.errors import BertcError
from bertc.serving import artifact as artifact_lib
from bertc.serving import paraphrase
from bertc.artifact import checksums, tfserving_config
from bertc.serving.server import ServerConfig

MANIFEST = {"batch_size": 4, "models": [{"seq_len": 128, "path": "seq_128/1"},
                                        {"seq_len": 64, "path": "seq_64/1"}]}


def test_tf_serving_files_list_each_bucket_and_the_static_batch(tmp_path):
    out = tmp_path / "tmp_build"
    out.mkdir()
    paths = tfserving_config.write_tf_serving_configs(str(out), MANIFEST, delay_ms=5,
                                                      base_dir="/srv/artifacts/minilm")
    models = open(paths["models_config"]).read()
    assert models.startswith("model_config_list {")
    assert re.findall(r'name: "(\w+)"', models) == ["minilm_seq64", "minilm_seq128"]
    assert re.findall(r'base_path: "([^"]+)"', models) == [
        "/srv/artifacts/minilm/seq_64", "/srv/artifacts/minilm/seq_128"]
    assert models.count('model_platform: "tensorflow"') == 2
    assert models.count("{") == models.count("}")
    batching = open(paths["batching_parameters"]).read()
    assert "max_batch_size { value: 4 }" in batching
    assert "batch_timeout_micros { value: 5000 }" in batching
    assert "allowed_batch_sizes: 4" in batching


def test_tf_serving_files_default_to_paths_relative_to_the_artifact(tmp_path):
    art = tmp_path / "my_art"
    art.mkdir()
    paths = tfserving_config.write_tf_serving_configs(str(art), MANIFEST, delay_ms=2.5)
    models = open(paths["models_config"]).read()
    assert 'base_path: "seq_64"' in models and 'name: "my_art_seq64"' in models
    assert str(tmp_path) not in models and "bertc tfserving" in models
    assert "batch_timeout_micros { value: 2500 }" in open(paths["batching_parameters"]).read()


def test_models_config_parses_as_model_server_config(tmp_path):
    """With tensorflow-serving-api installed (not a dependency), TF Serving's own proto
    reads models.config. (BatchingParameters is not in that package.)"""
    config_pb2 = pytest.importorskip("tensorflow_serving.config.model_server_config_pb2")
    from google.protobuf import text_format
    paths = tfserving_config.write_tf_serving_configs(str(tmp_path), MANIFEST, delay_ms=5,
                                                      base_dir=str(tmp_path))
    models = text_format.Parse(open(paths["models_config"]).read(),
                               config_pb2.ModelServerConfig())
    configs = models.model_config_list.config
    assert [c.name for c in configs] == [f"{tmp_path.name}_seq64", f"{tmp_path.name}_seq128"]
    assert configs[0].base_path == str(tmp_path / "seq_64")
    assert configs[0].model_platform == "tensorflow"


def test_calibrate_picks_the_most_accurate_threshold():
    sims = [0.1, 0.2, 0.6, 0.7, 0.8, 0.9]
    labels = [0, 0, 0, 1, 1, 1]
    threshold, accuracy = paraphrase.calibrate(sims, labels)
    assert 0.6 < threshold <= 0.7 and accuracy == 1.0
    threshold, accuracy = paraphrase.calibrate([0.5, 0.5], [1, 1])
    assert threshold <= 0.5 and accuracy == 1.0


def test_cosine():
    assert paraphrase.cosine([1, 0], [1, 0]) == pytest.approx(1.0)
    assert paraphrase.cosine([1, 0], [0, 2]) == pytest.approx(0.0)
    assert paraphrase.cosine([0, 0], [1, 1]) == 0.0


def _fake_artifact(tmp_path, **extra):
    doc = {"format": "bertc-artifact/1", "batch_size": 4, "seq_lens": [8],
           "models": [{"seq_len": 8, "path": "seq_8/1"}], "head": "embedding",
           "inputs": ["input_ids", "input_mask", "segment_ids"], "outputs": ["embedding"],
           "tokenizer": {"vocab_file": "vocab.txt", "do_lower_case": True},
           "config": {"vocab_size": 10, "type_vocab_size": 2}, "target": {"name": "cpu"},
           "hints": {}}
    doc.update(extra)
    os.makedirs(tmp_path / "seq_8" / "1")
    (tmp_path / "seq_8" / "1" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    doc.setdefault("checksums", checksums.record(str(tmp_path)))
    (tmp_path / "bertc.json").write_text(json.dumps(doc))
    return artifact_lib.load_artifact(str(tmp_path))


def test_threshold_comes_from_flag_then_manifest_then_default(tmp_path):
    art = _fake_artifact(tmp_path / "a")
    assert artifact_lib.paraphrase_threshold(art, None) == (
        paraphrase.DEFAULT_THRESHOLD, "default (MiniLM on MRPC dev)")
    assert artifact_lib.paraphrase_threshold(art, 0.5) == (0.5, "--paraphrase_threshold")
    hinted = _fake_artifact(tmp_path / "b", hints={"paraphrase_threshold": 0.61})
    assert artifact_lib.paraphrase_threshold(hinted, None) == (0.61, "manifest hints")
    with pytest.raises(BertcError, match="`paraphrase_threshold` 2"):
        artifact_lib.paraphrase_threshold(art, 2.0)


def test_artifact_errors_name_the_path(tmp_path):
    with pytest.raises(BertcError, match="not a directory"):
        artifact_lib.load_artifact(str(tmp_path / "missing"))
    art = _fake_artifact(tmp_path / "c")
    os.remove(os.path.join(art.path, "seq_8", "1", "saved_model.pb"))
    with pytest.raises(BertcError, match=r"seq_8/1: no saved_model.pb"):
        artifact_lib.load_artifact(art.path)


def test_a_corrupt_saved_model_is_one_error_naming_the_file(tmp_path):
    from bertc.serving import replica
    art = _fake_artifact(tmp_path / "e")
    pb = os.path.join(art.path, "seq_8", "1", "saved_model.pb")
    with open(pb, "wb") as f:
        f.write(b"\x12\xff\xff\xff\x0f" + b"\x00" * 16)  # meta_graphs, length past the end
    with pytest.raises(BertcError, match=r"seq_8/1/saved_model.pb: truncated or corrupt"):
        replica.SessionModel(art, 1)


def test_bucket_for_picks_the_smallest_that_fits(tmp_path):
    art = _fake_artifact(tmp_path / "d")
    art = dataclasses.replace(art, seq_lens=(32, 64, 128))
    assert [art.bucket_for(n) for n in (1, 32, 33, 128, 129)] == [32, 32, 64, 128, None]


@pytest.mark.parametrize("field,value,flag", [
    ("parallel", 0, "`parallel`"), ("max_queue", 0, "`max_queue`"),
    ("max_batch_delay_ms", -1, "`max_batch_delay_ms`"), ("port", 70000, "`port`"),
    ("intra_op_threads", 0, "`intra_op_threads`")])
def test_server_config_checks_name_the_flag(field, value, flag):
    with pytest.raises(BertcError, match=flag):
        ServerConfig(model="x", **{field: value}).check()


def test_a_taken_port_is_reported_before_the_model_loads(tmp_path):
    """The model path does not exist: the port error must come first (no loading)."""
    import socket
    import time

    from bertc.serving.server import Server
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(BertcError, match=rf"`host` 127.0.0.1 `port` {port}: cannot "
                                             r"listen .*expected a free port"):
            Server(ServerConfig(model=str(tmp_path / "missing"), host="127.0.0.1", port=port))
        assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("host", ["999.1.1.1", "10.255.255.254"])
def test_a_bad_host_is_named_as_the_host(tmp_path, host):
    from bertc.serving.server import Server
    with pytest.raises(BertcError) as e:
        Server(ServerConfig(model=str(tmp_path / "missing"), host=host, port=0))
    assert str(e.value).startswith(f"`host` {host}: not an address"), e.value
    assert "free port" not in str(e.value)


def test_serve_refuses_a_max_queue_smaller_than_the_largest_request(tmp_path_factory):
    from test_serving_support import tiny_artifact

    from bertc.serving.server import Server
    config = ServerConfig(model=tiny_artifact(tmp_path_factory), port=0, max_queue=8,
                          max_instances=8)
    with pytest.raises(BertcError, match=r"^`max_queue` 8: smaller than the largest request "
                                         r"\(16 rows: `max_instances` 8 x 2"):
        Server(config, model_factory=lambda art, threads: pytest.fail("model loaded"))
