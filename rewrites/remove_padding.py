"""remove_padding: token-wise ops on the real tokens only, attention on the used length.

A static [B, S] batch of short sentences is mostly padding: on MRPC dev pairs
at S = 128 about 58% of the B * S rows.  The encoder (kept 2-D, [T, D] with
T = B * S) spends nearly all its FLOPs in token-wise ops (see `token_rows`):
dense layers, GELU, residual adds, LayerNorm.  This pass packs the real tokens
once and keeps them packed; it unpacks them only where attention needs the
[B, positions] layout, and attention runs on the first L positions only, L = 1 +
the last position real in any row of the batch (at least 1)::

    computed once from input_mask [B,S]:
      real = NotEqual(mask, 0); L = max(1, Max(Any(real, 0) * [1..S]))
      idx  = Where(Reshape(real, [-1]))            rows b*S + s of the real tokens
      idxL = Where(Reshape(Slice(real, [B, L]), [-1]))    rows b*L + s, same order
      both padded with 0s (copies of row 0, "spare rows") to a multiple of
      ROW_MULTIPLE rows, at least one: fast GEMM shapes, and never empty
    before                                after
    emb LN input [T,D]                    emb LN input [T,D] -> GatherV2(idx) [T_real,D]
      |                                     |
    LayerNorm, QKV MatMul+BiasAdd         the same ops on [T_real, k] rows
      |                                     |
    Split, Reshape [B,S,N,H],             q, k, v heads [B,N,L,H] gathered straight from
    Transpose -> attention                  the packed rows (**), packed row 0 at padding
      |     ([B,N,S,S] scores)              -> attention, the mask bias sliced to [B,1,1,L]
      |                                     ([B,N,L,L] scores)
    Transpose, Reshape [T,D] = context    context heads [B,N,L,H] gathered straight into
      |                                     packed rows [T_real,D] (**)
    out proj, residual, LN, FFN, LN       the same ops on [T_real, k] rows
      |                                     |
    Reshape [B,S,D] -> outputs            unpack to [T, D], zeros at padding (*)
                                            -> Reshape [B,S,D] -> outputs

    (*) unpack = GatherV2(packed, inverse): inverse[r] is row r's index among the
        real rows (an exclusive Cumsum of the flat mask); at padding 0 for
        attention, and T_real for the outputs, which gather from [packed; a
        zero row].  (One GatherV2 is cheaper than a ScatterNd into zeros.)
    (**) one GatherV2 of H-wide rows does the unpack, the Split and the
        Transpose(0, 2, 1, 3): head row (b, n, l) of block p (q, k or v) is row
        (inverse[b*L + l] * 3 + p) * N + n of the QKV rows seen as [T_real*3N, H].
        Back: packed row t, head n is row (b*N + n) * L + l of the context heads
        seen as [B*N*L, H], where b*L + l is the t-th real position.  It moves
        each value once where unpack + Split + Transpose moved it three times
        (what it gains at full length: BENCHMARKS.md).  A head whose
        Reshape or Transpose has another reader is unpacked by rows as (*) into a
        Reshape [B,L,N,H] instead; a Split stays unless all its outputs are heads.

How the region is found (structure only): the masked attention blocks
(`token_rows.attention_sites`, all reading one [B, S] mask through
(1 - mask) * A, A <= -1000) give the seeds: the producers of their q/k/v
[T, k] inputs and the readers of their context [T, k] outputs.  The region is
every token-wise node connected to the seeds through token-wise nodes.  A
non-constant input entering the region is packed (GatherV2); a region tensor
read outside it is unpacked.  The pass changes
nothing (0 sites) unless every attention's q, k, v come from the region and its
context feeds only the region, and every other reader of a region tensor is a
padding-tolerant consumer: a Reshape to [B, S, k] (the encoder outputs) or a
GatherV2 of constant rows along axis 0 (cls_only_tail's [CLS] rows).  In the
attention blocks the head gathers (**) take the place of the head Reshapes and
Transposes and the mask bias is sliced; a [CLS]-only query (cls_only_tail's)
keeps its [B, 1, N, H] and its [B, k] context.

Math: token-wise ops compute the same rows on a subset of the rows, so every
real token's value is the same computation.  Attention reads keys and values
of padding positions below L as a copy of the first real token's (finite)
instead of the unrewritten graph's (as meaningless) values, and drops positions
from L on (padding in every row); a padded key's softmax weight is
exp(score + A - max) = 0 in float32 either way (|scores| << 1000), so real
tokens attend to the same values.  What
changes: the encoder's values at padding positions read 0 (sequence_output is
0 there; mean pooling multiplies them by the 0 mask; the pooler reads
position 0, [CLS], a real token).  Rows whose mask is all zero (dummy rows)
hold no real token: they cost no dense-layer work (a batch of dummy rows
only runs one row, so no tensor is empty) and their pooled/logits are
those of an all-zero encoder output (tanh(pooler bias)), not the unrewritten
graph's meaningless values; their embedding is 0 in both.  It assumes a
non-empty row's position 0 is real ([CLS], as BERT's tokenizers write it); a
left-padded row would give its pooler a zero row.
Error bound: 0 at real tokens in exact arithmetic, and <= 1e-5 allowed for
float32 kernels blocking a different row count differently.  Measured on
all-MiniLM-L6-v2 at [16, 128], against the CPU default passes without it:
MRPC dev rows 1-16 with 2 of them made dummy rows (L = 78), and rows 1-13 + a
full-length row + 2 dummy rows (L = 128): sequence_output at real tokens,
embeddings and pooled output bit-identical (max abs 0.0); against the
unrewritten graph 2.7e-6 and 2.9e-6 (the fusions' rounding).

Speed (benchmarks/padding_free.py; the figures are in BENCHMARKS.md, "Figures
moved from docstrings"): on MRPC-length traffic the dense layers run on the
real tokens only, so the gain follows the share of padding; on full-length
batches it is break-even.

Sites: layers converted (attention blocks whose surroundings were packed).
`details`: ops now run packed ("packed_ops"), packs, unpacks, and how many of
the attention unpacks and packs are head-layout gathers ("head_layout_gathers").
"""

