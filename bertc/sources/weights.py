"""The canonical weight map and its validation against a config.

Every checkpoint frontend (Google TF1 checkpoint, SavedModel, converted Hugging
Face directory) ends in a `WeightMap`: Google variable name -> float32 numpy
array. `validate` checks it against the config before any work is done and
reports the first problem as one line naming the source, the tensor and the
expected shape.
"""

from typing import Dict

import numpy as np

from bertc.model import names
from bertc.errors import BertcError

WeightMap = Dict[str, np.ndarray]


def has_pooler(weights: WeightMap) -> bool:
    return names.POOLER_KERNEL in weights and names.POOLER_BIAS in weights


def has_span(weights: WeightMap, source: str = "checkpoint") -> bool:
    """True when the checkpoint holds run_squad's span head (both tensors)."""
    has_w, has_b = names.SPAN_WEIGHTS in weights, names.SPAN_BIAS in weights
    if has_w != has_b:
        present, absent = ((names.SPAN_WEIGHTS, names.SPAN_BIAS) if has_w
                           else (names.SPAN_BIAS, names.SPAN_WEIGHTS))
        raise BertcError(f"{source}: has '{present}' but not '{absent}'; expected both "
                         "(run_squad head) or neither")
    return has_w


def num_labels(weights: WeightMap, source: str = "checkpoint"):
    """Labels of the run_classifier head, or None when the checkpoint has none."""
    has_w = names.CLASSIFIER_WEIGHTS in weights
    has_b = names.CLASSIFIER_BIAS in weights
    if has_w != has_b:
        present, absent = ((names.CLASSIFIER_WEIGHTS, names.CLASSIFIER_BIAS) if has_w
                           else (names.CLASSIFIER_BIAS, names.CLASSIFIER_WEIGHTS))
        raise BertcError(f"{source}: has '{present}' but not '{absent}'; expected both "
                         "(run_classifier head) or neither")
    if not has_w:
        return None
    return int(np.shape(weights[names.CLASSIFIER_BIAS])[0])


def validate(weights: WeightMap, config, source: str = "checkpoint",
             vocab_size=None) -> None:
    """Raises BertcError on a missing, unexpected or misshapen tensor.

    Args:
      weights: name -> array (only names that are not `names.is_ignored`).
      config: the BertConfig the weights must fit.
      source: the file or directory named in messages.
      vocab_size: entries in vocab.txt, checked against the embedding rows.
    """
    expected = names.expected_shapes(config, with_pooler=has_pooler(weights),
                                     num_labels=num_labels(weights, source),
                                     span=has_span(weights, source))
    for name, shape in expected.items():
        if name not in weights:
            raise BertcError(f"{source}: missing tensor '{name}'; expected shape "
                             f"{list(shape)} for this bert_config.json")
    for name, array in weights.items():
        if name not in expected:
            raise BertcError(f"{source}: unexpected tensor '{name}' with shape "
                             f"{list(np.shape(array))}; expected only Google BERT variables "
                             f"(num_hidden_layers is {config.num_hidden_layers})")
        got = tuple(np.shape(array))
        if got != expected[name]:
            raise BertcError(f"{source}: tensor '{name}' has shape {list(got)}; expected "
                             f"{list(expected[name])} from bert_config.json")
    if vocab_size is not None and vocab_size != config.vocab_size:
        raise BertcError(f"{source}: vocab.txt has {vocab_size} entries but vocab_size in "
                         f"bert_config.json is {config.vocab_size} (and "
                         f"'{names.WORD_EMBEDDINGS}' has {config.vocab_size} rows); "
                         "expected them equal")
