"""What remove_padding and cls_only_tail share: token-wise ops and attention sites.

A BERT encoder kept 2-D holds one row per token: [T, k] with T = B * S rows,
row t = b * S + s.  An op is *token-wise* (`row_wise`) when row i of its output
depends only on row i of its [T, k] inputs and on constants that broadcast over
rows: dense layers (MatMul by a constant, BiasAdd), element-wise arithmetic
(residual adds, GELU), LayerNorm (arithmetic over the last axis, or
_MklLayerNorm), Split along the last axis.  Such an op computes the same rows
on any subset of the rows, so a pass may run it on fewer rows (the real tokens,
the [CLS] rows) without changing a value.

`attention_sites` finds every masked self-attention block by structure::

    q [T,k] -> Reshape [B,S,N,H] -> Transpose(0,2,1,3) --+
    k [T,k] -> Reshape [B,S,N,H] -> Transpose(0,2,1,3) --+-> BatchMatMul(adj_y) [* c]
                                                              |
    mask [B,S] -> Reshape [B,1,1,S] -> Cast (either order)    AddV2 <-- (1 - mask) * A, A <= -1000
                                                              |
                                                           Softmax
    v [T,k] -> Reshape [B,S,N,H] -> Transpose(0,2,1,3) --> BatchMatMul
                                                              |
                                 Transpose(0,2,1,3) -> Reshape [T, k] = context

A query of one row per sequence (q [B,k] -> Reshape [B,1,N,H], context
[B,k]: what cls_only_tail leaves) is recognised too (`site.cls_query`).
"""

import dataclasses
from typing import List, Optional, Tuple

import numpy as np

from rewrites.graph import Graph, parse_input
from rewrites.pattern import ConstPattern, Matcher, OneOf, OpTypePattern

_BATCH_MATMUL = "BatchMatMul|BatchMatMulV2|BatchMatMulV3"
HEADS_PERM = (0, 2, 1, 3)
#: The mask bias must push masked scores this far down: exp(-1000) is 0 in float32.
MAX_MASK_ADDER = -1000.0

UNARY_OPS = frozenset({
    "Identity", "Erf", "Erfc", "Tanh", "Sigmoid", "Neg", "Relu", "Relu6", "Elu", "Selu",
    "Softplus", "Rsqrt", "Sqrt", "Square", "Exp", "Log", "Log1p", "Reciprocal", "Inv",
    "Abs", "Cast"})
BINARY_OPS = frozenset({
    "Add", "AddV2", "Sub", "Mul", "RealDiv", "Div", "Maximum", "Minimum",
    "SquaredDifference", "Pow", "BiasAdd"})
REDUCE_OPS = frozenset({"Mean", "Sum", "Max", "Min"})
LAYER_NORM_OPS = frozenset({"_MklLayerNorm"})


def rows_of(graph: Graph, tensor: str) -> Optional[int]:
    """The row count of a rank-2 tensor of static shape, else None."""
    shape = graph.shape(tensor)
    if shape is None or len(shape) != 2 or shape[0] is None or shape[1] is None:
        return None
    return shape[0]


def _broadcast_const(graph: Graph, tensor: str) -> bool:
    """A constant that broadcasts over rows: scalar, [k] or [1, k]."""
    if not graph.is_const(tensor):
        return False
    shape = graph.const_value(tensor).shape
    return len(shape) <= 1 or (len(shape) == 2 and shape[0] == 1)


def _const_axis_is_last(graph: Graph, tensor: str) -> bool:
    if not graph.is_const(tensor):
        return False
    axes = np.asarray(graph.const_value(tensor)).reshape(-1)
    return axes.dtype.kind in "iu" and sorted({int(a) % 2 for a in axes}) == [1]


