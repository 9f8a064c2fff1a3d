"""Running a frozen GraphDef or an exported SavedModel on numpy batches.

Both run in a TF1 Session over an imported graph. For verification the large
weight constants are lifted out of the graph first: each Const over 64 KiB becomes
a Placeholder of the same dtype and shape, fed its exact value with every call.
The ops and values are the same; what changes is that TensorFlow's import,
executor and Const kernels no longer each hold a copy of the weights (BERT-Large:
16 GiB peak with constants in the graph). Grappler's meta-optimizer is off: the
graph is checked as written (Grappler's rewrites are semantics-preserving and
applied by whatever runtime serves it). A runner is called with {input name: int32
[B, S]} and returns {output name: array}; `close` frees its memory.
"""

import tensorflow as tf

import rewrites
import rewrites.constants
from bertc import saved_model_reader
from bertc.freeze import FrozenGraph


def session_config(grappler: bool = False):
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = not grappler
    return config


def lift_weights(graph_def, constants=None,
                 min_bytes: int = rewrites.constants.DETACH_MIN_BYTES):
    """(copy of graph_def whose large and detached Consts are Placeholders,
    {node name: value}); the input is untouched."""
    light, values = rewrites.detach_constants(graph_def, min_bytes)
    values.update(constants or {})
    return rewrites.constants.consts_as_placeholders(light, values), values


class SessionRunner:
    """A Session over one imported graph with named inputs and outputs.

    With lift=True (the default) large weights are fed, not embedded (see module doc).
    """

    def __init__(self, graph_def, inputs: dict, outputs: dict, grappler: bool = False,
                 lift: bool = True, constants=None, config=None):
        weights = {}
        if lift:
            graph_def, weights = lift_weights(graph_def, constants)
        elif constants:
            graph_def = rewrites.attach_constants(graph_def, constants)
        self._graph = tf.Graph()
        with self._graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        self._session = tf.compat.v1.Session(graph=self._graph,
                                             config=config or session_config(grappler))
        self._inputs = {n: self._graph.get_tensor_by_name(t) for n, t in inputs.items()}
        self._outputs = {n: self._graph.get_tensor_by_name(t) for n, t in outputs.items()}
        self._weights = {self._graph.get_tensor_by_name(f"{n}:0"): v for n, v in weights.items()}

    @property
    def output_names(self):
        return list(self._outputs)

    def __call__(self, feeds: dict) -> dict:
        feed_dict = dict(self._weights)
        feed_dict.update({self._inputs[n]: feeds[n] for n in self._inputs})
        return self._session.run(self._outputs, feed_dict)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self._session = self._graph = None
        self._weights = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def graph_def_runner(frozen: FrozenGraph, grappler: bool = False,
                     lift: bool = True) -> SessionRunner:
    """A runner over a FrozenGraph (the unrewritten reference, or any rewrite of it)."""
    return SessionRunner(frozen.graph_def,
                         {n: f"{node}:0" for n, node in frozen.inputs.items()},
                         {n: f"{node}:0" for n, node in frozen.outputs.items()}, grappler, lift,
                         frozen.constants)


def saved_model_runner(export_dir: str, grappler: bool = False,
                       lift: bool = True, config=None) -> SessionRunner:
    """A runner over the serving_default signature of a (constants-only) SavedModel,
    read with its weights detached (each held once).

    Benchmarks pass grappler=True, lift=False: the model as a server runs it
    (`config`, a ConfigProto, replaces the session config altogether).
    """
    graph_def, constants, signature = saved_model_reader.read_detached(export_dir)
    return SessionRunner(graph_def, {n: i.name for n, i in signature.inputs.items()},
                         {n: i.name for n, i in signature.outputs.items()}, grappler, lift,
                         constants, config)
