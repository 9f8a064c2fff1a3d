"""cls_only_tail: the last layer computes its [CLS] rows only for pooled/classifier heads.

Tiny random BERTs and the real all-MiniLM-L6-v2 (pooled head) on MRPC text,
against the graph without the pass; with and without the CPU default passes;
composed with remove_padding; near-misses (other heads, another row selected)
and idempotence.
"""

import numpy as np
import pytest
import tensorflow as tf

import rewrites

import bertc_testing as bt
from bertc import passes as rewriting

LAYERS = 2
BATCH, SEQ = 4, 8
EXACT = 1e-5
CPU_DEFAULT = list(rewriting.EXACT_FUSIONS)


def _feeds():
    """Random lengths; row 0 full length; row 1 an all-padding dummy row."""
    feeds = bt.random_bert_feeds(BATCH, SEQ)
    feeds["input_mask"][0] = 1
    for name in feeds:
        feeds[name][1] = 0
    return feeds


def _run_pair(frozen, before, after, feeds):
    reference = rewrites.run(frozen.graph_def, before, protected_nodes=bt.protected(frozen))
    result = rewrites.run(reference.graph_def, after, protected_nodes=bt.protected(frozen))
    want = bt.run(frozen, reference.graph_def, feeds)
    got = bt.run(frozen, result.graph_def, feeds)
    live = feeds["input_mask"].any(1)
    error = max(np.abs(got[k][live] - want[k][live]).max() for k in want)
    return result, error


@pytest.mark.parametrize("head", ["pooled", "classifier"])
@pytest.mark.parametrize("before", [[], CPU_DEFAULT, CPU_DEFAULT + ["tanh_gelu"]],
                         ids=["alone", "cpu_default", "cpu_default+tanh_gelu"])
def test_cuts_the_last_layer_exactly(head, before):
    frozen = bt.tiny_frozen(head, layers=LAYERS, batch=BATCH, seq=SEQ)
    result, error = _run_pair(frozen, before, ["cls_only_tail"], _feeds())
    assert [r.sites for r in result.reports] == [1]
    assert "StridedSlice" not in bt.ops(result.graph_def)
    assert error <= EXACT
    # a second run changes nothing
    again = rewrites.run(result.graph_def, ["cls_only_tail"],
                         protected_nodes=bt.protected(frozen))
    assert again.reports[0].sites == 0
    assert sorted(n.SerializeToString(deterministic=True) for n in again.graph_def.node) == \
        sorted(n.SerializeToString(deterministic=True) for n in result.graph_def.node)


@pytest.mark.parametrize("head", ["sequence", "embedding"])
def test_heads_reading_every_token_are_left_alone(head):
    frozen = bt.tiny_frozen(head, layers=LAYERS, batch=BATCH, seq=SEQ)
    result = rewrites.run(frozen.graph_def, ["cls_only_tail"],
                          protected_nodes=bt.protected(frozen))
    assert result.reports[0].sites == 0
    assert len(result.graph_def.node) == len(frozen.graph_def.node)


def test_near_miss_slice_of_another_row():
    """The pooler reading row 1 (not [CLS]) is not what this pass cuts to."""
    frozen = bt.tiny_frozen("pooled", layers=LAYERS, batch=BATCH, seq=SEQ)
    graph = tf.compat.v1.GraphDef()
    graph.CopyFrom(frozen.graph_def)
    nodes = {n.name: n for n in graph.node}
    strided = next(n for n in graph.node if n.op == "StridedSlice")
    for index, offset in ((1, 1), (2, 1)):  # begin[1] 0 -> 1, end[1] 1 -> 2
        const = nodes[strided.input[index]]
        value = tf.make_ndarray(const.attr["value"].tensor).copy()
        value[1] += offset
        clone = graph.node.add()
        clone.CopyFrom(const)
        clone.name = f"{const.name}_row1"
        clone.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
        strided.input[index] = clone.name
    result = rewrites.run(graph, ["cls_only_tail"], protected_nodes=bt.protected(frozen))
    assert result.reports[0].sites == 0


def test_composes_with_remove_padding():
    frozen = bt.tiny_frozen("classifier", layers=LAYERS, batch=BATCH, seq=SEQ)
    result, error = _run_pair(frozen, CPU_DEFAULT, ["cls_only_tail", "remove_padding"], _feeds())
    assert [r.sites for r in result.reports] == [1, LAYERS]
    assert error <= EXACT
    # The other order: cls_only_tail finds no selection of an unpacked output.
    result, error = _run_pair(frozen, CPU_DEFAULT, ["remove_padding", "cls_only_tail"], _feeds())
    assert [r.sites for r in result.reports] == [LAYERS, 0]
    assert error <= EXACT
    # bertc runs them in the working order whatever the flags say.
    assert rewriting.resolve(["remove_padding", "cls_only_tail"])[-3:] == [
        "cls_only_tail", "remove_padding", "public_layernorm"]


def test_expected_sites_follow_the_head():
    config = bt.tiny_bert_config(LAYERS)
    assert rewriting.expected_sites(config, "classifier")["cls_only_tail"] == 1
    assert rewriting.expected_sites(config, "embedding")["cls_only_tail"] == 0
    assert rewriting.expected_sites(config)["remove_padding"] == LAYERS


def test_minilm_pooled_on_mrpc():
    frozen = bt.minilm_frozen("pooled", 16, 128)
    feeds = {k: v.copy() for k, v in bt.mrpc_feeds(16, 128).items()}
    for name in feeds:
        feeds[name][15] = 0  # a dummy row
    result, error = _run_pair(frozen, CPU_DEFAULT, ["cls_only_tail", "remove_padding"], feeds)
    assert [r.sites for r in result.reports] == [1, 6]
    assert error <= EXACT
