"""fused_layernorm: LayerNorm arithmetic over the last axis -> one _MklLayerNorm.

Matches the ways LayerNorm is written out in TensorFlow graphs (and
(x - mean) / Sqrt(var + eps) * gamma + beta)::

    x ---+------------------+---------------------+
         |                  |                     |
       Mean(-1) = mean -----+--> SquaredDifference (or Square(Sub(x, mean)))
         |                  |           |
         |                  |      Mean(-1) --> AddV2(eps) --> Rsqrt = inv_std
         |                  |                                   (or 1/Sqrt)
    form 1 (bertc, Hugging Face-style):
        AddV2( (Sub(x, mean) * inv_std * gamma) in any association , beta )
    form 2 (tf.nn.moments + tf.nn.batch_normalization, Google's tf.contrib
            layer_norm; Keras 3 LayerNormalization writes the second term as
            AddV2(Mul(Neg(mean), inv), beta), with gamma and beta behind a
            Reshape that fold_constants turns into constants):
        inv = inv_std * gamma
        AddV2( Mul(x, inv) , Sub(beta, Mul(mean, inv)) )

(StopGradient around the mean, as tf.nn.moments writes it, is seen through.)
Both Means must reduce only the last axis with keep_dims, gamma and beta must
be constants of D elements and eps a scalar constant; the match is replaced by::

    _MklLayerNorm(x, gamma, beta, epsilon=eps)     (x of rank 2 or 3; other ranks
                                                    are reshaped to [-1, D] and back)

Math: the same LayerNorm, (x - mean) / sqrt(var + eps) * gamma + beta with the
biased variance, computed by oneDNN in one pass over the data.  eps is kept as
given (1e-12 stays 1e-12; rows of variance 1e-12 are normalised correctly).
Error bound: float32 re-association only: max abs 1e-6 against a float64
LayerNorm on [512, 384] and [512, 768] inputs (the arithmetic: 1e-6 too), and
<= 1e-5 on all-MiniLM-L6-v2's sequence_output at real tokens
(tests/test_rewrites_numeric.py; measured 3.7e-6 to 4.6e-6, by Grappler options).

Why this op (`python benchmarks/bench_layernorm.py`; the figures are in
BENCHMARKS.md, "Figures moved from docstrings"):
- _MklLayerNorm with the right eps is several times faster per LayerNorm than
  the arithmetic (one oneDNN kernel in place of the arithmetic's chain of ops).
  It is an internal op of TensorFlow's x86 builds (its kernel is registered with
  TF_ENABLE_ONEDNN_OPTS=0 too, and a SavedModel holding it loads and runs); a
  TensorFlow without it cannot run the result, so the pass does nothing (and
  logs why) where the op is not registered.  End to end, LayerNorm is a small
  part of BERT, so the gain there is a few percent.
- FusedBatchNormV3 in training mode on x reshaped to NCHW [1, T, D, 1] (the
  Keras trick, scale 1, offset 0, then * gamma + beta) is exact on CPU: eps 1e-12
  is kept by the Eigen and the oneDNN kernel and by TF 2.21's
  tf.compat.v1.nn.fused_batch_norm (the 1.001e-5 floor is cuDNN's minimum and
  older TensorFlow wrappers'; GPUs were not checked).  But it is slower than
  the arithmetic, with oneDNN (_MklNativeFusedBatchNormV3) and without.
- Grappler's oneDNN remapper rewrites form 2 itself (when gamma and beta are
  Const nodes and the axis is written non-negative) into _MklLayerNorm, but
  drops eps: the fused op runs with its default 1e-3 and is off by 2.5e-3 on
  unit-variance rows and by ~2 on rows of variance 1e-12.  This pass matches that
  form first and sets eps explicitly.
"""

import logging

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import op_def_registry

from rewrites.base import Edit, FusionPass
from rewrites.graph import Graph
from rewrites.pattern import ConstPattern, Match, OneOf, OpTypePattern, products

logger = logging.getLogger(__name__)

FUSED_OP = "_MklLayerNorm"
_FUSED_DTYPES = (tf.float32, tf.bfloat16, tf.float16)
#: Larger "epsilons" are not LayerNorm's variance floor; leave such graphs alone.
MAX_EPSILON = 1e-2


def _x():
    return OpTypePattern("*", name="x")


def _mean():
    return OpTypePattern("Mean", name="mean", inputs=[_x(), ConstPattern(name="mean_axes")])


def _inv_std():
    """1 / sqrt(variance + eps), variance = Mean((x - mean)^2)."""
    variance = OpTypePattern("Mean", name="variance", inputs=[
        OneOf(OpTypePattern("SquaredDifference", inputs=[_x(), _mean()]),
              OpTypePattern("Square", inputs=[OpTypePattern("Sub", inputs=[_x(), _mean()])])),
        ConstPattern(name="variance_axes")])
    plus_eps = OpTypePattern("Add|AddV2", inputs=[variance, ConstPattern(name="epsilon")])
    sqrt = OpTypePattern("Sqrt", inputs=[plus_eps])
    return OneOf(
        OpTypePattern("Rsqrt", inputs=[plus_eps]),
        OpTypePattern("Reciprocal|Inv", inputs=[sqrt]),
        OpTypePattern("RealDiv|Div", inputs=[ConstPattern(1.0), sqrt]))


