"""Reading a Google BERT checkpoint directory into a validated `Checkpoint`.

A Google checkpoint directory holds `bert_config.json`, `vocab.txt` and a TF1
name-based checkpoint (`bert_model.ckpt.index` + `bert_model.ckpt.data-*`, or a
fine-tuned `model.ckpt-N.*`). It is read with TensorFlow's checkpoint reader (no
TF1 session). Optional `bertc_hints.json`, written by `bertc convert`, records
what the original model was (e.g. a sentence-transformers mean-pooling model).
"""

import dataclasses
import glob
import hashlib
import json
import logging
import os
from typing import Dict, Optional

import numpy as np

from bertc.model import names
from bertc.sources import weights as weights_lib
from bertc.model.config import BertConfig
from bertc.errors import BertcError

CONFIG_FILE = "bert_config.json"
VOCAB_FILE = "vocab.txt"
HINTS_FILE = "bertc_hints.json"
DEFAULT_PREFIX = "bert_model.ckpt"


@dataclasses.dataclass
class Checkpoint:
    """A BERT checkpoint, validated and in memory.

    Attributes:
      config: the model's BertConfig.
      weights: Google name -> float32 array (ignored tensors already dropped).
      vocab_file: path of vocab.txt.
      source: where it came from: {'kind', 'path', 'files': {name: sha256}}.
      hints: optional facts from bertc_hints.json ('head', 'do_lower_case', ...).
    """

    config: BertConfig
    weights: weights_lib.WeightMap
    vocab_file: str
    source: dict
    hints: dict = dataclasses.field(default_factory=dict)

    @property
    def num_labels(self) -> Optional[int]:
        return weights_lib.num_labels(self.weights, self.source.get("path", "checkpoint"))

    @property
    def has_pooler(self) -> bool:
        return weights_lib.has_pooler(self.weights)


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def count_vocab(vocab_file: str) -> int:
    """Number of entries in a vocab.txt (one token per line)."""
    if not os.path.isfile(vocab_file):
        raise BertcError(f"{vocab_file}: file not found; expected the checkpoint's vocab.txt")
    try:
        with open(vocab_file, encoding="utf-8") as f:
            count = sum(1 for _ in f)
    except (OSError, UnicodeDecodeError) as e:
        raise BertcError(f"{vocab_file}: cannot read ({e.__class__.__name__}); expected a "
                         "UTF-8 vocab.txt with one token per line") from None
    if count == 0:
        raise BertcError(f"{vocab_file}: empty; expected one WordPiece token per line")
    return count


def find_checkpoint_prefix(ckpt_dir: str) -> str:
    """The TF1 checkpoint prefix inside a directory (bert_model.ckpt or model.ckpt-N)."""
    preferred = os.path.join(ckpt_dir, DEFAULT_PREFIX)
    if os.path.isfile(preferred + ".index"):
        return preferred
    indexes = sorted(glob.glob(os.path.join(ckpt_dir, "*.index")))
    if len(indexes) == 1:
        return indexes[0][:-len(".index")]
    if not indexes:
        raise BertcError(f"{ckpt_dir}: no checkpoint found; expected "
                         f"{DEFAULT_PREFIX}.index and {DEFAULT_PREFIX}.data-* files")
    import tensorflow as tf  # only needed to pick among several checkpoints
    latest = tf.train.latest_checkpoint(ckpt_dir)
    if latest:
        return latest
    raise BertcError(f"{ckpt_dir}: several checkpoints ({', '.join(os.path.basename(i) for i in indexes)}) "
                     "and no 'checkpoint' file; expected one, or pass `ckpt` DIR/PREFIX")


def read_tf_checkpoint(prefix: str) -> Dict[str, np.ndarray]:
    """All non-ignored tensors of a TF1 name-based checkpoint, as float32 arrays."""
    import tensorflow as tf
    from rewrites.constants import aligned_empty
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise BertcError(f"{prefix}.index: unreadable checkpoint ({first}); expected a TF1 "
                         "checkpoint written by tf.train.Saver") from None
    result = {}
    for name in sorted(shapes):
        if names.is_ignored(name):
            continue
        try:
            value = reader.get_tensor(name)
        except (tf.errors.OpError, ValueError, IndexError) as e:  # IndexError: short read
            first = str(e).strip().splitlines()[0]
            raise BertcError(f"{prefix}.data-*: cannot read tensor '{name}' ({first}); the "
                             "file may be truncated") from None
        if value.dtype != np.float32:
            if not np.issubdtype(value.dtype, np.floating):
                raise BertcError(f"{prefix}: tensor '{name}' has dtype {value.dtype}; "
                                 "expected float32")
        # Copied out of TensorFlow's tensor into numpy-owned memory, one tensor at a
        # time: with oneDNN on, TF's allocator keeps what it frees, so the weights
        # would stay resident after the last array is gone.
        result[name] = aligned_empty(value.shape, np.float32)
        result[name][...] = value
        del value
    return result


