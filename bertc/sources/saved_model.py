"""Reading BERT weights out of a SavedModel (`bertc build --saved_model DIR`).

Like the Neuron demo's `--input_saved_model`: the weights are found by their
Google names among the SavedModel's variables (TF1 name-based or TF2 object
checkpoints) or its Const nodes, wherever they sit under a name scope
(`module/bert/encoder/layer_0/...` is found as `bert/encoder/layer_0/...`), and
so are a classifier's `output_weights`/`output_bias` and run_squad's span head
`cls/squad/output_weights`/`output_bias` (a run_squad model exported as a SavedModel);
the pre-training heads under other `cls/` scopes are not read.
A SavedModel carries no bert_config.json: it is taken from `--bert_config`, from
the SavedModel directory or its assets/, or inferred from the tensor shapes with
64-wide heads (logged as a warning).
"""

import glob
import logging
import os
import re

import numpy as np

from bertc.sources import google_checkpoint as checkpoint
from bertc.model import names
from bertc.sources import weights as weights_lib
from bertc.model.config import BertConfig
from bertc.errors import BertcError

_GOOGLE_NAME = re.compile(r"(?:^|/)((?:bert/(?:embeddings|encoder|pooler)/.*)|"
                          r"(?:cls/squad/)?output_weights|(?:cls/squad/)?output_bias)$")


def google_name(name: str):
    """The Google variable name inside a scoped name, or None."""
    name = name.split(":")[0]
    for suffix in ("/read", "/.ATTRIBUTES/VARIABLE_VALUE"):
        if name.endswith(suffix):
            name = name[:-len(suffix)]
    m = _GOOGLE_NAME.search(name)
    if not m or "cls" in name[:m.start(1)].split("/"):
        return None  # cls/seq_relationship/output_bias is the NSP head, not a classifier
    # (cls/squad/output_bias matches as a whole, at the "/cls" before it)
    return m.group(1)


_LAYER_WEIGHT = re.compile(r"^bert/encoder/layer_\d+/(.+)$")
_TOP_WEIGHTS = frozenset({
    names.WORD_EMBEDDINGS, names.TOKEN_TYPE_EMBEDDINGS, names.POSITION_EMBEDDINGS,
    names.EMBEDDINGS_LN_GAMMA, names.EMBEDDINGS_LN_BETA, names.POOLER_KERNEL,
    names.POOLER_BIAS, names.CLASSIFIER_WEIGHTS, names.CLASSIFIER_BIAS,
    names.SPAN_WEIGHTS, names.SPAN_BIAS})


def is_weight_name(name: str) -> bool:
    """True for a Google name that is a BERT weight (not e.g. an initializer's
    `.../kernel/Initializer/truncated_normal/stddev` or a graph's `.../mul/y`)."""
    m = _LAYER_WEIGHT.match(name)
    return name in _TOP_WEIGHTS or bool(m and m.group(1) in names.LAYER_SUFFIXES)


def _keep(found: dict, name, value, where: str) -> None:
    g = google_name(name)
    if g is None or names.is_ignored(g):
        return
    value = np.asarray(value)
    if not np.issubdtype(value.dtype, np.floating):
        return
    found.setdefault(g, value.astype(np.float32))


