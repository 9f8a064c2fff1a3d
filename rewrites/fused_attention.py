"""fused_attention: one Q/K/V projection per layer, the score scale folded in.

Matches each self-attention block, rooted at its context BatchMatMul::

    x --+--> MatMul(Wq) --> BiasAdd(bq) --> Reshape --> Transpose --+
        |                                                          BatchMatMul = scores
        +--> MatMul(Wk) --> BiasAdd(bk) --> Reshape --> Transpose --+    |
        |                                                  Mul(scores, c) | RealDiv(scores, 1/c)
        |                                                              |
        |                                     AddV2(., mask_bias) (optional)
        |                                                              |
        |                                                           Softmax
        |                                                              |
        +--> MatMul(Wv) --> BiasAdd(bv) --> Reshape --> Transpose --> BatchMatMul = context

(all three MatMuls read the same tensor x; kernels and biases are constants;
c is a scalar constant, 1/sqrt(head size) in BERT) and rewrites it to::

    x --> MatMul([c Wq | Wk | Wv]) --> BiasAdd([c bq | bk | bv]) --> Split(3, axis 1)
              :0 -> query Reshape,  :1 -> key Reshape,  :2 -> value Reshape
    scores --> (the scale Mul is gone) --> AddV2(mask_bias) --> Softmax --> ...

Math: (c Q) K^T = c (Q K^T) because Reshape/Transpose/BatchMatMul are linear, and
x [Wq|Wk|Wv] + [bq|bk|bv] is the three projections side by side.  Grappler's
remapper still fuses the one MatMul + BiasAdd into _FusedMatMul.
Error bound: float32 rounding of c * Wq (exact when c is a power of two):
<= 1e-5 on all-MiniLM-L6-v2's sequence_output at real tokens (measured
2.9e-6 to 5.0e-6, by Grappler options).
Speed: the MatMul FLOPs are the same; it saves two MatMul and two BiasAdd
launches and one element-wise pass over the scores per layer (measured end to
end: BENCHMARKS.md, "Figures moved from docstrings").

The scale is folded only when it really scales the scores: it must follow the
BatchMatMul whose first operand comes from the query projection, the scores must
have no other reader, and the query path (MatMul, BiasAdd, Reshape, Transpose)
must feed nothing else.

A graph that computes the attention-mask bias once per layer keeps its copies:
the served run merges them (Grappler's arithmetic optimizer dedups identical
nodes, and TensorFlow's graph optimizer's CSE does too when Grappler is off;
tests/test_rewrites_passes.py checks the served partition graphs), so no pass
does it.

Sites: attention blocks fused (one per layer).
"""

import logging

import numpy as np
import tensorflow as tf

from rewrites.base import Edit, FusionPass, interior_refusal
from rewrites.graph import Graph, parse_input, tensor_name
from rewrites.pattern import ConstPattern, Match, OneOf, OpTypePattern

logger = logging.getLogger(__name__)

_BATCH_MATMUL = "BatchMatMul|BatchMatMulV2|BatchMatMulV3"
KINDS = ("query", "key", "value")


def _projection(kind: str) -> OpTypePattern:
    """Transpose(Reshape(dense(x))) with dense = MatMul + BiasAdd (or Add)."""
    matmul = OpTypePattern("MatMul", name=f"{kind}_matmul", inputs=[
        OpTypePattern("*", name="x"), ConstPattern(name=f"{kind}_kernel")])
    dense = OneOf(
        OpTypePattern("BiasAdd", name=f"{kind}_dense", inputs=[
            matmul, ConstPattern(name=f"{kind}_bias")]),
        OpTypePattern("Add|AddV2", name=f"{kind}_dense", inputs=[
            matmul, ConstPattern(name=f"{kind}_bias")]))
    reshape = OpTypePattern("Reshape", name=f"{kind}_reshape", inputs=[dense, ConstPattern()])
    return OpTypePattern("Transpose", name=f"{kind}_heads", inputs=[reshape, ConstPattern()])


def _scores() -> OpTypePattern:
    return OpTypePattern(_BATCH_MATMUL, name="scores", inputs=[
        _projection("query"), _projection("key")])


def _scaled(scores) -> OneOf:
    return OneOf(
        OpTypePattern("Mul", name="scaled", inputs=[scores, ConstPattern(name="scale")]),
        OpTypePattern("RealDiv|Div", name="scaled", inputs=[scores, ConstPattern(name="divisor")]))


def _attention() -> OpTypePattern:
    scaled = _scaled(_scores())
    masked = OneOf(
        OpTypePattern("Add|AddV2", inputs=[scaled, OpTypePattern("*", name="mask_bias")]),
        scaled)
    return OpTypePattern(_BATCH_MATMUL, name="context", inputs=[
        OpTypePattern("Softmax", name="probs", inputs=[masked]), _projection("value")])


