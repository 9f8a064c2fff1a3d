"""Checkpoint frontends round-trip: Google checkpoint / HF directory / SavedModel ->
`bertc.build` -> SavedModel loaded with plain `tf.saved_model.load` -> the same
numbers as Hugging Face transformers' PyTorch BertModel holding the same weights.

Checkpoints are random tiny BERTs with unusual head sizes (2 heads of 24, 3 heads
of 10), 1 and 3 layers, with and without pooler and run_classifier head, written
by bertc.checkpoint.write_checkpoint and by TensorFlow's TF1 Saver (what
google-research/bert runs), with pre-training heads and Adam slots to ignore.
"""

import json
import os
import shutil

import numpy as np
import pytest

import bertc_testing as bt

BATCH, SEQ = 2, 16
TOL = 1e-4

# name -> (config kwargs, pooler, num_labels, writer, default head)
CASES = {
    "h48x2_l1_pooled": (dict(hidden=48, heads=2, layers=1), True, None, "bertc", "pooled"),
    "h30x3_l3_cls3": (dict(hidden=30, heads=3, layers=3), True, 3, "bertc", "classifier"),
    "h48x2_l3_cls2_tf1saver": (dict(hidden=48, heads=2, layers=3), True, 2, "saver",
                               "classifier"),
    "h30x3_l1_nopooler_extras": (dict(hidden=30, heads=3, layers=1), False, None, "raw",
                                 "sequence"),
}


class Case:
    def __init__(self, name, root):
        kwargs, self.pooler, self.labels, self.writer, self.default_head = CASES[name]
        self.name = name
        self.cfg = bt.tiny_config(**kwargs, vocab=70 + len(name), max_pos=40)
        self.weights = bt.random_weights(self.cfg, seed=len(name), pooler=self.pooler,
                                         num_labels=self.labels)
        self.ckpt = os.path.join(root, name, "ckpt")
        if self.writer == "saver":
            bt.tf1_saver_checkpoint(self.ckpt, self.cfg, self.weights,
                                    extras=bt.pretraining_extras(self.cfg))
        else:
            bt.write_google_checkpoint(self.ckpt, self.cfg, self.weights)
            if self.writer == "raw":  # the same tensors plus cls/... heads and Adam slots
                bt.save_raw(os.path.join(self.ckpt, "bert_model.ckpt"),
                            {**self.weights, **bt.pretraining_extras(self.cfg)})
        if self.writer != "bertc":  # the tensors to ignore really are in the checkpoint
            import tensorflow as tf
            (index,) = [n for n in os.listdir(self.ckpt) if n.endswith(".index")]
            stored = tf.train.load_checkpoint(os.path.join(self.ckpt, index[:-len(".index")])
                                              ).get_variable_to_shape_map()
            assert set(bt.pretraining_extras(self.cfg)) < set(stored)
            assert (self.writer == "saver") == ("global_step" in stored)
        self.feeds = bt.random_feeds(5, SEQ, self.cfg["vocab_size"], seed=3)
        self._hf = None

    def hf(self, feeds=None):
        """(last_hidden_state, pooler_output) of transformers' BertModel."""
        if self._hf is None:
            self._hf = bt.hf_model(self.cfg, self.weights, pooler=self.pooler)
        return bt.hf_forward(self._hf, self.feeds if feeds is None else feeds)

    def build(self, out, **kwargs):
        import bertc
        options = dict(output=out, ckpt=self.ckpt, batch_size=BATCH, seq_lens=(SEQ,),
                       verify_rows=4)
        options.update(kwargs)
        return bertc.build(bertc.BuildOptions(**options))


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cases"))
    made = {}

    def get(name):
        if name not in made:
            made[name] = Case(name, root)
        return made[name]
    return get


@pytest.fixture(scope="module")
def built(cases, tmp_path_factory):
    """name -> (Case, artifact dir, BuildResult) of the default-head build."""
    root = str(tmp_path_factory.mktemp("built"))
    made = {}

    def get(name):
        if name not in made:
            case = cases(name)
            out = os.path.join(root, name)
            made[name] = (case, out, case.build(out))
        return made[name]
    return get


