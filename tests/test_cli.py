"""The command line as a user meets it (issue 12): help, flags that belong to their
command, exit codes, --overwrite, output checks, permissions, relocatable artifacts.

Every test runs the real CLI in a subprocess and asserts the message, the exit code
and what is (still) on disk.
"""

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

import bertc_testing as bt
from bertc import cli

BATCH, SEQ = 2, 16
PLUGINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")
TINY = ["--batch_size", BATCH, "--seq_len", SEQ]


def _build(ckpt, output, *extra, cwd=None):
    return bt.run_cli("build", "--ckpt", ckpt, "--output", output, *TINY, *extra, cwd=cwd)


def _files(root):
    """Sorted relative paths of everything under root."""
    return sorted(os.path.relpath(os.path.join(base, n), root)
                  for base, dirs, files in os.walk(root) for n in dirs + files)


def _user_dir(path):
    """A directory bertc did not write: notes.txt and sub/y."""
    os.makedirs(os.path.join(path, "sub"))
    with open(os.path.join(path, "notes.txt"), "w") as f:
        f.write("mine\n")
    with open(os.path.join(path, "sub", "y"), "w") as f:
        f.write("also mine\n")
    return bt.tree_digest(path)


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("args", [[], ["help"], ["--help"], ["-h"]])
def test_bertc_alone_and_help_list_the_commands(args):
    proc = bt.run_cli(*args)
    assert proc.returncode == 0 and proc.stderr == ""
    listed = re.findall(r"^  (\w+) +\S", proc.stdout, re.M)
    assert listed == list(cli.COMMANDS)


def _listed_flags(text):
    return {m for m in re.findall(r"^  --(?:\[no\])?(\w+)", text, re.M)}


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_command_help_lists_only_its_flags(command):
    for args in ([command, "--help"], [command, "-h"], ["help", command]):
        proc = bt.run_cli(*args)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"bertc {command}: ")
        assert _listed_flags(proc.stdout) == set(cli.COMMANDS[command].flags) | {"helpfull"}
        assert "examples:\n  bertc " + command in proc.stdout
        assert "hbm_oom_exit" not in proc.stdout and "test_srcdir" not in proc.stdout


def test_command_help_shows_defaults_and_choices():
    out = bt.run_cli("build", "--help").stdout
    assert re.search(r"--batch_size=N +Static batch size of the artifact\. \(default: 4\)", out)
    assert "--dtype={float32|float16|bfloat16|int8}" in out and "(default: float32)" in out
    assert re.search(r"--\[no\]verify +verify the artifact", out)


def test_helpfull_keeps_every_flag():
    proc = bt.run_cli("--helpfull")
    assert proc.returncode == 0
    listed = set(re.findall(r"^  (?:-\w,)?--(?:\[no\])?(\w+)", proc.stdout, re.M))
    every = set().union(*(c.flags for c in cli.COMMANDS.values()))
    assert every | {"verbosity", "logtostderr"} <= listed


def test_version_names_bertc_tensorflow_and_openvino_when_present():
    import tensorflow as tf
    import bertc
    proc = bt.run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == [f"bertc {bertc.__version__}", f"tensorflow {tf.__version__}"]
    has_openvino = importlib.util.find_spec("openvino") is not None
    assert any(line.startswith("openvino ") for line in lines) == has_openvino


@pytest.mark.parametrize("args, needle", [
    (["frob"], "frob: unknown command"),
    (["help", "frob"], "frob: unknown command"),
    (["--ckpt", "x", "build"], "--ckpt: expected the command first"),
])
def test_unknown_commands_are_usage_errors(args, needle, tmp_path):
    proc = bt.run_cli(*args, cwd=str(tmp_path))
    bt.assert_one_error(proc, needle, "build, verify")
    assert proc.returncode == 2 and os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- flags and values


