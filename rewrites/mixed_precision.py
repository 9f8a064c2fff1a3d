"""mixed_precision: the encoder's matmuls and the element-wise work between them
in float16 or bfloat16; LayerNorm, softmax, masks and outputs in float32.

Per encoder layer (bertc's graph; fused_attention's one QKV MatMul + Split is
the same picture), H = half precision, F = float32, ==> a Cast::

    F LayerNorm out ==> H --+--> MatMul(Wq) -> BiasAdd -> Reshape -> Transpose --+
                            |    MatMul(Wk) -> BiasAdd -> Reshape -> Transpose --+
                            |                               BatchMatMul -> Mul(c) ==> F
                            |                                                      |
                            |               F mask bias --> Add(scores, bias) -> Softmax ==> H
                            |                                                      |
                            |    MatMul(Wv) -> BiasAdd -> Reshape -> Transpose -> BatchMatMul
                            |                                                      |
                            |          MatMul(Wo) <- Reshape <- Transpose <--------+
                            |              |
                            +----------> BiasAdd -> Add (residual) ==> F LayerNorm ==> H
                                           ... MatMul(Wi) -> BiasAdd -> GELU -> MatMul -> ...

What becomes half precision, decided on structure alone:
- every MatMul / BatchMatMul (V2, V3) of float32 (the seeds), except those of
  the embeddings (`input_regions`: the token-type one-hot MatMul) and those
  reading an input-derived tensor (a one-hot, a mask);
- then, in topological order, every element-wise or layout op (BiasAdd, Add,
  AddV2, Sub, Mul, RealDiv, Erf, Erfc, Tanh, Sigmoid, Pow, Neg, Square,
  Reshape, Transpose, Split, SplitV, Identity, Squeeze, StridedSlice, Slice,
  ConcatV2) that reads a half-precision tensor: the BiasAdds, the GELU, the
  head reshapes, the score scale, the residual Adds, the pooler's Tanh;
- with `aggressive`, also the encoder's LayerNorms (any form that
  fused_layernorm matches, or _MklLayerNorm), as AWS's BERT demo does.
What stays float32: the embeddings (everything up to the first encoder layer's
input) and the attention-mask bias; the Add feeding each Softmax and the
Softmax; LayerNorm (unless aggressive); any op mixing activations with an
input-derived tensor (the mask add, the embedding head's masked mean); every
reduction other than LayerNorm's; the protected serving boundary (inputs and
outputs: logits, probabilities, embedding, pooled_output, sequence_output stay
float32).  An op is half only where TensorFlow registers a CPU kernel for it
in that dtype (TF 2.21 has one for every op above, in both types; an op
without one stays float32, counted in details['kept_float32']).  One kernel is
registered but does not run everywhere: oneDNN's _MklLayerNorm in float16 fails
at run time on this CPU (AVX512-BF16, no AVX512-FP16), so a one-off probe
decides, and with `aggressive` a fused LayerNorm stays float32 in float16 here
(bfloat16 runs).

Edits: the float32 type attributes of a half node become the half type;
constants it reads (weights, biases, scalars, seen through Identity) are
converted offline into half-precision Const nodes (in place when nothing else
reads them, else a copy), never Cast at run time; a Cast is inserted only where
a float32 tensor meets a half node or a half tensor meets a float32 node, one
per tensor and direction, shared by all its readers.  A nonzero scalar that
would underflow to 0 in the half type (LayerNorm's 1e-12 epsilon in float16,
aggressive only) becomes the type's smallest subnormal, so it stays positive.

Math: each op computes what it did, rounded to the half type: float16 keeps 11
significant bits (relative step 4.9e-4, range 6.5e4), bfloat16 8 bits (3.9e-3,
float32's range).  Matmuls accumulate wider than the half type on CPU (a dot
product of 8192 ones is exact in both types, Eigen and oneDNN) and on Neuron.
Error bound, measured against the float32 graph on all-MiniLM-L6-v2 and all
408 MRPC dev pairs (a pair per row, sequence 128, batch 16; Session with
Grappler; tests/test_rewrites_mixed_precision.py):
                      embedding cosine, min    argmax of a random 2-label
                      (mean-pooled, L2-normed)  classifier on the pooler
    float16                 0.999999                408/408
    bfloat16                0.99995                 407/408 (99.75%)
    float16, aggressive     0.999997                408/408   (bertc's arithmetic
    bfloat16, aggressive    0.99987                 406/408    LayerNorm, in half)
bertc verifies builds with it at cosine >= 0.999 and argmax >= 99.5%.
Sites: MatMuls and BatchMatMuls converted (8 per layer, 6 after fused_attention,
+1 pooler, +1 classifier); `details`: nodes converted, casts inserted,
constants converted, LayerNorms in half precision, ops kept float32.
Speed (benchmarks/mixed_precision.py; the figures are in BENCHMARKS.md,
"Figures moved from docstrings"): on a CPU with AVX512-BF16, bfloat16 is faster
than float32 (oneDNN runs bfloat16 natively and Grappler's remapper still fuses
MatMul + BiasAdd (+ GELU, + residual Add)); float16 is slower (oneDNN has no
float16 path there, TF falls back to Eigen's unfused MatMul).
"""

