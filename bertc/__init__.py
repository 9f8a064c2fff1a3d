"""bertc: compile Google BERT checkpoints into fast, verified inference artifacts.

Library API (the CLI is a thin layer over these):
  build(BuildOptions(...)) -> BuildResult     checkpoint -> verified SavedModel artifact
  verify_artifact(path, ...) -> report        artifact vs its unrewritten reference
  load_checkpoint(dir) -> Checkpoint          Google TF1 checkpoint, validated
  load_saved_model(dir) -> Checkpoint         BERT weights out of a SavedModel
  convert_hf(hf_dir, out_dir)                 Hugging Face BERT -> Google checkpoint
  WordPieceTokenizer                          Google BERT tokenization
  BertConfig, BertcError
"""

__version__ = "0.1.0"

from bertc import tf_runtime  # noqa: E402
from bertc.errors import BertcError  # noqa: E402
from bertc.config import BertConfig  # noqa: E402

# TensorFlow's oneDNN kernels on for bertc's processes; before TensorFlow is imported
# (see bertc/tf_runtime.py).
tf_runtime.apply_defaults()


def __getattr__(name):
    """Lazy attributes: importing bertc does not import TensorFlow."""
    if name in ("build", "BuildOptions", "BuildResult"):
        from bertc import builder as module
        return getattr(module, name)
    if name == "verify_artifact":
        from bertc.verify_artifact import verify_artifact
        return verify_artifact
    if name == "load_checkpoint":
        from bertc.checkpoint import load_checkpoint
        return load_checkpoint
    if name == "load_saved_model":
        from bertc.saved_model_source import load_saved_model
        return load_saved_model
    if name == "convert_hf":
        from bertc.hf_convert import convert
        return convert
    if name == "WordPieceTokenizer":
        from bertc.tokenization import WordPieceTokenizer
        return WordPieceTokenizer
    raise AttributeError(f"module 'bertc' has no attribute {name!r}")
