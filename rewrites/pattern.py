"""Subgraph patterns as data, in the manner of tf2onnx's OpTypePattern.

    OpTypePattern('Mul', name='gelu', inputs=[
        OpTypePattern('*', name='x'),
        OpTypePattern('Mul', inputs=[ConstPattern(0.5, tol=1e-4), core])])

- `op_type` is one op, alternatives 'Add|AddV2', or '*' for any op.
- `inputs` lists the data inputs, in order (None: inputs not checked); the string
  '*' is an anonymous wildcard.
- A `name` binds the matched tensor; the same name bound twice must be the same
  tensor (node and output port): that is how "the mean and the subtraction read
  one input" is said.
- Commutative ops (Add, AddV2, Mul, Maximum, Minimum, SquaredDifference) try
  their two inputs both ways, unless `commutative=False`.
- `ConstPattern(value, tol)` matches a Const (seen through Identity nodes) whose
  every element is within `tol` (+ `rtol` * |value|) of `value`; value None
  matches any constant.
- `OneOf(a, b, ...)` matches the first alternative that fits (all are tried
  while backtracking).
- The matcher sees through Identity nodes (configurable: LayerNorm also looks
  through StopGradient) unless the pattern asks for that op itself.

A `Match` records the bound tensors, every node the non-wildcard patterns
covered (`nodes`) and which of them are constants (`consts`).
"""

from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from rewrites.graph import Graph, canonical, parse_input

COMMUTATIVE_OPS = frozenset({"Add", "AddV2", "Mul", "Maximum", "Minimum", "SquaredDifference"})


class Pattern:
    """Base of the pattern kinds."""

    name: Optional[str] = None

    def _match(self, matcher, tensor, state) -> Iterator[tuple]:
        raise NotImplementedError


class OpTypePattern(Pattern):
    """A node of one of `op_type`'s ops whose data inputs match `inputs`.

    Args:
      op_type: 'Mul', 'Add|AddV2' or '*'.
      name: binding name of the matched tensor.
      inputs: patterns (or '*') for the data inputs, or None to not check them.
      commutative: try two inputs both ways; default: when every op is commutative.
      predicate: optional extra test `predicate(node_def, graph) -> bool`.
    """

    def __init__(self, op_type: str, name: Optional[str] = None,
                 inputs: Optional[Sequence] = None, commutative: Optional[bool] = None,
                 predicate: Optional[Callable] = None):
        self.op_types = None if op_type == "*" else frozenset(op_type.split("|"))
        self.name = name
        self.inputs = None if inputs is None else [_as_pattern(p) for p in inputs]
        if commutative is None:
            commutative = self.op_types is not None and self.op_types <= COMMUTATIVE_OPS
        self.commutative = commutative
        self.predicate = predicate

    @property
    def is_wildcard(self) -> bool:
        return self.op_types is None and self.inputs is None and self.predicate is None

    def __repr__(self):
        ops = "*" if self.op_types is None else "|".join(sorted(self.op_types))
        return f"OpTypePattern({ops!r}, name={self.name!r})"

    def _match(self, matcher, tensor, state):
        wants_seen_through = self.op_types is not None and self.op_types & matcher.see_through
        path = [] if wants_seen_through else matcher.trail(tensor)
        if path:
            tensor = matcher.graph.resolve_identity(tensor, tuple(matcher.see_through))
        tensor = canonical(tensor)
        node = matcher.graph.get(tensor)
        if node is None:
            return
        if self.op_types is not None and node.op not in self.op_types:
            return
        if self.predicate is not None and not self.predicate(node, matcher.graph):
            return
        state = _bind(state, self.name, tensor)
        if state is None:
            return
        if not self.is_wildcard:
            state = _cover(state, path + [node.name])
        if self.inputs is None:
            yield state
            return
        inputs = Graph.data_inputs(node)
        if len(inputs) != len(self.inputs):
            return
        orders = [inputs]
        if self.commutative and len(inputs) == 2 and inputs[0] != inputs[1]:
            orders.append(inputs[::-1])
        for order in orders:
            yield from _match_sequence(matcher, list(zip(self.inputs, order)), state)


class ConstPattern(Pattern):
    """A constant, optionally of a given value.

    Args:
      value: expected value (scalar: every element; array: same shape), or None.
      tol: absolute tolerance; rtol: relative tolerance on |value|.
      name: binding name.
      predicate: optional test `predicate(np.ndarray) -> bool`.
    """

    def __init__(self, value=None, tol: float = 1e-6, name: Optional[str] = None,
                 rtol: float = 0.0, predicate: Optional[Callable] = None):
        self.value = None if value is None else np.asarray(value, dtype=np.float64)
        self.tol = tol
        self.rtol = rtol
        self.name = name
        self.predicate = predicate

    def __repr__(self):
        return f"ConstPattern({self.value!r}, tol={self.tol}, name={self.name!r})"

    def accepts(self, array: np.ndarray) -> bool:
        if self.predicate is not None and not self.predicate(array):
            return False
        if self.value is None:
            return True
        if array.dtype.kind not in "fiuc" or array.size == 0:
            return False
        if self.value.ndim and array.shape != self.value.shape:
            return False
        limit = self.tol + self.rtol * np.abs(self.value)
        return bool(np.all(np.abs(array.astype(np.float64) - self.value) <= limit))

    def _match(self, matcher, tensor, state):
        path = matcher.trail(tensor)
        source = matcher.graph.resolve_identity(tensor, tuple(matcher.see_through))
        node = matcher.graph.get(source)
        if node is None or node.op != "Const":
            return
        if ((self.value is not None or self.predicate is not None)
                and not self.accepts(matcher.graph.const_value(source))):
            return
        state = _bind(state, self.name, canonical(source))
        if state is None:
            return
        names = path + [node.name]
        yield _cover(state, names, consts=names)