def read_saved_model_weights(model_dir: str) -> dict:
    """Google name -> array, from variables and constants of a SavedModel."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    pb = os.path.join(model_dir, "saved_model.pb")
    if not os.path.isfile(pb):
        raise BertcError(f"`saved_model` {model_dir}: no saved_model.pb; expected a SavedModel "
                         "directory")
    proto = saved_model_pb2.SavedModel()
    try:
        with open(pb, "rb") as f:
            proto.ParseFromString(f.read())
    except Exception as e:  # protobuf raises DecodeError, a plain Exception subclass
        raise BertcError(f"{pb}: unreadable SavedModel ({e.__class__.__name__}); the file may "
                         "be truncated") from None
    found = {}
    for meta in proto.meta_graphs:
        graphs = [meta.graph_def.node] + [f.node_def for f in meta.graph_def.library.function]
        for nodes in graphs:
            for node in nodes:
                # Only Consts that are weights: a graph's own float constants under
                # bert/ (initializers, `.../mul/y`) are not.
                if node.op == "Const" and is_weight_name(google_name(node.name) or ""):
                    _keep(found, node.name, tf.make_ndarray(node.attr["value"].tensor), pb)
    index = os.path.join(model_dir, "variables", "variables.index")
    if os.path.isfile(index):
        prefix = index[:-len(".index")]
        try:
            reader = tf.train.load_checkpoint(prefix)
            keys = reader.get_variable_to_shape_map()
        except (tf.errors.OpError, ValueError) as e:
            raise BertcError(f"{index}: unreadable variables ({str(e).splitlines()[0]})") from None
        named = [k for k in keys if google_name(k)]
        for key in named:
            _keep(found, key, reader.get_tensor(key), index)
        if not named and keys:  # TF2 object-based checkpoint: names live on the objects
            loaded = tf.saved_model.load(model_dir)
            for var in getattr(loaded, "variables", []):
                _keep(found, var.name, var.numpy(), index)
    if not found:
        raise BertcError(f"`saved_model` {model_dir}: no tensor named like Google BERT's "
                         "(bert/encoder/layer_0/attention/self/query/kernel, ...) among its "
                         "variables or constants")
    return found


def infer_config(weights: dict, source: str) -> BertConfig:
    """A BertConfig from tensor shapes, assuming 64-wide attention heads."""
    for needed in (names.WORD_EMBEDDINGS, names.layer(0, "intermediate/dense/kernel")):
        if needed not in weights:
            raise BertcError(f"{source}: missing tensor '{needed}'; cannot infer the config "
                             "(pass --bert_config)")
    vocab, hidden = weights[names.WORD_EMBEDDINGS].shape
    layers = 1 + max(int(m.group(1)) for n in weights
                     for m in [re.match(r"bert/encoder/layer_(\d+)/", n)] if m)
    if hidden % 64:
        raise BertcError(f"{source}: hidden size {hidden} is not a multiple of 64; pass "
                         "`bert_config` to give num_attention_heads")
    logging.warning("%s: no bert_config.json; inferred %d layers, hidden %d, %d heads of 64 "
                    "(pass --bert_config if the heads differ)", source, layers, hidden, hidden // 64)
    return BertConfig(
        vocab_size=int(vocab), hidden_size=int(hidden), num_hidden_layers=layers,
        num_attention_heads=int(hidden) // 64,
        intermediate_size=int(weights[names.layer(0, "intermediate/dense/kernel")].shape[1]),
        max_position_embeddings=int(weights.get(names.POSITION_EMBEDDINGS,
                                                np.zeros((512, 1))).shape[0]),
        type_vocab_size=int(weights.get(names.TOKEN_TYPE_EMBEDDINGS, np.zeros((2, 1))).shape[0]))


def _first_file(model_dir: str, name: str):
    for candidate in (os.path.join(model_dir, name), os.path.join(model_dir, "assets", name)):
        if os.path.isfile(candidate):
            return candidate
    matches = glob.glob(os.path.join(model_dir, "assets", "*", name))
    return matches[0] if matches else None


def load_saved_model(model_dir: str, bert_config: str = None, vocab: str = None,
                     checksums: bool = True) -> checkpoint.Checkpoint:
    """A validated Checkpoint read from a BERT SavedModel."""
    weights = read_saved_model_weights(model_dir)
    config_path = bert_config or _first_file(model_dir, checkpoint.CONFIG_FILE)
    config = (BertConfig.from_json_file(config_path) if config_path
              else infer_config(weights, model_dir))
    vocab_file = vocab or _first_file(model_dir, checkpoint.VOCAB_FILE)
    if vocab_file is None:
        raise BertcError(f"`saved_model` {model_dir}: no vocab.txt in the directory or its "
                         "assets/; expected `vocab` FILE")
    weights_lib.validate(weights, config, source=model_dir,
                         vocab_size=checkpoint.count_vocab(vocab_file))
    files = [os.path.join(model_dir, "saved_model.pb")] + sorted(
        glob.glob(os.path.join(model_dir, "variables", "*"))) + [vocab_file]
    if config_path:
        files.append(config_path)
    source = {"kind": "saved_model", "path": os.path.abspath(model_dir),
              "bert_config": os.path.abspath(config_path) if config_path else None,
              "vocab": os.path.abspath(vocab_file),
              "files": {os.path.relpath(f, model_dir): (checkpoint.sha256_file(f) if checksums
                                                        else None) for f in files}}
    return checkpoint.Checkpoint(config=config, weights=weights, vocab_file=vocab_file,
                                 source=source)
