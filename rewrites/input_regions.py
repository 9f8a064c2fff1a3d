"""The input side of a BERT graph, found by structure: embeddings and mask bias.

Shared by `cpu_embeddings` (which reports the partition) and `mixed_precision`
(which keeps these parts in float32).  A BERT graph starts like this::

    input_ids (int) --> [Reshape] --> Gather(word table [V, D]) ---------+
    segment_ids (int) --> [Reshape] --> OneHot --> MatMul(type table) ---+--> Add ...
                                     or Gather(type table) --------------+     |
    position table --> Slice (or a folded Const) ----------------------> Add   |
                                                                               v
                                               LayerNorm (any form) = embedding output
                                                                               |
                  +----------------------------+------------------+------------+
                  v                            v                  v
    MatMul(Wq) [Cast first]      MatMul(Wk) [Cast first]      ...  (the first encoder layer;
                                                                    one fused QKV MatMul
                                                                    after fused_attention)

    input_mask (int) --> Reshape --> Cast --> Sub(1, .) --> Mul(., -10000) = mask bias
                                                                   |
                          scores [* c] ----------------------> Add(., mask bias) --> Softmax

- An embedding *lookup* is a Gather (GatherV2 with axis 0, or Gather) of a
  float Const table of rank 2 (seen through Identity) at indices that come
  from an integer Placeholder (seen through Reshape, Identity, Cast,
  ExpandDims, Squeeze).
- The *first encoder layer* is the set of MatMuls with a constant kernel that
  read a descendant of a lookup and have no such MatMul before them; they must
  all read one tensor (seen through Identity and Cast): the *embedding output*.
  The embeddings are that tensor's ancestors: the lookups, the token-type
  one-hot MatMul or Gather, the position slice, their sum and LayerNorm, and the
  weights they read.
- The *mask bias* is the operand of an Add/AddV2 feeding a Softmax that is
  input-derived: computed from the integer serving inputs and constants
  alone, with no lookup and no MatMul on the way (`input_derived`).  Its
  subgraph is its ancestors.
Nothing is matched by name: the same graph under any name scope gives the same
regions.  Placeholders belong to no region.
"""

import dataclasses
from typing import Dict, FrozenSet, Iterable, Optional, Set, Tuple

import tensorflow as tf

from rewrites.graph import Graph, canonical, parse_input
from rewrites.pattern import ConstPattern, Matcher, OneOf, OpTypePattern

MATMUL_OPS = frozenset({"MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"})
LOOKUP_OPS = frozenset({"GatherV2", "Gather", "ResourceGather"})
#: Ops an index tensor may pass through between its Placeholder and a lookup.
_INDEX_FORWARDING = ("Identity", "Reshape", "Cast", "ExpandDims", "Squeeze")
#: Ops the first encoder layer may read the embedding output through.
_OUTPUT_FORWARDING = ("Identity", "Cast")


def _is_float_table(node, graph: Graph) -> bool:
    """A Const float matrix (checked on the attributes: tables are large)."""
    if node.op != "Const" or not tf.as_dtype(node.attr["dtype"].type).is_floating:
        return False
    return len(node.attr["value"].tensor.tensor_shape.dim) == 2


def int_placeholder(graph: Graph, tensor: str) -> Optional[str]:
    """The integer Placeholder `tensor` forwards (through Reshape, Cast, ...), or None."""
    seen = set()
    while True:
        node = graph.get(tensor)
        if node is None or node.name in seen:
            return None
        seen.add(node.name)
        if node.op == "Placeholder":
            return node.name if tf.as_dtype(node.attr["dtype"].type).is_integer else None
        if node.op not in _INDEX_FORWARDING or not Graph.data_inputs(node):
            return None
        tensor = Graph.data_inputs(node)[0]


def _reads_int_input(node, graph: Graph) -> bool:
    return int_placeholder(graph, node.name) is not None


def _lookup() -> OneOf:
    table = OpTypePattern("Const", name="table", predicate=_is_float_table)
    ids = OpTypePattern("*", name="ids", predicate=_reads_int_input)
    return OneOf(
        OpTypePattern("GatherV2", name="lookup", inputs=[table, ids, ConstPattern(0)]),
        OpTypePattern("Gather|ResourceGather", name="lookup", inputs=[table, ids]))


#: An embedding table lookup at serving-input indices.
LOOKUP = _lookup()
#: A Softmax over scores plus something (the mask bias, when input-derived).
MASKED_SOFTMAX = OpTypePattern("Softmax", name="softmax", inputs=[
    OpTypePattern("Add|AddV2", name="masked", inputs=["*", "*"])])


