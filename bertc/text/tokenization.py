"""Google BERT WordPiece tokenization and classifier-style input encoding.

Tokenization is done by the `tokenizers` library configured like Google's
`tokenization.FullTokenizer` (BERT normalizer, BERT pre-tokenizer, WordPiece
with `[UNK]` and a 100-character word limit). Encoding into fixed-length
`input_ids` / `input_mask` / `segment_ids` follows google-research/bert
`run_classifier.convert_single_example`, including its `_truncate_seq_pair`
longest-first truncation (ties drop a token from the second sentence).

Encoding stops at the tokens it needs: a text is tokenized from a prefix of
`PREFIX_CHARS_PER_TOKEN` characters per token wanted (seq_len - 1: one past what
fits, so truncation is still seen), and only the tokens of words that end before
the prefix's last word are kept, since that word may be cut; with too few, the
prefix grows 4x, up to the whole text. The ids are therefore exactly the first
ones of the whole text, for every text (tests/test_tokenization.py checks it on
generated texts): a 900 KB text costs one prefix of a few KB, and a text of
spaces or one huge word at most 4/3 of tokenizing it whole.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Iterable, Optional, Sequence

import numpy as np
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

from bertc.errors import BertcError

logger = logging.getLogger(__name__)

CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
REQUIRED_TOKENS = (CLS_TOKEN, SEP_TOKEN, PAD_TOKEN, UNK_TOKEN)

# Google's WordpieceTokenizer default: longer words become a single [UNK].
MAX_INPUT_CHARS_PER_WORD = 100

# Characters read per token wanted, first: English averages 4-5 per WordPiece.
PREFIX_CHARS_PER_TOKEN = 16

# A vocab is "cased" when more than this fraction of its ordinary tokens change
# under lower-casing. Google's uncased vocabs have none (a handful of stray ones
# are tolerated); cased ones have thousands ("The", "##A", ...).
_CASED_FRACTION = 0.005


@dataclasses.dataclass(frozen=True)
class EncodedInput:
    """One example encoded like run_classifier's `InputFeatures`."""

    input_ids: list[int]
    input_mask: list[int]
    segment_ids: list[int]
    num_tokens: int  # real tokens, [CLS]/[SEP] included
    truncated: bool


def vocab_is_cased(tokens: Iterable[str]) -> bool:
    """Whether a WordPiece vocab was built from cased text.

    Counts ordinary tokens (not bracketed specials like `[CLS]` or `[unused0]`)
    that lower-casing would change; an uncased Google vocab has essentially none.
    """
    ordinary = 0
    upper = 0
    for token in tokens:
        if not token or (token.startswith("[") and token.endswith("]")):
            continue
        ordinary += 1
        if token != token.lower():
            upper += 1
    return upper > 0 and upper > _CASED_FRACTION * ordinary


def truncate_pair_lengths(len_a: int, len_b: int, max_length: int) -> tuple[int, int]:
    """Lengths `run_classifier._truncate_seq_pair` leaves for two token lists.

    The original repeatedly pops the last token of the longer list (the second
    one on a tie) until the total fits; this is its closed form.
    """
    if len_a + len_b <= max_length:
        return len_a, len_b
    shorter = min(len_a, len_b)
    if 2 * shorter <= max_length:
        # Only the longer list is ever popped.
        if len_a > len_b:
            return max_length - len_b, len_b
        return len_a, max_length - len_a
    # Both are cut down to a tie, then popped alternately starting with b.
    return (max_length + 1) // 2, max_length // 2


