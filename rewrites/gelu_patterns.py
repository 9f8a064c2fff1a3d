"""The exact-GELU matcher shared by crude_gelu and tanh_gelu.

Exact GELU is x * Phi(x) = x * 0.5 * (1 + erf(x / sqrt 2)) = x * 0.5 * erfc(-x / sqrt 2),
written in one of two ways around a "core" (twice Phi(x))::

    erf form (bertc, Google, Hugging Face)       erfc form (tf.nn.gelu, TF 2.21)

    x --+--> RealDiv(x, 1.41421)                 x --+--> Neg --> Mul(., 0.70711)
        |    or Mul(x, 0.70711)                      |                |
        |          |                                 |              Erfc  = core
        |         Erf                                |                |
        |          |                                 |                |
        |    AddV2(1.0, Erf)  = core                 |                |
        |          |                                 |                |
        +----> x * 0.5 * core                        +----> x * 0.5 * core

The product of x, 0.5 and the core may be associated any way: x * (0.5 * core),
(x * 0.5) * core, (0.5 * x) * core, 0.5 * (x * core); each Mul tries its inputs
both ways.
Constants are matched by value: 0.5 and 1 within 1e-4, sqrt 2 and 1/sqrt 2
within 1e-4 relative (so 0.6 in place of 0.5 is no GELU).  `x` is bound once:
every use must read the same tensor.  The erfc argument may also be written
Neg(x * 0.70711), Neg(x / sqrt 2), -x / sqrt 2 or x * -0.70711.
"""

import logging
import math

from rewrites.base import Edit, FusionPass
from rewrites.graph import Graph
from rewrites.pattern import ConstPattern, Match, OneOf, OpTypePattern, products

logger = logging.getLogger(__name__)

SQRT2 = math.sqrt(2.0)
INV_SQRT2 = 1.0 / SQRT2
_REL = 1e-4


def _const(value: float, rel: bool = False) -> ConstPattern:
    return ConstPattern(value, tol=0.0 if rel else 1e-4, rtol=_REL if rel else 0.0)


def _x() -> OpTypePattern:
    return OpTypePattern("*", name="x")


def _over_sqrt2(operand) -> OneOf:
    """operand / sqrt 2, as a division or a product."""
    return OneOf(
        OpTypePattern("RealDiv|Div", inputs=[operand, _const(SQRT2, rel=True)]),
        OpTypePattern("Mul", inputs=[operand, _const(INV_SQRT2, rel=True)]))


def _minus_x_over_sqrt2() -> OneOf:
    neg_x = OpTypePattern("Neg", inputs=[_x()])
    return OneOf(
        _over_sqrt2(neg_x),
        OpTypePattern("Neg", inputs=[_over_sqrt2(_x())]),
        OpTypePattern("RealDiv|Div", inputs=[_x(), _const(-SQRT2, rel=True)]),
        OpTypePattern("Mul", inputs=[_x(), _const(-INV_SQRT2, rel=True)]))


#: 1 + erf(x / sqrt 2)  or  erfc(-x / sqrt 2): twice Phi(x).
TWICE_PHI = OneOf(
    OpTypePattern("Add|AddV2", inputs=[_const(1.0), OpTypePattern("Erf", inputs=[
        _over_sqrt2(_x())])]),
    OpTypePattern("Erfc", inputs=[_minus_x_over_sqrt2()]))

#: x * 0.5 * TWICE_PHI in any association; the root is bound as 'gelu'.
EXACT_GELU = products([_x(), _const(0.5), TWICE_PHI], name="gelu")


class ExactGeluPass(FusionPass):
    """Base of the passes that replace exact GELU by an approximation:
    subclasses implement `emit(edit, x, dtype, scope) -> output tensor`."""

    pattern = EXACT_GELU
    root_ops = ("Mul",)

    def fuse(self, graph: Graph, match: Match, edit: Edit) -> bool:
        root = match.tensor("gelu")
        dtype = graph.dtype(root)
        if dtype is None or not dtype.is_floating:
            logger.debug("%s: %s not fused: its dtype (%s) is not a floating type",
                         self.name, root, dtype)
            return False
        output = self.emit(edit, match.tensor("x"), dtype, f"{root}/{self.name}")
        edit.replace(root, output)
        edit.remove(match.interior() | {root})
        edit.collect(match.consts)
        return True

    def emit(self, edit: Edit, x: str, dtype, scope: str) -> str:
        raise NotImplementedError


def scalar(edit: Edit, scope: str, value: float, dtype) -> str:
    """A scalar Const of `dtype` named under `scope`."""
    return edit.add_const(f"{scope}/const", value, dtype=dtype)


def binary(edit: Edit, op: str, scope: str, a: str, b: str, dtype) -> str:
    return edit.add_node(op, f"{scope}/{op.lower()}", [a, b], {"T": dtype})


def unary(edit: Edit, op: str, scope: str, a: str, dtype) -> str:
    return edit.add_node(op, f"{scope}/{op.lower()}", [a], {"T": dtype})
