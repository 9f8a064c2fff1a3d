"""fold_constants: evaluate subgraphs that only depend on constants.

::

    Const --> Identity --+
                         +--> Slice --> AddV2 <-- (activations)    ==>   Const' --> AddV2
    Const (begin, size) -+       ^
                                 folded: every input is constant

A node is foldable when it is stateless, not a Placeholder, not protected, has
at least one data input, and all its inputs (data and control) come from
constants (Const, possibly behind Identity) or other foldable nodes; so nothing
fed by a Placeholder is ever folded.  Each foldable node read by a non-foldable
one is a fold target: the subgraph under the targets is imported into a fresh
TensorFlow graph and run once on the CPU, and each target becomes a Const (under
its own name when only its output 0 is read, so its readers do not change).
Results over 16 MiB are left unfolded, so a Fill or Tile does not bloat the model.

Math: the values are those TensorFlow computes at run time with the same
kernels (Grappler's optimizers are off while evaluating): bit-identical.
Sites: fold targets replaced.
"""

import logging
from typing import Dict, List, Set

import numpy as np
import tensorflow as tf

from rewrites.base import RewritePass
from rewrites.constants import attached_node
from rewrites.graph import Graph, GraphDef, is_stateful, parse_input, tensor_name

logger = logging.getLogger(__name__)

#: Folded constants larger than this stay computed.
MAX_FOLDED_BYTES = 16 << 20
_NEVER_FOLD = frozenset({"Placeholder", "PlaceholderWithDefault", "NoOp", "Const",
                         "Identity", "Enter", "Exit", "Merge", "Switch", "NextIteration"})


class FoldConstants(RewritePass):
    """Replaces subgraphs whose inputs are all constant by their value."""

    name = "fold_constants"
    exact = True
    default_targets = ("cpu",)
    max_abs_error = "0 (bit-identical: TensorFlow's own CPU kernels compute the values)"

    def rewrite(self, graph: Graph) -> int:
        const_like, foldable = self._classify(graph)
        targets = self._targets(graph, foldable)
        if not targets:
            return 0
        needed = self._ancestors(graph, targets, const_like | foldable)
        values = self._evaluate(graph, targets, needed)
        sites = 0
        for name, ports in targets.items():
            if not all((name, p) in values for p in ports):
                continue
            if any(values[(name, p)].nbytes > MAX_FOLDED_BYTES for p in ports):
                logger.info("%s: not folding %s (%d bytes)", self.name, name,
                            max(values[(name, p)].nbytes for p in ports))
                continue
            if ports == {0}:
                graph.replace_with_const(name, values[(name, 0)])
            else:
                mapping = {tensor_name(name, p): graph.add_const(
                    f"{name}/folded_{p}", values[(name, p)]) for p in sorted(ports)}
                graph.replace_uses(mapping)
            sites += 1
        graph.remove_unused(needed)
        return sites

    @staticmethod
    def _classify(graph: Graph):
        const_like: Set[str] = set()
        foldable: Set[str] = set()
        for node in graph.topological():
            sources = {parse_input(t)[0] for t in node.input}
            if node.op == "Const":
                const_like.add(node.name)
            elif (node.op == "Identity" and not Graph.control_inputs(node)
                  and sources <= const_like):
                const_like.add(node.name)
            elif (node.op not in _NEVER_FOLD and not is_stateful(node.op)
                  and node.name not in graph.protected and Graph.data_inputs(node)
                  and sources <= (const_like | foldable)):
                foldable.add(node.name)
        return const_like, foldable

    @staticmethod
    def _targets(graph: Graph, foldable: Set[str]) -> Dict[str, set]:
        """Foldable node -> output ports read by a non-foldable node."""
        targets: Dict[str, set] = {}
        for node in graph.nodes():
            if node.name in foldable:
                continue
            for text in Graph.data_inputs(node):
                source, port, _ = parse_input(text)
                if source in foldable:
                    targets.setdefault(source, set()).add(port)
        return targets

    @staticmethod
    def _ancestors(graph: Graph, targets, closure: Set[str]) -> Set[str]:
        """The targets and their ancestors inside `closure`."""
        seen: Set[str] = set()
        stack = list(targets)
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            stack.extend(parse_input(t)[0] for t in graph.node(name).input
                         if parse_input(t)[0] in closure)
        return seen

    def _evaluate(self, graph: Graph, targets: Dict[str, set], needed: Set[str]):
        """(node, port) -> numpy value of every target output."""
        sub = GraphDef()
        sub.library.CopyFrom(graph.library)
        constants = graph.constants
        for node in graph.topological():
            if node.name in needed:
                copy = sub.node.add()
                copy.CopyFrom(attached_node(node, constants))
                if node.op in ("Const", "Identity"):  # control edges of constants order nothing
                    del copy.input[:]
                    copy.input.extend(Graph.data_inputs(node))
        fetches = [(name, port) for name, ports in targets.items() for port in sorted(ports)]
        try:
            return dict(zip(fetches, _run(sub, [tensor_name(n, p) for n, p in fetches])))
        except (tf.errors.OpError, ValueError, TypeError) as e:
            logger.warning("%s: evaluating all targets together failed (%s); trying one by one",
                           self.name, str(e).splitlines()[0])
        values = {}
        for fetch in fetches:
            try:
                values[fetch] = _run(sub, [tensor_name(*fetch)])[0]
            except (tf.errors.OpError, ValueError, TypeError) as e:
                logger.warning("%s: cannot fold %s: %s", self.name, tensor_name(*fetch),
                               str(e).splitlines()[0])
        return values


def _run(graph_def: GraphDef, fetches: List[str]) -> List[np.ndarray]:
    """Runs `fetches` of a constant-only graph on the CPU, Grappler off."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    config = tf.compat.v1.ConfigProto(device_count={"GPU": 0})
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    config.graph_options.optimizer_options.opt_level = tf.compat.v1.OptimizerOptions.L0
    config.graph_options.optimizer_options.do_constant_folding = False
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        return session.run([f if ":" in f else f + ":0" for f in fetches])
