"""What verify runs of one bucket of an artifact, the run the thresholds apply to first.

  openvino     the bucket's OpenVINO IR compiled as `bertc serve` compiles it
               (--target openvino only)
  served       the SavedModel as `bertc serve` runs it (bertc.runtime.runner)
  as_written   the SavedModel with Grappler off and the weights fed
"""

import os
from typing import Optional

from bertc.runtime import openvino_settings
from bertc.runtime import runner as runners


def artifact_runs(artifact_dir: str, entry: dict, inference_precision: str,
                  intra_op_threads: Optional[int] = None,
                  inter_op_threads: Optional[int] = None) -> dict:
    """{run name: (runner factory, description)} for the manifest `entry` of a bucket.

    inference_precision: OpenVINO's precision of the IR's compile (the manifest's,
    openvino_settings.artifact_precision).  The threads: TensorFlow's Session
    settings of the served run; on OpenVINO, inter_op_threads streams of intra_op_threads threads each (NUM_STREAMS,
    INFERENCE_NUM_THREADS = their product); None: serve's defaults."""
    runs = {}
    if entry.get("openvino_path"):
        from bertc.runtime import openvino_runner
        properties = None
        if intra_op_threads or inter_op_threads:
            properties = openvino_settings.served_properties(inference_precision,
                                                             inter_op_threads,
                                                             intra_op_threads)
        runs.update(openvino_runner.openvino_runs(
            os.path.join(artifact_dir, entry["openvino_path"]), inference_precision,
            properties))
    runs.update(runners.saved_model_runs(os.path.join(artifact_dir, entry["path"]),
                                         intra_op_threads, inter_op_threads))
    return runs