def row_wise(graph: Graph, node, rows: int) -> bool:
    """True if `node` is token-wise over `rows` rows (see the module docstring):
    every output is [rows, k], every non-constant input is [rows, k], and the
    constants broadcast over rows.  Protected nodes and nodes with control
    edges never are."""
    if node.name in graph.protected or Graph.control_inputs(node) \
            or graph.control_consumers(node.name):
        return False
    inputs = Graph.data_inputs(node)
    if not inputs or any(rows_of(graph, t) != rows for t in graph.output_tensors(node)):
        return False

    def row_input(t):
        return not graph.is_const(t) and rows_of(graph, t) == rows

    op = node.op
    if op in UNARY_OPS:
        return len(inputs) == 1 and row_input(inputs[0])
    if op in BINARY_OPS:
        if len(inputs) != 2:
            return False
        kinds = [row_input(t) or (_broadcast_const(graph, t) and "const") for t in inputs]
        if not all(kinds) or "const" == kinds[0] == kinds[1]:
            return False
        return op != "BiasAdd" or (kinds[0] is True and graph.const_value(inputs[1]).ndim == 1)
    if op == "MatMul":
        return (len(inputs) == 2 and not node.attr["transpose_a"].b and row_input(inputs[0])
                and graph.is_const(inputs[1]) and graph.const_value(inputs[1]).ndim == 2)
    if op in REDUCE_OPS:
        return (len(inputs) == 2 and row_input(inputs[0]) and node.attr["keep_dims"].b
                and _const_axis_is_last(graph, inputs[1]))
    if op in LAYER_NORM_OPS:
        return row_input(inputs[0]) and all(graph.is_const(t) for t in inputs[1:])
    if op == "Split":
        return len(inputs) == 2 and _const_axis_is_last(graph, inputs[0]) and row_input(inputs[1])
    if op == "SplitV":
        return (len(inputs) == 3 and row_input(inputs[0]) and graph.is_const(inputs[1])
                and _const_axis_is_last(graph, inputs[2]))
    return False


# ------------------------------------------------------------------ attention
def _heads(role: str) -> OpTypePattern:
    reshape = OpTypePattern("Reshape", name=f"{role}_reshape", inputs=[
        OpTypePattern("*", name=role), ConstPattern()])
    return OpTypePattern("Transpose", name=f"{role}_heads", inputs=[
        reshape, ConstPattern(name=f"{role}_perm")])


def _mask_bias() -> OneOf:
    mask = OpTypePattern("*", name="mask")
    shaped = OneOf(
        OpTypePattern("Cast", inputs=[OpTypePattern("Reshape", name="mask_reshape", inputs=[
            mask, ConstPattern()])]),
        OpTypePattern("Reshape", name="mask_reshape", inputs=[
            OpTypePattern("Cast", inputs=[mask]), ConstPattern()]))
    return OpTypePattern("Mul", name="mask_bias", inputs=[
        OpTypePattern("Sub", inputs=[ConstPattern(1.0), shaped]),
        ConstPattern(name="mask_adder")])


def _attention() -> OpTypePattern:
    scores = OpTypePattern(_BATCH_MATMUL, name="scores", inputs=[_heads("query"), _heads("key")])
    scaled = OneOf(OpTypePattern("Mul", inputs=[scores, ConstPattern()]),
                   OpTypePattern("RealDiv|Div", inputs=[scores, ConstPattern()]),
                   scores)
    masked = OpTypePattern("Add|AddV2", name="masked", inputs=[scaled, _mask_bias()])
    context = OpTypePattern(_BATCH_MATMUL, name="context", inputs=[
        OpTypePattern("Softmax", name="probs", inputs=[masked]), _heads("value")])
    return OpTypePattern("Reshape", name="context_out", inputs=[
        OpTypePattern("Transpose", name="context_heads",
                      inputs=[context, ConstPattern(name="context_perm")]),
        ConstPattern()])


_ATTENTION = _attention()