def check_against_hf(case, outputs, feeds=None, head=None):
    """Every output of a head against transformers (+ numpy for the classifier)."""
    feeds = case.feeds if feeds is None else feeds
    hidden, pooled = case.hf(feeds)
    assert np.abs(hidden).max() > 0.5  # non-degenerate reference
    head = head or case.default_head
    if head == "sequence":
        assert set(outputs) == {"sequence_output"}
        err = bt.max_abs_valid(outputs["sequence_output"], hidden, feeds["input_mask"])
    elif head == "pooled":
        assert set(outputs) == {"pooled_output"}
        err = float(np.abs(outputs["pooled_output"] - pooled).max())
    elif head == "embedding":
        assert set(outputs) == {"embedding"}
        err = float(np.abs(outputs["embedding"]
                           - bt.mean_pool_normalize(hidden, feeds["input_mask"])).max())
    else:
        assert set(outputs) == {"logits", "probabilities"}
        logits = bt.classifier_logits(pooled, case.weights)
        assert outputs["logits"].shape == (len(feeds["input_ids"]), case.labels)
        err = max(float(np.abs(outputs["logits"] - logits).max()),
                  float(np.abs(outputs["probabilities"] - bt.softmax(logits)).max()))
    assert err < TOL, f"{case.name} {head}: max abs {err:.3g} vs transformers"
    return err


@pytest.mark.parametrize("name", list(CASES))
def test_default_head_build_matches_transformers(built, name):
    case, out, result = built(name)
    assert result.manifest["head"] == case.default_head
    assert result.manifest["num_labels"] == case.labels
    outputs = bt.run_saved_model(os.path.join(out, f"seq_{SEQ}", "1"), case.feeds, BATCH)
    check_against_hf(case, outputs)
    assert result.verify_report[str(SEQ)]["passed"]


def test_oracle_sees_the_head_split(built):
    """The comparison is sensitive to the head layout: the same weights split into 1
    head instead of 3 give clearly different numbers (so 3 x 10 is really tested)."""
    case, out, _ = built("h30x3_l3_cls3")
    outputs = bt.run_saved_model(os.path.join(out, f"seq_{SEQ}", "1"), case.feeds, BATCH)
    wrong_cfg = dict(case.cfg, num_attention_heads=1)
    wrong = bt.hf_model(wrong_cfg, case.weights)
    _, pooled = bt.hf_forward(wrong, case.feeds)
    assert np.abs(outputs["logits"] - bt.classifier_logits(pooled, case.weights)).max() > 1e-2


def test_other_heads_and_two_sequence_lengths(cases, tmp_path):
    """--head sequence with buckets 16,32 and --head embedding on a classifier checkpoint."""
    case = cases("h30x3_l3_cls3")
    out = str(tmp_path / "seq")
    result = case.build(out, head="sequence", seq_lens=(32, 16), verify=False)
    assert result.manifest["seq_lens"] == [16, 32]
    assert [m["seq_len"] for m in result.manifest["models"]] == [16, 32]
    for seq in (16, 32):
        feeds = bt.random_feeds(3, seq, case.cfg["vocab_size"], seed=seq)
        outputs = bt.run_saved_model(os.path.join(out, f"seq_{seq}", "1"), feeds, BATCH)
        assert outputs["sequence_output"].shape == (3, seq, 30)
        check_against_hf(case, outputs, feeds, head="sequence")
    out = str(tmp_path / "emb")
    case.build(out, head="embedding", verify=False)
    outputs = bt.run_saved_model(os.path.join(out, f"seq_{SEQ}", "1"), case.feeds, BATCH)
    check_against_hf(case, outputs, head="embedding")


def test_tf1_saver_checkpoint_is_read_by_name_and_extras_ignored(cases):
    """model.ckpt-1234 from tf.compat.v1.train.Saver: found without bert_model.ckpt,
    read exactly, cls/... heads, adam_m/adam_v slots and global_step dropped."""
    from bertc.sources import google_checkpoint as checkpoint
    case = cases("h48x2_l3_cls2_tf1saver")
    files = os.listdir(case.ckpt)
    assert "model.ckpt-1234.index" in files and "checkpoint" in files
    ckpt = checkpoint.load_checkpoint(case.ckpt)
    assert sorted(ckpt.weights) == sorted(case.weights)
    for name, value in case.weights.items():
        np.testing.assert_array_equal(ckpt.weights[name], value, err_msg=name)
    assert ckpt.source["prefix"] == "model.ckpt-1234"
    assert ckpt.num_labels == 2


