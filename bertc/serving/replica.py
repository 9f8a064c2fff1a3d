"""Replicas: worker threads, each with its own copy of the artifact's SavedModels.

A replica loads every bucket's frozen SavedModel (ARTIFACT/seq_<S>/1) into one
served Session (bertc.runtime.runner: scopes seq_<S>/, weights as constants, Grappler
on, an intra-op thread pool of its own), so `--parallel N` replicas with T threads
each use N * T cores, as TF Serving's per-model session config does. The session's
callables are made once per bucket; a call releases the GIL while it runs.
The worker loop takes batches from the Batcher until it is closed and drained.
"""

import functools
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
    """All buckets of an artifact in one served Session (bertc.runners.ServedSession,
    the runner verify and the benchmarks use too): run(seq_len, [B, S] inputs) -> outputs."""

    def __init__(self, art, intra_op_threads: int, inter_op_threads: int = 1):
        from bertc.runtime import runner as runners
        from bertc.artifact import saved_model_reader
        self._input_names = list(art.inputs)
        self._session = runners.ServedSession(runners.RunConfig(
            runners.SERVED, intra_op_threads, inter_op_threads))
        for seq_len in art.seq_lens:
            export_dir = art.saved_model_dir(seq_len)
            graph_def, constants, signature = saved_model_reader.read_detached(export_dir)
            missing = [n for n in self._input_names if n not in signature.inputs]
            if missing:
                raise BertcError(f"{os.path.join(export_dir, 'saved_model.pb')}: signature has "
                                 f"no input {missing[0]!r}; expected "
                                 f"{', '.join(self._input_names)}")
            self._session.add(f"seq_{seq_len}", graph_def, constants,
                              [signature.inputs[n].name for n in self._input_names],
                              {n: i.name for n, i in signature.outputs.items()})
            del graph_def, constants
        self._session.finalize()
        self._batch_size = art.batch_size

    def run(self, seq_len: int, inputs: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
        """Runs one bucket on int32 [B, S] arrays in the artifact's input order."""
        return self._session.run(f"seq_{seq_len}", inputs)

    def warm_up(self, seq_lens: Sequence[int]) -> None:
        """One all-zero batch per bucket (the first run of a session optimizes it)."""
        for seq_len in seq_lens:
            zeros = np.zeros((self._batch_size, seq_len), np.int32)
            self.run(seq_len, [zeros] * len(self._input_names))

    def close(self) -> None:
        self._session.close()


def load_model(art, intra_op_threads: int, inter_op_threads: int = 1) -> SessionModel:
    model = SessionModel(art, intra_op_threads, inter_op_threads)
    model.warm_up(art.seq_lens)
    return model


def model_factory(art, parallel: int, inter_op_threads: int = 1):
    """What loads a replica's model: (art, threads) -> model. OpenVINO artifacts
    share one compiled model per bucket with `parallel` streams
    (bertc.serving.openvino_model); others get a Session each."""
    if art.target == "openvino":
        from bertc.serving import openvino_model
        return openvino_model.factory(art, parallel)
    return functools.partial(load_model, inter_op_threads=inter_op_threads)


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
