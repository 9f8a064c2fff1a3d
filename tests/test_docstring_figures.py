"""Speed figures live in BENCHMARKS.md, not in docstrings (issue 13): the
docstrings of rewrites/ and benchmarks/ keep the reasoning and the error bounds
and point to BENCHMARKS.md for measured times and speed-ups."""

import ast
import glob
import os
import re

import pytest

import bertc_testing as bt

#: A measured speed: "2.3x", "1.66×", "63 ms", "618 us", "12 inf/s", "~3%".
SPEED_FIGURE = re.compile(r"\d(\.\d+)?[x×](?![\w-])|\d\s?(ms|us|µs)\b|\d\s?inf(erences)?/s\b"
                          r"|~\d+(\.\d+)?%")
FILES = sorted(glob.glob(os.path.join(bt.REPO_ROOT, "rewrites", "*.py"))
               + glob.glob(os.path.join(bt.REPO_ROOT, "benchmarks", "*.py")))


def docstrings(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in [tree] + [n for n in ast.walk(tree) if isinstance(
            n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]:
        text = ast.get_docstring(node)
        if text:
            yield getattr(node, "name", "module"), text


def test_the_pattern_sees_a_speed_figure():
    assert SPEED_FIGURE.search("bfloat16 38 ms (1.66x)")
    assert not SPEED_FIGURE.search("max abs 1e-6 on [512, 384]; cosine >= 0.999")


@pytest.mark.parametrize("path", FILES, ids=lambda p: os.path.relpath(p, bt.REPO_ROOT))
def test_docstrings_quote_no_speed_figures(path):
    for name, text in docstrings(path):
        for line in text.splitlines():
            found = SPEED_FIGURE.search(line)
            assert not found, (f"{os.path.relpath(path, bt.REPO_ROOT)} {name}: speed figure "
                               f"{found.group(0)!r} in {line.strip()!r}; move it to BENCHMARKS.md")
