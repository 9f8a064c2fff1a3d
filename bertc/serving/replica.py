"""Replicas: worker threads, each with its own copy of the artifact's SavedModels.

A replica loads every bucket's frozen SavedModel (ARTIFACT/seq_<S>/1) into one
TF1 graph (scopes seq_<S>/) run by one Session whose intra-op thread pool is its
own (`use_per_session_threads`), so `--parallel N` replicas with T threads each
use N * T cores, as TF Serving's per-model session config does. The session's
callables are made once per bucket; a call releases the GIL while it runs.
The worker loop takes batches from the Batcher until it is closed and drained.
"""

import logging
import os
import threading
import time
from typing import Callable, Dict, List, Sequence

import numpy as np

from bertc.errors import BertcError
from bertc.serving.batcher import Batch, Batcher

logger = logging.getLogger(__name__)


class SessionModel:
    """All buckets of an artifact in one Session: run(seq_len, [B, S] inputs) -> outputs."""

    def __init__(self, art, intra_op_threads: int):
        import tensorflow as tf

        import rewrites
        from bertc import saved_model_reader
        self._input_names = list(art.inputs)
        self._calls = {}
        self._output_names = {}
        graph = tf.Graph()
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=intra_op_threads,
                                          inter_op_parallelism_threads=1,
                                          use_per_session_threads=True)
        self._session = tf.compat.v1.Session(graph=graph, config=config)
        for seq_len in art.seq_lens:
            export_dir = art.saved_model_dir(seq_len)
            path = os.path.join(export_dir, "saved_model.pb")
            graph_def, constants, signature = saved_model_reader.read_detached(export_dir)
            scope = f"seq_{seq_len}"
            with graph.as_default():
                tf.compat.v1.import_graph_def(rewrites.attach_constants(graph_def, constants),
                                              name=scope)
            del graph_def, constants
            try:
                feeds = [graph.get_tensor_by_name(f"{scope}/{signature.inputs[n].name}")
                         for n in self._input_names]
            except KeyError as e:
                raise BertcError(f"{path}: signature has no input {e}; expected "
                                 f"{', '.join(self._input_names)}") from None
            names = sorted(signature.outputs)
            fetches = [graph.get_tensor_by_name(f"{scope}/{signature.outputs[n].name}")
                       for n in names]
            self._output_names[seq_len] = names
            self._calls[seq_len] = self._session.make_callable(fetches, feed_list=feeds)
        graph.finalize()
        self._batch_size = art.batch_size

    def run(self, seq_len: int, inputs: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
        """Runs one bucket on int32 [B, S] arrays in the artifact's input order."""
        values = self._calls[seq_len](*inputs)
        return dict(zip(self._output_names[seq_len], values))

    def warm_up(self, seq_lens: Sequence[int]) -> None:
        """One all-zero batch per bucket (the first run of a session optimizes it)."""
        for seq_len in seq_lens:
            zeros = np.zeros((self._batch_size, seq_len), np.int32)
            self.run(seq_len, [zeros] * len(self._input_names))

    def close(self) -> None:
        self._session.close()


def load_model(art, intra_op_threads: int) -> SessionModel:
    model = SessionModel(art, intra_op_threads)
    model.warm_up(art.seq_lens)
    return model


class Replica(threading.Thread):
    """One worker: batcher.next_batch() -> model.run -> deliver, until drained."""

    def __init__(self, index: int, model, batcher: Batcher,
                 on_batch: Callable[[Batch, float], None]):
        super().__init__(name=f"bertc-replica-{index}", daemon=True)
        self.index = index
        self.model = model
        self._batcher = batcher
        self._on_batch = on_batch

    def run(self) -> None:
        while True:
            batch = self._batcher.next_batch()
            if batch is None:
                return
            start = time.monotonic()
            try:
                outputs, error = self.model.run(batch.seq_len, batch.inputs()), None
            except Exception as e:  # noqa: BLE001 - reaches every future of the batch
                outputs, error = None, e
                logger.error("replica %d: seq %d batch of %d failed: %s", self.index,
                             batch.seq_len, batch.real, e)
            try:  # counted before anyone is answered, so /metrics agrees with answers
                self._on_batch(batch, time.monotonic() - start)
            except Exception:  # noqa: BLE001 - metrics must not stop the worker
                logger.exception("replica %d: batch observer failed", self.index)
            if error is not None:
                batch.fail(error)
            else:
                batch.deliver(outputs)


def start_replicas(models: List, batcher: Batcher, on_batch) -> List[Replica]:
    replicas = [Replica(i, m, batcher, on_batch) for i, m in enumerate(models)]
    for replica in replicas:
        replica.start()
    return replicas