def test_manifest_contents(built):
    import tensorflow as tf
    import bertc
    from bertc.runtime import machine
    case, out, result = built("h30x3_l3_cls3")
    with open(os.path.join(out, "bertc.json"), encoding="utf-8") as f:
        doc = json.load(f)
    assert doc == json.loads(json.dumps(result.manifest))
    assert doc["format"] == "bertc-artifact/1"
    src = doc["source"]
    assert src["kind"] == "google_checkpoint"
    assert src["path"] == os.path.abspath(case.ckpt)
    expected_files = ["bert_config.json", "vocab.txt", "bert_model.ckpt.index",
                      "bert_model.ckpt.data-00000-of-00001"]
    assert sorted(src["files"]) == sorted(expected_files)
    for name in expected_files:
        assert src["files"][name] == bt.sha256(os.path.join(case.ckpt, name)), name
    assert doc["config"] == case.cfg
    opts = doc["options"]
    assert opts["ckpt"] == case.ckpt and opts["head"] is None
    assert opts["batch_size"] == BATCH and list(opts["seq_lens"]) == [SEQ]
    assert opts["verify_rows"] == 4 and opts["target"] == "cpu" and opts["overwrite"] is False
    assert doc["head"] == "classifier" and doc["num_labels"] == 3
    assert doc["outputs"] == ["logits", "probabilities"]
    assert doc["inputs"] == ["input_ids", "input_mask", "segment_ids"]
    assert doc["batch_size"] == BATCH and doc["seq_lens"] == [SEQ]
    assert doc["versions"]["bertc"] == bertc.__version__
    assert doc["versions"]["tensorflow"] == tf.__version__
    assert doc["versions"]["numpy"] == np.__version__
    assert doc["target"]["name"] == "cpu" and doc["target"]["compile"] == []
    assert doc["models"][0]["seq_len"] == SEQ
    assert os.path.isfile(os.path.join(out, doc["models"][0]["path"], "saved_model.pb"))
    assert doc["tokenizer"]["vocab_file"] == "vocab.txt"
    assert doc["tokenizer"]["do_lower_case"] is True  # the tiny vocab has no capitals
    assert bt.sha256(os.path.join(out, "vocab.txt")) == bt.sha256(
        os.path.join(case.ckpt, "vocab.txt"))
    assert doc["rewrites"]["exact"] is True
    report = doc["verify"]["per_seq_len"][str(SEQ)]
    assert report["passed"] and report["inputs"]["text"]["rows"] == 4
    assert {s["stage"] for s in doc["stages"]} >= {"read", "trace", "freeze", "export",
                                                    "verify"}
    assert sorted(os.listdir(out)) == ["batching_parameters.txt", "bertc.json",
                                       "models.config", "probe", f"seq_{SEQ}", "vocab.txt"]
    assert doc["models"][0]["probe"]["path"] == f"probe/seq_{SEQ}"
    assert sorted(os.listdir(os.path.join(out, "probe", f"seq_{SEQ}"))) == sorted(
        f"{name}.npy" for name in doc["inputs"] + doc["outputs"])
    assert doc["built_on"] == machine.describe()


def test_default_head_rules():
    from bertc.model import modeling
    cfg = bt.tiny_config()
    full = bt.random_weights(cfg, num_labels=2)
    pooled = bt.random_weights(cfg)
    bare = bt.random_weights(cfg, pooler=False)
    assert modeling.default_head(full) == "classifier"
    assert modeling.default_head(full, {"head": "embedding"}) == "classifier"
    assert modeling.default_head(pooled) == "pooled"
    assert modeling.default_head(pooled, {"head": "embedding"}) == "embedding"
    assert modeling.default_head(bare) == "sequence"
    assert modeling.default_head(bare, {"head": "pooled"}) == "sequence"  # needs a pooler


# --------------------------------------------------------------------------- HF directories


def _save_hf(directory, cfg, weights, classifier):
    """A Hugging Face directory written by transformers itself (safetensors + config)."""
    import torch
    import transformers
    if classifier:
        hf_cfg = bt.hf_config(cfg)
        hf_cfg.num_labels = weights["output_bias"].shape[0]
        model = transformers.BertForSequenceClassification(hf_cfg)
        state = {"bert." + k: v for k, v in bt.hf_state_dict(cfg, weights).items()}
        state["classifier.weight"] = torch.from_numpy(weights["output_weights"])
        state["classifier.bias"] = torch.from_numpy(weights["output_bias"])
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all(k.endswith(("_ids",)) for k in missing), missing
    else:
        model = bt.hf_model(cfg, weights, pooler=False)
    model.eval()
    model.save_pretrained(directory, safe_serialization=True)
    bt.write_vocab(os.path.join(directory, "vocab.txt"), cfg["vocab_size"])
    assert os.path.isfile(os.path.join(directory, "model.safetensors"))
    return model


