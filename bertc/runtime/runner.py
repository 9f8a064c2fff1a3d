"""The one runner: a TF1 Session over a frozen graph, run the way it is served.

Two ways to run the same GraphDef, and nothing else anywhere in bertc:

  served       what `bertc serve`, verify's served check and the benchmarks run:
               the weights as Const nodes in the graph, Grappler's default
               optimizers on (constant folding, the oneDNN remapper that fuses
               MatMul + BiasAdd and turns LayerNorm into _MklLayerNorm, ...) but
               two (OFF_FOR_MEMORY below), `inter_op_threads` (default 1, as Intel's BF16 BERT guide sets it)
               and `intra_op_threads` threads of the Session's own
               (SERVED_CONFIG below).  Several buckets share one Session, each under
               its scope seq_<S>/ (`ServedSession`).
  as_written   the graph exactly as its ops say: Grappler's meta-optimizer off,
               and each Const over 64 KiB lifted out as a Placeholder fed its exact
               value with every call, so TensorFlow's import, executor and Const
               kernels do not each hold a copy of the weights.  verify runs the
               unrewritten reference and the per-pass prefixes this way.

Grappler is not a no-op: its remapper rewrites Google's contrib LayerNorm form
into _MklLayerNorm with eps 1e-3 instead of the graph's 1e-12 (tests/test_verify.py),
and it only sees weights that are constants.  So the served check embeds the
constants too.  A runner is called with {input name: int32 [B, S]} and returns
{output name: array}; `close` frees its memory.
"""

import dataclasses
from typing import Dict, Optional, Sequence

import tensorflow as tf
from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

import rewrites
import rewrites.constants
from bertc.artifact import saved_model_reader
from bertc.model.freeze import FrozenGraph

from bertc.runtime.tf_settings import default_intra_op_threads

SERVED = "served"
AS_WRITTEN = "as_written"

# Grappler optimizers the served Session turns off.  Neither changes a bertc graph on
# the CPU (outputs are bitwise equal with and without them; the memory optimizer's
# swapping and recomputation are for GPUs and gradients, the layout optimizer's NCHW
# rewrites for convolutions), but each works on its own copies of the weight-laden
# graph at the first run: a BERT-Large span artifact at 32 x 384 peaked at 15.7 GiB
# (f32) and 12.9 GiB (bf16) with them, 10.7 and 7.9 GiB without (BENCHMARKS.md).
OFF_FOR_MEMORY = {"memory_optimization": RewriterConfig.NO_MEM_OPT,
                  "layout_optimizer": RewriterConfig.OFF}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How a Session runs: `mode` SERVED or AS_WRITTEN and, served, its threads
    (TensorFlow's intra_op_parallelism_threads and inter_op_parallelism_threads).
    `proto`, a ConfigProto, replaces the served session config altogether (the
    runtime sweep of benchmarks/ times other Grappler and thread settings)."""

    mode: str = SERVED
    intra_op_threads: int = dataclasses.field(default_factory=default_intra_op_threads)
    inter_op_threads: int = 1
    proto: Optional[object] = dataclasses.field(default=None, compare=False)

    def session_config(self) -> tf.compat.v1.ConfigProto:
        if self.proto is not None:
            return self.proto
        if self.mode == AS_WRITTEN:
            config = tf.compat.v1.ConfigProto()
            config.graph_options.rewrite_options.disable_meta_optimizer = True
            return config
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=self.intra_op_threads,
                                          inter_op_parallelism_threads=self.inter_op_threads,
                                          use_per_session_threads=True)
        for optimizer, off in OFF_FOR_MEMORY.items():
            setattr(config.graph_options.rewrite_options, optimizer, off)
        return config

    def describe(self) -> dict:
        """What the manifest and verify's report record of the run."""
        if self.mode == AS_WRITTEN:
            return {"mode": self.mode, "grappler": False, "weights": "fed"}
        from bertc.runtime import tf_settings as tf_runtime
        return {"mode": self.mode, "grappler": True, "grappler_off": sorted(OFF_FOR_MEMORY),
                "weights": "constants",
                "intra_op_threads": self.intra_op_threads,
                "inter_op_threads": self.inter_op_threads,
                "onednn": tf_runtime.describe()}


def lift_weights(graph_def, constants=None,
                 min_bytes: int = rewrites.constants.DETACH_MIN_BYTES):
    """(copy of graph_def whose large and detached Consts are Placeholders,
    {node name: value}); the input is untouched."""
    light, values = rewrites.detach_constants(graph_def, min_bytes)
    values.update(constants or {})
    return rewrites.constants.consts_as_placeholders(light, values), values


class ServedSession:
    """One Session over one or more graphs (buckets), each under its own scope.

    add(scope, graph_def, constants, inputs, outputs) imports a graph; after
    finalize(), run(scope, [arrays in input order]) -> {output: array}.
    """

    def __init__(self, config: RunConfig = RunConfig()):
        self.config = config
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph,
                                             config=config.session_config())
        self._calls, self._output_names, self._fed = {}, {}, {}

    def add(self, scope: str, graph_def, constants, inputs: Sequence[str],
            outputs: Dict[str, str]) -> None:
        """Imports `graph_def` under `scope`; inputs and outputs are tensor names."""
        weights = {}
        if self.config.mode == AS_WRITTEN:
            graph_def, weights = lift_weights(graph_def, constants)
        elif constants:
            graph_def = rewrites.attach_constants(graph_def, constants)
        with self._graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name=scope)
        tensor = lambda name: self._graph.get_tensor_by_name(f"{scope}/{name}")  # noqa: E731
        fed = [tensor(f"{n}:0") for n in weights]
        names = sorted(outputs)
        self._calls[scope] = self._session.make_callable(
            [tensor(outputs[n]) for n in names], feed_list=[tensor(t) for t in inputs] + fed)
        self._output_names[scope] = names
        self._fed[scope] = list(weights.values())

    def output_names(self, scope: str):
        return list(self._output_names[scope])

    def finalize(self) -> None:
        self._graph.finalize()

    def run(self, scope: str, inputs: Sequence) -> Dict[str, object]:
        values = self._calls[scope](*inputs, *self._fed[scope])
        return dict(zip(self._output_names[scope], values))

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self._session = self._graph = None
        self._calls, self._fed = {}, {}


