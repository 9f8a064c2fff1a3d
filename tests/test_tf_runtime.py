"""bertc's TensorFlow runtime settings: oneDNN on in bertc's processes unless the user
chose otherwise (bertc/runtime/tf_settings.py). Each case runs in a fresh interpreter, because
TensorFlow reads the setting once, when it is imported."""

import json
import os
import subprocess
import sys

import pytest

import bertc_testing as bt
from bertc.runtime import tf_settings as tf_runtime

PROBE = """
import json, os, sys
{first}
print(json.dumps({{"variable": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                   "onednn": __import__("bertc").tf_runtime.onednn_enabled()}}))
"""


def probe(first: str, variable=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != tf_runtime.ONEDNN_VARIABLE}
    if variable is not None:
        env[tf_runtime.ONEDNN_VARIABLE] = variable
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = bt.REPO_ROOT
    out = subprocess.run([sys.executable, "-c", PROBE.format(first=first)], env=env,
                         capture_output=True, text=True, timeout=300, cwd=bt.REPO_ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_bertc_turns_onednn_on_before_tensorflow_loads():
    result = probe("import bertc; imported_early = 'tensorflow' in sys.modules\n"
                   "assert not imported_early, 'import bertc imported TensorFlow'")
    assert result == {"variable": "1", "onednn": True}


def test_an_explicit_user_choice_is_kept():
    result = probe("import bertc", variable="0")
    assert result["variable"] == "0"
    assert result["onednn"] is False


def test_tensorflow_imported_first_keeps_its_own_choice():
    result = probe("import tensorflow\nimport bertc")
    assert result["variable"] is None


@pytest.mark.parametrize("environ, expected_set, expected", [
    ({}, True, {"TF_ENABLE_ONEDNN_OPTS": "1"}),
    ({"TF_ENABLE_ONEDNN_OPTS": "0"}, False, {"TF_ENABLE_ONEDNN_OPTS": "0"}),
])
def test_apply_defaults_on_an_environment_mapping(environ, expected_set, expected, monkeypatch):
    # The pytest process has imported TensorFlow already; take that out of the picture.
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    assert tf_runtime.apply_defaults(environ) is expected_set
    assert environ == expected
