"""bertc: compile Google BERT checkpoints into fast, verified inference artifacts.

Library API (the CLI is a thin layer over these):
  build(BuildOptions(...)) -> BuildResult     checkpoint -> verified SavedModel artifact
  verify_artifact(path, ...) -> report        artifact vs its unrewritten reference
  load_checkpoint(dir) -> Checkpoint          Google TF1 checkpoint, validated
  load_saved_model(dir) -> Checkpoint         BERT weights out of a SavedModel
  convert_hf(hf_dir, out_dir)                 Hugging Face BERT -> Google checkpoint
  WordPieceTokenizer                          Google BERT tokenization
  BertConfig, BertcError, CheckFailed (a check said no: verify outside its bounds)
"""

from bertc.runtime import tf_settings as tf_runtime  # noqa: E402
from bertc.version import __version__  # noqa: E402
from bertc.errors import BertcError, CheckFailed  # noqa: E402
from bertc.model.config import BertConfig  # noqa: E402

# TensorFlow's oneDNN kernels on for bertc's processes; before TensorFlow is imported
# (see bertc/runtime/tf_settings.py).
tf_runtime.apply_defaults()


# Documented name -> the module that defines it (imported on first use).
_LAZY = {
    "build": "bertc.builder.pipeline", "BuildOptions": "bertc.builder.pipeline", "BuildResult": "bertc.builder.pipeline",
    "verify_artifact": "bertc.verify.artifact", "load_checkpoint": "bertc.sources.google_checkpoint",
    "load_saved_model": "bertc.sources.saved_model", "convert_hf": "bertc.sources.hf_convert",
    "WordPieceTokenizer": "bertc.text.tokenization",
}
_RENAMED = {"convert_hf": "convert"}  # the public name differs from the module's

__all__ = ["build", "BuildOptions", "BuildResult", "verify_artifact", "load_checkpoint",
           "load_saved_model", "convert_hf", "WordPieceTokenizer", "BertConfig", "BertcError",
           "CheckFailed", "__version__"]


def __getattr__(name):
    """Lazy attributes: importing bertc does not import TensorFlow."""
    if name not in _LAZY:
        raise AttributeError(f"module 'bertc' has no attribute {name!r}")
    import importlib
    # not cached in globals(): `verify_artifact` is also the submodule's name there
    return getattr(importlib.import_module(_LAZY[name]), _RENAMED.get(name, name))


def __dir__():
    return sorted(set(globals()) | set(__all__))
