"""public_layernorm: _MklLayerNorm -> the public ops that TensorFlow fuses back at load.

_MklLayerNorm (what fused_layernorm makes, and what the other passes see) is an
internal op of TensorFlow's x86 oneDNN builds: TensorFlow without oneDNN, stock
TensorFlow Serving and OpenVINO's converter cannot run it.  This pass, the last
of a pipeline, writes each one as Keras's LayerNormalization writes itself, in
ops of TensorFlow's public set::

    x [.., D] --+--> Shape --> StridedSlice[:-1] --> Prod(keep_dims) --+
                |      |                                              |
                |      +--> StridedSlice[-1:] = D [1]                 |
                |              PlaceholderWithDefault = rows [1] <----+
                |                  |           |
                |                Fill(1.0)   Fill(0.0)     Const [] x 2
                |                  |           |             |
                +--> Reshape [1, rows, D, 1] --+--> FusedBatchNormV3(epsilon=eps,
                                                      NCHW, is_training) --+
                                                                           |
              Reshape(., Shape(x)) <---------------------------------------+
                  --> Mul(gamma) --> AddV2(beta) = y [.., D]

Math: in training mode FusedBatchNormV3 normalises each channel (here a row of x)
over its D values with the biased variance: (x - mean) / sqrt(var + eps), then
* gamma + beta.  The same LayerNorm; eps is an attribute, kept as given.
At load, Grappler's oneDNN remapper fuses exactly this subgraph into
_MklLayerNorm(x, gamma, beta, epsilon=eps) (FindMklLayerNorm: Reshape,
Fill, Fill, FusedBatchNormV3, Reshape, Mul, AddV2), so oneDNN builds run the
fused kernel and every other runtime runs public ops.  The remapper wants the
Fills, not constants, and constant folding runs first: the row count goes
through PlaceholderWithDefault (an Identity that folding must leave alone, since
it could be fed), so static-shape graphs fuse too.  So does x where it is a Cast
(mixed precision's, from the half type): the arithmetic optimizer would otherwise
move the Cast below the Reshape (ReorderCastLikeAndValuePreserving) and the
remapper would no longer see the Reshape.  At run time that one Identity is all
that is left of the scaffolding (Grappler prunes the shape arithmetic).
Error bound: float32 re-association only (the fused kernel computes the same
sums); verify's served run checks the fused result with eps 1e-12 kept
(tests/test_public_ops.py).
"""

import numpy as np
import tensorflow as tf

from rewrites.base import FINAL, RewritePass
from rewrites.fused_layernorm import FUSED_OP
from rewrites.graph import Graph

#: Internal (underscore) ops this pass writes in public ops.
LOWERS = (FUSED_OP,)


class PublicLayerNorm(RewritePass):
    """_MklLayerNorm(x, gamma, beta, eps) -> the Keras FusedBatchNormV3 form (public ops)."""

    name = "public_layernorm"
    exact = True
    phase = FINAL  # after every pass that sees _MklLayerNorm as one op
    max_abs_error = "float32 re-association: <= 1e-5 on MiniLM sequence_output"

    def rewrite(self, graph: Graph) -> int:
        sites = [n for n in graph.topological() if n.op == FUSED_OP]
        for node in sites:
            self._lower(graph, node)
        return len(sites)

    @staticmethod
    def _lower(graph: Graph, node) -> None:
        x, gamma, beta = list(node.input[:3])
        dtype = tf.as_dtype(node.attr["T"].type)
        scope = node.name

        def const(suffix, value, const_dtype=None):
            return graph.add_const(f"{scope}/{suffix}", value, dtype=const_dtype)

        shape = graph.add_node("Shape", f"{scope}/shape", [x],
                               {"T": dtype, "out_type": tf.int32}).name
        stride = const("stride", np.array([1], np.int32))
        leading = graph.add_node("StridedSlice", f"{scope}/leading_dims", [
            shape, const("begin", np.array([0], np.int32)),
            const("end", np.array([-1], np.int32)), stride],
            {"T": tf.int32, "Index": tf.int32, "begin_mask": 1}).name
        counted = graph.add_node("Prod", f"{scope}/row_count", [
            leading, const("axis", np.array(0, np.int32))],
            {"T": tf.int32, "Tidx": tf.int32, "keep_dims": True}).name
        rows = graph.add_node("PlaceholderWithDefault", f"{scope}/rows", [counted], {
            "dtype": tf.int32, "shape": tf.compat.v1.AttrValue(shape=tf.TensorShape([1]).as_proto())}).name
        depth = graph.add_node("StridedSlice", f"{scope}/depth", [
            shape, const("depth_begin", np.array([-1], np.int32)),
            const("depth_end", np.array([0], np.int32)), stride],
            {"T": tf.int32, "Index": tf.int32, "end_mask": 1}).name
        one = const("one", np.array([1], np.int32))
        image_shape = graph.add_node("ConcatV2", f"{scope}/image_shape", [
            one, rows, depth, one, const("concat_axis", np.array(0, np.int32))],
            {"T": tf.int32, "N": 4, "Tidx": tf.int32}).name
        held = x
        if graph.node(x).op == "Cast":  # mixed precision's Cast from the half type
            held = graph.add_node("PlaceholderWithDefault", f"{scope}/input", [x], {
                "dtype": dtype, "shape": tf.compat.v1.AttrValue(
                    shape=tf.TensorShape(graph.shape(x)).as_proto())}).name
        image = graph.add_node("Reshape", f"{scope}/as_image", [held, image_shape],
                               {"T": dtype, "Tshape": tf.int32}).name
        ones = graph.add_node("Fill", f"{scope}/unit_scale", [
            rows, const("one_f", np.array(1.0, np.float32))], {"T": tf.float32}).name
        zeros = graph.add_node("Fill", f"{scope}/zero_offset", [
            rows, const("zero_f", np.array(0.0, np.float32))], {"T": tf.float32}).name
        empty = const("empty", np.zeros([0], np.float32))
        normed = graph.add_node("FusedBatchNormV3", f"{scope}/normalize", [
            image, ones, zeros, empty, empty], {
            "T": dtype, "U": tf.float32, "epsilon": node.attr["epsilon"].f,
            "data_format": "NCHW", "is_training": True, "exponential_avg_factor": 1.0}).name
        back = graph.add_node("Reshape", f"{scope}/as_rows", [normed, shape],
                              {"T": dtype, "Tshape": tf.int32}).name
        scaled = graph.add_node("Mul", f"{scope}/gamma", [back, gamma], {"T": dtype}).name
        output = graph.add_node("AddV2", f"{scope}/beta", [scaled, beta], {"T": dtype}).name
        graph.replace_uses({node.name: output})
        graph.remove([node.name])
