"""The checkpoint contract: Google BERT variable names and their shapes.

Every tensor bertc reads or writes is named here, once, as in google-research/bert
(`bert/encoder/layer_3/attention/self/query/kernel`, ...). Dense kernels are
[in, out] (TensorFlow layout), LayerNorm scales are `gamma` and offsets `beta`.
A run_classifier checkpoint adds `output_weights` [num_labels, D] and
`output_bias` [num_labels]; a run_squad checkpoint adds `cls/squad/output_weights`
[2, D] and `cls/squad/output_bias` [2] (start and end rows). Pre-training heads
(the rest of `cls/...`), optimizer slots (`.../adam_m`, `.../adam_v`) and
`global_step` are ignored.
"""

from typing import Dict, Optional, Tuple

WORD_EMBEDDINGS = "bert/embeddings/word_embeddings"
TOKEN_TYPE_EMBEDDINGS = "bert/embeddings/token_type_embeddings"
POSITION_EMBEDDINGS = "bert/embeddings/position_embeddings"
EMBEDDINGS_LN_GAMMA = "bert/embeddings/LayerNorm/gamma"
EMBEDDINGS_LN_BETA = "bert/embeddings/LayerNorm/beta"
POOLER_KERNEL = "bert/pooler/dense/kernel"
POOLER_BIAS = "bert/pooler/dense/bias"
CLASSIFIER_WEIGHTS = "output_weights"
CLASSIFIER_BIAS = "output_bias"
SPAN_WEIGHTS = "cls/squad/output_weights"
SPAN_BIAS = "cls/squad/output_bias"

# Per-layer tensors: suffix -> shape in terms of D (hidden) and I (intermediate).
_LAYER_TENSORS = {
    "attention/self/query/kernel": ("D", "D"),
    "attention/self/query/bias": ("D",),
    "attention/self/key/kernel": ("D", "D"),
    "attention/self/key/bias": ("D",),
    "attention/self/value/kernel": ("D", "D"),
    "attention/self/value/bias": ("D",),
    "attention/output/dense/kernel": ("D", "D"),
    "attention/output/dense/bias": ("D",),
    "attention/output/LayerNorm/gamma": ("D",),
    "attention/output/LayerNorm/beta": ("D",),
    "intermediate/dense/kernel": ("D", "I"),
    "intermediate/dense/bias": ("I",),
    "output/dense/kernel": ("I", "D"),
    "output/dense/bias": ("D",),
    "output/LayerNorm/gamma": ("D",),
    "output/LayerNorm/beta": ("D",),
}
LAYER_SUFFIXES = tuple(_LAYER_TENSORS)

_IGNORED_PREFIXES = ("cls/",)
_IGNORED_NAMES = ("global_step",)
_IGNORED_SUFFIXES = ("/adam_m", "/adam_v", "/Adam", "/Adam_1", "/Momentum")


def layer(index: int, suffix: str) -> str:
    """Name of one per-layer tensor, e.g. layer(3, 'attention/self/query/kernel')."""
    return f"bert/encoder/layer_{index}/{suffix}"


def is_ignored(name: str) -> bool:
    """True for tensors that never affect inference (pre-training heads, optimizer state);
    run_squad's `cls/squad/*` head is kept."""
    if name in (SPAN_WEIGHTS, SPAN_BIAS):
        return False
    return (name.startswith(_IGNORED_PREFIXES) or name in _IGNORED_NAMES
            or name.endswith(_IGNORED_SUFFIXES))


def expected_shapes(config, with_pooler: bool = True,
                    num_labels: Optional[int] = None,
                    span: bool = False) -> Dict[str, Tuple[int, ...]]:
    """Every tensor an encoder of `config` needs, with its shape.

    Args:
      config: a BertConfig.
      with_pooler: include `bert/pooler/dense/*` ([D, D] and [D]).
      num_labels: include the run_classifier head with this many labels.
      span: include run_squad's head ([2, D] and [2]).
    """
    d, i = config.hidden_size, config.intermediate_size
    sizes = {"D": d, "I": i}
    shapes = {
        WORD_EMBEDDINGS: (config.vocab_size, d),
        TOKEN_TYPE_EMBEDDINGS: (config.type_vocab_size, d),
        POSITION_EMBEDDINGS: (config.max_position_embeddings, d),
        EMBEDDINGS_LN_GAMMA: (d,),
        EMBEDDINGS_LN_BETA: (d,),
    }
    for n in range(config.num_hidden_layers):
        for suffix, dims in _LAYER_TENSORS.items():
            shapes[layer(n, suffix)] = tuple(sizes[x] for x in dims)
    if with_pooler:
        shapes[POOLER_KERNEL] = (d, d)
        shapes[POOLER_BIAS] = (d,)
    if num_labels is not None:
        shapes[CLASSIFIER_WEIGHTS] = (num_labels, d)
        shapes[CLASSIFIER_BIAS] = (num_labels,)
    if span:
        shapes[SPAN_WEIGHTS] = (2, d)
        shapes[SPAN_BIAS] = (2,)
    return shapes