def _layer_norm():
    centered = OpTypePattern("Sub", inputs=[_x(), _mean()])
    gamma, beta = ConstPattern(name="gamma"), ConstPattern(name="beta")
    form1 = OpTypePattern("Add|AddV2", name="output", inputs=[
        products([centered, _inv_std(), gamma]), beta])
    form1_div = OpTypePattern("Add|AddV2", name="output", inputs=[
        OpTypePattern("Mul", inputs=[
            OpTypePattern("RealDiv|Div", inputs=[centered, OpTypePattern("Sqrt", inputs=[
                OpTypePattern("Add|AddV2", inputs=[
                    OpTypePattern("Mean", name="variance", inputs=[
                        OpTypePattern("SquaredDifference", inputs=[_x(), _mean()]),
                        ConstPattern(name="variance_axes")]),
                    ConstPattern(name="epsilon")])])]),
            gamma]),
        beta])
    inv = OpTypePattern("Mul", name="inv", inputs=[_inv_std(), gamma])
    form2 = OpTypePattern("Add|AddV2", name="output", inputs=[
        OpTypePattern("Mul", inputs=[_x(), inv]),
        OneOf(OpTypePattern("Sub", inputs=[beta, OpTypePattern("Mul", inputs=[_mean(), inv])]),
              OpTypePattern("Add|AddV2", inputs=[
                  OpTypePattern("Mul", inputs=[OpTypePattern("Neg", inputs=[_mean()]), inv]),
                  beta]))])
    return OneOf(form1, form2, form1_div)


class FusedLayerNorm(FusionPass):
    """LayerNorm arithmetic over the last axis -> _MklLayerNorm(x, gamma, beta, eps)."""

    name = "fused_layernorm"
    exact = True
    default_targets = ("cpu",)
    unsupported_targets = {"neuron": "_MklLayerNorm is an x86 TensorFlow op"}
    lowered_by = "public_layernorm"

    @classmethod
    def expected_sites(cls, layers, cls_only_outputs):
        return 2 * layers + 1  # two per layer and the embeddings' own
    max_abs_error = "float32 re-association: <= 1e-5 on MiniLM sequence_output"
    pattern = _layer_norm()
    root_ops = ("Add", "AddV2")
    see_through = ("Identity", "StopGradient")

    def rewrite(self, graph: Graph) -> int:
        if op_def_registry.get(FUSED_OP) is None:
            logger.warning("%s: this TensorFlow has no %s op (no oneDNN build); "
                           "LayerNorms are left as they are", self.name, FUSED_OP)
            return 0
        return super().rewrite(graph)

    def fuse(self, graph: Graph, match: Match, edit: Edit) -> bool:
        x = match.tensor("x")
        shape = graph.shape(x)
        dtype = graph.dtype(match.tensor("output"))
        root = match.tensor("output")
        if shape is None or not shape or shape[-1] is None or dtype not in _FUSED_DTYPES:
            logger.debug("%s: %s not fused: x's last dimension is unknown or the dtype (%s) "
                         "is not one %s takes", self.name, root, dtype, FUSED_OP)
            return False
        rank, depth = len(shape), shape[-1]
        if rank not in (2, 3) and any(d is None for d in shape):
            logger.debug("%s: %s not fused: x of rank %d has unknown dimensions",
                         self.name, root, rank)
            return False
        for mean_name, axes_name in (("mean", "mean_axes"), ("variance", "variance_axes")):
            axes = np.asarray(match.value(axes_name)).reshape(-1)
            if axes.dtype.kind not in "iu" or sorted(int(a) % rank for a in axes) != [rank - 1]:
                logger.debug("%s: %s not fused: the %s is not over the last axis alone",
                             self.name, root, mean_name)
                return False
            if not match.node(mean_name).attr["keep_dims"].b:
                logger.debug("%s: %s not fused: the %s drops the reduced axis (keep_dims "
                             "false)", self.name, root, mean_name)
                return False
        epsilon = match.value("epsilon")
        if epsilon.size != 1 or not 0.0 <= float(epsilon.reshape(-1)[0]) <= MAX_EPSILON:
            logger.debug("%s: %s not fused: epsilon is not a scalar in [0, %g]",
                         self.name, root, MAX_EPSILON)
            return False
        values = {name: match.value(name) for name in ("gamma", "beta")}
        if any(v.size != depth or any(d != 1 for d in v.shape[:-1]) for v in values.values()):
            logger.debug("%s: %s not fused: gamma or beta is not one value per channel",
                         self.name, root)
            return False
        params = []
        for name, value in values.items():
            if value.shape == (depth,) and tf.as_dtype(value.dtype) == dtype:
                params.append(match.tensor(name))
            else:
                params.append(edit.add_const(f"{match.tensor('output')}/{name}",
                                             value.reshape(depth), dtype=dtype))
        scope = f"{root}/{self.name}"
        flat = x
        if rank not in (2, 3):
            flat = edit.add_node("Reshape", f"{scope}/flatten", [
                x, edit.add_const(f"{scope}/flat_shape", np.array([-1, depth], np.int32))],
                {"T": dtype, "Tshape": tf.int32})
        output = edit.add_node(FUSED_OP, f"{scope}/layer_norm", [flat] + params, {
            "T": dtype, "epsilon": float(epsilon.reshape(-1)[0])})
        if flat != x:
            output = edit.add_node("Reshape", f"{scope}/unflatten", [
                output, edit.add_const(f"{scope}/shape", np.array(shape, np.int32))],
                {"T": dtype, "Tshape": tf.int32})
        edit.replace(root, output)
        edit.remove(match.interior() | {root})
        edit.collect(match.consts)
        return True
