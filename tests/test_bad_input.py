"""Bad input through the real CLI: one `bertc: error:` line naming the culprit, no
traceback, exit 2, nothing written (no --output, no temporary directory).

Every case is a copy of one valid tiny checkpoint with one thing broken. Each CLI
run is its own process running the `bertc` console entry point (bertc.cli.run) with
its own argv, stdout, stderr and exit code, forked from a fork server that imported
bertc and TensorFlow once (BERTC_TEST_COLD_CLI=1 starts each as a cold
`python -m bertc.cli` instead; test_checkpoints and test_verify run cold ones).
Interrupts and --overwrite are tested in-process (KeyboardInterrupt raised from
inside the export stage).
"""

import json
import os
import shutil

import numpy as np
import pytest

import bertc_testing as bt

BATCH, SEQ = 2, 16
LAYER0 = "bert/encoder/layer_0/"


def _edit_config(ckpt, **changes):
    path = os.path.join(ckpt, "bert_config.json")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f)


def _resave(ckpt, weights):
    prefix = os.path.join(ckpt, "bert_model.ckpt")
    for name in os.listdir(ckpt):
        if name.startswith("bert_model.ckpt."):
            os.remove(os.path.join(ckpt, name))
    bt.save_raw(prefix, weights)


def _write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _truncate_data(ckpt):
    path = os.path.join(ckpt, "bert_model.ckpt.data-00000-of-00001")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


# name -> (break(ckpt_dir, weights), extra CLI args, substrings the error line must name)
CASES = {
    "missing_config": (lambda d, w: os.remove(os.path.join(d, "bert_config.json")), [],
                       ["bert_config.json", "not found"]),
    "malformed_json": (lambda d, w: _write(os.path.join(d, "bert_config.json"),
                                           '{"vocab_size": 80,\n "hidden_size": }'), [],
                       ["bert_config.json", "malformed JSON", "line 2"]),
    "unknown_config_key": (lambda d, w: _edit_config(d, hidden_sise=48), [],
                           ["bert_config.json", "hidden_sise"]),
    "hidden_not_divisible_by_heads": (lambda d, w: _edit_config(d, num_attention_heads=5), [],
                                      ["bert_config.json", "num_attention_heads 5", "48"]),
    "missing_tensor": (lambda d, w: _resave(d, {k: v for k, v in w.items()
                                                if k != LAYER0 + "output/dense/bias"}), [],
                       ["bert_model.ckpt", "missing tensor", LAYER0 + "output/dense/bias"]),
    "unexpected_tensor": (lambda d, w: _resave(d, {**w, "bert/encoder/layer_1/output/dense/bias":
                                                   w[LAYER0 + "output/dense/bias"]}), [],
                          ["bert_model.ckpt", "unexpected tensor",
                           "bert/encoder/layer_1/output/dense/bias"]),
    "wrong_tensor_shape": (lambda d, w: _resave(d, {**w, LAYER0 + "intermediate/dense/kernel":
                                                    w[LAYER0 + "intermediate/dense/kernel"].T}),
                           [], [LAYER0 + "intermediate/dense/kernel", "[101, 48]", "[48, 101]"]),
    "classifier_weights_without_bias": (
        lambda d, w: _resave(d, {**w, "output_weights": np.ones((2, 48), np.float32)}), [],
        ["output_weights", "output_bias"]),
    "vocab_size_mismatch": (lambda d, w: bt.write_vocab(os.path.join(d, "vocab.txt"), 83), [],
                            ["vocab.txt", "83", "80"]),
    "truncated_data_file": (lambda d, w: _truncate_data(d), [],
                            ["bert_model.ckpt.data", "truncated"]),
    "missing_index": (lambda d, w: os.remove(os.path.join(d, "bert_model.ckpt.index")), [],
                      ["bert_model.ckpt.index", "no checkpoint"]),
    "missing_vocab": (lambda d, w: os.remove(os.path.join(d, "vocab.txt")), [],
                      ["vocab.txt", "not found"]),
    "empty_vocab": (lambda d, w: _write(os.path.join(d, "vocab.txt"), ""), [],
                    ["vocab.txt", "empty"]),
    "seq_len_not_a_number": (None, ["--seq_len", "12x8"], ["--seq_len", "12x8"]),
    "seq_len_beyond_max_positions": (None, ["--seq_len", "128"],
                                     ["--seq_len 128", "max_position_embeddings", "64"]),
    "classifier_head_without_classifier": (None, ["--head", "classifier"],
                                           ["--head classifier", "output_weights"]),
    "ckpt_does_not_exist": ("nonexistent", [], ["--ckpt", "no_such_checkpoint"]),
    "output_exists": ("output_exists", [], ["--output", "already exists", "--overwrite"]),
}