def _google_tensors(prefix):
    """Every tensor of a checkpoint, read with TensorFlow's reader (not bertc's)."""
    import tensorflow as tf
    reader = tf.train.load_checkpoint(prefix)
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}


def test_cli_convert_of_hf_classifier_round_trips(tmp_path):
    import torch
    import bertc
    cfg = bt.tiny_config(hidden=30, heads=3, layers=2, vocab=66, max_pos=40)
    weights = bt.random_weights(cfg, seed=11, num_labels=3)
    hf_dir = str(tmp_path / "hf")
    model = _save_hf(hf_dir, cfg, weights, classifier=True)
    out = str(tmp_path / "google")
    proc = bt.run_cli("convert", "--hf_dir", hf_dir, "--output", out)
    assert proc.returncode == 0, proc.stderr
    _assert_converted(proc, out, weights)
    with open(os.path.join(out, "bert_config.json"), encoding="utf-8") as f:
        assert json.load(f) == dict(cfg, hidden_dropout_prob=0.0,  # as saved by _save_hf
                                    attention_probs_dropout_prob=0.0)
    art = str(tmp_path / "art")
    result = bertc.build(bertc.BuildOptions(output=art, ckpt=out, batch_size=BATCH,
                                            seq_lens=(SEQ,), verify_rows=4))
    assert result.manifest["head"] == "classifier"
    feeds = bt.random_feeds(4, SEQ, cfg["vocab_size"], seed=5)
    outputs = bt.run_saved_model(os.path.join(art, f"seq_{SEQ}", "1"), feeds, BATCH)
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(feeds["input_ids"].astype(np.int64)),
                       attention_mask=torch.from_numpy(feeds["input_mask"].astype(np.int64)),
                       token_type_ids=torch.from_numpy(feeds["segment_ids"].astype(np.int64))
                       ).logits.numpy()
    assert np.abs(outputs["logits"] - logits).max() < TOL


def _assert_converted(proc, out, weights):
    """`bertc convert` succeeded and wrote exactly `weights` under Google names."""
    assert "wrote Google-format checkpoint" in proc.stdout
    tensors = _google_tensors(os.path.join(out, "bert_model.ckpt"))
    assert sorted(tensors) == sorted(weights)
    for name, value in weights.items():
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)