class OneOf(Pattern):
    """The first of `alternatives` that matches (the others on backtracking)."""

    def __init__(self, *alternatives, name: Optional[str] = None):
        if not alternatives:
            raise ValueError("OneOf needs at least one alternative")
        self.alternatives = [_as_pattern(p) for p in alternatives]
        self.name = name

    def __repr__(self):
        return f"OneOf({', '.join(map(repr, self.alternatives))})"

    def _match(self, matcher, tensor, state):
        bound = _bind(state, self.name, canonical(
            matcher.graph.resolve_identity(tensor, tuple(matcher.see_through))))
        if bound is None:
            return
        for alternative in self.alternatives:
            yield from alternative._match(matcher, tensor, bound)


ANY = OpTypePattern("*")


def _as_pattern(p) -> Pattern:
    if isinstance(p, Pattern):
        return p
    if p == "*":
        return ANY
    raise TypeError(f"pattern inputs must be patterns or '*', got {p!r}")


def products(factors: Sequence[Pattern], op: str = "Mul", name: Optional[str] = None) -> Pattern:
    """Every way `op` (commutative, associative) can combine 2 or 3 factors:
    a*b, or a*(b*c), b*(a*c), c*(a*b) with each product's inputs either way."""
    if len(factors) == 2:
        return OpTypePattern(op, name=name, inputs=list(factors))
    if len(factors) != 3:
        raise ValueError(f"products: expected 2 or 3 factors, got {len(factors)}")
    trees = []
    for i, outer in enumerate(factors):
        inner = [f for j, f in enumerate(factors) if j != i]
        trees.append(OpTypePattern(op, name=name, inputs=[
            outer, OpTypePattern(op, inputs=inner)]))
    return OneOf(*trees)


# ----------------------------------------------------------------- matching
# A state is (bindings: dict name -> tensor, nodes: frozenset, consts: frozenset).

def _bind(state, name, tensor):
    if name is None:
        return state
    bindings, nodes, consts = state
    if name in bindings:
        return state if bindings[name] == tensor else None
    bindings = dict(bindings)
    bindings[name] = tensor
    return bindings, nodes, consts


def _cover(state, names, consts=()):
    bindings, nodes, old_consts = state
    return bindings, nodes | frozenset(names), old_consts | frozenset(consts)


def _match_sequence(matcher, pairs, state):
    if not pairs:
        yield state
        return
    (pattern, tensor), rest = pairs[0], pairs[1:]
    for next_state in pattern._match(matcher, tensor, state):
        yield from _match_sequence(matcher, rest, next_state)


class Match:
    """One successful match: bound tensors and the nodes it covers."""

    def __init__(self, graph: Graph, root: str, state):
        self.graph = graph
        self.root = root
        self.bindings, self.nodes, self.consts = state

    def __contains__(self, name: str) -> bool:
        return name in self.bindings

    def tensor(self, name: str) -> str:
        return self.bindings[name]

    def node(self, name: str):
        return self.graph.node(self.bindings[name])

    def value(self, name: str) -> np.ndarray:
        return self.graph.const_value(self.bindings[name])

    def interior(self) -> frozenset:
        """Covered non-constant nodes other than the root: what a fusion removes."""
        return self.nodes - self.consts - {parse_input(self.root)[0]}

    def __repr__(self):
        return f"Match(root={self.root!r}, bindings={self.bindings!r})"


class Matcher:
    """Matches one pattern against tensors of a graph.

    Args:
      pattern: the pattern.
      see_through: ops the matcher looks through (single-input forwarding ops).
    """

    def __init__(self, pattern: Pattern, see_through: Sequence[str] = ("Identity",)):
        self.pattern = pattern
        self.see_through = frozenset(see_through)
        self.graph = None

    def trail(self, tensor: str) -> list:
        """Names of the see-through nodes in front of `tensor`'s producer."""
        names = []
        seen = set()
        while True:
            node = self.graph.get(tensor)
            if (node is None or node.op not in self.see_through or node.name in seen
                    or Graph.control_inputs(node) or len(Graph.data_inputs(node)) != 1):
                return names
            seen.add(node.name)
            names.append(node.name)
            tensor = Graph.data_inputs(node)[0]

    def matches(self, graph: Graph, tensor: str) -> Iterator[Match]:
        """Every match rooted at `tensor` (a node name means its output 0)."""
        self.graph = graph
        seen = set()
        for state in self.pattern._match(self, tensor, ({}, frozenset(), frozenset())):
            key = (tuple(sorted(state[0].items())), state[1])
            if key not in seen:
                seen.add(key)
                yield Match(graph, canonical(tensor), state)

    def match(self, graph: Graph, tensor: str) -> Optional[Match]:
        """The first match rooted at `tensor`, or None."""
        return next(iter(self.matches(graph, tensor)), None)