class SessionRunner:
    """A runner over one graph: runner({input name: array}) -> {output name: array}."""

    def __init__(self, graph_def, inputs: Dict[str, str], outputs: Dict[str, str],
                 config: RunConfig = RunConfig(), constants=None):
        self._input_names = list(inputs)
        self._session = ServedSession(config)
        self._session.add("graph", graph_def, constants, list(inputs.values()), outputs)
        self._session.finalize()

    @property
    def output_names(self):
        return self._session.output_names("graph")

    def __call__(self, feeds: dict) -> dict:
        return self._session.run("graph", [feeds[n] for n in self._input_names])

    def close(self) -> None:
        self._session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def graph_def_runner(frozen: FrozenGraph,
                     config: RunConfig = RunConfig(AS_WRITTEN)) -> SessionRunner:
    """A runner over a FrozenGraph (the unrewritten reference, or any rewrite of it);
    as written unless told otherwise."""
    return SessionRunner(frozen.graph_def,
                         {n: f"{node}:0" for n, node in frozen.inputs.items()},
                         {n: f"{node}:0" for n, node in frozen.outputs.items()}, config,
                         frozen.constants)


def saved_model_runner(export_dir: str, config: RunConfig = RunConfig()) -> SessionRunner:
    """A runner over the serving_default signature of a (constants-only) SavedModel,
    read with its weights detached (each held once until the run config embeds
    them); served unless told otherwise."""
    graph_def, constants, signature = saved_model_reader.read_detached(export_dir)
    return SessionRunner(graph_def, {n: i.name for n, i in signature.inputs.items()},
                         {n: i.name for n, i in signature.outputs.items()}, config, constants)


def run_configs(intra_op_threads: Optional[int] = None,
                inter_op_threads: Optional[int] = None) -> Dict[str, RunConfig]:
    """The two ways verify runs an artifact: {'served': ..., 'as_written': ...}."""
    served = RunConfig(SERVED, intra_op_threads or default_intra_op_threads(),
                       inter_op_threads or 1)
    return {SERVED: served, AS_WRITTEN: RunConfig(AS_WRITTEN)}


def saved_model_runs(export_dir: str, intra_op_threads: Optional[int] = None,
                     inter_op_threads: Optional[int] = None) -> dict:
    """{mode: (runner factory, description)} for verify: the SavedModel served,
    then as written."""
    return {name: (lambda c=config: saved_model_runner(export_dir, c), config.describe())
            for name, config in run_configs(intra_op_threads, inter_op_threads).items()}