def test_convert_of_hf_bert_model_without_pooler_round_trips(tmp_path):
    """BertModel(add_pooling_layer=False).save_pretrained -> bertc convert (the CLI,
    forked from the fork server) -> build: the sequence head."""
    import bertc
    cfg = bt.tiny_config(hidden=48, heads=2, layers=1, vocab=60, max_pos=40)
    weights = bt.random_weights(cfg, seed=12, pooler=False)
    hf_dir = str(tmp_path / "hf")
    _save_hf(hf_dir, cfg, weights, classifier=False)
    out = str(tmp_path / "google")
    (proc,) = bt.run_cli_many([["convert", "--hf_dir", hf_dir, "--output", out]],
                              str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    _assert_converted(proc, out, weights)
    art = str(tmp_path / "art")
    result = bertc.build(bertc.BuildOptions(output=art, ckpt=out, batch_size=BATCH,
                                            seq_lens=(SEQ,), verify=False))
    assert result.manifest["head"] == "sequence"
    feeds = bt.random_feeds(3, SEQ, cfg["vocab_size"], seed=6)
    hidden, _ = bt.hf_forward(bt.hf_model(cfg, weights, pooler=False), feeds)
    outputs = bt.run_saved_model(os.path.join(art, f"seq_{SEQ}", "1"), feeds, BATCH)
    assert bt.max_abs_valid(outputs["sequence_output"], hidden, feeds["input_mask"]) < TOL


# --------------------------------------------------------------------------- SavedModel sources


def test_build_from_tf1_variables_saved_model(built, tmp_path):
    """--saved_model on a TF1 SavedModel whose variables carry Google's names (made with
    truncated-normal initializers and a forward graph with float constants under
    bert/..., plus cls/ heads, Adam slots and global_step); config and vocab in assets/."""
    import bertc
    case, ckpt_art, _ = built("h30x3_l3_cls3")
    sm = str(tmp_path / "sm")
    bt.variables_saved_model(sm, case.cfg, case.weights, extras=bt.pretraining_extras(case.cfg))
    os.makedirs(os.path.join(sm, "assets"), exist_ok=True)
    bt.write_config(os.path.join(sm, "assets"), case.cfg)
    shutil.copyfile(os.path.join(case.ckpt, "vocab.txt"), os.path.join(sm, "assets", "vocab.txt"))
    out = str(tmp_path / "art")
    result = bertc.build(bertc.BuildOptions(output=out, saved_model=sm, batch_size=BATCH,
                                            seq_lens=(SEQ,), verify_rows=4))
    assert result.manifest["source"]["kind"] == "saved_model"
    assert result.manifest["head"] == "classifier" and result.manifest["num_labels"] == 3
    got = bt.run_saved_model(os.path.join(out, f"seq_{SEQ}", "1"), case.feeds, BATCH)
    want = bt.run_saved_model(os.path.join(ckpt_art, f"seq_{SEQ}", "1"), case.feeds, BATCH)
    for name in want:
        assert np.abs(got[name] - want[name]).max() <= 1e-6, name
    check_against_hf(case, got)


def test_cli_build_from_constants_saved_model_under_a_scope(built, tmp_path):
    """bertc build --saved_model on a frozen SavedModel (weights are Const nodes named
    module/bert/...) with --bert_config and --vocab: same outputs as the checkpoint."""
    case, ckpt_art, _ = built("h30x3_l3_cls3")
    sm = str(tmp_path / "sm")
    bt.constants_saved_model(sm, case.weights, scope="module/")
    out = str(tmp_path / "art")
    proc = bt.run_cli("build", "--saved_model", sm,
                      "--bert_config", os.path.join(case.ckpt, "bert_config.json"),
                      "--vocab", os.path.join(case.ckpt, "vocab.txt"), "--batch_size", BATCH,
                      "--seq_len", SEQ, "--verify_rows", 4, "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert "verify: PASSED" in proc.stdout and "head classifier" in proc.stdout
    got = bt.run_saved_model(os.path.join(out, f"seq_{SEQ}", "1"), case.feeds, BATCH)
    want = bt.run_saved_model(os.path.join(ckpt_art, f"seq_{SEQ}", "1"), case.feeds, BATCH)
    for name in want:
        assert np.abs(got[name] - want[name]).max() <= 1e-6, name


def test_pretraining_saved_model_nsp_head_is_not_a_classifier(tmp_path):
    """cls/seq_relationship/output_weights|output_bias (the NSP head) must not be taken
    for run_classifier's output_weights|output_bias."""
    from bertc.model import modeling
    from bertc.sources import saved_model as saved_model_source
    cfg = bt.tiny_config(hidden=30, heads=3, layers=1, vocab=50, max_pos=40)
    weights = bt.random_weights(cfg, seed=4)
    sm = str(tmp_path / "sm")
    bt.variables_saved_model(sm, cfg, weights, extras=bt.pretraining_extras(cfg))
    bt.write_config(sm, cfg)
    bt.write_vocab(os.path.join(sm, "vocab.txt"), cfg["vocab_size"])
    ckpt = saved_model_source.load_saved_model(sm)
    assert ckpt.num_labels is None
    assert sorted(ckpt.weights) == sorted(weights)
    assert modeling.default_head(ckpt.weights, ckpt.hints) == "pooled"


# --------------------------------------------------------------------------- Neuron target


def test_neuron_dry_run_records_the_compile_call(tiny_ckpt, tmp_path):
    out = str(tmp_path / "neuron_art")
    proc = bt.run_cli("build", "--ckpt", tiny_ckpt, "--target", "neuron", "--dry_run",
                      "--batch_size", BATCH, "--seq_len", SEQ, "--verify_rows", 4,
                      "--output", out)
    assert proc.returncode == 0, proc.stderr
    would = [line for line in proc.stdout.splitlines() if line.startswith("would run: ")]
    assert len(would) == 1, proc.stdout
    assert "tensorflow.neuron.saved_model.compile(" in would[0]
    assert f"batch_size={BATCH}" in would[0]
    assert "compiler_args=['--fp32-cast', 'matmult']" in would[0]
    with open(os.path.join(out, "bertc.json"), encoding="utf-8") as f:
        doc = json.load(f)
    assert doc["target"]["name"] == "neuron"
    (call,) = doc["target"]["compile"]
    assert call["dry_run"] is True and call["seq_len"] == SEQ
    assert call["kwargs"]["batch_size"] == BATCH
    assert call["kwargs"]["compiler_args"] == ["--fp32-cast", "matmult"]
    # The cpu_embeddings partition: lists in full in the manifest, counted on the line.
    no_fuse, force_fuse = call["kwargs"]["no_fuse_ops"], call["kwargs"]["force_fuse_ops"]
    assert no_fuse and force_fuse and not set(no_fuse) & set(force_fuse)
    (report,) = [r for r in doc["rewrites"]["per_seq_len"][str(SEQ)]
                 if r["name"] == "cpu_embeddings"]
    assert report["sites"] == 1 and report["details"]["no_fuse_ops"] == no_fuse
    assert f"no_fuse_ops={no_fuse!r}" in call["call"]
    assert f"no_fuse_ops=<{len(no_fuse)} ops>" in would[0]
    assert f"force_fuse_ops=<{len(force_fuse)} ops>" in would[0]
    assert call["summary"] == would[0][len("would run: "):]
    # The CPU SavedModel is there and runs; nothing claims to be compiled.
    assert not os.path.exists(os.path.join(out, "neuron"))
    feeds = bt.random_feeds(2, SEQ, 80)
    outputs = bt.run_saved_model(os.path.join(out, doc["models"][0]["path"]), feeds, BATCH)
    assert outputs["pooled_output"].shape == (2, 48)
    # The lists name the nodes of the SavedModel handed to the compiler.
    from tensorflow.core.protobuf import saved_model_pb2
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(out, doc["models"][0]["path"], "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    names = {n.name for n in saved.meta_graphs[0].graph_def.node}
    assert set(no_fuse) | set(force_fuse) <= names


def test_bfloat16_build_verifies_and_is_not_exact(tiny_ckpt, tmp_path):
    out = str(tmp_path / "bf16_art")
    proc = bt.run_cli("build", "--ckpt", tiny_ckpt, "--dtype", "bfloat16",
                      "--batch_size", BATCH, "--seq_len", SEQ, "--verify_rows", 4,
                      "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert "verify: PASSED" in proc.stdout
    with open(os.path.join(out, "bertc.json"), encoding="utf-8") as f:
        doc = json.load(f)
    assert doc["options"]["dtype"] == "bfloat16"
    assert doc["rewrites"]["requested"][-2:] == ["mixed_precision", "public_layernorm"]
    assert doc["rewrites"]["exact"] is False
    (report,) = [r for r in doc["rewrites"]["per_seq_len"][str(SEQ)]
                 if r["name"] == "mixed_precision"]
    # 1 layer, fused QKV that cls_only_tail (CPU default, pooled head) splits into Q and
    # K/V: 5 MatMuls + 2 BatchMatMuls, pooler
    assert report["sites"] == 8
    assert doc["verify"]["thresholds"] == {"max_abs": None, "min_cos": 0.999, "argmax": 0.995}
    assert doc["verify"]["per_seq_len"][str(SEQ)]["passed"]
    outputs = bt.run_saved_model(os.path.join(out, doc["models"][0]["path"]),
                                 bt.random_feeds(2, SEQ, 80), BATCH)
    assert outputs["pooled_output"].dtype == np.float32


def test_neuron_without_sdk_fails_before_any_work(tmp_path):
    """No tensorflow-neuron here (Python 3.11, TF 2.21): one error line, before the
    checkpoint is even looked at (a missing --ckpt is not what is reported)."""
    out = tmp_path / "never"
    proc = bt.run_cli("build", "--ckpt", str(tmp_path / "no_such_ckpt"), "--target", "neuron",
                      "--batch_size", BATCH, "--seq_len", SEQ, "--output", str(out))
    line = bt.assert_one_error(proc, "tensorflow-neuron")
    assert "--target neuron" in line and "no_such_ckpt" not in line
    assert "stage read" not in proc.stderr
    assert not out.exists() and bt.leftovers(str(tmp_path)) == []
