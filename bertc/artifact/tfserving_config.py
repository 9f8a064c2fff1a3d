"""Scale-out: the files TensorFlow Serving needs to serve an artifact's buckets.

`bertc serve` is one process; to serve an artifact from TF Serving instead (its
C++ batcher, many hosts behind a balancer) `bertc build` writes beside bertc.json:

  ARTIFACT/models.config             a ModelServerConfig: one model per bucket,
                                     named <name>_seq<S>, base_path seq_<S>
                                     (relative to the artifact, so it can move)
  ARTIFACT/batching_parameters.txt   BatchingParameters: max_batch_size and
                                     allowed_batch_sizes = the static batch size,
                                     batch_timeout_micros = the batching delay

TF Serving wants absolute base paths, so `bertc tfserving ARTIFACT [--base_dir DIR]`
renders the config for the place where the artifact is served (DIR, by default
where it is now), and TF Serving runs it with
  bertc tfserving ARTIFACT > /tmp/models.config
  tensorflow_model_server --rest_api_port=8501 \\
      --model_config_file=/tmp/models.config \\
      --enable_batching --batching_parameters_file=ARTIFACT/batching_parameters.txt
The SavedModels have a static batch, so every TF Serving batch is padded to it
(allowed_batch_sizes) and a request may carry at most batch_size instances; the
client picks the bucket (model <name>_seq<S>) that fits its tokens.
"""

import os
from typing import Optional

MODELS_CONFIG = "models.config"
BATCHING_PARAMETERS = "batching_parameters.txt"


def model_name(artifact_name: str, seq_len: int) -> str:
    return f"{artifact_name}_seq{seq_len}"


RELATIVE_NOTE = ("# base_path is relative to this artifact; TensorFlow Serving needs absolute "
                 "paths:\n# `bertc tfserving ARTIFACT [--base_dir DIR]` prints this config "
                 "for where it is served.\n")


def render_models_config(manifest: dict, base_dir: str, artifact_name: str) -> str:
    """The ModelServerConfig text proto: one `config` per sequence bucket, base paths
    under `base_dir` ("" for paths relative to the artifact)."""
    lines = ["model_config_list {"]
    for entry in sorted(manifest["models"], key=lambda m: m["seq_len"]):
        seq_len = entry["seq_len"]
        # TF Serving wants the directory that holds the numbered versions (seq_<S>/).
        base_path = os.path.join(base_dir, os.path.dirname(entry["path"]))
        lines += ["  config {",
                  f'    name: "{model_name(artifact_name, seq_len)}"',
                  f"    base_path: {_quote(base_path)}",
                  '    model_platform: "tensorflow"',
                  "  }"]
    lines.append("}")
    return ("" if base_dir else RELATIVE_NOTE) + "\n".join(lines) + "\n"


def render_batching_parameters(manifest: dict, delay_ms: float,
                               max_enqueued_batches: int = 100,
                               num_batch_threads: Optional[int] = None) -> str:
    """The BatchingParameters text proto for the artifact's static batch size."""
    batch = int(manifest["batch_size"])
    threads = num_batch_threads or max(1, os.cpu_count() or 1)
    return (f"max_batch_size {{ value: {batch} }}\n"
            f"batch_timeout_micros {{ value: {int(round(delay_ms * 1000))} }}\n"
            f"max_enqueued_batches {{ value: {max_enqueued_batches} }}\n"
            f"num_batch_threads {{ value: {threads} }}\n"
            f"allowed_batch_sizes: {batch}\n"
            "pad_variable_length_inputs: false\n")


#: The batching delay TF Serving's file gets, and `bertc serve`'s default
#: --max_batch_delay_ms (bertc/serving/defaults.py), so both batch alike.
BATCH_DELAY_MS = 5.0


def write_tf_serving_configs(artifact_dir: str, manifest: dict,
                             delay_ms: float = BATCH_DELAY_MS,
                             base_dir: Optional[str] = None,
                             artifact_name: Optional[str] = None) -> dict:
    """Writes models.config and batching_parameters.txt into `artifact_dir`.

    Args:
      artifact_dir: where to write (the artifact, or the temporary directory the
        build renames into place).
      manifest: the artifact's bertc.json document (models, batch_size).
      delay_ms: the batching delay (batch_timeout_micros = 1000 * delay_ms).
      base_dir: the absolute directory the base paths start from (default: none,
        paths relative to the artifact; see render_models_config).
      artifact_name: model name prefix (default: the directory name of base_dir,
        else of artifact_dir).
    Returns:
      {'models_config': path, 'batching_parameters': path}.
    """
    base_dir = os.path.abspath(base_dir) if base_dir else ""
    artifact_name = artifact_name or os.path.basename(os.path.normpath(base_dir or
                                                                       artifact_dir))
    paths = {"models_config": os.path.join(artifact_dir, MODELS_CONFIG),
             "batching_parameters": os.path.join(artifact_dir, BATCHING_PARAMETERS)}
    with open(paths["models_config"], "w", encoding="utf-8") as f:
        f.write(render_models_config(manifest, base_dir, artifact_name))
    with open(paths["batching_parameters"], "w", encoding="utf-8") as f:
        f.write(render_batching_parameters(manifest, delay_ms))
    return paths


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def models_config_for(artifact: str, base_dir: Optional[str] = None) -> str:
    """`bertc tfserving`: the artifact's models.config with absolute base paths under
    `base_dir`, where TF Serving will find it (default: where the artifact is now)."""
    from bertc.artifact import manifest
    doc = manifest.read(artifact)
    base_dir = base_dir or os.path.abspath(artifact)
    if not os.path.isabs(base_dir):
        from bertc.errors import BertcError
        raise BertcError(f"`base_dir` {base_dir}: expected an absolute path (TensorFlow "
                         "Serving needs absolute base paths)")
    return render_models_config(doc, base_dir, os.path.basename(os.path.normpath(artifact)))