import functools
import logging
from typing import Dict, List, Optional, Set

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import kernels, op_def_registry

from rewrites.base import FINAL, RewritePass
from rewrites.fused_layernorm import FUSED_OP as FUSED_LAYER_NORM, FusedLayerNorm
from rewrites.graph import Graph, canonical, parse_input, tensor_name
from rewrites.input_regions import MATMUL_OPS, MASKED_SOFTMAX, find_input_regions, input_derived
from rewrites.pattern import Matcher

logger = logging.getLogger(__name__)

HALF_TYPES = {"float16": tf.float16, "bfloat16": tf.bfloat16}
#: Element-wise and layout ops that follow a half-precision input.
FOLLOWERS = frozenset({
    "BiasAdd", "Add", "AddV2", "Sub", "Mul", "RealDiv", "Div", "Erf", "Erfc", "Tanh",
    "Sigmoid", "Pow", "Neg", "Square", "Reshape", "Transpose", "Split", "SplitV", "Identity",
    "Squeeze", "StridedSlice", "Slice", "ConcatV2"})
#: The ops of a LayerNorm, half precision only with `aggressive`.
LAYER_NORM_OPS = frozenset({"Mean", "SquaredDifference", "Rsqrt", "Sqrt", "Reciprocal", "Inv",
                            FUSED_LAYER_NORM}) | FOLLOWERS


class MixedPrecision(RewritePass):
    """Matmuls and the element-wise work between them in float16 or bfloat16."""

    name = "mixed_precision"
    exact = False
    phase = FINAL  # half precision hides the float32 patterns the other passes match
    verify_bounds = {"min_cos": 0.999, "argmax": 0.995}
    unsupported_targets = {"openvino": "its --dtype is OpenVINO's inference precision, "
                                       "not a graph rewrite"}
    max_abs_error = ("half-precision rounding: MiniLM MRPC embedding cosine min 0.999999 "
                     "(float16), 0.99995 (bfloat16); random-classifier argmax 100% / 99.75%")
    option_names = ("dtype", "aggressive")

    def rewrite(self, graph: Graph) -> int:
        dtype_name = self.options.get("dtype", "float16")
        if dtype_name not in HALF_TYPES:
            raise ValueError(f"pass {self.name}: dtype {dtype_name!r}; expected one of "
                             f"{', '.join(HALF_TYPES)}")
        half = HALF_TYPES[dtype_name]
        aggressive = bool(self.options.get("aggressive", False))
        chosen, kept = self._choose(graph, half, aggressive)
        matmuls = sorted(n for n in chosen if graph.node(n).op in MATMUL_OPS)
        if not matmuls:
            return 0
        counts = _Converter(graph, half).convert(chosen)
        self.details = {"nodes": len(chosen), "casts": counts["casts"],
                        "constants": counts["constants"],
                        "batch_matmuls": sum(graph.node(n).op != "MatMul" for n in matmuls),
                        "layer_norms": counts["layer_norms"] if aggressive else 0,
                        "kept_float32": kept}
        return len(matmuls)

    def _choose(self, graph: Graph, half, aggressive: bool):
        """(names of the nodes to run in `half`, number kept float32 for want of a kernel)."""
        regions = find_input_regions(graph)
        excluded = set(graph.protected)
        if regions is not None:
            excluded |= regions.embedding_nodes | regions.mask_nodes
        derived = input_derived(graph)
        layer_norms = _layer_norm_nodes(graph)
        softmax = Matcher(MASKED_SOFTMAX)
        for node in graph.nodes():
            if node.op == "Softmax":
                match = softmax.match(graph, node.name)
                if match is not None:
                    excluded.add(parse_input(match.tensor("masked"))[0])
        if not aggressive:
            excluded |= layer_norms
        chosen: Set[str] = set()
        kept = 0
        for node in graph.topological():
            if node.name in excluded or node.op in ("Const", "Placeholder"):
                continue
            slots = float_slots(node)
            if slots is None or not slots:
                continue
            sources = [parse_input(node.input[i])[0] for i in slots]
            if any(s in derived for s in sources):
                continue
            if node.op in MATMUL_OPS:
                pass
            elif node.op in FOLLOWERS or (node.name in layer_norms and node.op in LAYER_NORM_OPS):
                if not any(s in chosen for s in sources):
                    continue
            else:
                continue
            if not has_cpu_kernel(node, half):
                kept += 1
                logger.info("%s: %s (%s) stays float32: no CPU kernel for %s", self.name,
                            node.name, node.op, half.name)
                continue
            chosen.add(node.name)
        return chosen, kept


