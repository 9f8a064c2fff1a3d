"""Question answering's front end: run_squad's document windows and its answer choice.

`windows(tokenizer, question, context, seq_len)` (google-research/bert run_squad's
`convert_examples_to_features`):
  the question's WordPieces are cut to `max_query_length` (Q tokens); the context's
  C WordPieces are cut into windows of at most M = seq_len - Q - 3 tokens, window k
  starting at context token k * doc_stride (doc_stride is the step between window
  starts; the last window is the one that reaches token C).  Row k is
  [CLS] q [SEP] c[start_k : start_k + len_k] [SEP], segment ids 0 for [CLS] q [SEP]
  and 1 after, padded to seq_len.  A context token has *max context* in the window
  that maximises min(tokens left of it, tokens right of it) + 0.01 * window length
  (run_squad's `_check_is_max_context`; the first window on a tie).
  Hugging Face's tokenizer `stride` is the overlap instead: stride = M - doc_stride
  gives the same windows.

`best_answer(windows, start_logits, end_logits)` (run_squad's `write_predictions`):
  in each window the candidate starts are the n_best (20) context tokens with max
  context of highest start logit, the candidate ends the n_best context tokens of
  highest end logit; a span (s, e) needs s <= e and e - s + 1 <= max_answer_length
  (30); its score is start_logit[s] + end_logit[e], compared across all windows.
  (run_squad ranks all S positions and then drops the non-context ones; ranking the
  context only is the same choice whenever the best span is among its candidates, and
  never reads padding positions, whose logits a remove_padding artifact does not
  compute.)  The answer's `score` is Hugging Face's: p_start * p_end of a softmax over
  the window's [CLS] and context positions.  Characters come from the `tokenizers`
  offsets of the context tokens: context[offsets[s][0] : offsets[e][1]], or with
  align_to_words (the pipeline's default) widened to the words holding s and e.
"""

import dataclasses
from typing import List

import numpy as np

from bertc.errors import BertcError

MAX_QUERY_LENGTH = 64
DOC_STRIDE = 128
N_BEST = 20
MAX_ANSWER_LENGTH = 30


@dataclasses.dataclass
class Windows:
    """One (question, context) cut into model rows.

    features: input_ids, input_mask, segment_ids int32 [W, S].
    starts, lengths: first context token and token count of each window.
    query_tokens: Q.  offsets: (char start, end) of every context token.
    word_chars: (char start, end) of the word of every context token.
    max_context: bool [W, S], True at the context tokens whose max context is there.
    """

    features: dict
    starts: List[int]
    lengths: List[int]
    query_tokens: int
    offsets: List[tuple]
    word_chars: List[tuple]
    max_context: np.ndarray

    @property
    def count(self) -> int:
        return len(self.starts)

    def context_slice(self, k: int) -> slice:
        """Row positions of window k's context tokens."""
        first = self.query_tokens + 2
        return slice(first, first + self.lengths[k])


@dataclasses.dataclass
class Answer:
    answer: str
    score: float       # p_start * p_end in its window
    start: int         # character offsets into the context, [start, end)
    end: int
    window: int        # the window it came from
    logit: float       # start_logit + end_logit (what run_squad compares)
    windows: int       # windows run


def doc_spans(context_tokens: int, max_tokens: int, doc_stride: int) -> List[tuple]:
    """run_squad's (start, length) windows over `context_tokens` tokens."""
    spans, start = [], 0
    while start < context_tokens:
        length = min(max_tokens, context_tokens - start)
        spans.append((start, length))
        if start + length == context_tokens:
            break
        start += min(length, doc_stride)
    return spans


def max_context_windows(spans: List[tuple], tokens: int) -> np.ndarray:
    """run_squad's `_check_is_max_context` for every position at once: [tokens] the
    window where each position has most context, score min(p - start, end - p) +
    0.01 * length over the windows holding p, the first window on a tie."""
    starts = np.array([s for s, _ in spans])[:, None]                     # [W, 1]
    lengths = np.array([n for _, n in spans])[:, None]
    ends = starts + lengths - 1
    position = np.arange(tokens)[None, :]                                 # [1, T]
    score = np.minimum(position - starts, ends - position) + 0.01 * lengths  # [W, T]
    inside = (position >= starts) & (position <= ends)
    return np.argmax(np.where(inside, score, -np.inf), axis=0)            # first max


