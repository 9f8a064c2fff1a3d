"""`bertc verify` and bertc.verify.compare: passes an exact artifact, fails a tampered one
(naming the output), refuses a changed source checkpoint (sha256), --json is
machine-readable; verify_runners computes its statistics right on numpy runners."""

import concurrent.futures
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

import bertc_testing as bt

BATCH, SEQ = 2, 16


def _build(ckpt, out, verify=True):
    import bertc
    return bertc.build(bertc.BuildOptions(output=out, ckpt=ckpt, batch_size=BATCH,
                                          seq_lens=(SEQ,), verify=verify, verify_rows=4))


@pytest.fixture(scope="module")
def verify_runs(tmp_path_factory):
    """Four artifacts of one tiny classifier checkpoint (exact / tampered / source
    changed / truncated), then `bertc verify` on each, run together; name -> (proc,
    artifact)."""
    root = str(tmp_path_factory.mktemp("verify"))
    cfg = bt.tiny_config(hidden=30, heads=3, layers=1, vocab=72, max_pos=32)
    weights = bt.random_weights(cfg, seed=21, num_labels=3)
    runs = {}

    exact_ckpt = bt.write_google_checkpoint(os.path.join(root, "ckpt"), cfg, weights)
    exact = os.path.join(root, "exact")
    _build(exact_ckpt, exact)
    runs["exact"] = (["verify", exact, "--json", "--verify_rows", "4"], exact)

    # Tampered: the SavedModel is replaced by one built from slightly different weights
    # (the classifier bias moved by 0.01); the manifest and checksums stay as they were.
    perturbed = dict(weights, output_bias=weights["output_bias"] + np.float32(0.01))
    other_ckpt = bt.write_google_checkpoint(os.path.join(root, "ckpt_other"), cfg, perturbed)
    other = os.path.join(root, "other")
    _build(other_ckpt, other, verify=False)
    tampered = os.path.join(root, "tampered")
    shutil.copytree(exact, tampered)
    shutil.rmtree(os.path.join(tampered, f"seq_{SEQ}"))
    shutil.copytree(os.path.join(other, f"seq_{SEQ}"), os.path.join(tampered, f"seq_{SEQ}"))
    # --skip_checksums: what is tested here is the comparison, not the recorded sha256
    # (tests/test_artifact_checksums.py refuses such an artifact before it is loaded)
    runs["tampered"] = (["verify", tampered, "--verify_rows", "4", "--skip_checksums"],
                        tampered)

    # Source changed: the checkpoint the artifact records is rewritten with other weights.
    moved_ckpt = bt.write_google_checkpoint(os.path.join(root, "ckpt_moved"), cfg, weights)
    moved = os.path.join(root, "moved")
    _build(moved_ckpt, moved, verify=False)
    bt.write_google_checkpoint(moved_ckpt, cfg, perturbed)
    runs["source_changed"] = (["verify", moved, "--verify_rows", "4"], moved)

    # Truncated: the SavedModel file cut in half (a disk filled up mid-copy).
    truncated = os.path.join(root, "truncated")
    shutil.copytree(exact, truncated)
    pb = os.path.join(truncated, f"seq_{SEQ}", "1", "saved_model.pb")
    with open(pb, "r+b") as f:
        f.truncate(os.path.getsize(pb) // 2)
    runs["truncated"] = (["verify", truncated, "--verify_rows", "4", "--skip_checksums"],
                         truncated)  # the reader's own error, past the checksums

    def run(args):
        return subprocess.run(bt.cli_command(*args), cwd=bt.REPO_ROOT, capture_output=True,
                              text=True, timeout=300, env=bt.cli_env())

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run, args) for name, (args, _) in runs.items()}
        return {name: (f.result(), runs[name][1]) for name, f in futures.items()}