def _layer_norm_nodes(graph: Graph) -> Set[str]:
    """Non-constant nodes of every LayerNorm (fused_layernorm's forms, _MklLayerNorm)."""
    matcher = Matcher(FusedLayerNorm.pattern, see_through=FusedLayerNorm.see_through)
    nodes: Set[str] = set()
    for node in graph.nodes():
        if node.op == FUSED_LAYER_NORM:
            nodes.add(node.name)
        elif node.op in FusedLayerNorm.root_ops:
            match = matcher.match(graph, node.name)
            if match is not None:
                nodes |= match.nodes - match.consts
    return nodes


def float_slots(node) -> Optional[List[int]]:
    """Indices of the data inputs whose type is a float32 type attribute of
    `node` (what becomes half), or None for ops of unknown or list types."""
    op_def = op_def_registry.get(node.op)
    if op_def is None:
        return None
    slots, index = [], 0
    for arg in op_def.input_arg:
        if arg.type_list_attr:
            return None
        count = node.attr[arg.number_attr].i if arg.number_attr else 1
        if arg.type_attr and node.attr[arg.type_attr].type == tf.float32.as_datatype_enum:
            slots.extend(range(index, index + count))
        index += count
    return slots


def float_attrs(node) -> List[str]:
    """The node's type attributes that are float32."""
    op_def = op_def_registry.get(node.op)
    names = {a.name for a in op_def.attr if a.type == "type"} if op_def else set()
    return [k for k in sorted(names) if k in node.attr
            and node.attr[k].type == tf.float32.as_datatype_enum]


def has_cpu_kernel(node, dtype) -> bool:
    """True if TensorFlow registers a CPU kernel for `node` with its float32
    type attributes set to `dtype` (and, for _MklLayerNorm, it runs here)."""
    wanted = set(float_attrs(node))
    for kernel in kernels.get_registered_kernels_for_op(node.op).kernel:
        if kernel.device_type != "CPU":
            continue
        allowed = {c.name: set(c.allowed_values.list.type) for c in kernel.constraint}
        if all(dtype.as_datatype_enum in allowed.get(a, {dtype.as_datatype_enum})
               for a in wanted):
            return node.op != FUSED_LAYER_NORM or fused_layer_norm_runs(dtype.name)
    return False


@functools.lru_cache(maxsize=None)
def fused_layer_norm_runs(dtype_name: str) -> bool:
    """Whether _MklLayerNorm runs in `dtype_name` on this CPU (a [2, 8] probe).
    Its float16 kernel is registered, but on this AVX512-BF16 CPU without
    AVX512-FP16 oneDNN cannot create the float16 primitive and the graph fails
    at run time ("could not create a primitive descriptor"); bfloat16 runs."""
    graph = Graph(tf.compat.v1.GraphDef())
    dtype = tf.as_dtype(dtype_name)
    inputs = [graph.add_const(name, np.linspace(0.0, 1.0, int(np.prod(shape))).reshape(shape),
                              dtype=dtype)
              for name, shape in (("x", (2, 8)), ("gamma", (8,)), ("beta", (8,)))]
    graph.add_node(FUSED_LAYER_NORM, "probe", inputs, {"T": dtype, "epsilon": 1e-12})
    with tf.Graph().as_default() as probe:
        tf.compat.v1.import_graph_def(graph.to_graph_def(), name="")
        try:
            with tf.compat.v1.Session(graph=probe) as session:
                session.run("probe:0")
        except tf.errors.OpError as e:
            logger.info("%s: _MklLayerNorm does not run in %s on this CPU: %s",
                        MixedPrecision.name, dtype_name, str(e).splitlines()[0][:200])
            return False
    return True