import dataclasses
import logging
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import tensorflow as tf

from rewrites.base import LATE, RewritePass
from rewrites.graph import Graph, parse_input, tensor_name
from rewrites.token_rows import AttentionSite, attention_sites, row_wise, rows_of

logger = logging.getLogger(__name__)

#: The packed row count is rounded up to a multiple of this with spare rows
#: (copies of row 0): oneDNN's GEMM ran 3-5% slower on MiniLM with a row count
#: that is not a multiple of 4 (227 vs 228 rows; 8 and 16 cost more spare rows
#: than they gain); a full batch (B * S) stays as it is.
ROW_MULTIPLE = 4


def region_of(graph: Graph, seeds: Set[str], rows: int) -> Set[str]:
    """The token-wise nodes connected to `seeds` through token-wise nodes."""
    region: Set[str] = set()
    stack = [s for s in seeds if row_wise(graph, graph.node(s), rows)]
    while stack:
        name = stack.pop()
        if name in region:
            continue
        region.add(name)
        node = graph.node(name)
        neighbours = [parse_input(t)[0] for t in Graph.data_inputs(node)]
        neighbours += graph.consumer_names(name)
        for other in neighbours:
            if other not in region and row_wise(graph, graph.node(other), rows):
                stack.append(other)
    return region


def padding_tolerant(graph: Graph, consumer: str, batch: int, seq: int) -> bool:
    """A reader that may see 0 at padding positions: Reshape to [B, S, k], or a
    GatherV2 of constant rows along axis 0."""
    node = graph.node(consumer)
    if node.op == "Reshape":
        shape = graph.shape(consumer)
        return shape is not None and len(shape) == 3 and shape[:2] == (batch, seq)
    if node.op == "GatherV2":
        inputs = Graph.data_inputs(node)
        return (graph.is_const(inputs[1]) and graph.is_const(inputs[2])
                and int(np.asarray(graph.const_value(inputs[2])).reshape(-1)[0]) == 0)
    return False


