"""`POST /v1/models/<name>:classify`: text in, decisions out, tokenized in the server.

Request: one instance, or up to --max_instances of them:
  {"text": "..."}                       a single sentence
  {"text_a": "...", "text_b": "..."}    a pair (text_b optional)
  {"instances": [{...}, {...}]}
Text is tokenized with the artifact's vocabulary and settings (bertc.json
`tokenizer.do_lower_case`) at the longest bucket, and each row runs in the smallest
bucket that holds its tokens. Text longer than the longest bucket is truncated
(run_classifier's longest-first rule) and the answer says `"truncated": true`.
Response: {"predictions": [one object per instance]}, each with
  classifier head   label (argmax), score (its probability), probabilities
  embedding head    a sentence: embedding (L2-normalized);
                    a pair: similarity (cosine of the two sentences, embedded
                    apart), paraphrase (similarity >= threshold), label (1/0), threshold
  pooled head       pooled_output ([CLS] a [SEP] b [SEP] in one row)
and truncated, num_tokens and seq_lens (one entry per row run).
"""

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from bertc.serving import paraphrase
from bertc.serving.validation import (InputError, instances_or_one, refuse_unknown_keys,
                                      text_field)
from bertc.text.tokenization import WordPieceTokenizer

HEADS = ("classifier", "embedding", "pooled")
_KEYS = ("text", "text_a", "text_b")


@dataclasses.dataclass(frozen=True)
class TextInstance:
    text_a: str
    text_b: Optional[str]
    field: str  # where it sits in the body, for messages ("" or "instances[3]")
    key_a: str = "text_a"  # "text" or "text_a", as the body spelled it


@dataclasses.dataclass(frozen=True)
class EncodedRow:
    seq_len: int
    feeds: Tuple[np.ndarray, ...]
    num_tokens: int
    truncated: bool


def parse_classify(doc, max_instances: int) -> List[TextInstance]:
    return instances_or_one(doc, max_instances, _instance)


def _instance(obj: dict, field: str) -> TextInstance:
    refuse_unknown_keys(obj, _KEYS + (() if field else ("instances",)), field)

    def where(key):
        return _where(field, key)

    if ("text" in obj) == ("text_a" in obj):
        raise InputError(where("text"), "expected exactly one of 'text' (a sentence) or "
                         "'text_a' (with optional 'text_b')")
    if "text" in obj:
        if "text_b" in obj:
            raise InputError(where("text_b"), "goes with 'text_a'; expected 'text' alone "
                             "or 'text_a' and 'text_b'")
        return TextInstance(text_field(obj["text"], where("text")), None, field, "text")
    text_b = obj.get("text_b")
    if text_b is not None:
        text_b = text_field(text_b, where("text_b"))
    return TextInstance(text_field(obj["text_a"], where("text_a")), text_b, field)


class TextEncoder:
    """The artifact's tokenizer and bucket routing."""

    def __init__(self, art):
        self._art = art
        self.tokenizer = WordPieceTokenizer.from_vocab_file(art.vocab_file, art.do_lower_case)

    def encode(self, text_a: str, text_b: Optional[str], field_a: str,
               field_b: Optional[str] = None) -> EncodedRow:
        """One row: `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, in its bucket.

        field_a / field_b name the texts in errors (e.g. "instances[2].text_a").
        """
        art = self._art
        enc = self.tokenizer.encode(text_a, text_b, art.max_seq_len)
        segment_b = sum(enc.segment_ids)
        if enc.num_tokens - segment_b <= 2:
            raise InputError(field_a, "no WordPiece tokens; expected text")
        if text_b is not None and not segment_b:
            raise InputError(field_b, "no WordPiece tokens; expected text")
        seq_len = art.bucket_for(enc.num_tokens)
        columns = {"input_ids": enc.input_ids, "input_mask": enc.input_mask,
                   "segment_ids": enc.segment_ids}
        feeds = tuple(np.asarray(columns[n][:seq_len], np.int32) for n in art.inputs)
        return EncodedRow(seq_len, feeds, enc.num_tokens, enc.truncated)


def encode_instances(instances: Sequence[TextInstance], encoder: TextEncoder,
                     head: str) -> List[List[EncodedRow]]:
    """The rows each instance runs: a pair is two rows for an embedding head (each
    sentence embedded alone), one `[CLS] a [SEP] b [SEP]` row otherwise."""
    if head not in HEADS:
        raise InputError("", f"the model's head is '{head}', which :classify does not "
                         f"answer; expected one of {', '.join(HEADS)} (use :predict)")
    planned = []
    for inst in instances:
        field_a = _where(inst.field, inst.key_a)
        field_b = _where(inst.field, "text_b")
        if head == "embedding" and inst.text_b is not None:
            planned.append([encoder.encode(inst.text_a, None, field_a),
                            encoder.encode(inst.text_b, None, field_b)])
        else:
            planned.append([encoder.encode(inst.text_a, inst.text_b, field_a, field_b)])
    return planned


def _where(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def format_instance(head: str, rows: Sequence[EncodedRow],
                    results: Sequence[Dict[str, np.ndarray]], threshold: float) -> dict:
    """One instance's answer from its rows' outputs."""
    answer = {}
    if head == "classifier":
        probabilities = results[0]["probabilities"]
        label = int(np.argmax(probabilities))
        answer = {"label": label, "score": float(probabilities[label]),
                  "probabilities": probabilities.tolist()}
    elif head == "embedding" and len(rows) == 2:
        similarity = paraphrase.cosine(results[0]["embedding"], results[1]["embedding"])
        is_paraphrase = similarity >= threshold
        answer = {"label": int(is_paraphrase), "paraphrase": bool(is_paraphrase),
                  "similarity": similarity, "threshold": threshold}
    elif head == "embedding":
        answer = {"embedding": results[0]["embedding"].tolist()}
    else:
        answer = {"pooled_output": results[0]["pooled_output"].tolist()}
    answer.update(truncated=any(r.truncated for r in rows),
                  num_tokens=[r.num_tokens for r in rows], seq_lens=[r.seq_len for r in rows])
    return answer
