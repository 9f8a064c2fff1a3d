"""Artifacts are checked before they are served, and a model that answers NaN is a 500.

The tiny random artifact (test_serving_support) is copied and damaged on disk: three
4 KB regions of saved_model.pb overwritten with random bytes (its size unchanged),
as a disk error or a bad copy would. `bertc serve` and `bertc verify` must refuse it
naming the file, and load it with --skip_checksums. A copy whose weights are all NaN
(served with skip_checksums) must never answer 200.
"""

import json
import os
import re
import shutil

import numpy as np
import pytest

import bertc_testing as bt
from test_serving import NAME, request
from test_serving_support import tiny_artifact

from bertc.artifact import checksums, manifest
from bertc.artifact import saved_model_reader
from bertc.errors import BertcError
from bertc.serving.server import BackgroundServer, Server, ServerConfig


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return tiny_artifact(tmp_path_factory)


def _copy(artifact, where):
    out = str(where / "tiny")
    shutil.copytree(artifact, out)
    return out


def _weights_region(export_dir):
    """(offset, size) of the largest weight's bytes inside saved_model.pb."""
    _, constants, _ = saved_model_reader.read_detached(export_dir)
    largest = max(constants.values(), key=lambda a: a.nbytes)
    data = open(os.path.join(export_dir, "saved_model.pb"), "rb").read()
    offset = data.find(largest.tobytes())
    assert offset > 0 and largest.dtype == np.float32
    return offset, largest.nbytes


def _overwrite(path, offset, data):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    assert os.path.getsize(path) == size


@pytest.fixture(scope="module")
def corrupted(artifact, tmp_path_factory):
    """A copy with three 4 KB regions of seq_32's saved_model.pb made random (inside the
    weights, so the file still parses and --skip_checksums can load it)."""
    out = _copy(artifact, tmp_path_factory.mktemp("corrupted"))
    export_dir = os.path.join(out, "seq_32", "1")
    offset, size = _weights_region(export_dir)
    rng = np.random.default_rng(16)
    for start in (offset, offset + size // 3, offset + size - 4096):
        _overwrite(os.path.join(export_dir, "saved_model.pb"), start,
                   rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return out


def test_the_manifest_records_every_file_of_the_artifact(artifact):
    doc = manifest.read(artifact)
    recorded = doc["checksums"]["sha256"]
    files = {os.path.relpath(os.path.join(b, n), artifact) for b, _, ns in os.walk(artifact)
             for n in ns}
    files -= {"bertc.json", "models.config", "batching_parameters.txt"}  # written after
    assert set(recorded) == files and "seq_64/1/saved_model.pb" in recorded
    for relative, digest in recorded.items():
        assert bt.sha256(os.path.join(artifact, relative)) == digest


def test_serve_and_verify_refuse_a_corrupted_saved_model_naming_it(corrupted):
    bad = os.path.join(corrupted, "seq_32", "1", "saved_model.pb")
    serve, verify = bt.run_cli_many([("serve", "--model", corrupted, "--port", "0"),
                                     ("verify", corrupted)], os.path.dirname(corrupted))
    for proc in (serve, verify):
        line = bt.assert_one_error(proc, bad, "sha256", "--skip_checksums")
        assert proc.returncode == 2, line
    # the library names the option
    with pytest.raises(BertcError, match=r"saved_model.pb: sha256 differs.*`skip_checksums`"):
        Server(ServerConfig(model=corrupted, port=0))
    import bertc
    with pytest.raises(BertcError, match=r"saved_model.pb: sha256 differs.*`skip_checksums`"):
        bertc.verify_artifact(corrupted)


def test_skip_checksums_loads_it_with_a_warning(corrupted):
    verify, = bt.run_cli_many([("verify", corrupted, "--skip_checksums")],
                              os.path.dirname(corrupted))
    # loaded and compared: the damaged weights are what verify reports, not the checksum
    assert "sha256 differs" not in verify.stderr and "Traceback" not in verify.stderr
    assert re.search(r"^W.*`skip_checksums` set; the artifact's files are not checked",
                     verify.stderr, re.M), verify.stderr  # logged as a warning
    assert "differs from its reference beyond the thresholds" in verify.stderr
    assert verify.returncode == 1, verify.stderr  # CheckFailed: outside its thresholds
    config = ServerConfig(model=corrupted, model_name=NAME, port=0, parallel=1,
                          skip_checksums=True)
    with BackgroundServer(config) as background:
        assert request(background.url, "GET", "/ping")[0] == 200


def test_an_artifact_without_checksums_is_refused_with_what_to_do(artifact, tmp_path):
    old = _copy(artifact, tmp_path)
    path = os.path.join(old, "bertc.json")
    doc = json.load(open(path))
    del doc["checksums"]
    json.dump(doc, open(path, "w"))
    with pytest.raises(BertcError, match=r"bertc.json: no file checksums.*rebuild it, or "
                                         r"pass `skip_checksums`"):
        Server(ServerConfig(model=old, port=0))
    assert checksums.check(old, doc, skip_checksums=True) == 0
    os.remove(os.path.join(old, "vocab.txt"))  # a recorded file gone is named too
    doc = manifest.read(artifact)
    with pytest.raises(BertcError, match=r"vocab.txt: file not found"):
        checksums.check(old, doc)


def test_nan_outputs_are_a_500_naming_the_output_and_counted(artifact, tmp_path):
    """Every weight of the largest constant NaN (both buckets), served unchecked."""
    nan = _copy(artifact, tmp_path)
    for seq in (32, 64):
        export_dir = os.path.join(nan, f"seq_{seq}", "1")
        offset, size = _weights_region(export_dir)
        _overwrite(os.path.join(export_dir, "saved_model.pb"), offset,
                   np.full(size // 4, np.nan, np.float32).tobytes())
    config = ServerConfig(model=nan, model_name=NAME, port=0, parallel=1,
                          max_batch_delay_ms=1, skip_checksums=True)
    with BackgroundServer(config) as background:
        url = background.url
        for verb, body in (("predict", {"instances": [{"input_ids": [101, 2000, 102]}]}),
                           ("classify", {"text": "a cat sat on the mat"}),
                           ("classify", {"text_a": "a cat sat", "text_b": "a cat was sitting"})):
            status, _, answer = request(url, "POST", f"/v1/models/{NAME}:{verb}", body)
            assert status == 500, (verb, answer)
            assert answer["error"].startswith("outputs.embedding: NaN or Inf"), answer
        metrics = request(url, "GET", "/metrics")[2]
        assert 'bertc_nonfinite_outputs_total{output="embedding"} 3.0' in metrics, metrics
        assert re.search(r'bertc_requests_total\{route="classify",status="500"\} 2.0', metrics)
        assert not re.search(r'bertc_requests_total\{route="\w+",status="200"\}', metrics)
