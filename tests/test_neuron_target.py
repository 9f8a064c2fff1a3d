"""Tests for bertc.builder.targets.neuron: call construction, rendering, flag parsing and preflight.

The Neuron SDK cannot be installed here (TF 2.21, Python 3.11), so these tests never
import or fake `tensorflow.neuron`; preflight's import is exercised via its injected
`importer` argument only.
"""

import ast
import json
import os
import sys

import pytest

from bertc.errors import BertcError
from bertc.builder.targets import neuron


def _parse_call(text):
    """Parse rendered call text; return (dotted function name, positional args, keywords)."""
    tree = ast.parse(text, mode="eval")
    call = tree.body
    assert isinstance(call, ast.Call)
    assert ast.unparse(call.func) == "tensorflow.neuron.saved_model.compile"
    args = [ast.literal_eval(arg) for arg in call.args]
    keywords = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    assert len(keywords) == len(call.keywords)
    return args, keywords


def test_default_compiler_args_and_kwargs():
    call = neuron.NeuronCompileCall("in", "out")
    assert call.compiler_args == ["--fp32-cast", "matmult"]
    assert call.batch_size == 1
    assert call.signature_def_key == "serving_default"
    assert call.kwargs() == {
        "batch_size": 1,
        "signature_def_key": "serving_default",
        "compiler_args": ["--fp32-cast", "matmult"],
    }


def test_default_compiler_args_not_shared_between_instances():
    first = neuron.NeuronCompileCall("in", "out")
    first.compiler_args.append("--extra")
    assert neuron.NeuronCompileCall("in", "out").compiler_args == ["--fp32-cast", "matmult"]


def test_render_minimal_matches_expected_text():
    call = neuron.NeuronCompileCall("in", "out", batch_size=4)
    assert call.render() == (
        "tensorflow.neuron.saved_model.compile('in', 'out', batch_size=4, "
        "signature_def_key='serving_default', compiler_args=['--fp32-cast', 'matmult'])"
    )
    args, keywords = _parse_call(call.render())
    assert args == ["in", "out"]
    assert keywords == call.kwargs()


def test_render_all_options_is_valid_python_with_exact_keywords():
    no_fuse = [f"bert/encoder/layer_{i}/attention/self/Softmax" for i in range(24)]
    call = neuron.NeuronCompileCall(
        model_dir="/models/bert's base",
        new_model_dir='/tmp/out "neuron"',
        batch_size=8,
        compiler_args=["--fp32-cast", "matmult", "--neuroncore-pipeline-cores", "4"],
        no_fuse_ops=no_fuse,
        force_fuse_ops=["bert/pooler/dense/MatMul"],
        minimum_segment_size=2,
        compiler_workdir="/tmp/neuron work",
        signature_def_key="predict",
    )
    text = call.render()
    assert "..." not in text  # long op lists are rendered in full
    args, keywords = _parse_call(text)
    assert args == ["/models/bert's base", '/tmp/out "neuron"']
    assert keywords == {
        "batch_size": 8,
        "signature_def_key": "predict",
        "compiler_args": ["--fp32-cast", "matmult", "--neuroncore-pipeline-cores", "4"],
        "no_fuse_ops": no_fuse,
        "force_fuse_ops": ["bert/pooler/dense/MatMul"],
        "minimum_segment_size": 2,
        "compiler_workdir": "/tmp/neuron work",
    }
    assert keywords == call.kwargs()


def test_kwargs_omit_none_but_keep_empty_lists():
    call = neuron.NeuronCompileCall("in", "out", compiler_args=[], no_fuse_ops=[])
    assert call.kwargs() == {
        "batch_size": 1,
        "signature_def_key": "serving_default",
        "compiler_args": [],
        "no_fuse_ops": [],
    }
    _, keywords = _parse_call(call.render())
    assert keywords == call.kwargs()


def test_to_json_is_serializable_and_consistent():
    call = neuron.NeuronCompileCall("in", "out", batch_size=2, minimum_segment_size=3)
    record = json.loads(json.dumps(call.to_json()))
    assert record["api"] == "tensorflow.neuron.saved_model.compile"
    assert record["model_dir"] == "in"
    assert record["new_model_dir"] == "out"
    assert record["kwargs"] == call.kwargs()
    assert record["call"] == call.render()


def test_accepts_path_objects(tmp_path):
    call = neuron.NeuronCompileCall(tmp_path / "in", tmp_path / "out")
    assert call.model_dir == str(tmp_path / "in")
    _parse_call(call.render())