class RemovePadding(RewritePass):
    """Token-wise ops run on the real tokens only (packed by input_mask)."""

    name = "remove_padding"
    exact = True
    phase = LATE
    #: 2.3x on BERT-Base MRPC traffic at [4, 128], 1.00x at full length (BENCHMARKS.md)
    default_targets = ("cpu",)
    unsupported_targets = {"neuron": "it changes shapes inside the graph; use sequence "
                                     "buckets there"}

    @classmethod
    def expected_sites(cls, layers, cls_only_outputs):
        return layers
    max_abs_error = ("0 at real tokens (same ops on fewer rows; MiniLM on MRPC: bit-identical); "
                     "<= 1e-5; padding positions of the encoder output read 0")

    def rewrite(self, graph: Graph) -> int:
        sites = attention_sites(graph)
        if not sites:
            return 0
        region, reason = self._region(graph, sites)
        if reason:
            logger.info("%s: leaving the graph as it is: %s", self.name, reason)
            return 0
        site = sites[0]
        batch, seq = site.batch, site.seq
        head_reshapes = {n for s in sites for n in (s.key_reshape, s.value_reshape)}
        head_reshapes |= {s.query_reshape for s in sites if not s.cls_query}
        contexts = {s.context for s in sites if not s.cls_query}
        gathered_heads = self._gathered_heads(graph, sites, region)
        gathered_contexts = self._gathered_contexts(graph, sites)
        gathered_sources = {h.reads for h in gathered_heads.values()}
        # (tensor, layout) -> uses; layout "trim" is attention's [B * L] rows
        edges_in: Dict[tuple, List[tuple]] = {}
        edges_out: Dict[tuple, List[tuple]] = {}
        for name in region:
            for index, text in enumerate(graph.node(name).input):
                if parse_input(text)[0] not in region and not graph.is_const(text):
                    layout = "trim" if text in contexts else "full"
                    edges_in.setdefault((text, layout), []).append((name, index))
        for name in region:
            for tensor in graph.output_tensors(name):
                for consumer, index in graph.consumers(tensor):
                    if consumer in gathered_heads:
                        continue  # read below, straight into attention's head layout
                    if consumer not in region:
                        layout = "trim" if consumer in head_reshapes else "full"
                        edges_out.setdefault((tensor, layout), []).append((consumer, index))
        dtypes = {t: graph.dtype(t) for t, _ in list(edges_in) + list(edges_out)}
        dtypes.update({t: graph.dtype(t) for t in gathered_sources})
        widths = {t: graph.shape(t)[1] for t, _ in edges_out}
        head_shapes = {n: graph.shape(n) for n in head_reshapes if n not in gathered_heads}
        context_widths = {s.context: graph.shape(s.context)[1] for s in sites
                          if not s.cls_query and s.context not in gathered_contexts}
        bias_dtypes = {s.mask_bias: graph.dtype(s.mask_bias) for s in sites}
        index = _Indices(graph, site.mask, batch, seq, f"{parse_input(site.mask)[0]}/{self.name}")
        inputs = {}  # node name -> its new input list

        def rewire(uses, tensor):
            for name, position in uses:
                inputs.setdefault(name, list(graph.node(name).input))[position] = tensor

        for (tensor, layout), uses in sorted(edges_in.items()):
            node, port, _ = parse_input(tensor)
            if tensor in gathered_contexts:
                heads = gathered_contexts[tensor]
                rewire(uses, index.pack_heads(heads.reads, dtypes[tensor], heads.heads,
                                              heads.size, f"{node}/{self.name}/pack_heads"))
                continue
            rewire(uses, index.pack(tensor, dtypes[tensor], layout,
                                    f"{node}/{self.name}/pack_{port}"))
        for reshape, heads in sorted(gathered_heads.items()):
            unpacked = index.unpack_heads(heads.reads, dtypes[heads.reads], heads.parts,
                                          heads.part, heads.heads, heads.size,
                                          f"{heads.transpose}/{self.name}/unpack_heads")
            for consumer, position in graph.consumers(tensor_name(heads.transpose)):
                rewire([(consumer, position)], unpacked)
        for (tensor, layout), uses in sorted(edges_out.items()):
            node, port, _ = parse_input(tensor)
            rewire(uses, index.unpack(tensor, dtypes[tensor], widths[tensor], layout,
                                      f"{node}/{self.name}/unpack_{port}_{layout}"))
        # Attention runs on the batch's first L positions (L: 1 + the last real one).
        for name, shape in sorted(head_shapes.items()):
            inputs.setdefault(name, list(graph.node(name).input))[1] = index.heads_shape(
                shape[2], shape[3])
        for context, width in sorted(context_widths.items()):
            name = parse_input(context)[0]
            inputs.setdefault(name, list(graph.node(name).input))[1] = graph.add_const(
                f"{name}/{self.name}/shape", np.array([-1, width], np.int32))
        trimmed = {bias: index.trim_bias(bias, dtype) for bias, dtype in bias_dtypes.items()}
        for s in sites:
            add = inputs.setdefault(s.masked_add, list(graph.node(s.masked_add).input))
            add[:] = [trimmed[s.mask_bias] if t == s.mask_bias else t for t in add]
        for name, new_inputs in inputs.items():
            graph.set_inputs(name, new_inputs)
        removed = self._remove_bypassed(graph, gathered_heads, gathered_contexts)
        for name in (region | head_reshapes) - removed:
            graph.node(name).attr.pop("_output_shapes", None)
        self.details = {"packed_ops": len(region - removed), "packs": len(edges_in),
                        "unpacks": len(edges_out) + len(gathered_heads),
                        "head_layout_gathers": len(gathered_heads) + len(gathered_contexts)}
        return len(sites)

    @staticmethod
    def _remove_bypassed(graph: Graph, gathered_heads, gathered_contexts) -> Set[str]:
        """Removes the head Reshapes and Transposes (and Splits) that the head
        gathers left without readers; returns their names."""
        bypassed = set(gathered_heads) | {h.transpose for h in gathered_heads.values()}
        bypassed |= {parse_input(t)[0] for t in gathered_contexts}
        bypassed |= {h.transpose for h in gathered_contexts.values()}
        bypassed |= {parse_input(h.replaces)[0] for h in gathered_heads.values()
                     if h.parts > 1}
        return set(graph.remove_unused(bypassed))

    @staticmethod
    def _gathered_heads(graph: Graph, sites: List[AttentionSite],
                        region: Set[str]) -> Dict[str, "_GatheredHeads"]:
        """{head Reshape: how to gather its [B, N, L, H] heads from packed rows},
        for every q/k/v whose Reshape and Transpose feed only their attention block.
        When every output of a (fused_attention) Split along the last axis is such
        a head, the heads are read from the Split's input and the Split goes."""
        found = {}
        for s in sites:
            for role in ("key", "value") if s.cls_query else ("query", "key", "value"):
                reshape, transpose = getattr(s, f"{role}_reshape"), getattr(s, f"{role}_heads")
                shape = graph.shape(reshape)
                if (graph.consumer_names(reshape) != {transpose}
                        or not graph.consumer_names(transpose) <= s.nodes
                        or shape is None or None in shape[2:]):
                    continue
                tensor = getattr(s, role)
                found[reshape] = _GatheredHeads(transpose, tensor, tensor, 1, 0,
                                                shape[2], shape[3])
        splits: Dict[str, List[str]] = {}
        for reshape, heads in found.items():
            splits.setdefault(parse_input(heads.reads)[0], []).append(reshape)
        for split_name, reshapes in splits.items():
            split = graph.node(split_name)
            if split.op != "Split" or split_name not in region:
                continue
            parts = split.attr["num_split"].i
            readers = [c for t in graph.output_tensors(split) for c, _ in graph.consumers(t)]
            source = Graph.data_inputs(split)[1]
            first = found[reshapes[0]]
            if (set(readers) != set(reshapes) or len(readers) != parts
                    or graph.control_consumers(split_name)
                    or rows_of(graph, source) is None
                    or graph.shape(source)[1] != parts * first.heads * first.size
                    or len({(found[r].heads, found[r].size) for r in reshapes}) != 1):
                continue
            for reshape in reshapes:
                heads = found[reshape]
                part = parse_input(heads.reads)[1]
                found[reshape] = dataclasses.replace(heads, reads=source, parts=parts, part=part)
        return found

    @staticmethod
    def _gathered_contexts(graph: Graph, sites: List[AttentionSite]) -> Dict[str, "_GatheredHeads"]:
        """{context tensor [B*L, N*H]: its BatchMatMul's [B, N, L, H] heads to pack
        straight from}, for every context whose Transpose and Reshape only feed that."""
        found = {}
        for s in sites:
            if s.cls_query:
                continue
            reshape = parse_input(s.context)[0]
            shape = graph.shape(tensor_name(s.context_matmul))
            if (graph.consumer_names(s.context_heads) != {reshape}
                    or graph.consumer_names(s.context_matmul) != {s.context_heads}
                    or shape is None or len(shape) != 4 or None in shape[1:2] + shape[3:]):
                continue
            found[s.context] = _GatheredHeads(s.context_heads, tensor_name(s.context_matmul),
                                              s.context, 1, 0, shape[1], shape[3])
        return found

    @staticmethod
    def _region(graph: Graph, sites: List[AttentionSite]) -> Tuple[Set[str], Optional[str]]:
        """(the nodes to run packed, None), or (empty, why the graph is not one
        this pass understands)."""
        masks = {(s.mask, s.batch, s.seq) for s in sites}
        if len(masks) != 1:
            return set(), "the attention blocks read different masks"
        batch, seq = sites[0].batch, sites[0].seq
        tokens = batch * seq
        seeds = set()
        for site in sites:
            roles = [site.key, site.value] + ([] if site.cls_query else [site.query])
            seeds.update(parse_input(t)[0] for t in roles)
            if not site.cls_query:
                seeds.update(c for c, _ in graph.consumers(site.context))
        region = region_of(graph, seeds, tokens)
        attention_nodes = set().union(*(s.nodes for s in sites))
        for site in sites:
            roles = [site.key, site.value] + ([] if site.cls_query else [site.query])
            outside = [t for t in roles if parse_input(t)[0] not in region]
            if outside:
                return set(), f"attention input {outside[0]} is not computed token-wise"
            if not site.cls_query:
                readers = {c for c, _ in graph.consumers(site.context)}
                if not readers or readers - region:
                    return set(), (f"attention context {site.context} is read by a "
                                   "non-token-wise op")
        reshapes = {n for s in sites for n in (s.key_reshape, s.value_reshape)}
        reshapes |= {s.query_reshape for s in sites if not s.cls_query}
        for name in region:
            for tensor in graph.output_tensors(name):
                for consumer, _ in graph.consumers(tensor):
                    if consumer in region or consumer in reshapes:
                        continue
                    if consumer in attention_nodes or not padding_tolerant(
                            graph, consumer, batch, seq):
                        return set(), (f"{tensor} is read by {consumer} "
                                       f"({graph.node(consumer).op}), which needs padding rows")
        return region, None