def read_hints(ckpt_dir: str) -> dict:
    path = os.path.join(ckpt_dir, HINTS_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            hints = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise BertcError(f"{path}: malformed ({e}); expected a JSON object written by "
                         "bertc convert") from None
    if not isinstance(hints, dict):
        raise BertcError(f"{path}: expected a JSON object")
    return hints


def load_checkpoint(ckpt: str, checksums: bool = True) -> Checkpoint:
    """Reads and validates a Google BERT checkpoint.

    Args:
      ckpt: the checkpoint directory, or a checkpoint prefix inside one
        (DIR/model.ckpt-1000).
      checksums: record the sha256 of every file read (for the manifest).
    Raises:
      BertcError: on any missing, malformed, truncated or inconsistent input.
    """
    if os.path.isdir(ckpt):
        ckpt_dir, prefix = ckpt, None
    elif os.path.isfile(ckpt + ".index"):
        ckpt_dir, prefix = os.path.dirname(ckpt) or ".", ckpt
    else:
        raise BertcError(f"`ckpt` {ckpt}: not a directory; expected a Google BERT checkpoint "
                         "directory (bert_config.json, vocab.txt, bert_model.ckpt.*)")
    config = BertConfig.from_json_file(os.path.join(ckpt_dir, CONFIG_FILE))
    vocab_file = os.path.join(ckpt_dir, VOCAB_FILE)
    vocab_size = count_vocab(vocab_file)
    prefix = prefix or find_checkpoint_prefix(ckpt_dir)
    data_files = sorted(glob.glob(prefix + ".data-*"))
    if not data_files:
        raise BertcError(f"{prefix}.data-00000-of-00001: file not found; expected the "
                         "checkpoint's data file beside its .index")
    logging.info("reading %s", prefix)
    weights = read_tf_checkpoint(prefix)
    weights_lib.validate(weights, config, source=prefix, vocab_size=vocab_size)
    files = [os.path.join(ckpt_dir, CONFIG_FILE), vocab_file, prefix + ".index"] + data_files
    source = {
        "kind": "google_checkpoint",
        "path": os.path.abspath(ckpt_dir),
        "prefix": os.path.basename(prefix),
        "files": {os.path.basename(f): (sha256_file(f) if checksums else None) for f in files},
    }
    return Checkpoint(config=config, weights=weights, vocab_file=vocab_file, source=source,
                      hints=read_hints(ckpt_dir))


def write_checkpoint(out_dir: str, config: BertConfig, weights: weights_lib.WeightMap,
                     vocab_file: str, hints: Optional[dict] = None) -> str:
    """Writes a Google-format checkpoint directory (config, vocab, TF1 checkpoint).

    The checkpoint is written with the SaveV2 op under Google's variable names, so
    google-research/bert and `tf.train.load_checkpoint` read it as they read the
    published checkpoints. Returns the checkpoint prefix.
    """
    import shutil
    import tensorflow as tf
    weights_lib.validate(weights, config, source=out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
        f.write(config.to_json_string())
    if os.path.abspath(vocab_file) != os.path.abspath(os.path.join(out_dir, VOCAB_FILE)):
        shutil.copyfile(vocab_file, os.path.join(out_dir, VOCAB_FILE))
    if hints:
        with open(os.path.join(out_dir, HINTS_FILE), "w", encoding="utf-8") as f:
            json.dump(hints, f, indent=2, sort_keys=True)
    prefix = os.path.join(out_dir, DEFAULT_PREFIX)
    ordered = sorted(weights)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=ordered,
                      shape_and_slices=[""] * len(ordered),
                      tensors=[tf.constant(np.asarray(weights[n], np.float32)) for n in ordered])
    return prefix
