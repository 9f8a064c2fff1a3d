"""`bertc verify --per_pass` names the pass that breaks numerics; `bertc inspect` reports
what the pipeline changed. Both on a tiny checkpoint built with crude_gelu (approximate)
after the exact CPU default passes."""

import json
import os

import numpy as np
import pytest

import bertc
from bertc.verify import inspection
from bertc import passes as rewriting
from bertc.verify import artifact as verify_artifact

BATCH, SEQ = 2, 16


@pytest.fixture(scope="module")
def crude_artifact(tiny_ckpt, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("per_pass") / "art")
    bertc.build(bertc.BuildOptions(output=out, ckpt=tiny_ckpt, batch_size=BATCH, seq_lens=[SEQ],
                                   crude_gelu=True, verify_rows=4))
    return out


def test_per_pass_names_the_approximate_pass(crude_artifact):
    report = verify_artifact.verify_artifact(crude_artifact, rows=4, per_pass=True,
                                             random_rows=8)
    rows = report["per_pass"][str(SEQ)]
    with open(os.path.join(crude_artifact, "bertc.json")) as f:
        requested = json.load(f)["rewrites"]["requested"]
    assert [r["pass"] for r in rows] == requested and "crude_gelu" in requested
    errors = [max(s["max_abs"] for s in r["outputs"].values()) for r in rows]
    # Every exact prefix stays within 1e-5; the error appears exactly at crude_gelu
    # (the shape-changing exact passes of the CPU default run after it).
    at = requested.index("crude_gelu")
    assert all(e <= 1e-5 for e in errors[:at]), errors
    assert all(e > 1e-4 for e in errors[at:]), errors
    sites = {r["pass"]: r["sites"] for r in rows}
    assert sites["crude_gelu"] == 1 and sites["fused_layernorm"] == 3  # 1 layer: 2L+1


def test_inspect_artifact_histogram_and_parameters(crude_artifact, tmp_path):
    report = inspection.inspect_path(crude_artifact, tensorboard=str(tmp_path / "tb"))
    before, after = report["ops_before"], report["ops_after"]
    # Exact GELU's Erf is gone and crude GELU's Sigmoid is there, one per layer.
    assert before.get("Erf", 0) == 1 and after.get("Erf", 0) == 0
    assert after.get("Sigmoid", 0) == 1
    # Q, K, V fused: two fewer MatMuls per layer; cls_only_tail (the pooled head) gives
    # the last layer's [CLS] query a MatMul of its own again. remove_padding gathers the
    # fused projection's heads straight into attention's layout (and the context back out
    # of it): no Split is left, and of the four head Transposes of the one layer only the
    # [CLS] query's and its [B, 1] context's stay.
    assert after["MatMul"] == before["MatMul"] - 2 + 1
    assert before["Transpose"] == 4 and after.get("Transpose", 0) == 2
    assert after.get("Split", 0) == 0
    # fused_layernorm's three _MklLayerNorms, written in public ops by public_layernorm
    assert after.get("FusedBatchNormV3", 0) == 3 and after.get("SquaredDifference", 0) == 0
    assert not any(op.startswith("_") for op in after)
    # The parameter count of the float weights is the checkpoint's (pooled head keeps all
    # but the position rows past SEQ, folded away by fold_constants).
    p_before = report["parameters_before"]["float32"]["parameters"]
    p_after = report["parameters_after"]["float32"]["parameters"]
    assert p_before >= p_after > 0.5 * p_before
    assert {s["name"] for s in report["sites"]} >= {"fused_attention", "crude_gelu"}
    for run in ("before", "after"):
        files = os.listdir(tmp_path / "tb" / run)
        assert files and all(f.startswith("events.out.tfevents") for f in files)
    text = inspection.format_inspection(report)
    assert "FusedBatchNormV3" in text and "crude_gelu" in text


def test_inspect_checkpoint_runs_the_cpu_default(tiny_ckpt):
    report = inspection.inspect_path(tiny_ckpt, batch_size=BATCH, seq_len=SEQ)
    assert report["kind"] == "checkpoint"
    assert [s["name"] for s in report["sites"]] == list(rewriting.CPU_DEFAULT) + [
        "public_layernorm"]
    before, after = report["ops_before"], report["ops_after"]
    assert sum(before.values()) == report["nodes_before"]
    assert sum(after.values()) == report["nodes_after"]
    # what the passes put in and took out, by op type
    assert "FusedBatchNormV3" in after and "FusedBatchNormV3" not in before
    assert after.get("Rsqrt", 0) < before["Rsqrt"]
    assert after.get("Where", 0) == 2 and "Where" not in before  # remove_padding's indices


def test_parameter_stats_counts_known_consts():
    import tensorflow as tf
    graph_def = tf.compat.v1.GraphDef()
    for name, value in (("a", np.zeros((3, 4), np.float32)), ("b", np.zeros(5, np.int32)),
                        ("s", np.float32(1.0))):
        node = graph_def.node.add(name=name, op="Const")
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
        node.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
    stats = inspection.parameter_stats(graph_def)
    assert stats == {"float32": {"tensors": 1, "parameters": 12, "bytes": 48},
                     "int32": {"tensors": 1, "parameters": 5, "bytes": 20}}