def test_verify_passes_an_exact_artifact_with_json_report(verify_runs):
    proc, artifact = verify_runs["exact"]
    assert proc.returncode == 0, proc.stderr
    assert not bt.error_lines(proc.stderr) and "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    assert report["passed"] is True
    assert report["artifact"] == os.path.abspath(artifact)
    seq = report["per_seq_len"][str(SEQ)]
    assert seq["passed"] and seq["failures"] == []
    assert seq["batch_size"] == BATCH and seq["seq_len"] == SEQ
    assert seq["inputs"]["text"]["rows"] == 4 and seq["inputs"]["random"]["rows"] == 32
    for inputs in ("text", "random"):
        outputs = seq["inputs"][inputs]["outputs"]
        assert set(outputs) == {"logits", "probabilities"}
        for name, stats in outputs.items():
            assert {"max_abs", "max_rel", "min_cos", "argmax"} <= set(stats), (inputs, name)
            assert 0 <= stats["max_abs"] <= 1e-5 and 0 <= stats["max_rel"] <= 1e-5
            assert stats["min_cos"] >= 0.99999 and stats["argmax"] == 1.0


def test_verify_fails_a_tampered_artifact_naming_the_output(verify_runs):
    proc, _ = verify_runs["tampered"]
    line = bt.assert_one_error(proc, "verify", "differs from its reference")
    assert proc.returncode == 1  # a failed check, not bad input (2)
    assert "verify: FAILED" in proc.stdout, proc.stdout
    failed = proc.stdout.split("verify: FAILED", 1)[1]
    assert "logits: max_abs" in failed
    # The bias moved by exactly 0.01: the report's logits max_abs says so.
    row = [ln for ln in proc.stdout.splitlines()
           if ln.split()[:3] == ["served", "random", "logits"]][0]
    assert abs(float(row.split()[3]) - 0.01) < 1e-4, row
    assert line.startswith("bertc: error: verify:")


def test_verify_refuses_a_changed_source_checkpoint(verify_runs):
    proc, _ = verify_runs["source_changed"]
    line = bt.assert_one_error(proc, "sha256", "bert_model.ckpt")
    assert "ckpt_moved" in line
    assert "verify: PASSED" not in proc.stdout and "verify: FAILED" not in proc.stdout


def test_verify_reports_a_truncated_saved_model_in_one_line(verify_runs):
    proc, artifact = verify_runs["truncated"]
    line = bt.assert_one_error(proc, "saved_model.pb", "truncated or corrupt")
    assert artifact in line
    assert "verify: PASSED" not in proc.stdout


# --------------------------------------------------------------------------- verify_runners

V, T = 50, 2
PROJ = np.random.default_rng(5).standard_normal((SEQ, 3))


def _reference(feeds):
    """A deterministic classifier-like model: logits from the (masked) ids."""
    x = (feeds["input_ids"] * feeds["input_mask"]).astype(np.float64) / V
    logits = x @ PROJ
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return {"logits": logits.astype(np.float32),
            "probabilities": (e / e.sum(-1, keepdims=True)).astype(np.float32)}


def _flip_rows(feeds):
    """Rows whose argmax the 'argmax' artifact flips: id at position 1 is even."""
    return (feeds["input_ids"][:, 1] % 2 == 0) & (feeds["input_mask"].sum(1) > 0)


def _artifact(kind):
    def run(feeds):
        out = {k: v.copy() for k, v in _reference(feeds).items()}
        dummy = feeds["input_mask"].sum(1) == 0
        if kind == "offset":
            out["logits"][:, 1] += np.float32(0.25)
        elif kind == "argmax":
            flip = _flip_rows(feeds)
            top = out["logits"].argmax(-1)
            out["logits"][flip, top[flip]] = out["logits"][flip].min(-1) - 1.0
        # Every kind: garbage on the all-padding dummy rows, which must be dropped.
        for v in out.values():
            v[dummy] = 1e6
        return out
    return run


def _text_features():
    rng = np.random.default_rng(9)
    lengths = np.array([16, 3, 9, 12, 5])
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1, V, size=(5, SEQ)).astype(np.int32) * mask
    return {"input_ids": ids, "input_mask": mask, "segment_ids": np.zeros_like(ids)}


def _verify(kind, batch=3, thresholds=None):
    from bertc.verify import compare as verify
    return verify.verify_runners(lambda: _artifact(kind), lambda: _reference, batch, SEQ,
                                 _text_features(), V, T, thresholds or verify.EXACT,
                                 random_rows=32, text_source="unit")