@pytest.fixture(scope="module")
def runs(tiny_ckpt, tiny_weights, tmp_path_factory):
    """Prepares every case and runs its CLI build; name -> (proc, output, ckpt)."""
    root = str(tmp_path_factory.mktemp("bad_input"))
    jobs = {}
    for name, (breaker, extra, _) in CASES.items():
        ckpt = os.path.join(root, "ckpts", name)
        if breaker == "nonexistent":
            ckpt = os.path.join(root, "no_such_checkpoint")
        else:
            shutil.copytree(tiny_ckpt, ckpt)
            if callable(breaker):
                breaker(ckpt, tiny_weights)
        parent = os.path.join(root, "outputs", name)
        os.makedirs(parent)
        output = os.path.join(parent, "artifact")
        if breaker == "output_exists":
            os.makedirs(os.path.join(output, "seq_16", "1"))
            _write(os.path.join(output, "bertc.json"), '{"mine": true}\n')
            _write(os.path.join(output, "seq_16", "1", "saved_model.pb"), "not yours\n")
        args = ["build", "--ckpt", ckpt, "--output", output, "--batch_size", str(BATCH),
                "--seq_len", str(SEQ), "--verify_rows", "4"] + extra
        jobs[name] = (args, output, ckpt)
    before = {name: bt.tree_digest(out) for name, (_, out, _) in jobs.items()
              if os.path.isdir(out)}

    procs = bt.run_cli_many([args for args, _, _ in jobs.values()],
                            str(tmp_path_factory.mktemp("bad_input_logs")))
    results = {name: (proc, jobs[name][1], jobs[name][2], before.get(name))
               for name, proc in zip(jobs, procs)}
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_error_line_and_nothing_written(runs, name):
    proc, output, ckpt, before = runs[name]
    needles = CASES[name][2]
    line = bt.assert_one_error(proc, *needles)
    assert proc.returncode == 2, line  # bad input (1 is for a check that failed)
    assert "wrote" not in proc.stdout
    parent = os.path.dirname(output)
    assert bt.leftovers(parent) == [], os.listdir(parent)
    if before is not None:  # an existing --output is left exactly as it was
        assert bt.tree_digest(output) == before
    else:
        assert not os.path.exists(output), f"{output} was created"
        assert os.listdir(parent) == []


def test_error_lines_name_the_file_by_path(runs):
    """File errors give the path a user can open, not just a basename."""
    proc, _, ckpt, _ = runs["missing_vocab"]
    assert os.path.join(ckpt, "vocab.txt") in bt.error_lines(proc.stderr)[0]
    proc, _, ckpt, _ = runs["malformed_json"]
    assert os.path.join(ckpt, "bert_config.json") in bt.error_lines(proc.stderr)[0]


# --------------------------------------------------------------------------- in-process


def _options(ckpt, output, **kwargs):
    import bertc
    values = dict(output=output, ckpt=ckpt, batch_size=BATCH, seq_lens=(SEQ,), verify_rows=4)
    values.update(kwargs)
    return bertc.BuildOptions(**values)


