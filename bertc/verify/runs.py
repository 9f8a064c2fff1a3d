"""What verify runs of one bucket of an artifact, the run the thresholds apply to first.

  openvino     the bucket's OpenVINO IR compiled as `bertc serve` compiles it
               (--target openvino only)
  served       the SavedModel as `bertc serve` runs it (bertc.runtime.runner)
  as_written   the SavedModel with Grappler off and the weights fed
"""

import os

from bertc.runtime import openvino_settings
from bertc.runtime import runner as runners


def artifact_runs(artifact_dir: str, entry: dict, dtype: str) -> dict:
    """{run name: (runner factory, description)} for the manifest `entry` of a bucket."""
    runs = {}
    if entry.get("openvino_path"):
        from bertc.runtime import openvino_runner
        runs.update(openvino_runner.openvino_runs(
            os.path.join(artifact_dir, entry["openvino_path"]),
            openvino_settings.precision(dtype)))
    runs.update(runners.saved_model_runs(os.path.join(artifact_dir, entry["path"])))
    return runs
