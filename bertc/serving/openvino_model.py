"""A replica's model for an OpenVINO artifact: one infer request per bucket.

Every bucket's IR (ARTIFACT/openvino/seq_<S>/model.xml) is compiled once per
server, with NUM_STREAMS = --parallel and INFERENCE_NUM_THREADS = --parallel x
threads per replica (bertc.runtime.openvino_settings.served_properties, as verify
compiles it).  Each of the --parallel replicas holds its own infer request of
every compiled bucket, so N replica threads run N requests at once on the N
streams; a request releases the GIL while it runs.  run(seq_len, [B, S] inputs)
-> {output: array}, like the TensorFlow SessionModel.
"""

import threading
from typing import Dict, Sequence

import numpy as np

from bertc.runtime import openvino_settings as target
from bertc.runtime import openvino_runner


class CompiledBuckets:
    """The artifact's buckets compiled once with serve's properties (shared by replicas)."""

    def __init__(self, art, parallel: int, threads_per_replica: int):
        record = art.manifest["target"]["openvino"]
        self.properties = target.served_properties(record["inference_precision"], parallel,
                                                   threads_per_replica)
        self.compiled = {seq_len: openvino_runner.compile_ir(art.openvino_xml(seq_len),
                                                             self.properties)
                         for seq_len in art.seq_lens}


class OpenVINOModel:
    """One replica: an infer request per bucket of the shared compiled models."""

    def __init__(self, art, buckets: CompiledBuckets):
        self._input_names = list(art.inputs)
        self._batch_size = art.batch_size
        self._runners = {seq_len: openvino_runner.OpenVINORunner(compiled)
                         for seq_len, compiled in buckets.compiled.items()}

    def run(self, seq_len: int, inputs: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
        """Runs one bucket on int32 [B, S] arrays in the artifact's input order."""
        return self._runners[seq_len](dict(zip(self._input_names, inputs)))

    def warm_up(self, seq_lens: Sequence[int]) -> None:
        for seq_len in seq_lens:
            zeros = np.zeros((self._batch_size, seq_len), np.int32)
            self.run(seq_len, [zeros] * len(self._input_names))

    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()
        self._runners = {}


def factory(art, parallel: int):
    """(art, threads per replica) -> OpenVINOModel; the first call compiles the buckets."""
    shared, lock = {}, threading.Lock()

    def load(art_, threads: int) -> OpenVINOModel:
        with lock:
            if threads not in shared:
                shared[threads] = CompiledBuckets(art_, parallel, threads)
        model = OpenVINOModel(art_, shared[threads])
        model.warm_up(art_.seq_lens)
        return model

    return load
