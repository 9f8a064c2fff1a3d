"""The serve-time proof (bertc/artifact/probe.py, bertc/serving/probe.py).

A verified build keeps, per bucket, one batch of verify's text rows and the fp32
reference's outputs on them; `bertc serve` runs them through the loaded model before
it answers anyone and refuses to serve outside verify's bounds.  Checked here on the
real MiniLM: the recorded reference is the model (Hugging Face transformers on the
same ids, an implementation none of us wrote), the rows are the verify text's, the
probe passes where it was built, and a model that computes something else (outputs
drifted as by another runtime) stops `Server` and `bertc serve` with one line,
unless `skip_probe`.
"""

import json
import os

import numpy as np
import pytest

import bertc_testing as bt
from conftest import MINILM_BATCH, MINILM_SEQ


def _doc(artifact):
    with open(os.path.join(artifact, "bertc.json"), encoding="utf-8") as f:
        return json.load(f)


def _probe_record(artifact):
    (entry,) = _doc(artifact)["models"]
    return entry["probe"]


def test_build_keeps_the_reference_outputs_on_verify_text_rows(minilm_artifact, minilm_hf_dir,
                                                              minilm_ckpt):
    import transformers
    from bertc.artifact import probe
    from bertc.runtime import machine
    from bertc.text import features as features_lib
    doc = _doc(minilm_artifact)
    assert doc["built_on"]["model"] == machine.cpu_model()
    assert doc["built_on"]["isa"] == machine.isa_flags()
    record = _probe_record(minilm_artifact)
    assert record["path"] == f"probe/seq_{MINILM_SEQ}" and record["rows"] == MINILM_BATCH
    assert record["outputs"] == ["embedding"]
    for name in record["inputs"] + record["outputs"]:  # covered by the checksums
        assert f"{record['path']}/{name}.npy" in doc["checksums"]["sha256"]
    feeds, rows, want = probe.read(minilm_artifact, record)
    # the rows are verify's text: the first pairs of the verify data, tokenized
    text, source = features_lib.text_features(None, os.path.join(minilm_ckpt, "vocab.txt"),
                                              True, MINILM_SEQ, 8)
    assert record["source"] == source
    for name, value in feeds.items():
        assert value.shape == (MINILM_BATCH, MINILM_SEQ) and value.dtype == np.int32
        np.testing.assert_array_equal(value[:rows], text[name][:rows])
    # the recorded outputs are the model's: sentence-transformers' pooling of HF's BERT
    hf = transformers.BertModel.from_pretrained(minilm_hf_dir).eval()
    hidden, _ = bt.hf_forward(hf, feeds)
    expected = bt.mean_pool_normalize(hidden, feeds["input_mask"])[:rows]
    assert want["embedding"].shape == (rows, 384)
    assert bt.row_cosines(want["embedding"], expected).min() > 0.99999
    assert np.abs(want["embedding"] - expected).max() < 1e-5
    assert record["built"]["embedding"]["min_cos"] >= doc["verify"]["thresholds"]["min_cos"]


def test_probe_rows_are_the_ones_the_checked_run_agreed_on():
    """Rows whose argmax disagreed at build are never probe rows (a probe must pass
    where verify passed); heads without an argmax take the first rows."""
    from bertc.verify import compare
    rng = np.random.default_rng(0)
    features = {n: rng.integers(1, 50, (7, 8)).astype(np.int32) for n in bt.INPUT_NAMES}
    want_logits = rng.standard_normal((7, 3)).astype(np.float32)
    got_logits = want_logits.copy()
    for row in (0, 2):  # these two rows disagree
        got_logits[row] = -got_logits[row]
    assert (np.argmax(got_logits, -1) != np.argmax(want_logits, -1)).sum() == 2
    got = [{"logits": got_logits[:4]}, {"logits": got_logits[4:]}]
    want = [{"logits": want_logits[:4]}, {"logits": want_logits[4:]}]
    batch, outputs, stats = compare.probe_batch(features, got, want, batch_size=4)
    keep = [1, 3, 4, 5]
    assert batch.real_rows == 4
    np.testing.assert_array_equal(batch.feeds["input_ids"], features["input_ids"][keep])
    np.testing.assert_array_equal(outputs["logits"], want_logits[keep])
    assert stats["logits"]["argmax"] == 1.0
    # fewer agreeing rows than a batch: padded with all-zero dummy rows
    batch, outputs, _ = compare.probe_batch({n: v[:3] for n, v in features.items()},
                                            [{"logits": got_logits[:3]}],
                                            [{"logits": want_logits[:3]}], batch_size=4)
    assert batch.real_rows == 1 and len(outputs["logits"]) == 1
    assert not batch.feeds["input_mask"][1:].any()
    embeddings = [{"embedding": want_logits}]
    batch, _, _ = compare.probe_batch(features, embeddings, embeddings, batch_size=4)
    np.testing.assert_array_equal(batch.feeds["segment_ids"], features["segment_ids"][:4])
    none_agree = [{"logits": -want_logits[:2]}]
    assert compare.probe_batch({n: v[:2] for n, v in features.items()}, none_agree,
                               [{"logits": want_logits[:2]}], 4) is None