@dataclasses.dataclass(frozen=True)
class _GatheredHeads:
    """A head layout change folded into a pack or unpack gather."""

    transpose: str     # the Transpose(0, 2, 1, 3) that is bypassed
    reads: str         # the tensor gathered from: packed rows, or context heads
    replaces: str      # the tensor it stands for: a q/k/v (a Split output) or a context
    parts: int         # the packed rows hold `parts` heads blocks side by side (Split)
    part: int          # and this block is the `part`-th
    heads: int         # N
    size: int          # H


class _Indices:
    """The index tensors computed once from the [B, S] mask, and the packs and
    unpacks that use them.  Layout "full": rows b * S + s; layout "trim": rows
    b * L + s of the first L positions, L = 1 + the last position real in any
    row (at least 1), where attention runs."""

    def __init__(self, graph: Graph, mask: str, batch: int, seq: int, scope: str):
        self.graph, self.batch, self.seq, self.scope = graph, batch, seq, scope
        self._consts, self._cache = {}, {}
        dtype = graph.dtype(mask)
        real = self._node("NotEqual", "real", [mask, self._const(
            "zero", np.zeros((), dtype.as_numpy_dtype))], {"T": dtype})        # [B, S]
        anywhere = self._node("Any", "real_columns", [real, self._const(
            "batch_axis", np.array([0], np.int32))], {"keep_dims": False, "Tidx": tf.int32})
        columns = self._node("Cast", "columns", [anywhere], {
            "SrcT": tf.bool, "DstT": tf.int32, "Truncate": False})             # [S]
        positions = self._node("Mul", "positions", [columns, self._const(
            "one_based", np.arange(1, seq + 1, dtype=np.int32))], {"T": tf.int32})
        last = self._node("Max", "last", [positions, self._const(
            "seq_axis", np.array([0], np.int32))], {"T": tf.int32, "keep_dims": False,
                                                     "Tidx": tf.int32})
        self.length = self._node("Maximum", "length", [last, self._const(
            "one", np.int32(1))], {"T": tf.int32})                             # L
        trimmed = self._node("Slice", "trimmed", [real, self._const(
            "begin", np.zeros(2, np.int32)), self._pack("trim_size", [
                self._const("all_rows", np.int32(-1)), self.length])], {
            "T": tf.bool, "Index": tf.int32})                                  # [B, L]
        self.flat, self.rows, self.kept = {}, {}, {}
        for layout, source in (("full", real), ("trim", trimmed)):
            self.flat[layout] = self._node("Reshape", f"{layout}_flat", [source, self._const(
                "flat", np.array([-1], np.int32))], {"T": tf.bool, "Tshape": tf.int32})
            where = self._node("Where", f"{layout}_where", [self.flat[layout]],
                               {"T": tf.bool})                                 # [T_real, 1]
            real_rows = self._node("Reshape", f"{layout}_real_rows", [
                where, self._const("flat", np.array([-1], np.int32))],
                {"T": tf.int64, "Tshape": tf.int32})                           # [T_real]
            count = self._node("Size", f"{layout}_real_count", [real_rows], {
                "T": tf.int64, "out_type": tf.int32})                          # T_real
            at_least_one = self._node("Maximum", f"{layout}_at_least_one", [
                count, self._const("one", np.int32(1))], {"T": tf.int32})
            blocks = self._node("FloorDiv", f"{layout}_blocks", [
                self._node("AddV2", f"{layout}_round_up", [at_least_one, self._const(
                    "multiple_minus_one", np.int32(ROW_MULTIPLE - 1))], {"T": tf.int32}),
                self._const("multiple", np.int32(ROW_MULTIPLE))], {"T": tf.int32})
            self.kept[layout] = self._node("Mul", f"{layout}_kept", [
                blocks, self._const("multiple", np.int32(ROW_MULTIPLE))], {"T": tf.int32})
            with_spare = self._node("ConcatV2", f"{layout}_with_spare", [
                real_rows, self._const("spare_rows", np.zeros(ROW_MULTIPLE, np.int64)),
                self._const("axis", np.int32(0))], {"T": tf.int64, "N": 2, "Tidx": tf.int32})
            self.rows[layout] = self._node("Slice", f"{layout}_rows", [
                with_spare, self._const("origin", np.zeros(1, np.int32)),
                self._pack(f"{layout}_kept_1d", [self.kept[layout]])],
                {"T": tf.int64, "Index": tf.int32})                            # [max(T_real, 1)]
        self.axis = self._const("axis", np.int32(0))

    def _const(self, name, value):
        """A Const under the scope, made once per name."""
        if name not in self._consts:
            self._consts[name] = self.graph.add_const(f"{self.scope}/{name}", value)
        return self._consts[name]

    def _node(self, op, name, inputs, attrs):
        return self.graph.add_node(op, f"{self.scope}/{name}", inputs, attrs).name

    def _pack(self, name, values):
        return self._node("Pack", name, values, {"T": tf.as_dtype(
            self.graph.dtype(values[-1])), "N": len(values), "axis": 0})

    def pack(self, tensor, dtype, layout, name):
        """GatherV2 of the real rows: [rows, k] -> [T_real, k] (a batch with no real
        token keeps one row, a copy of row 0, so every tensor stays non-empty)."""
        return self.graph.add_node("GatherV2", name, [tensor, self.rows[layout], self.axis], {
            "Tparams": dtype, "Tindices": tf.int64, "Taxis": tf.int32, "batch_dims": 0}).name

    def unpack(self, tensor, dtype, width, layout, name):
        """[T_real, k] -> [rows, k] by one GatherV2 of each row's packed index.
        Attention's rows ("trim") read packed row 0 at padding; the outputs
        ("full") read a zero row appended for them."""
        if layout == "full":
            zero = self._const(f"zero_row_{width}_{tf.as_dtype(dtype).name}",
                               np.zeros((1, width), tf.as_dtype(dtype).as_numpy_dtype))
            tensor = self.graph.add_node("ConcatV2", f"{name}/with_zero_row", [
                tensor, zero, self.axis], {"T": dtype, "N": 2, "Tidx": tf.int32}).name
        return self.graph.add_node("GatherV2", name, [tensor, self.inverse(layout), self.axis], {
            "Tparams": dtype, "Tindices": tf.int32, "Taxis": tf.int32, "batch_dims": 0}).name

    def unpack_heads(self, tensor, dtype, parts, part, heads, size, name):
        """Packed rows [T_real, parts * N * H] -> attention's heads [B, N, L, H] of
        block `part` in one GatherV2 of H-wide rows: head row (b, n, l) is row
        (inverse[b * L + l] * parts + part) * N + n of the rows seen as
        [T_real * parts * N, H].  (Unpack, Split and Transpose(0, 2, 1, 3) in one.)"""
        return self._gather_head_rows(
            tensor, dtype, size, self.head_index(parts, part, heads), tf.int32,
            [self.batch, heads, -1, size], name)                            # [B, N, L, H]

    def _gather_head_rows(self, tensor, dtype, size, index, index_dtype, shape, name):
        """Reshape(GatherV2(Reshape(tensor, [-1, H]), index), shape): a gather of
        H-wide rows, what a head layout change is made of."""
        rows = self.graph.add_node("Reshape", f"{name}/head_rows", [tensor, self._const(
            f"head_rows_{size}", np.array([-1, size], np.int32))],
            {"T": dtype, "Tshape": tf.int32}).name                          # [*, H]
        gathered = self.graph.add_node("GatherV2", name, [rows, index, self.axis], {
            "Tparams": dtype, "Tindices": index_dtype, "Taxis": tf.int32,
            "batch_dims": 0}).name
        shape = np.array(shape, np.int32)
        return self.graph.add_node("Reshape", f"{name}/shaped", [gathered, self._const(
            "shape_" + "x".join(map(str, shape)), shape)],
            {"T": dtype, "Tshape": tf.int32}).name

    def head_index(self, parts, part, heads):
        """[B * N * L] int32, row (b, n, l): (inverse[b * L + l] * parts + part) * N + n."""
        key = ("head_index", parts, part, heads)
        if key not in self._cache:
            offsets = (part * heads + np.arange(heads, dtype=np.int32)).reshape(1, heads, 1)
            index = self._node("AddV2", f"head_index_{parts}_{part}_{heads}", [
                self._scaled_inverse(parts * heads), self._const(
                    f"head_offsets_{parts}_{part}_{heads}", offsets)],
                {"T": tf.int32})                                           # [B, N, L]
            self._cache[key] = self._node("Reshape", f"head_index_{parts}_{part}_{heads}_flat", [
                index, self._const("flat", np.array([-1], np.int32))],
                {"T": tf.int32, "Tshape": tf.int32})
        return self._cache[key]

    def _scaled_inverse(self, blocks):
        """[B, 1, L] int32: inverse("trim") * blocks, shared by the q, k, v indices."""
        key = ("scaled_inverse", blocks)
        if key not in self._cache:
            grid = self._node("Reshape", "inverse_grid", [self.inverse("trim"), self._const(
                "grid", np.array([self.batch, 1, -1], np.int32))],
                {"T": tf.int32, "Tshape": tf.int32})                       # [B, 1, L]
            self._cache[key] = self._node("Mul", f"inverse_x{blocks}", [grid, self._const(
                f"blocks_{blocks}", np.int32(blocks))], {"T": tf.int32})
        return self._cache[key]

    def pack_heads(self, tensor, dtype, heads, size, name):
        """Attention's context heads [B, N, L, H] -> packed rows [T_real, N * H] in
        one GatherV2 of H-wide rows: packed row t, head n reads row (b * N + n) * L
        + l of [B * N * L, H], where b * L + l is the t-th real row of the "trim"
        layout.  (Transpose(0, 2, 1, 3), Reshape and pack in one.)"""
        return self._gather_head_rows(tensor, dtype, size, self.context_index(heads),
                                      tf.int64, [-1, heads * size], name)   # [T, N*H]

    def context_index(self, heads):
        """[T_kept * N] int64, entry (t, n): (b * N + n) * L + l, b * L + l = rows[t]."""
        key = ("context_index", heads)
        if key not in self._cache:
            length = self._node("Cast", "length_64", [self.length], {
                "SrcT": tf.int32, "DstT": tf.int64, "Truncate": False})
            rows = self.rows["trim"]                                       # [T_kept]
            column = self._const("column", np.array([-1, 1], np.int32))
            batch = self._node("Reshape", "trim_rows_batch", [self._node(
                "FloorDiv", "trim_rows_b", [rows, length], {"T": tf.int64}), column],
                {"T": tf.int64, "Tshape": tf.int32})                       # [T_kept, 1]
            position = self._node("Reshape", "trim_rows_position", [self._node(
                "FloorMod", "trim_rows_l", [rows, length], {"T": tf.int64}), column],
                {"T": tf.int64, "Tshape": tf.int32})                       # [T_kept, 1]
            block = self._node("AddV2", f"context_blocks_{heads}", [
                self._node("Mul", f"trim_rows_bx{heads}", [batch, self._const(
                    f"heads_64_{heads}", np.int64(heads))], {"T": tf.int64}),
                self._const(f"head_numbers_{heads}", np.arange(heads, dtype=np.int64)[None])],
                {"T": tf.int64})                                           # [T_kept, N]
            index = self._node("AddV2", f"context_index_{heads}", [
                self._node("Mul", f"context_blocks_{heads}_xL", [block, length],
                           {"T": tf.int64}), position], {"T": tf.int64})
            self._cache[key] = self._node("Reshape", f"context_index_{heads}_flat", [
                index, self._const("flat", np.array([-1], np.int32))],
                {"T": tf.int64, "Tshape": tf.int32})
        return self._cache[key]

    def inverse(self, layout):
        """[rows] int32: each real row's packed index; at padding 0 for "trim"
        and the appended zero row for "full"."""
        key = ("inverse", layout)
        if key not in self._cache:
            flat = self.flat[layout]
            counts = self._node("Cast", f"{layout}_ones", [flat], {
                "SrcT": tf.bool, "DstT": tf.int32, "Truncate": False})
            running = self._node("Cumsum", f"{layout}_running", [counts, self.axis], {
                "T": tf.int32, "Tidx": tf.int32, "exclusive": True, "reverse": False})
            padding = self.kept[layout] if layout == "full" else self._const(
                "zero_index", np.int32(0))
            self._cache[key] = self._node("SelectV2", f"{layout}_inverse", [
                flat, running, padding], {"T": tf.int32})
        return self._cache[key]

    def heads_shape(self, heads, size):
        """[B, L, N, H] for the attention head Reshapes."""
        key = ("heads", heads, size)
        if key not in self._cache:
            self._cache[key] = self._pack(f"heads_shape_{heads}x{size}", [
                self._const("batch", np.int32(self.batch)), self.length,
                self._const(f"heads_{heads}", np.int32(heads)),
                self._const(f"head_size_{size}", np.int32(size))])
        return self._cache[key]

    def trim_bias(self, bias, dtype):
        """The mask bias [B, 1, 1, S] -> [B, 1, 1, L]."""
        size = self._pack("bias_size", [self._const("all", np.int32(-1))] * 3 + [self.length])
        return self._node("Slice", "trimmed_bias", [
            bias, self._const("bias_begin", np.zeros(4, np.int32)), size],
            {"T": dtype, "Index": tf.int32})