@dataclasses.dataclass
class AttentionSite:
    """One masked self-attention block: the [rows, k] tensors around it."""

    query: str          # [T, k], or [B, k] when cls_query
    key: str            # [T, k]
    value: str          # [T, k]
    context: str        # the context Reshape's output: [T, k], or [B, k]
    query_reshape: str  # node names of the three head Reshapes
    key_reshape: str
    value_reshape: str
    query_heads: str    # node names of the Transposes after them: [B, N, S, H]
    key_heads: str
    value_heads: str
    context_matmul: str  # the context BatchMatMul: [B, N, S, H], or [B, N, 1, H]
    context_heads: str  # its Transpose to [B, S, N, H], read by the context Reshape
    mask: str           # the [B, S] mask tensor (bertc: the input_mask Placeholder)
    mask_bias: str      # the [B, 1, 1, S] bias tensor
    masked_add: str     # the node adding it to the scores
    batch: int
    seq: int
    cls_query: bool
    nodes: frozenset    # every node of the block


def attention_sites(graph: Graph) -> List[AttentionSite]:
    """Every masked self-attention block of `graph` (see the module docstring)."""
    matcher = Matcher(_ATTENTION)
    sites = []
    for node in graph.topological():
        if node.op != "Reshape":
            continue
        for match in matcher.matches(graph, node.name):
            site = _site(graph, match)
            if site is not None:
                sites.append(site)
                break
    return sites


def _perm(match, name) -> Tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(match.value(name)).reshape(-1))


def _site(graph: Graph, match) -> Optional[AttentionSite]:
    mask = match.tensor("mask")
    mask_shape = graph.shape(mask)
    if mask_shape is None or len(mask_shape) != 2 or None in mask_shape:
        return None
    batch, seq = mask_shape
    if graph.shape(match.tensor("mask_reshape")) != (batch, 1, 1, seq):
        return None
    adder = match.value("mask_adder")
    if adder.size != 1 or float(adder.reshape(-1)[0]) > MAX_MASK_ADDER:
        return None
    if any(_perm(match, f"{r}_perm") != HEADS_PERM for r in ("query", "key", "value", "context")):
        return None
    scores, context = match.node("scores"), match.node("context")
    if scores.attr["adj_x"].b or not scores.attr["adj_y"].b:
        return None
    if context.attr["adj_x"].b or context.attr["adj_y"].b:
        return None
    tokens = batch * seq
    shapes = {r: graph.shape(match.tensor(f"{r}_reshape")) for r in ("query", "key", "value")}
    for role in ("key", "value"):
        if shapes[role] is None or len(shapes[role]) != 4 or shapes[role][:2] != (batch, seq) \
                or rows_of(graph, match.tensor(role)) != tokens:
            return None
    query_shape = shapes["query"]
    if query_shape is None or len(query_shape) != 4 or query_shape[2:] != shapes["key"][2:]:
        return None
    cls_query = query_shape[:2] == (batch, 1)
    rows = batch if cls_query else tokens
    if not cls_query and query_shape[:2] != (batch, seq):
        return None
    width = query_shape[2] * query_shape[3]
    if graph.shape(match.tensor("query")) != (rows, width) \
            or graph.shape(match.tensor("context_out")) != (rows, width):
        return None
    name = lambda key: parse_input(match.tensor(key))[0]  # noqa: E731
    return AttentionSite(
        query=match.tensor("query"), key=match.tensor("key"), value=match.tensor("value"),
        context=match.tensor("context_out"), query_reshape=name("query_reshape"),
        key_reshape=name("key_reshape"), value_reshape=name("value_reshape"),
        query_heads=name("query_heads"), key_heads=name("key_heads"),
        value_heads=name("value_heads"), context_matmul=name("context"),
        context_heads=name("context_heads"),
        mask=mask, mask_bias=match.tensor("mask_bias"), masked_add=name("masked"),
        batch=batch, seq=seq,
        cls_query=cls_query, nodes=frozenset(match.nodes))
