"""`bertc build --target openvino --dtype int8`: NNCF quantization, bounded and proven.

- MiniLM int8 meets the default bound (min cosine >= 0.99 vs fp32) on the held-out
  MRPC pairs, checked against Hugging Face's fp32 BertModel, with the IR run in a
  fresh process that imports only openvino and numpy; the manifest lists the
  search's steps and the ops kept in f32; the IR runs at the inference precision
  the manifest records (f32 for the float rest by default).
- An int8 build with `int8_rest_dtype` bfloat16 records bf16 wherever serve and
  verify read it, and the search compiled its candidates at bf16 (its step-0 metric
  is not the f32-rest build's); a rest dtype other than float32/bfloat16, or one
  without int8, is one error line naming the option.
- Calibration and verify splits are disjoint, and their checksums are those of
  the MRPC rows they name.
- A bound no int8 model meets (cosine >= 0.99999) is one error line and no artifact;
  its log names the layers the search put back in f32 by their checkpoint variables.
- A classifier head keeps argmax agreement >= 99% against Hugging Face's fp32 logits
  on the held-out pairs, and verify reports the task metric beside fp32's.
- Every MatMul of an IR is named by the checkpoint variable it multiplies by.
(`bertc serve` on an int8 IR: tests/test_serving.py runs every server test on it.)
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import bertc_testing as bt

pytest.importorskip("openvino")
pytest.importorskip("nncf")
BATCH, SEQ, CALIBRATION, HELD_OUT = 4, 64, 64, 64


@pytest.fixture(scope="module")
def int8_artifact(minilm_ckpt, tmp_path_factory):
    import bertc
    out = str(tmp_path_factory.mktemp("int8") / "minilm")
    bertc.build(bertc.BuildOptions(output=out, ckpt=minilm_ckpt, batch_size=BATCH,
                                   seq_lens=(SEQ,), target="openvino", dtype="int8",
                                   calibration_rows=CALIBRATION, verify_rows=HELD_OUT))
    return out


def _manifest(artifact):
    with open(os.path.join(artifact, "bertc.json"), encoding="utf-8") as f:
        return json.load(f)


def _mrpc():
    from bertc.text.pairs import default_mrpc_path, read_mrpc_tsv
    path = default_mrpc_path()
    if path is None:
        pytest.skip("../shared/data/glue_mrpc_dev.tsv not found")
    return path, read_mrpc_tsv(path)


IR_SCRIPT = """
import sys, numpy as np, openvino as ov
xml, feeds, out, output, precision = sys.argv[1:]
data = np.load(feeds)
compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": precision})
rows = [compiled({k: data[k][i:i + 4] for k in data.files})[output]
        for i in range(0, len(data["input_ids"]), 4)]
