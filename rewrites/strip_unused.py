"""strip_unused: drop what the outputs do not need.

Three clean-ups, in this order::

    ^ctrl edges        Const --> Identity --> Identity --> consumer       dead --> dead
    from stateless       (weight read left by freezing)                  (not an ancestor
    nodes / NoOps       ==>  Const -----------------------> consumer      of an output)

1. Control edges whose source neither is stateful nor depends (by data or
   control edges, through NoOps and Identities) on a stateful node order
   nothing in an inference graph: they are dropped.  Placeholders count as
   stateless; an Assert (or its If wrapper) keeps the edges that wait on it.
2. An Identity that reads a Const or another Identity, is not protected and has
   no control inputs is bypassed: its readers read its source.
3. Nodes that are not ancestors (by data or remaining control edges) of the
   roots are removed.  Roots are the protected nodes, Placeholders (the inputs
   stay, so the signature does not change) and stateful nodes; with nothing
   protected, every sink that is not a constant or NoOp is a root.

Math: none changes; the outputs are bit-identical.
Sites: nodes removed plus control edges dropped.
"""

import logging
from rewrites.base import RewritePass
from rewrites.graph import Graph, is_stateful, parse_input

logger = logging.getLogger(__name__)


class StripUnused(RewritePass):
    """Removes nodes the outputs do not need, Identity chains over constants,
    and control edges that order nothing."""

    name = "strip_unused"
    exact = True
    #: openvino: the one pass of its default; OpenVINO's own fusions (MHA, LayerNorm,
    #: GELU) undo or fight the others (BENCHMARKS.md, benchmarks/openvino_target.py)
    default_targets = ("cpu", "openvino")
    max_abs_error = "0 (bit-identical)"

    def rewrite(self, graph: Graph) -> int:
        dropped = self._drop_control_edges(graph)
        collapsed = self._collapse_identities(graph)
        removed = self._remove_unreachable(graph)
        self.details = {"nodes_removed": removed, "identities_bypassed": collapsed,
                        "control_edges_dropped": dropped}
        return removed + dropped

    @staticmethod
    def _drop_control_edges(graph: Graph) -> int:
        stateful_above = set()  # nodes that are, or wait on, a stateful node
        for node in graph.topological():
            if ((is_stateful(node.op) and node.op not in ("Placeholder", "NoOp"))
                    or any(parse_input(t)[0] in stateful_above for t in node.input)):
                stateful_above.add(node.name)
        dropped = 0
        for node in graph.nodes():
            keep = [t for n, t in ((parse_input(t)[0], t) for t in node.input)
                    if not t.startswith("^") or n in stateful_above or n not in graph]
            if len(keep) != len(node.input):
                dropped += len(node.input) - len(keep)
                graph.set_inputs(node.name, keep)
        return dropped

    @staticmethod
    def _collapse_identities(graph: Graph) -> int:
        def bypassable(node) -> bool:
            if (node is None or node.op != "Identity" or node.name in graph.protected
                    or Graph.control_inputs(node) or len(Graph.data_inputs(node)) != 1):
                return False
            source = graph.get(Graph.data_inputs(node)[0])
            return source is not None and source.op in ("Const", "Identity")

        mapping = {}
        for node in graph.nodes():
            if not bypassable(node):
                continue
            target = Graph.data_inputs(node)[0]
            seen = {node.name}
            while bypassable(graph.get(target)) and parse_input(target)[0] not in seen:
                seen.add(parse_input(target)[0])
                target = Graph.data_inputs(graph.node(target))[0]
            mapping[node.name] = target
        if mapping:
            graph.replace_uses(mapping)
        return len(mapping)

    @staticmethod
    def _remove_unreachable(graph: Graph) -> int:
        def const_like(node) -> bool:
            while node is not None and node.op == "Identity" and len(node.input) == 1:
                node = graph.get(node.input[0])
            return node is not None and node.op == "Const"

        roots = {n.name for n in graph.nodes()
                 if n.op == "Placeholder" or (is_stateful(n.op) and n.op != "NoOp")}
        if graph.protected:
            roots |= {n for n in graph.protected if n in graph}
        else:
            roots |= {n.name for n in graph.nodes()
                      if not graph.consumer_names(n.name) and n.op != "NoOp"
                      and not const_like(n)}
        keep = set()
        stack = list(roots)
        while stack:
            name = stack.pop()
            if name in keep or name not in graph:
                continue
            keep.add(name)
            stack.extend(parse_input(t)[0] for t in graph.node(name).input)
        dead = [n for n in graph.names() if n not in keep]
        graph.remove(dead)
        return len(dead)