def _interrupt_after_export(monkeypatch, seen=None):
    """Makes bertc.export.write_saved_model write its SavedModel, then raise Ctrl-C."""
    from bertc.artifact import saved_model_writer as export
    original = export.write_saved_model

    def write_then_interrupt(frozen, export_dir, *args, **kwargs):
        original(frozen, export_dir, *args, **kwargs)
        assert os.path.isfile(os.path.join(export_dir, "saved_model.pb"))
        if seen is not None:
            seen.append(export_dir)
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "write_saved_model", write_then_interrupt)


def test_interrupted_build_leaves_no_output_and_no_temp_dir(tiny_ckpt, tmp_path, monkeypatch):
    import bertc
    seen = []
    _interrupt_after_export(monkeypatch, seen)
    output = tmp_path / "artifact"
    with pytest.raises(KeyboardInterrupt):
        bertc.build(_options(tiny_ckpt, str(output)))
    assert seen and ".partial-" in seen[0]  # it really was writing, in a temporary dir
    assert not output.exists()
    assert os.listdir(tmp_path) == []


def test_cli_reports_an_interrupt_in_one_line(tiny_ckpt, tmp_path, monkeypatch, capsys):
    from absl import flags
    from bertc import cli
    _interrupt_after_export(monkeypatch)
    output = tmp_path / "artifact"
    flags.FLAGS(["bertc", "--ckpt", tiny_ckpt, "--output", str(output), "--batch_size",
                 str(BATCH), "--seq_len", str(SEQ), "--verify_rows", "4"])
    try:
        code = cli.main(["bertc", "build"])
    finally:
        flags.FLAGS.unparse_flags()
    assert code == 130
    err = capsys.readouterr().err
    assert "bertc: interrupted; nothing was written" in err and "Traceback" not in err
    assert not output.exists() and os.listdir(tmp_path) == []


def test_overwrite_replaces_an_artifact_atomically(tiny_ckpt, tmp_path, monkeypatch):
    """--overwrite: the old artifact stays whole until the finished new one is renamed
    over it; an interrupted overwrite leaves the old one byte for byte."""
    import bertc
    from bertc.artifact import saved_model_writer as export
    output = str(tmp_path / "artifact")
    bertc.build(_options(tiny_ckpt, output, head="pooled", verify=False))
    old = bt.tree_digest(output)

    # Interrupted overwrite: nothing changes.
    _interrupt_after_export(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        bertc.build(_options(tiny_ckpt, output, head="sequence", overwrite=True))
    assert bt.tree_digest(output) == old
    assert os.listdir(tmp_path) == ["artifact"]
    monkeypatch.undo()

    # Completed overwrite: while the new one is written, the old one is still in place.
    original = export.write_saved_model
    during = []

    def spy(frozen, export_dir, *args, **kwargs):
        during.append((export_dir, bt.tree_digest(output)))
        return original(frozen, export_dir, *args, **kwargs)

    monkeypatch.setattr(export, "write_saved_model", spy)
    result = bertc.build(_options(tiny_ckpt, output, head="sequence", overwrite=True))
    (export_dir, digest_then), = during
    assert digest_then == old and not export_dir.startswith(output + os.sep)
    assert result.manifest["head"] == "sequence"
    with open(os.path.join(output, "bertc.json"), encoding="utf-8") as f:
        assert json.load(f)["head"] == "sequence"
    feeds = bt.random_feeds(2, SEQ, 80)
    assert set(bt.run_saved_model(os.path.join(output, f"seq_{SEQ}", "1"), feeds, BATCH)) == {
        "sequence_output"}
    assert os.listdir(tmp_path) == ["artifact"]  # no .partial-/.old- directories left


@pytest.mark.parametrize("args, needle", [
    (["build", "--batch_size", "abc"], "--batch_size=abc"),
    (["build", "--nosuchflag"], "nosuchflag"),
    (["verify", "--verify_rows=x"], "--verify_rows=x"),
])
def test_a_flag_absl_cannot_parse_is_one_error_line(args, needle, tmp_path):
    proc = bt.run_cli(*args, cwd=str(tmp_path))
    bt.assert_one_error(proc, needle)
    assert proc.returncode == 2
    assert "FATAL" not in proc.stderr
    assert os.listdir(tmp_path) == []