def _read_vocab(path: str) -> dict[str, int]:
    """Reads a Google vocab.txt (one token per line, id = line number)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise BertcError(f"{path}: vocab file not found; expected a WordPiece "
                         "vocab.txt with one token per line") from None
    except IsADirectoryError:
        raise BertcError(f"{path}: is a directory; expected a WordPiece vocab.txt "
                         "file") from None
    except UnicodeDecodeError as e:
        raise BertcError(f"{path}: vocab is not valid UTF-8 ({e.reason} at byte "
                         f"{e.start}); expected a UTF-8 vocab.txt") from None
    except OSError as e:
        raise BertcError(f"{path}: cannot read vocab file ({e.strerror}); expected "
                         "a readable WordPiece vocab.txt") from None
    # Like Google's load_vocab: strip each line, a later duplicate wins, the id
    # is always the line number (so ids match the embedding rows).
    vocab = {}
    for index, line in enumerate(lines):
        vocab[line.strip()] = index
    if not lines or all(not token for token in vocab):
        raise BertcError(f"{path}: vocab file is empty; expected one WordPiece "
                         "token per line")
    missing = [t for t in REQUIRED_TOKENS if t not in vocab]
    if missing:
        raise BertcError(f"{path}: vocab lacks {', '.join(missing)}; expected a "
                         f"BERT vocab containing {', '.join(REQUIRED_TOKENS)}")
    return vocab


class WordPieceTokenizer:
    """Google BERT tokenizer: normalization, WordPiece, classifier encoding."""

    def __init__(self, vocab: dict[str, int], do_lower_case: bool, source: str = "<vocab>"):
        missing = [t for t in REQUIRED_TOKENS if t not in vocab]
        if missing:
            raise BertcError(f"{source}: vocab lacks {', '.join(missing)}; expected a "
                             f"BERT vocab containing {', '.join(REQUIRED_TOKENS)}")
        self._vocab = dict(vocab)
        self._do_lower_case = bool(do_lower_case)
        self._source = source
        self._vocab_size = max(self._vocab.values()) + 1
        tokenizer = Tokenizer(WordPiece(self._vocab, unk_token=UNK_TOKEN,
                                        max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True,
            strip_accents=self._do_lower_case, lowercase=self._do_lower_case)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._cls_id = self._vocab[CLS_TOKEN]
        self._sep_id = self._vocab[SEP_TOKEN]
        self._pad_id = self._vocab[PAD_TOKEN]
        self._unk_id = self._vocab[UNK_TOKEN]

    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike,
                        do_lower_case: Optional[bool] = None) -> "WordPieceTokenizer":
        """Loads a vocab.txt; `do_lower_case=None` infers it from the vocab."""
        path = os.fspath(path)
        vocab = _read_vocab(path)
        cased = vocab_is_cased(vocab)
        if do_lower_case is None:
            do_lower_case = not cased
            logger.info("%s: vocab looks %s; using do_lower_case=%s", path,
                        "cased" if cased else "uncased", do_lower_case)
        elif bool(do_lower_case) == cased:
            logger.warning("%s: do_lower_case=%s but the vocab looks %s", path,
                           bool(do_lower_case), "cased" if cased else "uncased")
        return cls(vocab, do_lower_case=bool(do_lower_case), source=path)

    @property
    def vocab_size(self) -> int:
        """Number of vocab rows (the largest id + 1, i.e. the vocab's line count)."""
        return self._vocab_size

    @property
    def do_lower_case(self) -> bool:
        return self._do_lower_case

    @property
    def cls_id(self) -> int:
        return self._cls_id

    @property
    def sep_id(self) -> int:
        return self._sep_id

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def unk_id(self) -> int:
        return self._unk_id

    def tokenize(self, text: str) -> list[str]:
        """WordPieces of `text` (no special tokens)."""
        return self._tokenizer.encode(_check_text(text), add_special_tokens=False).tokens

    def encode_with_offsets(self, text: str):
        """The `tokenizers` Encoding of `text` without special tokens: `.ids`,
        `.offsets` (character [start, end) of each token in `text`, through the
        normalizer's alignment), `.word_ids` and `.word_to_chars`."""
        return self._tokenizer.encode(_check_text(text), add_special_tokens=False)

    def _ids(self, texts: list[str], limit: Optional[int] = None) -> list[list[int]]:
        """The WordPiece ids of each text; with `limit`, its first `limit` ids only,
        read from a prefix of the text (see the module docstring), equal to
        `_ids(texts)[i][:limit]`."""
        if not texts:
            return []
        if limit is None:
            return [e.ids for e in self._tokenizer.encode_batch(texts,
                                                                add_special_tokens=False)]
        ids: list = [None] * len(texts)
        pending = list(range(len(texts)))
        chars = max(1, limit) * PREFIX_CHARS_PER_TOKEN
        while pending:
            encodings = self._tokenizer.encode_batch([texts[i][:chars] for i in pending],
                                                     add_special_tokens=False)
            short = []
            for i, encoding in zip(pending, encodings):
                if len(texts[i]) <= chars or _whole_word_tokens(encoding) >= limit:
                    ids[i] = encoding.ids[:limit]
                else:
                    short.append(i)
            pending = short
            chars *= 4
        return ids

    def _layout(self, ids_a: list[int], ids_b: list[int] | None,
                seq_len: int) -> tuple[list[int], int, bool]:
        """Token ids with specials, the index where segment 1 starts, truncated?"""
        if ids_b:
            if seq_len < 3:
                raise BertcError(f"seq_len={seq_len}: a sentence pair needs seq_len >= 3 "
                                 "([CLS] a [SEP] b [SEP])")
            len_a, len_b = truncate_pair_lengths(len(ids_a), len(ids_b), seq_len - 3)
            truncated = (len_a, len_b) != (len(ids_a), len(ids_b))
            ids = [self._cls_id, *ids_a[:len_a], self._sep_id, *ids_b[:len_b], self._sep_id]
            return ids, len_a + 2, truncated
        if seq_len < 2:
            raise BertcError(f"seq_len={seq_len}: a single sentence needs seq_len >= 2 "
                             "([CLS] a [SEP])")
        len_a = min(len(ids_a), seq_len - 2)
        ids = [self._cls_id, *ids_a[:len_a], self._sep_id]
        return ids, len(ids), len_a != len(ids_a)

    def encode(self, text_a: str, text_b: Optional[str] = None,
               seq_len: int = 128) -> EncodedInput:
        """Encodes one example as `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`.

        As in run_classifier, a `text_b` that is empty or yields no tokens gives
        the single-sentence layout.
        """
        _check_seq_len(seq_len, text_b)
        texts = [_check_text(text_a)]
        if text_b:
            texts.append(_check_text(text_b))
        token_ids = self._ids(texts, _needed(seq_len))
        ids, split, truncated = self._layout(
            token_ids[0], token_ids[1] if len(token_ids) > 1 else None, seq_len)
        n = len(ids)
        pad = seq_len - n
        return EncodedInput(
            input_ids=ids + [self._pad_id] * pad,
            input_mask=[1] * n + [0] * pad,
            segment_ids=[0] * split + [1] * (n - split) + [0] * pad,
            num_tokens=n,
            truncated=truncated)

    def encode_batch(self, pairs: Sequence, seq_len: int = 128) -> dict[str, np.ndarray]:
        """Encodes `(text_a, text_b_or_None)` pairs into int32 [len(pairs), seq_len].

        Items may also be objects with `text_a` / `text_b` attributes (e.g.
        `bertc.textdata.Pair`). Returns `input_ids`, `input_mask`, `segment_ids`.
        """
        examples = [_unpack(p) for p in pairs]
        for _, text_b in examples:
            _check_seq_len(seq_len, text_b)
        texts = []
        for text_a, text_b in examples:
            texts.append(_check_text(text_a))
            if text_b:
                texts.append(_check_text(text_b))
        token_ids = iter(self._ids(texts, _needed(seq_len)))
        count = len(examples)
        input_ids = np.full((count, seq_len), self._pad_id, dtype=np.int32)
        input_mask = np.zeros((count, seq_len), dtype=np.int32)
        segment_ids = np.zeros((count, seq_len), dtype=np.int32)
        for row, (_, text_b) in enumerate(examples):
            ids_a = next(token_ids)
            ids_b = next(token_ids) if text_b else None
            ids, split, _ = self._layout(ids_a, ids_b, seq_len)
            n = len(ids)
            input_ids[row, :n] = ids
            input_mask[row, :n] = 1
            segment_ids[row, split:n] = 1
        return {"input_ids": input_ids, "input_mask": input_mask,
                "segment_ids": segment_ids}


def _needed(seq_len: int) -> int:
    """Ids per text that decide an encoding at seq_len: one more than fit beside the
    specials ([CLS] a [SEP]: seq_len - 2), so truncation shows. For a pair, with m =
    seq_len - 3 the room for both, lists cut to any k > m keep the longest-first
    lengths and whether any was cut: truncate_pair_lengths(min(a, k), min(b, k), m)
    equals truncate_pair_lengths(a, b, m), and min(a, k) + min(b, k) > m iff a + b > m."""
    return seq_len - 1


def _whole_word_tokens(encoding) -> int:
    """Tokens of an Encoding of a prefix that come from words before its last one
    (the last word may be cut by the prefix; the words before it are whole)."""
    words = encoding.word_ids
    if not words:
        return 0
    last = words[-1]
    count = len(words)
    while count and words[count - 1] == last:
        count -= 1
    return count


def _check_text(text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"expected text as str, got {type(text).__name__}")
    return text


def _check_seq_len(seq_len: int, text_b) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)):
        raise BertcError(f"seq_len={seq_len!r}: expected an integer")
    minimum = 3 if text_b else 2
    if seq_len < minimum:
        what = "a sentence pair" if text_b else "a single sentence"
        raise BertcError(f"seq_len={seq_len}: {what} needs seq_len >= {minimum}")


def _unpack(pair) -> tuple[str, str | None]:
    if hasattr(pair, "text_a"):
        return pair.text_a, getattr(pair, "text_b", None)
    if isinstance(pair, str):
        return pair, None
    text_a, text_b = pair
    return text_a, text_b