@dataclasses.dataclass(frozen=True)
class InputRegions:
    """The input side of a BERT graph (node names; tensors where said)."""

    lookups: Tuple[str, ...]          # the embedding Gathers
    embedding_output: str             # tensor: the first encoder layer's input
    first_layer: Tuple[str, ...]      # the MatMuls that read it
    mask_biases: Tuple[str, ...]      # tensors added to the scores before Softmax
    masked_adds: Tuple[str, ...]      # the Add nodes doing that
    embedding_nodes: FrozenSet[str]   # ancestors of embedding_output, no Placeholders
    mask_nodes: FrozenSet[str]        # ancestors of the mask biases, no Placeholders
    inputs: FrozenSet[str]            # the Placeholders the two regions read


def find_input_regions(graph: Graph) -> Optional[InputRegions]:
    """The embeddings and mask-bias regions of `graph`, or None when there is no
    embedding lookup or the first encoder layer does not read one tensor."""
    order = graph.topological()
    matcher = Matcher(LOOKUP)
    lookups = [n.name for n in order if n.op in LOOKUP_OPS and matcher.match(graph, n.name)]
    if not lookups:
        return None
    below = set(lookups)        # descendants of a lookup
    after_matmul = set()        # descendants of a lookup-descendant MatMul
    first = []
    for node in order:
        sources = {parse_input(t)[0] for t in Graph.data_inputs(node)}
        if node.name in below or not sources & below:
            continue
        below.add(node.name)
        if sources & after_matmul:
            after_matmul.add(node.name)
        elif node.op in MATMUL_OPS and any(graph.is_const(t) for t in Graph.data_inputs(node)):
            first.append(node.name)
            after_matmul.add(node.name)
    operands = set()
    for name in first:
        for text in Graph.data_inputs(graph.node(name)):
            if not graph.is_const(text):
                operands.add(graph.resolve_identity(text, _OUTPUT_FORWARDING))
    if len(operands) != 1:
        return None
    embedding_output = operands.pop()
    derived = input_derived(graph)
    mask_biases, masked_adds = [], []
    softmax_matcher = Matcher(MASKED_SOFTMAX)
    for node in order:
        if node.op != "Softmax":
            continue
        match = softmax_matcher.match(graph, node.name)
        if match is None:
            continue
        add = match.node("masked")
        biases = [canonical(t) for t in Graph.data_inputs(add) if parse_input(t)[0] in derived]
        if len(biases) == 1:
            mask_biases.append(biases[0])
            masked_adds.append(add.name)
    embedding = ancestors(graph, [embedding_output])
    mask = ancestors(graph, mask_biases)
    placeholders = {n for n in embedding | mask if graph.node(n).op == "Placeholder"}
    return InputRegions(
        lookups=tuple(lookups), embedding_output=embedding_output, first_layer=tuple(first),
        mask_biases=tuple(dict.fromkeys(mask_biases)), masked_adds=tuple(masked_adds),
        embedding_nodes=frozenset(embedding - placeholders),
        mask_nodes=frozenset(mask - placeholders), inputs=frozenset(placeholders))


def ancestors(graph: Graph, tensors: Iterable[str]) -> Set[str]:
    """Names of the nodes `tensors` are computed from (data and control
    inputs), their own nodes included."""
    seen: Set[str] = set()
    stack = [parse_input(t)[0] for t in tensors]
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(parse_input(t)[0] for t in graph.node(name).input)
    return seen


def input_derived(graph: Graph) -> Set[str]:
    """Nodes computed from the integer serving inputs (ids, masks) and
    constants alone, with no lookup and no MatMul on the way: the attention
    mask and its bias, one-hot token types, position ids.  The integer
    Placeholders included; a float Placeholder is an activation."""
    state: Dict[str, Optional[bool]] = {}  # True derived, False activation, None constant
    for node in graph.topological():
        if node.op == "Placeholder":
            state[node.name] = tf.as_dtype(node.attr["dtype"].type).is_integer
        elif node.op == "Const":
            state[node.name] = None
        elif node.op in MATMUL_OPS or node.op in LOOKUP_OPS:
            state[node.name] = False
        else:
            inputs = [state.get(parse_input(t)[0]) for t in node.input]
            state[node.name] = (False if False in inputs else True if True in inputs else None)
    return {name for name, derived in state.items() if derived}
