"""The base classes of every pass.

`RewritePass.apply(graph_def, protected_nodes=())` is pure: it copies the graph,
rewrites the copy and returns `(new_graph_def, sites)`, the number of places it
changed.  `FusionPass` is the ONNX-Runtime-style base of the pattern fusions:
`fuse(graph, match, edit)` only decides what to add, rewire and remove (into an
`Edit`), and the base class makes one edit of the graph at the end.  The base
class also refuses matches that would remove a protected node, that touch a node
another match of the same run already took, or whose interior outputs are read
outside the match.
"""

import logging
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from rewrites.graph import Graph, GraphDef, parse_input
from rewrites.pattern import Match, Matcher, Pattern

logger = logging.getLogger(__name__)


#: Pipeline phases: EARLY passes run in the order asked; LATE ones (they change
#: shapes the others match) after every EARLY pass; FINAL ones after those.  Within
#: LATE and FINAL the registry's canonical order holds.
EARLY, LATE, FINAL = 0, 1, 2


class RewritePass:
    """A GraphDef -> GraphDef transform with a site count, and its facts.

    Class attributes (a pipeline builder such as bertc/passes.py derives its
    pipelines, checks and verify bounds from them; adding a pass is its file and
    one line in rewrites/registry.py):
      name: the registry name.
      exact: True if the output equals the input up to float32 re-association.
      max_abs_error: the error bound, in words (what tests check).
      option_names: keys of the pipeline's options this pass accepts as kwargs.
      phase: EARLY, LATE or FINAL (above).
      default_targets: targets whose default pipeline runs the pass.
      required_targets: targets that always run it.
      unsupported_targets: target -> why it cannot take the pass (skipped there).
      verify_bounds: for an approximate pass, the verify bounds it needs
        ({'min_cos': ..., 'argmax': ...}); the loosest of a pipeline applies.
      lowered_by: the pass that rewrites the internal ops this one emits into
        public ones (run unless internal ops are allowed).
      cls_only: the pass applies only to graphs whose outputs read the last
        layer's [CLS] rows alone (a default pipeline drops it elsewhere).
    """

    name = ""
    exact = True
    max_abs_error = "0 (bit-identical)"
    option_names: Tuple[str, ...] = ()
    phase = EARLY
    default_targets: Tuple[str, ...] = ()
    required_targets: Tuple[str, ...] = ()
    unsupported_targets: Dict[str, str] = {}
    verify_bounds: Optional[Dict[str, float]] = None
    lowered_by: Optional[str] = None
    cls_only = False

    @classmethod
    def expected_sites(cls, layers: int, cls_only_outputs: bool) -> Optional[int]:
        """Sites the pass must reach on a BERT graph of `layers` encoder layers
        (outputs reading only [CLS] rows or not); None when not fixed."""
        return None

    def __init__(self, **options):
        unknown = set(options) - set(self.option_names)
        if unknown:
            raise TypeError(f"pass {self.name}: unknown options {', '.join(sorted(unknown))}")
        self.options = options
        self.details: Dict[str, object] = {}  # counts; lists are logged by length

    def apply(self, graph_def: GraphDef, protected_nodes: Iterable[str] = (),
              owned: bool = False) -> Tuple[GraphDef, int]:
        """Returns (rewritten copy of graph_def, number of sites rewritten).

        owned=True hands graph_def over to be edited in place (the pipeline's own
        intermediates); the default leaves it untouched.
        """
        graph = Graph(graph_def, protected=protected_nodes, copy=not owned)
        sites = self._rewrite_logged(graph)
        return graph.to_graph_def(), sites

    def apply_detached(self, graph_def: GraphDef, constants: Dict[str, np.ndarray],
                       protected_nodes: Iterable[str] = (), owned: bool = False
                       ) -> Tuple[GraphDef, Dict[str, np.ndarray], int]:
        """`apply` on a graph whose large Consts are detached (values in
        `constants`, see rewrites.graph): returns (graph_def, constants, sites),
        the result detached too.  owned=True hands over the map as well."""
        graph = Graph(graph_def, protected=protected_nodes, copy=not owned, constants=constants)
        sites = self._rewrite_logged(graph)
        return graph.to_graph_def(), graph.constants, sites

    def _rewrite_logged(self, graph: Graph) -> int:
        self.details = {}
        sites = self.rewrite(graph)
        logger.info("%s: %d site(s)%s", self.name, sites, "".join(
            f", {k} {len(v) if isinstance(v, (list, tuple)) else v}"
            for k, v in self.details.items()))
        return sites

    def rewrite(self, graph: Graph) -> int:
        """Edits `graph` in place; returns the number of sites."""
        raise NotImplementedError