@pytest.mark.parametrize(
    "field, value, flag",
    [
        ("batch_size", 0, "`batch_size`"),
        ("batch_size", True, "`batch_size`"),
        ("batch_size", "4", "`batch_size`"),
        ("minimum_segment_size", 0, "`minimum_segment_size`"),
        ("compiler_args", "--fp32-cast matmult", "`compiler_args`"),
        ("no_fuse_ops", ["ok", 3], "`no_fuse_ops`"),
        ("force_fuse_ops", "MatMul", "`force_fuse_ops`"),
    ],
)
def test_invalid_fields_raise_bertc_error(field, value, flag):
    with pytest.raises(BertcError, match=flag):
        neuron.NeuronCompileCall("in", "out", **{field: value})


def test_parse_compiler_args():
    assert neuron.parse_compiler_args("--fp32-cast matmult") == ["--fp32-cast", "matmult"]
    assert neuron.parse_compiler_args("  --fp32-cast   matmult  ") == ["--fp32-cast", "matmult"]
    assert neuron.parse_compiler_args("--workdir '/tmp/a b'") == ["--workdir", "/tmp/a b"]
    assert neuron.parse_compiler_args("") == []


def test_parse_compiler_args_bad_quote():
    with pytest.raises(BertcError, match="`compiler_args`") as info:
        neuron.parse_compiler_args("--fp32-cast 'matmult")
    assert "\n" not in str(info.value)


def _never_called(name):
    raise AssertionError(f"importer must not be called, got {name!r}")


def test_preflight_rejects_new_python_before_anything_else():
    with pytest.raises(BertcError) as info:
        neuron.preflight(tf_version="2.10.1", python_version=(3, 11), importer=_never_called)
    message = str(info.value)
    assert "3.10" in message
    assert "Python 3.11" in message
    assert "pip install tensorflow-neuron" in message
    assert "\n" not in message


@pytest.mark.parametrize("version", ["2.21.0", "2.11.0", "2.0.0", "1.14.0", "2.16.0rc1"])
def test_preflight_rejects_unsupported_tensorflow(version):
    with pytest.raises(BertcError) as info:
        neuron.preflight(tf_version=version, python_version=(3, 10), importer=_never_called)
    message = str(info.value)
    assert f"TensorFlow {version}" in message
    assert "2.10" in message
    assert "pip install tensorflow-neuron" in message
    assert "\n" not in message


def test_preflight_rejects_unreadable_tensorflow_version():
    with pytest.raises(BertcError, match="TensorFlow version"):
        neuron.preflight(tf_version="nightly", python_version=(3, 8), importer=_never_called)


def test_preflight_reports_missing_sdk():
    seen = []

    def importer(name):
        seen.append(name)
        raise ImportError("No module named 'tensorflow.neuron'")

    with pytest.raises(BertcError) as info:
        neuron.preflight(tf_version="2.10.1", python_version=(3, 10), importer=importer)
    message = str(info.value)
    assert seen == ["tensorflow.neuron"]
    assert "not installed" in message
    assert "pip install tensorflow-neuron[cc] --extra-index-url=https://pip.repos.neuron.amazonaws.com" in message
    assert "\n" not in message


@pytest.mark.parametrize("tf_version, python_version", [("1.15.5", (3, 7)), ("2.10.1", (3, 10)), ("2.1.0", (3, 6))])
def test_preflight_passes_with_supported_versions_and_importable_sdk(tf_version, python_version):
    seen = []

    def importer(name):
        seen.append(name)
        return object()

    neuron.preflight(tf_version=tf_version, python_version=python_version, importer=importer)
    assert seen == ["tensorflow.neuron"]


def test_preflight_fails_on_this_machine():
    # This environment runs TF 2.21 on Python 3.11, which the Neuron SDK does not support.
    assert sys.version_info[:2] > (3, 10)
    with pytest.raises(BertcError, match="tensorflow-neuron"):
        neuron.preflight()


def test_compile_saved_model_fails_before_touching_disk(tmp_path):
    model_dir = tmp_path / "bert_savedmodel"
    new_model_dir = tmp_path / "bert_neuron"
    workdir = tmp_path / "neuron_workdir"
    call = neuron.NeuronCompileCall(model_dir, new_model_dir, compiler_workdir=workdir)
    with pytest.raises(BertcError):
        neuron.compile_saved_model(call)
    assert os.listdir(tmp_path) == []
    assert "tensorflow.neuron" not in sys.modules


def test_existing_output_dir_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(BertcError, match="already exists"):
        neuron._refuse_existing_output(str(tmp_path / "out"))
    neuron._refuse_existing_output(str(tmp_path / "missing"))
