"""Hugging Face BERT directory -> Google-format checkpoint directory.

Reads `config.json`, `model.safetensors` (with `safetensors`, no torch) and
`vocab.txt`, renames every tensor to Google's variable name, transposes dense
kernels from PyTorch's [out, in] to TensorFlow's [in, out], and writes
`bert_config.json`, `vocab.txt` and `bert_model.ckpt.*` so the rest of bertc only
ever sees Google format. sentence-transformers directories (modules.json with a
mean-pooling module) are recorded in `bertc_hints.json` as the `embedding` head.

  HF name                                         Google name
  [bert.]embeddings.word_embeddings.weight        bert/embeddings/word_embeddings
  [bert.]embeddings.LayerNorm.weight|bias         bert/embeddings/LayerNorm/gamma|beta
  [bert.]encoder.layer.3.attention.self.query.weight  bert/encoder/layer_3/attention/self/query/kernel (transposed)
  [bert.]pooler.dense.weight|bias                 bert/pooler/dense/kernel|bias
  classifier.weight|bias                          output_weights|output_bias (run_classifier layout, not transposed)
  qa_outputs.weight|bias                          cls/squad/output_weights|output_bias (run_squad layout [2, D], not transposed)
"""

import json
import logging
import os
import re

import numpy as np

from bertc.sources import google_checkpoint as checkpoint
from bertc.model import names
from bertc.model.config import BertConfig
from bertc.errors import BertcError

_HF_TO_GOOGLE_CONFIG = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                        "intermediate_size", "hidden_act", "hidden_dropout_prob",
                        "attention_probs_dropout_prob", "max_position_embeddings",
                        "type_vocab_size", "initializer_range")
_IGNORED_HF = re.compile(r"^(cls\.|.*position_ids$|.*\.num_batches_tracked$)")
#: The bertc_hints.json key every conversion writes: the marker of a converted checkpoint.
CONVERTED_FROM = "converted_from"
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")


def google_config(hf_config: dict, where: str) -> BertConfig:
    """The BertConfig of a Hugging Face BERT config.json (Google semantics enforced)."""
    model_type = hf_config.get("model_type", "bert")
    if model_type != "bert":
        raise BertcError(f"{where}: model_type is {model_type!r}; expected 'bert'")
    eps = hf_config.get("layer_norm_eps", 1e-12)
    if not np.isclose(eps, 1e-12, rtol=0, atol=1e-15):
        raise BertcError(f"{where}: layer_norm_eps is {eps}; expected 1e-12 (Google BERT)")
    kind = hf_config.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise BertcError(f"{where}: position_embedding_type is {kind!r}; expected 'absolute'")
    return BertConfig.from_dict({k: hf_config[k] for k in _HF_TO_GOOGLE_CONFIG if k in hf_config},
                                where=where)


def google_name(hf_name: str):
    """(Google name, transpose?) for one HF tensor name, or None when it is ignored."""
    name = hf_name[len("bert."):] if hf_name.startswith("bert.") else hf_name
    if _IGNORED_HF.match(name):
        return None
    if name == "classifier.weight":
        return names.CLASSIFIER_WEIGHTS, False
    if name == "classifier.bias":
        return names.CLASSIFIER_BIAS, False
    if name == "qa_outputs.weight":
        return names.SPAN_WEIGHTS, False
    if name == "qa_outputs.bias":
        return names.SPAN_BIAS, False
    m = _LAYER.match(name)
    if m:
        index, module, kind = m.groups()
        path = module.replace(".", "/")
        if path.endswith("LayerNorm"):
            return names.layer(int(index), f"{path}/{'gamma' if kind == 'weight' else 'beta'}"), False
        return names.layer(int(index), f"{path}/{'kernel' if kind == 'weight' else 'bias'}"), kind == "weight"
    table = {
        "embeddings.word_embeddings.weight": (names.WORD_EMBEDDINGS, False),
        "embeddings.token_type_embeddings.weight": (names.TOKEN_TYPE_EMBEDDINGS, False),
        "embeddings.position_embeddings.weight": (names.POSITION_EMBEDDINGS, False),
        "embeddings.LayerNorm.weight": (names.EMBEDDINGS_LN_GAMMA, False),
        "embeddings.LayerNorm.bias": (names.EMBEDDINGS_LN_BETA, False),
        "pooler.dense.weight": (names.POOLER_KERNEL, True),
        "pooler.dense.bias": (names.POOLER_BIAS, False),
    }
    return table.get(name, (hf_name, False))  # unknown names fail validation, named