np.save(out, np.concatenate(rows))
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "bertc", "nncf", "torch"))
assert not bad, bad
"""


def _run_ir_alone(xml, feeds, output, tmp_path, precision):
    """`output` of the IR on `feeds` compiled at `precision`, run by a process that
    imports only openvino."""
    np.savez(tmp_path / "feeds.npz", **feeds)
    subprocess.run([sys.executable, "-c", IR_SCRIPT, xml, str(tmp_path / "feeds.npz"),
                    str(tmp_path / "out.npy"), output, precision], check=True, timeout=300)
    return np.load(tmp_path / "out.npy")


def test_int8_meets_its_bound_against_hugging_face_in_a_fresh_process(
        int8_artifact, minilm_hf_dir, tmp_path):
    import transformers
    from bertc.text.tokenization import WordPieceTokenizer
    _, pairs = _mrpc()
    held = pairs[CALIBRATION:CALIBRATION + HELD_OUT]
    tokenizer = WordPieceTokenizer.from_vocab_file(
        os.path.join(int8_artifact, "vocab.txt"), do_lower_case=True)
    feeds = tokenizer.encode_batch([(p.text_a, p.text_b) for p in held], seq_len=SEQ)
    from bertc.builder.targets import openvino as target
    doc = _manifest(int8_artifact)
    rest = "float32"
    precision = doc["target"]["openvino"]["inference_precision"]
    assert doc["target"]["openvino"]["int8_rest_dtype"] == rest
    assert precision == target.precision(rest)
    assert doc["target"]["compile"][0]["int8"]["rest_precision"] == precision
    assert doc["target"]["openvino"]["compile_properties"]["INFERENCE_PRECISION_HINT"] == \
        precision
    xml = os.path.join(int8_artifact, "openvino", f"seq_{SEQ}", "model.xml")
    got = _run_ir_alone(xml, feeds, "embedding", tmp_path, precision)
    model = transformers.BertModel.from_pretrained(minilm_hf_dir).eval()
    hidden, _ = bt.hf_forward(model, feeds)
    want = bt.mean_pool_normalize(hidden, feeds["input_mask"])
    cosine = np.sum(got * want, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.99, cosine.min()
    assert cosine.min() < 0.99999  # it is int8, not a float model called int8
    record = doc["target"]["compile"][0]["int8"]
    assert record["quantizers"] > 0 and record["metric"] >= 0.99
    assert record["steps"][0]["call"].startswith("nncf.quantize")
    assert record["kept_in_f32"] == record["steps"][-1]["kept_in_f32"]  # listed, maybe []
    report = doc["verify"]["per_seq_len"][str(SEQ)]
    assert report["passed"] and report["inputs"]["text"]["rows"] == HELD_OUT
    assert report["inputs"]["text"]["outputs"]["embedding"]["min_cos"] >= 0.99


def test_calibration_and_verify_splits_are_disjoint_and_checksummed(int8_artifact):
    path, pairs = _mrpc()
    splits = _manifest(int8_artifact)["target"]["openvino"]["int8"]["splits"]
    cal, held = splits["calibration"], splits["held_out"]
    assert cal["rows"] == [0, CALIBRATION] and held["rows"] == [CALIBRATION,
                                                                CALIBRATION + HELD_OUT]
    assert cal["size"] == CALIBRATION and held["size"] == HELD_OUT

    def digest(rows):
        return hashlib.sha256("".join(f"{p.text_a}\t{p.text_b}\n" for p in rows)
                              .encode()).hexdigest()

    assert cal["sha256"] == digest(pairs[:CALIBRATION])
    assert held["sha256"] == digest(pairs[CALIBRATION:CALIBRATION + HELD_OUT])
    texts = {(p.text_a, p.text_b) for p in pairs[:CALIBRATION]}
    assert not texts & {(p.text_a, p.text_b) for p in pairs[CALIBRATION:CALIBRATION + HELD_OUT]}



def test_the_probe_is_held_out_rows_never_calibration_rows(int8_artifact):
    """The rows `bertc serve` holds an int8 artifact to are held-out ones: a probe
    the quantizer saw would prove nothing."""
    from bertc.artifact import probe
    from bertc.text.tokenization import WordPieceTokenizer
    _, pairs = _mrpc()
    doc = _manifest(int8_artifact)
    (entry,) = doc["models"]
    assert entry["probe"]["source"] == doc["target"]["openvino"]["int8"]["splits"][
        "held_out"]["path"]
    feeds, rows, _ = probe.read(int8_artifact, entry["probe"])
    assert rows == BATCH
    tokenizer = WordPieceTokenizer.from_vocab_file(os.path.join(int8_artifact, "vocab.txt"),
                                                   do_lower_case=True)

    def row_set(chunk):
        ids = tokenizer.encode_batch([(p.text_a, p.text_b) for p in chunk], SEQ)["input_ids"]
        return {tuple(r) for r in ids}

    probe_rows = {tuple(r) for r in feeds["input_ids"][:rows]}
    assert probe_rows <= row_set(pairs[CALIBRATION:CALIBRATION + HELD_OUT])
    assert not probe_rows & row_set(pairs[:CALIBRATION])

    # and the int8 IR, compiled as `bertc serve` compiles it, meets the bound on them
    from bertc.serving import artifact, probe as serve_probe, replica
    art = artifact.load_artifact(int8_artifact)
    model = replica.model_factory(art, 1)(art, 1)
    try:
        stats = serve_probe.check(model, art)["per_seq_len"][str(SEQ)]["embedding"]
    finally:
        model.close()
    assert stats["min_cos"] >= doc["verify"]["thresholds"]["min_cos"]
    assert stats["max_abs"] > 1e-5  # the int8 IR ran, not a float model


def test_a_bound_no_int8_model_meets_is_one_line_and_no_artifact(minilm_ckpt, tmp_path):
    out = tmp_path / "refused"
    result = bt.run_cli("build", "--ckpt", minilm_ckpt, "--output", out, "--target",
                        "openvino", "--dtype", "int8", "--calibration_rows", "8",
                        "--max_cosine_loss", "0.00001", "--seq_len", "32", "--noverify",
                        timeout=900)
    assert result.returncode != 0
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error")
              or "no int8 model meets" in ln]
    assert any("--max_cosine_loss" in ln and "no int8 model meets" in ln for ln in errors), \
        result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    # the search's steps name the ops it kept in f32 by their checkpoint variables
    steps = [ln for ln in result.stderr.splitlines() if "int8 step 1:" in ln]
    assert steps and "(bert/encoder/layer_" in steps[0], result.stderr[-3000:]
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_task_scores_equal_scikit_learns():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    from bertc.verify.task_metric import scores
    rng = np.random.default_rng(0)
    predicted, labels = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    got = scores(predicted, labels)
    assert got["accuracy"] == pytest.approx(100 * sklearn_metrics.accuracy_score(labels,
                                                                                 predicted))
    assert got["f1"] == pytest.approx(100 * sklearn_metrics.f1_score(labels, predicted))


def test_a_separate_calibration_file_drops_its_pairs_from_the_held_out_split(tmp_path):
    from bertc.text import splits
    path, pairs = _mrpc()
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("".join(f"{p.text_a}\t{p.text_b}\n" for p in pairs[10:20])
                           + "A sentence of our own.\tAnd its pair.\n", encoding="utf-8")
    cal, held, record = splits.split(path, str(calibration))
    assert len(cal) == 11 and len(held) == len(pairs) - 10
    assert not {(p.text_a, p.text_b) for p in cal} & {(p.text_a, p.text_b) for p in held}
    assert splits.held_out_pairs(record) == held


def _tiny_classifier(tmp_path):
    cfg = bt.tiny_config(hidden=64, heads=2, layers=2, vocab=80, max_pos=128)
    weights = bt.random_weights(cfg, seed=3, num_labels=2)
    return cfg, weights, bt.write_google_checkpoint(str(tmp_path / "ckpt"), cfg, weights)


def test_a_classifier_keeps_argmax_against_hugging_face_and_verify_scores_the_task(tmp_path):
    from bertc.text.tokenization import WordPieceTokenizer
    cfg, weights, ckpt = _tiny_classifier(tmp_path)
    out = tmp_path / "int8"
    built = bt.run_cli("build", "--ckpt", ckpt, "--output", out, "--head", "classifier",
                       "--target", "openvino", "--dtype", "int8", "--calibration_rows",
                       str(CALIBRATION), "--verify_rows", str(HELD_OUT), "--seq_len", str(SEQ),
                       "--batch_size", str(BATCH), timeout=900)
    assert built.returncode == 0, built.stderr[-2000:]
    doc = _manifest(out)
    assert doc["target"]["openvino"]["int8"]["bound"]["metric"] == "argmax"
    assert doc["target"]["openvino"]["int8"]["bound"]["limit"] == pytest.approx(0.99)
    _, pairs = _mrpc()
    held = pairs[CALIBRATION:CALIBRATION + HELD_OUT]
    tokenizer = WordPieceTokenizer.from_vocab_file(os.path.join(out, "vocab.txt"),
                                                   do_lower_case=True)
    feeds = tokenizer.encode_batch([(p.text_a, p.text_b) for p in held], seq_len=SEQ)
    got = _run_ir_alone(os.path.join(out, "openvino", f"seq_{SEQ}", "model.xml"), feeds,
                        "logits", tmp_path, doc["target"]["openvino"]["inference_precision"])
    _, pooled = bt.hf_forward(bt.hf_model(cfg, weights), feeds)
    want = bt.classifier_logits(pooled, weights)
    assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.99
    assert np.abs(got - want).max() > 1e-5  # it is int8, not a float model called int8
    verified = bt.run_cli("verify", out, timeout=600)
    assert verified.returncode == 0, verified.stderr[-2000:]
    lines = [ln for ln in (verified.stdout + verified.stderr).splitlines()
             if f"task: MRPC paraphrase on {HELD_OUT} held-out pairs" in ln]
    assert lines and "(fp32 " in lines[0], verified.stdout[-2000:]
    labels = np.array([p.label for p in held])
    fp32_accuracy = 100 * np.mean(want.argmax(-1) == labels)
    assert f"(fp32 {fp32_accuracy:.2f}%)" in lines[0]  # fp32's score is HF's score


def test_every_matmul_of_an_ir_is_named_by_its_checkpoint_variable(tmp_path):
    import bertc
    import openvino as ov
    from bertc.builder.targets import openvino_int8
    _, weights, ckpt = _tiny_classifier(tmp_path)
    out = str(tmp_path / "f32")
    bertc.build(bertc.BuildOptions(output=out, ckpt=ckpt, head="classifier", batch_size=BATCH,
                                   seq_lens=(SEQ,), target="openvino", dtype="float32",
                                   verify=False))
    model = ov.Core().read_model(os.path.join(out, "openvino", f"seq_{SEQ}", "model.xml"))
    names = openvino_int8.layer_names(model, openvino_int8.weight_fingerprints(weights))
    kernels = {n for n in weights if n.endswith("/kernel") and "/encoder/" in n}
    named = sorted(names.values())
    assert kernels <= set(named) and len(kernels) == 2 * 6
    assert {"bert/pooler/dense/kernel", "output_weights"} <= set(named)
    assert len(named) == len(set(named))  # one op per variable
    assert "an unnamed constant" not in named


def test_a_bf16_rest_is_recorded_verified_and_searched_at_bf16(int8_artifact, minilm_ckpt,
                                                               tmp_path):
    import bertc
    from bertc.runtime import machine
    if not machine.isa_flags().get("amx_bf16"):
        pytest.skip("bf16 inference precision needs a CPU with AMX-BF16 to differ from f32")
    out = str(tmp_path / "bf16_rest")
    bertc.build(bertc.BuildOptions(output=out, ckpt=minilm_ckpt, batch_size=BATCH,
                                   seq_lens=(SEQ,), target="openvino", dtype="int8",
                                   calibration_rows=CALIBRATION, verify_rows=HELD_OUT,
                                   int8_rest_dtype="bfloat16"))
    doc = _manifest(out)
    record = doc["target"]["openvino"]
    assert record["int8_rest_dtype"] == "bfloat16" and record["inference_precision"] == "bf16"
    assert record["compile_properties"]["INFERENCE_PRECISION_HINT"] == "bf16"
    assert doc["target"]["compile"][0]["int8"]["rest_precision"] == "bf16"
    assert doc["verify"]["per_seq_len"][str(SEQ)]["passed"]
    f32 = _manifest(int8_artifact)["target"]["compile"][0]["int8"]["steps"][0]["metric"]
    assert doc["target"]["compile"][0]["int8"]["steps"][0]["metric"] != f32


@pytest.mark.parametrize("args, needle", [
    (("--dtype", "int8", "--int8_rest_dtype", "float16"), "--int8_rest_dtype"),
    (("--dtype", "bfloat16", "--int8_rest_dtype", "float32"), "only with --dtype int8"),
])
def test_a_bad_int8_rest_dtype_is_one_line(args, needle, minilm_ckpt, tmp_path):
    out = tmp_path / "bad"
    result = bt.run_cli("build", "--ckpt", minilm_ckpt, "--output", out, "--target",
                        "openvino", *args, "--noverify", timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert needle in result.stderr, result.stderr[-2000:]
    assert not out.exists()
