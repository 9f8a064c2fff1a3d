"""Model inputs from text: verification pairs tokenized to int32 [N, S] features.

text_features(path, vocab, lower, S) reads an MRPC-format TSV or a text file (one
sentence or tab-separated pair per line; the MRPC dev set by default) and
tokenizes every pair as run_classifier does: [CLS] a [SEP] b [SEP], truncated to S.
"""

from typing import Iterable, Mapping, Optional

from bertc.errors import BertcError
from bertc.text import pairs as textdata
from bertc.text import tokenization


def check_rows(rows: Optional[int]) -> None:
    if rows is not None and (isinstance(rows, bool) or rows < 1):
        raise BertcError(f"`verify_rows` {rows}: expected a positive number of rows")


def resolve_lower_case(hints: Mapping, vocab_file: str, requested: Optional[bool]) -> bool:
    """--do_lower_case, else the checkpoint's bertc_hints.json, else what the
    vocabulary implies (a cased vocabulary has upper-case word pieces)."""
    if requested is not None:
        return requested
    if isinstance(hints.get("do_lower_case"), bool):
        return hints["do_lower_case"]
    with open(vocab_file, encoding="utf-8") as f:
        return not tokenization.vocab_is_cased(line.strip() for line in f)


def text_features(path: Optional[str], vocab_file: str, do_lower_case: bool, seq_len: int,
                  rows: Optional[int] = None):
    """(features {name: int32 [N, S]}, path) of the verification text; (None, None)
    when there is none."""
    check_rows(rows)
    path = path or textdata.default_mrpc_path()
    if not path:
        return None, None
    pairs: Iterable = textdata.read_pairs(path)
    if rows:
        pairs = pairs[:rows]
    tokenizer = tokenization.WordPieceTokenizer.from_vocab_file(vocab_file, do_lower_case)
    return pair_features(tokenizer, pairs, seq_len), path


def pair_features(tokenizer, pairs, seq_len: int):
    """{name: int32 [N, S]} of `pairs` as one row each: [CLS] a [SEP] b [SEP]."""
    return tokenizer.encode_batch([(p.text_a, p.text_b) for p in pairs], seq_len)