class Edit:
    """What one fusion run adds, rewires and removes, applied at once.

    Nothing reaches the graph before `apply()`.  Changes are recorded in an open
    batch (one `fuse()`); `commit()` keeps it, `discard()` drops it, so a fuse
    that gives up leaves nothing behind.  Added nodes' names are reserved in the
    edit, so later `add_*` calls of the same run never collide.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self._done = _Changes()
        self._open = _Changes()

    def add_node(self, op: str, name: str, inputs: Sequence[str] = (), attrs: dict = None) -> str:
        """Records a node under a free variant of `name`; returns that name."""
        name = self.graph.unique_name(name, taken=self._taken)
        self._open.nodes[name] = (op, tuple(inputs), dict(attrs or {}), None)
        return name

    def add_const(self, name: str, value, dtype=None) -> str:
        """Records a Const holding `value`; returns its name."""
        name = self.graph.unique_name(name, taken=self._taken)
        self._open.nodes[name] = ("Const", (), {}, (value, dtype))
        return name

    def _taken(self, name: str) -> bool:
        return name in self._done.nodes or name in self._open.nodes

    def replace(self, old_tensor: str, new_tensor: str) -> None:
        """Every reader of `old_tensor` will read `new_tensor`."""
        self._open.rewire[old_tensor] = new_tensor

    def remove(self, names: Iterable[str]) -> None:
        """Nodes that must be gone (nothing may read them once rewired)."""
        self._open.remove.update(names)

    def collect(self, names: Iterable[str]) -> None:
        """Nodes (constants a match used) to remove if nothing reads them any more."""
        self._open.collect.update(names)

    def commit(self) -> None:
        """Keeps the open batch."""
        self._done.merge(self._open)
        self._open = _Changes()

    def discard(self) -> None:
        """Drops the open batch, as if it had never been recorded."""
        self._open = _Changes()

    def apply(self) -> None:
        """Commits the open batch and makes every kept change to the graph."""
        self.commit()
        graph, done = self.graph, self._done
        for name, (op, inputs, attrs, const) in done.nodes.items():
            added = (graph.add_const(name, *const) if const is not None
                     else graph.add_node(op, name, inputs, attrs).name)
            assert added == name, (added, name)
        if done.rewire:
            graph.replace_uses(done.rewire, skip=done.remove)
        still_read = {n: sorted(graph.consumer_names(n) - done.remove)
                      for n in done.remove if n in graph}
        still_read = {n: users for n, users in still_read.items() if users}
        if still_read:
            name, users = next(iter(still_read.items()))
            raise RuntimeError(f"edit would leave {users[0]!r} reading removed node {name!r}")
        graph.remove(done.remove)
        graph.remove_unused(done.collect)
        self._done = _Changes()


class _Changes:
    """One batch of an Edit: nodes to add (name -> (op, inputs, attrs, (value,
    dtype) for a Const)), tensors to rewire, nodes to remove or collect."""

    def __init__(self):
        self.nodes: Dict[str, tuple] = {}
        self.rewire: Dict[str, str] = {}
        self.remove: set = set()
        self.collect: set = set()

    def merge(self, other: "_Changes") -> None:
        self.nodes.update(other.nodes)
        self.rewire.update(other.rewire)
        self.remove |= other.remove
        self.collect |= other.collect


class FusionPass(RewritePass):
    """A pass that replaces each match of `pattern` rooted at a node.

    Subclasses set `pattern` (and `root_ops`, the op types a root can have) and
    implement `fuse(graph, match, edit) -> bool`.
    """

    pattern: Pattern = None
    root_ops: Tuple[str, ...] = ()
    see_through: Tuple[str, ...] = ("Identity",)

    def rewrite(self, graph: Graph) -> int:
        matcher = Matcher(self.pattern, see_through=self.see_through)
        edit = Edit(graph)
        claimed: set = set()
        sites = 0
        for node in graph.topological():
            if self.root_ops and node.op not in self.root_ops:
                continue
            for match in matcher.matches(graph, node.name):
                if (match.nodes - match.consts) & claimed:
                    continue
                reason = self.refusal(graph, match)
                if reason:
                    logger.debug("%s: refusing match at %s: %s", self.name, node.name, reason)
                    continue
                if self.fuse(graph, match, edit):
                    edit.commit()
                    claimed |= match.nodes - match.consts
                    sites += 1
                    break
                edit.discard()
        edit.apply()
        return sites

    def refusal(self, graph: Graph, match: Match) -> Optional[str]:
        """Why a match may not be fused (None if it may): a protected or
        control-dependent interior node, or an interior output read outside."""
        return interior_refusal(graph, match.interior() | {parse_input(match.root)[0]},
                                match.nodes, outputs={parse_input(match.root)[0]})

    def fuse(self, graph: Graph, match: Match, edit: Edit) -> bool:
        raise NotImplementedError


def interior_refusal(graph: Graph, removed: Iterable[str], covered: Iterable[str],
                     outputs: Iterable[str] = ()) -> Optional[str]:
    """Why removing `removed` is unsafe, or None.  `covered` nodes may read them
    freely; `outputs` may be read by anyone (their uses get rewired)."""
    covered = set(covered)
    outputs = set(outputs)
    for name in removed:
        node = graph.node(name)
        if name in graph.protected:
            return f"{name} is protected"
        if Graph.control_inputs(node) or graph.control_consumers(name):
            return f"{name} has control edges"
        if name in outputs:
            continue
        outside = graph.consumer_names(name) - covered
        if outside:
            return f"{name} is also read by {sorted(outside)[0]}"
    return None