class FusedAttention(FusionPass):
    """Q/K/V projections -> one MatMul + BiasAdd + Split, score scale folded into Wq."""

    name = "fused_attention"
    exact = True
    default_targets = ("cpu",)

    @classmethod
    def expected_sites(cls, layers, cls_only_outputs):
        return layers  # one self-attention per layer
    max_abs_error = "float32 rounding of c * Wq: <= 1e-5 on MiniLM sequence_output"
    pattern = _attention()
    root_ops = tuple(_BATCH_MATMUL.split("|"))

    def refusal(self, graph: Graph, match: Match):
        names = {k: parse_input(match.tensor(k))[0] for k in match.bindings}
        dense = [names[f"{k}_dense"] for k in KINDS]
        if len(set(dense)) != 3:
            return "query, key and value are not three projections"
        removed = {names["scaled"]} | set(dense) | {names[f"{k}_matmul"] for k in KINDS}
        # The query path and the raw scores become scaled: nobody else may read them.
        exclusive = {names[n] for n in ("query_matmul", "query_dense", "query_reshape",
                                        "query_heads", "scores")}
        return interior_refusal(graph, removed | exclusive, match.nodes,
                                outputs={names["scaled"], names["key_dense"],
                                         names["value_dense"]})

    def fuse(self, graph: Graph, match: Match, edit: Edit) -> bool:
        root = match.root
        matmuls = [match.node(f"{k}_matmul") for k in KINDS]
        if any(m.attr["transpose_a"].b for m in matmuls):
            logger.debug("%s: %s not fused: a projection MatMul has transpose_a", self.name, root)
            return False
        transpose_b = {m.attr["transpose_b"].b for m in matmuls}
        if len(transpose_b) != 1:
            logger.debug("%s: %s not fused: the projections differ in transpose_b",
                         self.name, root)
            return False
        transpose_b = transpose_b.pop()
        kernels = [match.value(f"{k}_kernel") for k in KINDS]
        biases = [match.value(f"{k}_bias") for k in KINDS]
        if any(k.ndim != 2 for k in kernels) or any(b.ndim != 1 for b in biases):
            logger.debug("%s: %s not fused: kernels are not 2-D or biases not 1-D",
                         self.name, root)
            return False
        in_axis, out_axis = (1, 0) if transpose_b else (0, 1)
        if len({k.shape[in_axis] for k in kernels}) != 1:
            logger.debug("%s: %s not fused: the kernels' input widths differ", self.name, root)
            return False
        widths = [k.shape[out_axis] for k in kernels]
        if [b.shape[0] for b in biases] != widths:
            logger.debug("%s: %s not fused: a bias width differs from its kernel's",
                         self.name, root)
            return False
        dtype = graph.dtype(match.tensor("query_dense"))
        if dtype is None or any(tf.as_dtype(a.dtype) != dtype for a in kernels + biases):
            logger.debug("%s: %s not fused: unknown dtype, or weights of another dtype (%s)",
                         self.name, root, dtype)
            return False
        scale = self._scale(match)
        if scale is None:
            logger.debug("%s: %s not fused: the score scale is not a non-zero scalar",
                         self.name, root)
            return False
        np_dtype = dtype.as_numpy_dtype
        kernels[0] = (kernels[0] * np.asarray(scale, np_dtype)).astype(np_dtype)
        biases[0] = (biases[0] * np.asarray(scale, np_dtype)).astype(np_dtype)
        scope = f"{match.tensor('query_matmul')}/{self.name}"
        kernel = edit.add_const(f"{scope}/qkv_kernel", np.concatenate(kernels, axis=out_axis))
        bias = edit.add_const(f"{scope}/qkv_bias", np.concatenate(biases))
        matmul = edit.add_node("MatMul", f"{scope}/qkv_matmul", [match.tensor("x"), kernel], {
            "T": dtype, "transpose_a": False, "transpose_b": transpose_b})
        data_format = match.node("query_dense").attr["data_format"].s or b"NHWC"
        projected = edit.add_node("BiasAdd", f"{scope}/qkv_bias_add", [matmul, bias], {
            "T": dtype, "data_format": data_format})
        axis = edit.add_const(f"{scope}/split_axis", np.int32(1))
        if len(set(widths)) == 1:
            split = edit.add_node("Split", f"{scope}/qkv_split", [axis, projected], {
                "T": dtype, "num_split": 3})
        else:
            sizes = edit.add_const(f"{scope}/split_sizes", np.array(widths, np.int32))
            split = edit.add_node("SplitV", f"{scope}/qkv_split", [projected, sizes, axis], {
                "T": dtype, "num_split": 3, "Tlen": tf.int32})
        for port, kind in enumerate(KINDS):
            edit.replace(match.tensor(f"{kind}_dense"), tensor_name(split, port))
        edit.replace(match.tensor("scaled"), match.tensor("scores"))
        edit.remove({parse_input(match.tensor(n))[0] for n in
                     ["scaled"] + [f"{k}_{part}" for k in KINDS for part in ("matmul", "dense")]})
        edit.collect(match.consts)
        return True

    @staticmethod
    def _scale(match: Match):
        """The scalar the scores are multiplied by, or None."""
        if "scale" in match:
            value = match.value("scale")
            return float(value.reshape(-1)[0]) if value.size == 1 else None
        value = match.value("divisor")
        if value.size != 1 or float(value.reshape(-1)[0]) == 0.0:
            return None
        return 1.0 / float(value.reshape(-1)[0])

