"""Every command README.md shows runs, read from the README text itself.

The commands are the lines of README.md's indented code blocks that start with
`.venv/bin/bertc` or `make`, and the Python API block.  They run in the order the
README gives them, in a scratch directory laid out as a reader's would be:

  uncased_L-12_H-768_A-12/   a Google checkpoint (a tiny random BERT, written here)
  my_hf_bert/, path/to/hf_bert/   a Hugging Face BertModel directory (tiny, saved by
                             transformers' save_pretrained)
  checkpoints/minilm         the embedded default, as `make demo` converts it
  artifacts/minilm           what `make demo` built (its recipe runs first)

`make demo` runs as its Makefile recipe (the commands after `$(BERTC)`; the
install steps it depends on are what this test suite itself runs in); `make test`
is the command that runs this test and is not run again.  The only edits to a
README line: /tmp/ becomes the scratch directory, and the server started with
`&` gets a free port that the client lines are pointed at.  A README example
that needs a file this layout lacks fails here: add it to the layout.
"""

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest

import bertc_testing as bt

README = os.path.join(bt.REPO_ROOT, "README.md")
MAKEFILE = os.path.join(bt.REPO_ROOT, "Makefile")
BERTC = ".venv/bin/bertc"


def code_blocks(path=README):
    """[(first line number, [lines])] of the 4-space indented code blocks."""
    blocks, current, start, previous_blank = [], [], 0, True
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if line.startswith("    ") and (current or previous_blank):
                if not current:
                    start = number
                current.append(line[4:])
            elif current and not line.strip():
                current.append("")
            else:
                if current:
                    blocks.append((start, current))
                current = []
            previous_blank = not line.strip()
    if current:
        blocks.append((start, current))
    return blocks


def readme_commands():
    """[(line number, command)] of the shell lines README.md shows, in order."""
    commands = []
    for start, lines in code_blocks():
        for offset, line in enumerate(lines):
            text = line.split("  #")[0].strip()
            if text.startswith((BERTC + " ", "make ")):
                commands.append((start + offset, text))
    return commands


def python_blocks():
    return ["\n".join(lines) for _, lines in code_blocks() if lines[0].startswith("import bertc")]


def demo_recipe():
    """The shell lines of the Makefile's `demo` target, $(BERTC) spelled out."""
    with open(MAKEFILE, encoding="utf-8") as f:
        text = f.read()
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, re.M).group(1)
    return [line.strip().replace("$(BERTC)", BERTC) for line in recipe.splitlines()]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reader_dir(tmp_path_factory, tiny_weights):
    """The scratch directory a README reader works in (see the module docstring)."""
    import torch
    import transformers
    from bertc.sources import embedded as defaults
    root = tmp_path_factory.mktemp("readme")
    cfg = bt.tiny_config(max_pos=128)
    bt.write_google_checkpoint(str(root / "uncased_L-12_H-768_A-12"), cfg,
                               bt.random_weights(cfg, seed=11))
    torch.manual_seed(0)
    hf = transformers.BertModel(bt.hf_config(cfg)).eval()
    for where in ("my_hf_bert", "path/to/hf_bert"):
        hf.save_pretrained(str(root / where))
        bt.write_vocab(str(root / where / "vocab.txt"), cfg["vocab_size"])
    (root / "checkpoints").mkdir()
    os.symlink(defaults.ensure_default_checkpoint(), root / "checkpoints" / "minilm")
    return root


def _run(command, cwd, background=None, timeout=900):
    """Runs one README shell line in `cwd`; a trailing & starts it in the background."""
    argv = shlex.split(command.rstrip("&").strip())
    if argv[0] == BERTC:  # the venv's console script: this interpreter, this checkout
        argv = bt.cli_command(*argv[1:])
    env = bt.cli_env()
    if command.endswith("&"):
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        background.append(proc)
        return proc
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _wait_for_port(port, proc, seconds=180):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {proc.stdout.read()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"server not listening on {port} after {seconds} s")


def test_readme_lists_the_commands_this_test_runs():
    commands = [c for _, c in readme_commands()]
    assert "make demo" in commands and "make test" in commands
    assert any("--dtype bfloat16" in c for c in commands)
    assert any(c.endswith("&") for c in commands)  # the server example
    assert python_blocks(), "the Python API block"
    assert demo_recipe()[0].startswith(BERTC)


def test_every_readme_command_runs(reader_dir):
    """Each line exits 0 with no error line; builds say 'wrote', verifies PASSED."""
    background, done = [], []
    port = _free_port()
    try:
        for number, command in readme_commands():
            if command == "make test":
                continue  # the command running this very test
            lines = demo_recipe() if command == "make demo" else [command]
            for line in lines:
                line = line.replace("/tmp/", f"{reader_dir}/")
                if " serve " in f" {line} ":
                    line = line.rstrip("&").strip() + f" --port {port} &"
                elif " client " in f" {line} " and background:
                    line += f" --url http://127.0.0.1:{port}"
                proc = _run(line, reader_dir, background)
                if line.endswith("&"):
                    _wait_for_port(port, proc)
                    continue
                where = f"README.md:{number}: {command}"
                assert proc.returncode == 0, f"{where}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
                assert "bertc: error" not in proc.stderr, where
                if " build " in f" {line} ":
                    assert "wrote " in proc.stdout, where
                if " verify " in f" {line} ":
                    assert "verify: PASSED" in proc.stdout, where
                done.append(line)
    finally:
        for proc in background:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    for proc in background:
        log = proc.stdout.read()
        assert proc.returncode == 0, log[-2000:]
        # the demo's build verified, so the server held its probe to verify's bounds
        assert "within verify's bounds" in log, log[-2000:]
    assert len(done) >= len(readme_commands()) - 2


def test_the_readme_python_api_block_runs(reader_dir):
    work = reader_dir / "api"
    (work / "checkpoints").mkdir(parents=True)
    os.symlink(os.readlink(reader_dir / "checkpoints" / "minilm"), work / "checkpoints" / "minilm")
    os.symlink(reader_dir / "path", work / "path")
    for block in python_blocks():
        proc = subprocess.run([sys.executable, "-c", block], cwd=work, env=bt.cli_env(),
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "'passed': True" in proc.stdout, proc.stdout[-3000:]