def test_verify_runners_identical_models_pass_with_dummy_rows_dropped():
    # batch 3: 5 text rows and 32 random rows both leave dummy rows in the last batch.
    report = _verify("same")
    assert report["passed"] and report["failures"] == []
    assert report["inputs"]["text"]["rows"] == 5 and report["inputs"]["random"]["rows"] == 32
    for entry in report["inputs"].values():
        for stats in entry["outputs"].values():
            assert stats["max_abs"] == 0.0 and stats["min_cos"] == pytest.approx(1.0)
            assert stats["argmax"] == 1.0


def test_verify_runners_known_offset_gives_known_max_abs_and_rel():
    from bertc.verify import compare as verify
    report = _verify("offset")
    assert not report["passed"]
    text = report["inputs"]["text"]["outputs"]["logits"]
    assert text["max_abs"] == pytest.approx(0.25, abs=1e-6)
    scale = np.abs(_reference(_text_features())["logits"]).max()
    assert text["max_rel"] == pytest.approx(0.25 / scale, rel=1e-5)
    features = verify.random_features(32, SEQ, V, T)
    rand = report["inputs"]["random"]["outputs"]["logits"]
    assert rand["max_abs"] == pytest.approx(0.25, abs=1e-6)
    assert rand["max_rel"] == pytest.approx(0.25 / np.abs(_reference(features)["logits"]).max(),
                                            rel=1e-5)
    assert report["inputs"]["text"]["outputs"]["probabilities"]["max_abs"] == 0.0
    assert any(f.startswith("text: logits: max_abs") for f in report["failures"])
    assert not any("probabilities" in f for f in report["failures"])
    text_report = verify.format_report(report)
    assert "verify: FAILED" in text_report and "logits: max_abs 0.25" in text_report


def test_a_failed_verify_says_how_the_artifacts_other_runs_fared():
    """Which runtime is at fault: the checked run fails, a second run of the same
    artifact passes the same thresholds (or fails too), and the one line says so."""
    from bertc.verify import compare as verify
    runs = {"openvino": (lambda: _artifact("offset"), {}), "served": (lambda: _reference, {}),
            "as_written": (lambda: _artifact("offset"), {})}
    report = verify.verify_runners(runs, lambda: _reference, 3, SEQ, _text_features(), V, T,
                                   verify.EXACT, random_rows=8, text_source="unit")
    assert not report["passed"] and report["checked"] == "openvino"
    assert [report["runs"][n]["passed"] for n in runs] == [False, True, False]
    assert all(f.startswith(("text: logits", "random: logits")) for f in report["failures"])
    assert verify.other_runs(report) == " (the served run passes; the as_written run fails too)"


def test_verify_runners_argmax_agreement_is_the_fraction_of_agreeing_rows():
    from bertc.verify import compare as verify
    report = _verify("argmax", thresholds=dict(verify.EXACT, max_abs=None, min_cos=-1.0))
    for name, features in (("text", _text_features()),
                           ("random", verify.random_features(32, SEQ, V, T))):
        expected = 1.0 - _flip_rows(features).mean()
        assert 0.0 < expected < 1.0
        assert report["inputs"][name]["outputs"]["logits"]["argmax"] == pytest.approx(expected)
        assert report["inputs"][name]["outputs"]["probabilities"]["argmax"] == 1.0
    assert any("logits: argmax agreement" in f for f in report["failures"])


def test_verify_compares_sequence_output_at_real_tokens_only():
    from bertc.verify import compare as verify

    def reference(feeds):
        x = feeds["input_ids"].astype(np.float32)[:, :, None] * np.ones((1, 1, 4), np.float32)
        return {"sequence_output": x}

    def artifact(feeds):
        out = reference(feeds)["sequence_output"].copy()
        out[feeds["input_mask"] == 0] = 123.0   # padding positions may hold anything
        out[:, 0, 0] += np.float32(0.5)          # [CLS] is real: this must be seen
        return {"sequence_output": out}

    report = verify.verify_runners(lambda: artifact, lambda: reference, 4, SEQ,
                                   _text_features(), V, T, verify.EXACT, random_rows=8)
    for entry in report["inputs"].values():
        assert entry["outputs"]["sequence_output"]["max_abs"] == pytest.approx(0.5)
    assert not report["passed"]