def windows(tokenizer, question: str, context: str, seq_len: int,
            doc_stride: int = DOC_STRIDE, max_query_length: int = MAX_QUERY_LENGTH) -> Windows:
    """The model rows of one question and context (see the module docstring)."""
    query = tokenizer.encode_with_offsets(question).ids[:max_query_length]
    encoding = tokenizer.encode_with_offsets(context)
    if not encoding.ids:
        raise BertcError("`context`: holds no token; expected some text")
    max_tokens = seq_len - len(query) - 3
    if max_tokens < 1:
        raise BertcError(f"`seq_len` {seq_len}: leaves no room for the context after a "
                         f"{len(query)}-token question; expected at least {len(query) + 4}")
    if doc_stride < 1:
        raise BertcError(f"`doc_stride` {doc_stride}: expected a positive integer")
    spans = doc_spans(len(encoding.ids), max_tokens, doc_stride)
    rows = len(spans)
    ids = np.full((rows, seq_len), tokenizer.pad_id, np.int32)
    mask = np.zeros((rows, seq_len), np.int32)
    segments = np.zeros((rows, seq_len), np.int32)
    max_context = np.zeros((rows, seq_len), bool)
    first = len(query) + 2
    best_window = max_context_windows(spans, len(encoding.ids))
    for k, (start, length) in enumerate(spans):
        row = [tokenizer.cls_id, *query, tokenizer.sep_id,
               *encoding.ids[start:start + length], tokenizer.sep_id]
        ids[k, :len(row)] = row
        mask[k, :len(row)] = 1
        segments[k, first:len(row)] = 1
        max_context[k, first:first + length] = best_window[start:start + length] == k
    word_ids = encoding.word_ids
    word_chars = [encoding.word_to_chars(w) if w is not None else o
                  for w, o in zip(word_ids, encoding.offsets)]
    return Windows({"input_ids": ids, "input_mask": mask, "segment_ids": segments},
                   [s for s, _ in spans], [n for _, n in spans], len(query),
                   list(encoding.offsets), word_chars, max_context)


def _top(values: np.ndarray, positions: np.ndarray, n: int) -> np.ndarray:
    """The n positions of highest value (stable: the earlier on a tie)."""
    order = np.argsort(-values[positions], kind="stable")[:n]
    return positions[order]


def best_answer(win: Windows, context: str, start_logits, end_logits, n_best: int = N_BEST,
                max_answer_length: int = MAX_ANSWER_LENGTH,
                align_to_words: bool = True) -> Answer:
    """run_squad's best span across the windows.  start/end_logits: [W, S]."""
    start_logits = np.asarray(start_logits, np.float64)
    end_logits = np.asarray(end_logits, np.float64)
    best = None  # (logit, window, s, e)
    for k in range(win.count):
        span = win.context_slice(k)
        context_positions = np.arange(span.start, span.stop)
        starts = _top(start_logits[k], context_positions[win.max_context[k, span]], n_best)
        ends = _top(end_logits[k], context_positions, n_best)
        for s in starts:
            for e in ends:
                if e < s or e - s + 1 > max_answer_length:
                    continue
                logit = start_logits[k, s] + end_logits[k, e]
                if best is None or logit > best[0]:
                    best = (logit, k, int(s), int(e))
    if best is None:  # every window's candidates were too long or reversed
        k = 0
        s = e = int(win.context_slice(0).start)
        best = (start_logits[k, s] + end_logits[k, e], k, s, e)
    logit, k, s, e = best
    span = win.context_slice(k)
    allowed = np.r_[0, np.arange(span.start, span.stop)]
    p_start = _softmax_at(start_logits[k, allowed], allowed, s)
    p_end = _softmax_at(end_logits[k, allowed], allowed, e)
    token_s = win.starts[k] + s - span.start
    token_e = win.starts[k] + e - span.start
    chars = win.word_chars if align_to_words else win.offsets
    char_start, char_end = chars[token_s][0], chars[token_e][1]
    return Answer(context[char_start:char_end], float(p_start * p_end), int(char_start),
                  int(char_end), int(k), float(logit), win.count)


def _softmax_at(values: np.ndarray, positions: np.ndarray, position: int) -> float:
    p = np.exp(values - values.max())
    return float(p[list(positions).index(position)] / p.sum())


def best_window_span(start_logits, end_logits, mask,
                     max_answer_length: int = MAX_ANSWER_LENGTH) -> tuple:
    """The (s, e) of one row maximising start[s] + end[e] over real positions,
    s <= e < s + max_answer_length (what `bertc verify` compares per window)."""
    real = np.flatnonzero(mask)
    s = np.asarray(start_logits, np.float64)[real]
    e = np.asarray(end_logits, np.float64)[real]
    scores = s[:, None] + e[None, :]                                      # [R, R]
    i, j = np.indices(scores.shape)
    scores[(j < i) | (j - i >= max_answer_length)] = -np.inf
    flat = int(np.argmax(scores))
    return int(real[flat // len(real)]), int(real[flat % len(real)])