def test_flags_of_other_commands_and_bad_values_are_usage_errors(tiny_ckpt, tmp_path):
    out = str(tmp_path / "art")
    cases = {  # args -> what the one error line must name
        ("serve", "--model", "x", "--crude_gelu"): ["--crude_gelu", "bertc serve", "bertc build"],
        ("verify", "x", "--dtype", "float16", "--batch_size", "99"):
            ["--batch_size", "bertc verify"],
        ("client", "--ckpt", "x"): ["--ckpt", "bertc client"],
        ("build", "--ckpt", tiny_ckpt, "--output", out, "--dry_run"):
            ["--dry_run", "--target neuron"],
        ("build", "--ckpt", tiny_ckpt, "--output", out, "--verify_rows", "-1"):
            ["--verify_rows=-1"],
        ("build", "--ckpt", tiny_ckpt, "--output", out, "--verify_rows", "0"):
            ["--verify_rows=0"],
        ("verify", "x", "--verify_rows", "0"): ["--verify_rows=0"],
        ("client", "--clients", "0"): ["--clients=0"],
        ("client", "--cycle", "-3"): ["--cycle=-3"],
        ("client", "--request_timeout_s", "0"): ["--request_timeout_s"],
        ("serve", "--model", "x", "--parallel", "0"): ["--parallel=0"],
        ("serve", "--model", "x", "--port", "70000"): ["--port=70000"],
        ("build", "--ckpt", tiny_ckpt, "--output", out, "--batch_size", "0"):
            ["--batch_size=0"],
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = bt.run_cli_many([list(a) for a in cases], str(logs))
    for (args, needles), proc in zip(cases.items(), procs):
        line = bt.assert_one_error(proc, *needles)
        assert proc.returncode == 2, (args, line)
        assert "PASSED" not in proc.stdout and "stage read" not in proc.stderr
    assert not os.path.exists(out) and bt.leftovers(str(tmp_path)) == []


def test_verify_rows_is_checked_by_the_api_too(tiny_ckpt, tmp_path):
    import bertc
    for rows in (0, -1):
        with pytest.raises(bertc.BertcError, match=f"`verify_rows` {rows}: expected a positive"):
            bertc.build(bertc.BuildOptions(output=str(tmp_path / "a"), ckpt=tiny_ckpt,
                                           verify_rows=rows))
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- --overwrite


def test_overwrite_refuses_a_directory_bertc_did_not_write(tiny_ckpt, tmp_path):
    target = str(tmp_path / "mine")
    before = _user_dir(target)
    proc = _build(tiny_ckpt, target, "--overwrite", "--noverify")
    line = bt.assert_one_error(proc, f"--output {target}", "notes.txt", "sub/",
                               "nothing was deleted")
    assert proc.returncode == 2 and "bertc.json" in line
    assert "stage read" not in proc.stderr  # refused before the checkpoint was read
    assert bt.tree_digest(target) == before and _files(target) == ["notes.txt", "sub", "sub/y"]
    proc = bt.run_cli("convert", "--hf_dir", tiny_ckpt, "--output", target, "--overwrite")
    bt.assert_one_error(proc, f"--output {target}", "bertc_hints.json", "notes.txt")
    assert proc.returncode == 2 and bt.tree_digest(target) == before
    assert bt.leftovers(str(tmp_path)) == []


@pytest.mark.parametrize("output, needle", [
    (".", "contains the working directory"),
    ("..", "contains the working directory"),
])
def test_output_holding_the_working_directory_is_refused(output, needle, tiny_ckpt, tmp_path):
    cwd = tmp_path / "work"
    before = _user_dir(str(cwd))
    proc = _build(tiny_ckpt, output, "--overwrite", "--noverify", cwd=str(cwd))
    bt.assert_one_error(proc, "--output", needle)
    assert proc.returncode == 2
    assert bt.tree_digest(str(cwd)) == before and sorted(os.listdir(tmp_path)) == ["work"]


def test_output_holding_or_inside_the_checkpoint_is_refused(tiny_ckpt, tmp_path):
    ckpt = str(tmp_path / "ckpts" / "tiny")
    shutil.copytree(tiny_ckpt, ckpt)
    before = bt.tree_digest(str(tmp_path))
    for output, needle in ((str(tmp_path / "ckpts"), "contains the source"),
                           (os.path.join(ckpt, "art"), "is inside the source")):
        proc = _build(ckpt, output, "--overwrite", "--noverify")
        bt.assert_one_error(proc, f"--output {output}", needle)
        assert proc.returncode == 2
    assert bt.tree_digest(str(tmp_path)) == before


def test_overwrite_replaces_an_artifact_or_an_empty_directory(tiny_ckpt, tmp_path):
    art, empty = str(tmp_path / "art"), str(tmp_path / "empty")
    os.mkdir(empty)
    assert _build(tiny_ckpt, art, "--noverify", "--head", "pooled").returncode == 0
    for output in (art, empty):
        proc = _build(tiny_ckpt, output, "--noverify", "--head", "sequence", "--overwrite")
        assert proc.returncode == 0, proc.stderr
        with open(os.path.join(output, "bertc.json"), encoding="utf-8") as f:
            assert json.load(f)["head"] == "sequence"
    assert sorted(os.listdir(tmp_path)) == ["art", "empty"]  # no .partial-/.old- left


# --------------------------------------------------------------------------- output checks


@pytest.mark.parametrize("output, needle", [
    ("/sys/x", "cannot write in /sys"),
    ("/proc/x/art", "cannot create /proc/x"),
])
def test_an_unwritable_output_is_one_line_before_any_work(output, needle, tiny_ckpt):
    proc = _build(tiny_ckpt, output)
    bt.assert_one_error(proc, f"--output {output}", needle, "expected")
    assert proc.returncode == 2 and "stage read" not in proc.stderr


def test_the_api_checks_outputs_before_reading(tiny_ckpt, tmp_path, monkeypatch):
    import bertc
    from bertc.sources import load
    monkeypatch.setattr(load, "load_source", lambda *a, **k: pytest.fail("read"))
    (tmp_path / "file").write_text("x")
    for output, needle in (("/sys/x", "cannot write in /sys"),
                           (str(tmp_path / "file" / "art"), "is not a directory"),
                           (os.path.join(tiny_ckpt, "art"), "inside the source")):
        with pytest.raises(bertc.BertcError, match=re.escape(needle)):
            bertc.build(bertc.BuildOptions(output=output, ckpt=tiny_ckpt))
    with pytest.raises(bertc.BertcError, match="cannot write in /sys"):
        bertc.convert_hf(str(tmp_path), "/sys/x")


def test_parents_made_for_a_failed_build_are_removed(tmp_path):
    output = tmp_path / "new" / "deeper" / "art"
    proc = _build(str(tmp_path / "no_such_ckpt"), str(output))
    bt.assert_one_error(proc, "no_such_ckpt")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- permissions


def _modes(root):
    """{'dirs': set of modes, 'files': set of modes} of the tree, root included."""
    dirs, files = {os.stat(root).st_mode & 0o777}, set()
    for base, dnames, fnames in os.walk(root):
        dirs |= {os.stat(os.path.join(base, n)).st_mode & 0o777 for n in dnames}
        files |= {os.stat(os.path.join(base, n)).st_mode & 0o777 for n in fnames}
    return {"dirs": dirs, "files": files}


def _with_umask(mask, *args):
    old = os.umask(mask)
    try:
        return bt.run_cli(*args)
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask, dirs, files", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_artifacts_have_the_modes_of_a_normal_file_tree(mask, dirs, files, tiny_ckpt, tmp_path):
    art = str(tmp_path / "art")
    proc = _with_umask(mask, "build", "--ckpt", tiny_ckpt, "--output", art, *TINY,
                       "--noverify")
    assert proc.returncode == 0, proc.stderr
    assert _modes(art) == {"dirs": {dirs}, "files": {files}}


def test_converted_checkpoints_have_the_modes_of_a_normal_file_tree(minilm_hf_dir, tmp_path):
    out = str(tmp_path / "ckpt")
    for extra in ([], ["--overwrite"]):  # the second replaces bertc's own conversion
        proc = _with_umask(0o022, "convert", "--hf_dir", minilm_hf_dir, "--output", out,
                           *extra)
        assert proc.returncode == 0, proc.stderr
        assert _modes(out) == {"dirs": {0o755}, "files": {0o644}}
    assert "bertc_hints.json" in os.listdir(out) and os.listdir(tmp_path) == ["ckpt"]


# --------------------------------------------------------------------------- output and exit codes


def test_plain_build_prints_stages_and_result_and_v_adds_info(tiny_ckpt, tmp_path):
    info = re.compile(r"^I\d{4} ", re.M)
    proc = _build(tiny_ckpt, str(tmp_path / "a"), "--noverify")
    assert proc.returncode == 0, proc.stderr
    assert re.findall(r"^stage (\w+)", proc.stderr, re.M) == ["read", "trace", "freeze",
                                                              "rewrite", "export"]
    assert not info.search(proc.stderr), proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith(f"wrote {tmp_path / 'a'} ")
    for flag in ("-v", "--verbosity=1"):
        proc = _build(tiny_ckpt, str(tmp_path / flag), "--noverify", flag)
        assert proc.returncode == 0, proc.stderr
        assert re.search(r"^I\d{4} .*model: 1 layers", proc.stderr, re.M), proc.stderr
        assert re.search(r"^I\d{4} .*stage read", proc.stderr, re.M)


def _env_failing_stage(stage):
    env = bt.cli_env()
    env["PYTHONPATH"] = PLUGINS + os.pathsep + env["PYTHONPATH"]
    env["BERTC_TEST_FAIL_STAGE"] = stage
    return env


def test_an_internal_error_is_one_line_exit_70_and_leaves_nothing(tiny_ckpt, tmp_path):
    out = tmp_path / "art"
    args = bt.cli_command("build", "--ckpt", tiny_ckpt, "--output", out, *TINY, "--noverify")
    env = _env_failing_stage("export")  # after the temporary directory was made
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 70, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "bertc: internal error: RuntimeError: injected failure in stage export "
        "(run with --verbosity=1 for the traceback)")
    assert os.listdir(tmp_path) == []
    proc = subprocess.run(args + ["--verbosity=1"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 70
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("(the traceback is above)")
    assert os.listdir(tmp_path) == []


def test_ctrl_c_during_start_up_is_one_line_exit_130(tiny_ckpt, tmp_path):
    """SIGINT while TensorFlow is being imported (its library already mapped).

    The child starts with SIGINT at its default, as from a terminal: a suite started
    in the background (`make test &`, nohup) passes SIGINT on ignored, and Python then
    keeps ignoring it."""
    out = tmp_path / "art"
    proc = subprocess.Popen(bt.cli_command("build", "--ckpt", tiny_ckpt, "--output", out),
                            cwd=bt.REPO_ROOT, env=bt.cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/maps") as f:
            if "pywrap_tensorflow" in f.read():
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr == "bertc: interrupted; nothing was written\n" and stdout == ""
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- relocatable


def _serve(artifact):
    """`bertc serve` on a free loopback port; returns (process, url)."""
    proc = subprocess.Popen(bt.cli_command("serve", "--model", artifact, "--port", "0",
                                           "--parallel", "1"),
                            env=bt.cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    found, _ = bt.wait_for_log(proc, url=bt.SERVING_URL)
    return proc, found["url"]


def test_a_moved_artifact_verifies_serves_and_renders_its_tf_serving_config(tiny_ckpt,
                                                                             tmp_path):
    built, moved = str(tmp_path / "built" / "art"), str(tmp_path / "elsewhere" / "art")
    proc = _build(tiny_ckpt, built, "--target", "neuron", "--dry_run", "--noverify")
    assert proc.returncode == 0, proc.stderr
    os.makedirs(os.path.dirname(moved))
    os.rename(built, moved)
    for name in ("bertc.json", "models.config"):
        with open(os.path.join(moved, name), encoding="utf-8") as f:
            assert str(tmp_path / "built") not in f.read(), name
    with open(os.path.join(moved, "bertc.json"), encoding="utf-8") as f:
        (call,) = json.load(f)["target"]["compile"]
    assert call["call"].startswith(f"tensorflow.neuron.saved_model.compile('seq_{SEQ}/1', "
                                   f"'neuron/seq_{SEQ}/1', ")
    proc = bt.run_cli("verify", moved, "--verify_rows", 4)
    assert proc.returncode == 0 and "verify: PASSED" in proc.stdout, proc.stderr
    proc = bt.run_cli("tfserving", moved)
    assert proc.returncode == 0
    assert re.findall(r'base_path: "([^"]+)"', proc.stdout) == [f"{moved}/seq_{SEQ}"]
    proc = bt.run_cli("tfserving", moved, "--base_dir", "/models/art")
    assert re.findall(r'base_path: "([^"]+)"', proc.stdout) == [f"/models/art/seq_{SEQ}"]
    server, url = _serve(moved)
    try:
        proc = bt.run_cli("client", "--url", url, "--pair", "the company said", "a new year")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("model 'art' at ") and "pooled_output <48 floats>" in \
            proc.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    assert server.returncode == 0


# --------------------------------------------------------------------------- Python API


def test_every_command_has_one_handler():
    from bertc import cli
    assert set(cli.HANDLERS) == set(cli.COMMANDS)


def test_dir_and_help_show_the_documented_api():
    import pydoc
    import bertc
    documented = {"build", "BuildOptions", "BuildResult", "verify_artifact", "load_checkpoint",
                  "load_saved_model", "convert_hf", "WordPieceTokenizer", "BertConfig",
                  "BertcError"}
    assert documented <= set(bertc.__all__) <= set(dir(bertc))
    text = pydoc.render_doc(bertc)
    assert all(name in text for name in documented)


def test_build_options_without_a_source_use_the_default_like_the_cli(tmp_path, monkeypatch):
    import bertc
    from bertc.builder import pipeline as builder
    from bertc.sources import embedded as defaults
    resolved = builder.with_defaults(bertc.BuildOptions())
    assert resolved.ckpt == defaults.default_checkpoint_dir()
    assert resolved.output == os.path.join("artifacts", defaults.DEFAULT_NAME)
    (tmp_path / "artifacts" / defaults.DEFAULT_NAME).mkdir(parents=True)
    (tmp_path / "artifacts" / defaults.DEFAULT_NAME / "x").write_text("x")
    monkeypatch.chdir(tmp_path)
    expected = f"`output` {tmp_path}/artifacts/{defaults.DEFAULT_NAME}: already exists"
    with pytest.raises(bertc.BertcError, match=re.escape(expected)):
        bertc.build(bertc.BuildOptions())
    proc = bt.run_cli("build", cwd=str(tmp_path))
    # the library names the option, the command line the flag
    bt.assert_one_error(proc, expected.replace("`output`", "--output"))
    assert "`" not in proc.stderr
    assert proc.returncode == 2
    assert _files(str(tmp_path)) == ["artifacts", "artifacts/minilm", "artifacts/minilm/x"]
