"""cpu_embeddings: the Neuron CPU/device partition, found by structure, graph unchanged."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import rewrites
from rewrites.graph import Graph
from rewrites.input_regions import ancestors, find_input_regions

import bertc_testing as bt
from bertc.model import modeling

LAYERS = 2


def _partition(frozen, graph_def=None, before=()):
    result = rewrites.run(frozen.graph_def if graph_def is None else graph_def,
                          list(before) + ["cpu_embeddings"], protected_nodes=bt.protected(frozen),
                          options={"dtype": "bfloat16", "aggressive": False})
    report = result.reports[-1]
    return result.graph_def, report


def _nodes(graph_def):
    return sorted(n.SerializeToString(deterministic=True) for n in graph_def.node)


def _check_partition(frozen, graph_def, report):
    """Every node in exactly one list, or a Placeholder / output; the CPU side
    closed under inputs (nothing on it waits for the device)."""
    cpu, device = report.details["no_fuse_ops"], report.details["force_fuse_ops"]
    assert report.sites == 1 and len(set(cpu)) == len(cpu) and len(set(device)) == len(device)
    assert not set(cpu) & set(device)
    nodes = {n.name: n for n in graph_def.node}
    outside = set(nodes) - set(cpu) - set(device)
    assert outside == set(frozen.inputs.values()) | set(frozen.outputs.values())
    for name in cpu:
        for text in nodes[name].input:
            source = text.lstrip("^").split(":")[0]
            assert source in cpu or nodes[source].op == "Placeholder", (name, source)
    return cpu, device, nodes


@pytest.mark.parametrize("head", ["classifier", "embedding"])
def test_embeddings_and_mask_on_cpu_the_rest_on_neuron(head):
    frozen = bt.tiny_frozen(head, layers=LAYERS)
    out, report = _partition(frozen)
    assert _nodes(out) == _nodes(frozen.graph_def)  # the graph is not changed
    cpu, device, nodes = _check_partition(frozen, out, report)
    cpu_ops = collections.Counter(nodes[n].op for n in cpu)
    device_ops = collections.Counter(nodes[n].op for n in device)
    # Embeddings: word Gather, one-hot token types, position Slice, sums, LayerNorm;
    # the mask bias: Reshape, Cast, Sub, Mul.
    assert cpu_ops["GatherV2"] == 1 and cpu_ops["OneHot"] == 1 and cpu_ops["Slice"] == 1
    assert cpu_ops["MatMul"] == 1 and cpu_ops["Rsqrt"] == 1 and cpu_ops["Cast"] == 1
    assert cpu_ops["Sub"] == 2  # LayerNorm's x - mean, and 1 - mask
    # Every encoder layer, and the head, on the device.
    assert device_ops["Softmax"] >= LAYERS and device_ops["BatchMatMulV2"] == 2 * LAYERS
    assert device_ops["MatMul"] == 6 * LAYERS + (2 if head == "classifier" else 0)
    assert device_ops["Rsqrt"] == (2 * LAYERS if head == "classifier" else 2 * LAYERS + 1)
    assert "GatherV2" not in device_ops and "OneHot" not in device_ops
    if head == "embedding":  # the masked mean reads input_mask again: on the device
        assert device_ops["Cast"] == 1


def test_same_partition_under_another_name_scope():
    config = bt.tiny_bert_config(LAYERS)
    weights = bt.random_bert_weights(config)
    plain = bt.tiny_frozen("classifier", layers=LAYERS)
    scoped = bt.scoped_frozen(config, weights, "classifier", 2, 8, scope="tf_hub/bert_model")
    assert not any(n.name.startswith(("bert/", "weights/")) for n in scoped.graph_def.node)
    counts = []
    for frozen in (plain, scoped):
        out, report = _partition(frozen)
        cpu, device, nodes = _check_partition(frozen, out, report)
        counts.append([sorted(collections.Counter(nodes[n].op for n in part).items())
                       for part in (cpu, device)])
    assert counts[0] == counts[1]


def test_after_the_cpu_pipeline_and_mixed_precision():
    """Run last: it names the final graph's nodes, the first layer's Cast included."""
    frozen = bt.tiny_frozen("classifier", layers=LAYERS)
    before = ["strip_unused", "fold_constants", "fused_attention", "crude_gelu",
              "mixed_precision"]
    out, report = _partition(frozen, before=before)
    cpu, device, nodes = _check_partition(frozen, out, report)
    regions = find_input_regions(Graph(out))
    casts = [n for n in device if nodes[n].op == "Cast"
             and nodes[n].input[0] == regions.embedding_output]
    assert len(casts) == 1 and nodes[casts[0]].attr["DstT"].type == tf.bfloat16.as_datatype_enum
    assert all(nodes[n].attr["T"].type == tf.float32.as_datatype_enum
               for n in cpu if nodes[n].op in ("AddV2", "Mul"))
    assert report.details["no_fuse_ops"][-1] in ancestors(Graph(out), regions.mask_biases) | {
        regions.embedding_output}


def test_near_misses_report_nothing():
    """No lookup at int inputs (float ids), no encoder after the embeddings,
    a first layer that reads two different tensors."""
    config = bt.tiny_bert_config(1)
    weights = {k: tf.constant(v) for k, v in bt.random_bert_weights(config).items()}
    table = weights["bert/embeddings/word_embeddings"]

    def embeddings_only(ids, segments):
        return tf.identity(modeling.embeddings(weights, config, ids, segments), name="out")

    def gather_at_a_float_input(x):
        ids = tf.cast(x, tf.int32)
        return tf.identity(tf.matmul(tf.gather(table, ids), tf.ones([32, 4])), name="out")

    def two_inputs(ids):
        looked_up = tf.gather(table, ids)
        return tf.identity(tf.matmul(looked_up, tf.ones([32, 4]))
                           + tf.matmul(looked_up * 2.0, tf.ones([32, 4])), name="out")

    ints = [tf.TensorSpec([2, 8], tf.int32, name=n) for n in ("ids", "segments")]
    cases = [bt.trace(embeddings_only, *ints),
             bt.trace(gather_at_a_float_input, tf.TensorSpec([4], tf.float32, name="x")),
             bt.trace(two_inputs, tf.TensorSpec([4], tf.int32, name="ids"))]
    for gd in cases:
        result = rewrites.run(gd, ["cpu_embeddings"])
        assert result.reports[0].sites == 0 and result.reports[0].warning
        assert result.reports[0].details == {}


def test_minilm_partition():
    frozen = bt.minilm_frozen("embedding", 16, 128)
    out, report = _partition(frozen)
    cpu, device, nodes = _check_partition(frozen, out, report)
    assert nodes[cpu[0]].op == "Const" and len(device) > 10 * len(cpu)
    assert sum(nodes[n].op == "MatMul" for n in device) == 6 * 6
    big = max(cpu, key=lambda n: np.prod([d.size for d in
                                          nodes[n].attr["value"].tensor.tensor_shape.dim])
              if nodes[n].op == "Const" else 0)
    assert [d.size for d in nodes[big].attr["value"].tensor.tensor_shape.dim] == [30522, 384]