def read_hf_directory(hf_dir: str):
    """(BertConfig, WeightMap, vocab path, hints) of a Hugging Face BERT directory."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    if not os.path.isdir(hf_dir):
        raise BertcError(f"`hf_dir` {hf_dir}: not a directory; expected a Hugging Face BERT "
                         "directory (config.json, model.safetensors, vocab.txt)")
    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(config_path):
        raise BertcError(f"{config_path}: file not found; expected a Hugging Face config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            hf_config = json.load(f)
    except json.JSONDecodeError as e:
        raise BertcError(f"{config_path}: malformed JSON at line {e.lineno} ({e.msg})") from None
    config = google_config(hf_config, config_path)
    weights_path = os.path.join(hf_dir, "model.safetensors")
    if not os.path.isfile(weights_path):
        raise BertcError(f"{weights_path}: file not found; expected the model's safetensors "
                         "weights (pytorch_model.bin is not read: convert it to safetensors)")
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as e:
        raise BertcError(f"{weights_path}: unreadable safetensors file ({e}); the file may "
                         "be truncated") from None
    vocab_file = os.path.join(hf_dir, "vocab.txt")
    checkpoint.count_vocab(vocab_file)
    weights = {}
    for hf_name, value in tensors.items():
        mapped = google_name(hf_name)
        if mapped is None:
            continue
        name, transpose = mapped
        value = np.asarray(value, dtype=np.float32)
        weights[name] = np.ascontiguousarray(value.T) if transpose else value
    return config, weights, vocab_file, _hints(hf_dir)


def _hints(hf_dir: str) -> dict:
    """What the original directory says about its use: head and lower-casing."""
    hints = {CONVERTED_FROM: os.path.abspath(hf_dir)}
    tok_config = os.path.join(hf_dir, "tokenizer_config.json")
    if os.path.isfile(tok_config):
        with open(tok_config, encoding="utf-8") as f:
            lower = json.load(f).get("do_lower_case")
        if isinstance(lower, bool):
            hints["do_lower_case"] = lower
    modules = os.path.join(hf_dir, "modules.json")
    pooling = os.path.join(hf_dir, "1_Pooling", "config.json")
    if os.path.isfile(modules) and os.path.isfile(pooling):
        with open(modules, encoding="utf-8") as f:
            kinds = [m.get("type", "") for m in json.load(f)]
        with open(pooling, encoding="utf-8") as f:
            mean = json.load(f).get("pooling_mode_mean_tokens", False)
        normalized = any(k.endswith("Normalize") for k in kinds)
        if mean and normalized:
            hints["head"] = "embedding"
            hints["sentence_transformers"] = {"pooling": "mean", "normalize": True}
        else:
            logging.warning("%s: sentence-transformers pooling other than mean + normalize; "
                            "the embedding head will not match it", hf_dir)
    return hints


def convert(hf_dir: str, out_dir: str, overwrite: bool = False) -> str:
    """Writes the Google-format checkpoint of `hf_dir` to `out_dir` (atomically).

    Returns the checkpoint prefix. Refuses an existing `out_dir` unless overwrite
    and it is empty or a checkpoint bertc converted: its bertc_hints.json records
    `converted_from` (every conversion writes it).
    """
    from bertc import atomic
    marker = atomic.json_marker(checkpoint.HINTS_FILE, CONVERTED_FROM)
    # the output is checked (and its temporary directory made) before anything is read
    with atomic.output_directory(out_dir, overwrite=overwrite, flag="output",
                                 marker=marker, sources=[hf_dir]) as tmp:
        config, weights, vocab_file, hints = read_hf_directory(hf_dir)
        checkpoint.write_checkpoint(tmp, config, weights, vocab_file, hints)
    logging.info("wrote Google checkpoint %s (%d tensors)", out_dir, len(weights))
    return os.path.join(out_dir, checkpoint.DEFAULT_PREFIX)
