"""The span head (run_squad's cls/squad/output_*) against Hugging Face's
BertForQuestionAnswering on the same weights, through `bertc convert` and `bertc build`
with the CPU default passes (remove_padding included, cls_only_tail not) and bfloat16."""

import os

import numpy as np
import pytest

import bertc_testing as bt

BATCH, SEQ = 2, 24
TOL = 1e-4


def span_weights(cfg, seed):
    """Random Google weights plus a random run_squad head ([2, D] and [2])."""
    weights = bt.random_weights(cfg, seed=seed)
    rng = np.random.default_rng(seed + 100)
    d = cfg["hidden_size"]
    weights["cls/squad/output_weights"] = (rng.standard_normal((2, d)) / np.sqrt(d)).astype(
        np.float32)
    weights["cls/squad/output_bias"] = (0.2 * rng.standard_normal(2)).astype(np.float32)
    return weights


def hf_qa_model(cfg, weights):
    """transformers.BertForQuestionAnswering (eval) holding the Google weights."""
    import torch
    import transformers
    model = transformers.BertForQuestionAnswering(bt.hf_config(cfg))
    state = {"bert." + k: v for k, v in bt.hf_state_dict(cfg, weights, pooler=False).items()}
    state["qa_outputs.weight"] = torch.from_numpy(weights["cls/squad/output_weights"])
    state["qa_outputs.bias"] = torch.from_numpy(weights["cls/squad/output_bias"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("_ids") for k in missing), (missing, unexpected)
    return model.eval()


def hf_span_logits(model, feeds):
    out = bt.hf_call(model, feeds)
    return out.start_logits.numpy(), out.end_logits.numpy()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A tiny BertForQuestionAnswering saved by transformers, and bertc's conversion."""
    cfg = bt.tiny_config(hidden=32, heads=2, layers=2, vocab=70, max_pos=40)
    cfg = dict(cfg, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    weights = span_weights(cfg, seed=21)
    model = hf_qa_model(cfg, weights)
    root = tmp_path_factory.mktemp("span")
    hf_dir = str(root / "hf")
    model.save_pretrained(hf_dir, safe_serialization=True)
    bt.write_vocab(os.path.join(hf_dir, "vocab.txt"), cfg["vocab_size"])
    ckpt = str(root / "google")
    proc = bt.run_cli("convert", "--hf_dir", hf_dir, "--output", ckpt)
    assert proc.returncode == 0, proc.stderr
    feeds = bt.random_feeds(5, SEQ, cfg["vocab_size"], seed=7)
    return {"cfg": cfg, "weights": weights, "model": model, "ckpt": ckpt, "root": root,
            "feeds": feeds, "want": hf_span_logits(model, feeds)}


def test_frozen_span_head_matches_transformers(case):
    from bertc.model import freeze, modeling
    config = bt.bertc_config(case["cfg"])
    model = modeling.BertModel(config, case["weights"])
    assert modeling.default_head(case["weights"]) == "span"
    frozen = freeze.freeze_model(model, modeling.canonical_head("squad"), BATCH, SEQ)
    got = bt.run_graph_def(frozen.graph_def, ["start_logits", "end_logits"], case["feeds"],
                           BATCH)
    start, end = case["want"]
    assert got["start_logits"].shape == (5, SEQ)
    assert np.abs(got["start_logits"] - start).max() < TOL
    assert np.abs(got["end_logits"] - end).max() < TOL
    assert np.abs(start - end).max() > 0.1  # the two rows of the head differ


def test_converted_span_build_default_head_passes_and_oracle(case):
    """convert maps qa_outputs.*; the default head is span; cls_only_tail does not run,
    remove_padding does; the artifact's logits equal HF's at real positions."""
    import bertc
    from bertc.sources import google_checkpoint as checkpoint
    ckpt = checkpoint.load_checkpoint(case["ckpt"], checksums=False)
    np.testing.assert_array_equal(ckpt.weights["cls/squad/output_weights"],
                                  case["weights"]["cls/squad/output_weights"])
    art = str(case["root"] / "art")
    result = bertc.build(bertc.BuildOptions(output=art, ckpt=case["ckpt"], batch_size=BATCH,
                                            seq_lens=(SEQ,), verify_rows=4))
    doc = result.manifest
    assert doc["head"] == "span" and doc["outputs"] == ["start_logits", "end_logits"]
    ran = {r["name"]: r["sites"] for r in doc["rewrites"]["per_seq_len"][str(SEQ)]}
    requested = doc["rewrites"]["requested"]
    assert "cls_only_tail" not in requested and "cls_only_tail" not in ran
    assert ran["remove_padding"] == case["cfg"]["num_hidden_layers"]  # one site per layer
    out = bt.run_saved_model(os.path.join(art, f"seq_{SEQ}", "1"), case["feeds"], BATCH)
    start, end = case["want"]
    mask = case["feeds"]["input_mask"].astype(bool)
    assert np.abs(out["start_logits"][mask] - start[mask]).max() < TOL
    assert np.abs(out["end_logits"][mask] - end[mask]).max() < TOL
    report = doc["verify"]["per_seq_len"][str(SEQ)]
    assert report["passed"]
    assert report["inputs"]["random"]["outputs"]["end_logits"]["answer"] == 1.0


def test_bfloat16_span_build_and_verify_answer_agreement(case):
    import bertc
    from bertc.verify import artifact as verify_artifact
    art = str(case["root"] / "bf16")
    result = bertc.build(bertc.BuildOptions(output=art, ckpt=case["ckpt"], head="squad",
                                            batch_size=BATCH, seq_lens=(SEQ,),
                                            dtype="bfloat16", verify_rows=4))
    assert result.manifest["head"] == "span"
    assert "mixed_precision" in result.manifest["rewrites"]["requested"]
    report = verify_artifact.verify_artifact(art, rows=4)
    stats = report["per_seq_len"][str(SEQ)]["inputs"]["random"]["outputs"]
    assert stats["start_logits"]["min_cos"] > 0.999
    assert 0.5 <= stats["end_logits"]["answer"] <= 1.0
    from bertc.verify import compare
    assert "answer agreement" in compare.format_report(report["per_seq_len"][str(SEQ)])


def test_best_window_span_is_the_brute_force_argmax():
    from bertc.text import question_answering as qa
    rng = np.random.default_rng(3)
    for _ in range(20):
        s, e = rng.standard_normal(40), rng.standard_normal(40)
        mask = (np.arange(40) < rng.integers(2, 41)).astype(np.int32)
        best = max(((i, j) for i in range(40) for j in range(i, min(i + 30, 40))
                    if mask[i] and mask[j]), key=lambda p: s[p[0]] + e[p[1]])
        assert qa.best_window_span(s, e, mask) == best


def _span_saved_model_feeds_close(case, art):
    out = bt.run_saved_model(os.path.join(art, f"seq_{SEQ}", "1"), case["feeds"], BATCH)
    start, end = case["want"]
    mask = case["feeds"]["input_mask"].astype(bool)
    assert np.abs(out["start_logits"][mask] - start[mask]).max() < TOL
    assert np.abs(out["end_logits"][mask] - end[mask]).max() < TOL


def test_span_head_from_a_tf1_variables_saved_model(case):
    """--saved_model on a run_squad-style TF1 SavedModel (variables with Google's names,
    cls/squad/* among them, plus the pre-training heads under cls/ and global_step):
    the head is read, span is the default, and the logits equal HF's."""
    import shutil
    import bertc
    sm = str(case["root"] / "sm_variables")
    bt.variables_saved_model(sm, case["cfg"], case["weights"],
                             extras=bt.pretraining_extras(case["cfg"]))
    os.makedirs(os.path.join(sm, "assets"))
    bt.write_config(os.path.join(sm, "assets"), case["cfg"])
    shutil.copyfile(os.path.join(case["ckpt"], "vocab.txt"),
                    os.path.join(sm, "assets", "vocab.txt"))
    art = str(case["root"] / "art_sm_variables")
    result = bertc.build(bertc.BuildOptions(output=art, saved_model=sm, batch_size=BATCH,
                                            seq_lens=(SEQ,), verify=False))
    assert result.manifest["source"]["kind"] == "saved_model"
    assert result.manifest["head"] == "span"
    assert result.manifest["outputs"] == ["start_logits", "end_logits"]
    _span_saved_model_feeds_close(case, art)


def test_cli_span_head_from_a_constants_saved_model_under_a_scope(case):
    """A frozen SavedModel whose weights are Const nodes module/bert/... and
    module/cls/squad/...: `bertc build --saved_model --head squad` builds and verifies."""
    sm = str(case["root"] / "sm_constants")
    bt.constants_saved_model(sm, case["weights"], scope="module/")
    art = str(case["root"] / "art_sm_constants")
    proc = bt.run_cli("build", "--saved_model", sm, "--head", "squad",
                      "--bert_config", os.path.join(case["ckpt"], "bert_config.json"),
                      "--vocab", os.path.join(case["ckpt"], "vocab.txt"), "--batch_size", BATCH,
                      "--seq_len", SEQ, "--verify_rows", 4, "--output", art)
    assert proc.returncode == 0, proc.stderr
    assert "verify: PASSED" in proc.stdout and "head span" in proc.stdout
    _span_saved_model_feeds_close(case, art)