class _Drifted:
    """The real model, its embeddings turned a little (cos about 0.98 to the truth), as
    a runtime that computes something else would answer."""

    def __init__(self, model):
        self.model = model

    def run(self, seq_len, inputs):
        out = dict(self.model.run(seq_len, inputs))
        e = out["embedding"]
        noise = np.random.default_rng(0).standard_normal(e.shape).astype(np.float32)
        drifted = e + 0.2 * np.linalg.norm(e, axis=-1, keepdims=True) * noise / np.sqrt(
            e.shape[-1])
        out["embedding"] = drifted / np.linalg.norm(drifted, axis=-1, keepdims=True)
        return out

    def close(self):
        self.model.close()


def test_server_runs_the_probe_and_refuses_a_model_outside_verifys_bounds(minilm_artifact,
                                                                          caplog):
    from test_serving import request
    from bertc.errors import CheckFailed
    from bertc.runtime import machine
    from bertc.serving import replica
    from bertc.serving.server import BackgroundServer, ServerConfig
    thresholds = _doc(minilm_artifact)["verify"]["thresholds"]
    config = ServerConfig(model=minilm_artifact, port=0, parallel=1)
    with caplog.at_level("INFO"):
        with BackgroundServer(config) as background:
            status, _, meta = request(background.url, "GET", "/v1/models/embedding")
    assert status == 200 and meta["bertc"]["probe"]["status"] == "passed"
    assert meta["bertc"]["probe"]["cpu"] == machine.cpu_model()
    assert meta["bertc"]["probe"]["built_on"] == machine.cpu_model()  # built here
    stats = meta["bertc"]["probe"]["per_seq_len"][str(MINILM_SEQ)]["embedding"]
    assert stats["min_cos"] >= thresholds["min_cos"] and stats["max_abs"] <= thresholds["max_abs"]
    assert any(f"probe seq {MINILM_SEQ} embedding" in r.getMessage()
               and "within verify's bounds" in r.getMessage() for r in caplog.records)

    drifted = lambda art, threads: _Drifted(replica.load_model(art, threads))  # noqa: E731
    with pytest.raises(CheckFailed) as e:
        BackgroundServer(ServerConfig(model=minilm_artifact, port=0, parallel=1), drifted)
    message = str(e.value)
    assert f"seq {MINILM_SEQ} probe ({MINILM_BATCH} rows" in message
    assert "embedding: min cosine" in message and "skip_probe" in message
    assert "\n" not in message
    config = ServerConfig(model=minilm_artifact, port=0, parallel=1, skip_probe=True)
    with caplog.at_level("WARNING"):
        with BackgroundServer(config, drifted) as background:
            assert background.server.probe["status"] == "skipped"
            assert not background.server.probe["per_seq_len"]
    assert any("`skip_probe` set" in r.getMessage() for r in caplog.records)


def test_bertc_serve_refuses_in_one_line_when_the_probe_fails(minilm_artifact, tmp_path):
    """The recorded reference rows swapped (and the checksums skipped, so the probe,
    not the sha256, is what catches it): exit 1, one line, nothing served."""
    copy = bt.reversed_probe_copy(minilm_artifact, tmp_path / "minilm")
    proc = bt.run_cli("serve", "--model", copy, "--port", "0", "--skip_checksums")
    line = bt.assert_one_error(proc, copy, f"seq {MINILM_SEQ} probe", "min cosine",
                               "skip_probe")
    assert proc.returncode == 1, line
    assert "on http://" not in proc.stderr


def test_an_artifact_without_probe_is_served_with_a_warning(minilm_sequence_artifact, caplog):
    """Built with --noverify: nothing to hold it to, and the log says so."""
    from bertc.serving import artifact, probe
    art = artifact.load_artifact(minilm_sequence_artifact)
    assert not any(m.get("probe") for m in art.manifest["models"])
    with caplog.at_level("WARNING"):
        assert probe.check(None, art)["status"] == "absent"
    assert any("no probe" in r.getMessage() for r in caplog.records)
