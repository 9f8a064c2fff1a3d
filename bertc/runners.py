"""Running a frozen GraphDef or an exported SavedModel on numpy batches.

Both run in a TF1 Session over an imported graph, the leanest way TensorFlow runs
a graph whose weights are constants. Verification runs them with Grappler's
meta-optimizer off: the graph is checked as written (Grappler's own rewrites are
semantics-preserving and applied by whatever runtime serves it), and Grappler
copies a constant-heavy graph many times over (BERT-Large peaked at 17 GB with
it, under 10 GB without). A runner is called with {input name: int32 [B, S]} and
returns {output name: array}; `close` frees its memory.
"""

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from bertc.freeze import FrozenGraph


def session_config(grappler: bool = False):
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = not grappler
    return config


class SessionRunner:
    """A Session over one imported graph with named inputs and outputs."""

    def __init__(self, graph_def, inputs: dict, outputs: dict, grappler: bool = False):
        self._graph = tf.Graph()
        with self._graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        self._session = tf.compat.v1.Session(graph=self._graph, config=session_config(grappler))
        self._inputs = {n: self._graph.get_tensor_by_name(t) for n, t in inputs.items()}
        self._outputs = {n: self._graph.get_tensor_by_name(t) for n, t in outputs.items()}

    @property
    def output_names(self):
        return list(self._outputs)

    def __call__(self, feeds: dict) -> dict:
        return self._session.run(self._outputs,
                                 {self._inputs[n]: feeds[n] for n in self._inputs})

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self._session = self._graph = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def graph_def_runner(frozen: FrozenGraph, grappler: bool = False) -> SessionRunner:
    """A runner over a FrozenGraph (the unrewritten reference, or any rewrite of it)."""
    return SessionRunner(frozen.graph_def,
                         {n: f"{node}:0" for n, node in frozen.inputs.items()},
                         {n: f"{node}:0" for n, node in frozen.outputs.items()}, grappler)


def read_saved_model(export_dir: str):
    """(GraphDef, serving_default SignatureDef) of a bertc SavedModel."""
    proto = saved_model_pb2.SavedModel()
    with open(f"{export_dir}/saved_model.pb", "rb") as f:
        proto.ParseFromString(f.read())
    meta = proto.meta_graphs[0]
    return meta.graph_def, meta.signature_def["serving_default"]


def saved_model_runner(export_dir: str, grappler: bool = False) -> SessionRunner:
    """A runner over the serving_default signature of a (constants-only) SavedModel."""
    graph_def, signature = read_saved_model(export_dir)
    return SessionRunner(graph_def, {n: i.name for n, i in signature.inputs.items()},
                         {n: i.name for n, i in signature.outputs.items()}, grappler)