def _output_is_float(node, port: int) -> bool:
    """True if output `port` of a (not yet converted) node is of a float32 type attribute."""
    op_def = op_def_registry.get(node.op)
    index = 0
    for arg in op_def.output_arg:
        count = node.attr[arg.number_attr].i if arg.number_attr else 1
        if index <= port < index + count:
            return bool(arg.type_attr) and node.attr[arg.type_attr].type == \
                tf.float32.as_datatype_enum
        index += count
    return False


class _Converter:
    """Applies the choice: retypes the chosen nodes, converts their constants,
    inserts the boundary Casts."""

    def __init__(self, graph: Graph, half):
        self.graph = graph
        self.half = half
        self.casts: Dict[tuple, str] = {}
        self.constants: Dict[str, str] = {}
        self.counts = {"casts": 0, "constants": 0, "layer_norms": 0}

    def convert(self, chosen: Set[str]) -> dict:
        graph = self.graph
        half_outputs = set()   # float32 tensors that will be half
        for name in chosen:
            node = graph.node(name)
            for port in range(graph.num_outputs(node)):
                if _output_is_float(node, port):
                    half_outputs.add(tensor_name(name, port))
        plans = {name: float_slots(graph.node(name)) for name in chosen}
        replaced_consts: Set[str] = set()
        for node in graph.topological():
            inputs = list(node.input)
            changed = False
            if node.name in chosen:
                for i in plans[node.name]:
                    new = self._half_input(inputs[i], chosen, half_outputs, replaced_consts)
                    if new != inputs[i]:
                        inputs[i], changed = new, True
            else:
                for i, text in enumerate(inputs):
                    if not text.startswith("^") and canonical(text) in half_outputs:
                        inputs[i], changed = self._cast(text, tf.float32), True
            if changed:
                graph.set_inputs(node.name, inputs)
        for name in chosen:
            node = graph.node(name)
            for attr in float_attrs(node):
                node.attr[attr].type = self.half.as_datatype_enum
            if node.op == FUSED_LAYER_NORM or node.op == "Rsqrt":
                self.counts["layer_norms"] += 1
            graph.replace_node(name, node)
        graph.remove_unused(replaced_consts)
        return self.counts

    def _half_input(self, text: str, chosen, half_outputs, replaced_consts) -> str:
        """What a half node reads in place of `text`."""
        graph = self.graph
        if canonical(text) in half_outputs:
            return text
        source = graph.resolve_identity(text)
        if graph.node(source).op == "Const":
            replaced_consts |= _chain(graph, text)
            return self._half_const(source, chosen)
        return self._cast(text, self.half)

    def _half_const(self, name: str, chosen) -> str:
        """A half-precision Const holding Const `name`'s value (converted once)."""
        if name in self.constants:
            return self.constants[name]
        graph = self.graph
        value = graph.const_value(name)
        converted = value.astype(self.half.as_numpy_dtype)
        if value.size == 1 and value.reshape(-1)[0] != 0 and converted.reshape(-1)[0] == 0:
            tiny = tf.as_dtype(self.half).as_numpy_dtype
            converted = (np.sign(value) * _smallest_subnormal(tiny)).astype(tiny)
        readers = graph.consumer_names(name)
        if readers and readers <= set(chosen) and name not in graph.protected:
            graph.set_const(name, converted, dtype=self.half)
            new = name
        else:
            new = graph.add_const(f"{name}/{self.half.name}", converted, dtype=self.half)
        self.constants[name] = new
        self.counts["constants"] += 1
        return new

    def _cast(self, text: str, dtype) -> str:
        key = (canonical(text), dtype)
        if key not in self.casts:
            source, port, _ = parse_input(text)
            base = source if port == 0 else f"{source}_{port}"
            src = tf.float32 if dtype == self.half else self.half
            self.casts[key] = self.graph.add_node("Cast", f"{base}/to_{dtype.name}", [text], {
                "SrcT": src, "DstT": dtype, "Truncate": False}).name
            self.counts["casts"] += 1
        return self.casts[key]


def _chain(graph: Graph, text: str) -> Set[str]:
    """The Identity nodes and the Const behind `text`."""
    names = set()
    while True:
        node = graph.node(text)
        names.add(node.name)
        if node.op != "Identity":
            return names
        text = Graph.data_inputs(node)[0]


def _smallest_subnormal(np_type):
    return np.frombuffer(np.array([1], np.uint16).tobytes(), dtype=np_type)[0]
