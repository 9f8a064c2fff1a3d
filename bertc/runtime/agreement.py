"""How closely one run's outputs agree with another's (an artifact's with the
unrewritten fp32 reference's): the statistics verify reports and the bounds it checks,
used by `bertc verify`, the build's verify and `bertc serve`'s probe alike.

Per output, over the real rows of [B, ...] outputs (dummy padding rows cut):
  max_abs   = max |a - r|
  max_rel   = max |a - r| / max |r|              (normwise)
  min_cos   = min over rows of cos(a_row, r_row)
  argmax    = fraction of rows whose argmax agrees (logits, probabilities)
`sequence_output`, `start_logits` and `end_logits` are compared at real (mask = 1)
positions only (padding positions read 0 in both), and a span head also reports
`answer`: the fraction of windows whose best span (bertc.text.question_answering
.best_window_span over the real positions) is the same in both.
"""

import dataclasses
from typing import Dict, List

import numpy as np

from bertc.errors import BertcError

#: The outputs whose rows are compared by argmax.
ARGMAX_OUTPUTS = ("logits", "probabilities")


@dataclasses.dataclass
class Batch:
    feeds: Dict[str, np.ndarray]   # int32 [B, S] each
    real_rows: int                 # rows before the dummy padding rows


def pad_rows(features: Dict[str, np.ndarray], batch_size: int) -> List[Batch]:
    """Cuts [N, S] features into [batch_size, S] batches, padding the last one."""
    n = len(features["input_ids"])
    batches = []
    for start in range(0, n, batch_size):
        real = min(batch_size, n - start)
        feeds = {}
        for name, value in features.items():
            chunk = value[start:start + real]
            pad = np.zeros((batch_size - real,) + chunk.shape[1:], np.int32)
            feeds[name] = np.concatenate([chunk, pad]).astype(np.int32)
        batches.append(Batch(feeds, real))
    return batches


SPAN_OUTPUTS = ("start_logits", "end_logits")


def _compare(name: str, a: np.ndarray, r: np.ndarray, mask: np.ndarray) -> dict:
    if name == "sequence_output":
        keep = mask.astype(bool)
        a, r = a[keep], r[keep]                                 # [real tokens, D]
    elif name in SPAN_OUTPUTS:
        a, r = a * mask, r * mask                               # [rows, S], 0 at padding
    else:
        a, r = a.reshape(len(a), -1), r.reshape(len(r), -1)   # [rows, ...]
    diff = np.abs(a.astype(np.float64) - r.astype(np.float64))
    scale = float(np.max(np.abs(r))) or 1.0
    num = np.sum(a.astype(np.float64) * r, axis=-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(r, axis=-1)
    both_zero = (np.linalg.norm(a, axis=-1) == 0) & (np.linalg.norm(r, axis=-1) == 0)
    cos = np.where(both_zero, 1.0, num / np.maximum(den, 1e-30))
    result = {"max_abs": float(diff.max(initial=0.0)), "max_rel": float(diff.max(initial=0.0)) / scale,
              "min_cos": float(cos.min(initial=1.0)), "mean_cos": float(cos.mean()) if len(cos) else 1.0}
    if name in ARGMAX_OUTPUTS:
        result["argmax"] = float(np.mean(np.argmax(a, -1) == np.argmax(r, -1)))
    return result


def compare_results(got: List[Dict[str, np.ndarray]], want: List[Dict[str, np.ndarray]],
                    batches: List[Batch]) -> dict:
    """Per-output error statistics of the artifact's outputs `got` against the
    reference's `want`, one dict per batch (dummy rows already cut)."""
    mask = np.concatenate([b.feeds["input_mask"][:b.real_rows] for b in batches])
    report = {}
    for name in want[0]:
        if name not in got[0]:
            raise BertcError(f"artifact has no output '{name}'; expected the outputs "
                             f"{', '.join(sorted(want[0]))}")
        report[name] = _compare(name, np.concatenate([g[name] for g in got]),
                                np.concatenate([w[name] for w in want]), mask)
    if all(n in want[0] for n in SPAN_OUTPUTS):
        got_spans, want_spans = _best_span(got, mask), _best_span(want, mask)
        report["end_logits"]["answer"] = float(np.mean([g == w for g, w
                                                        in zip(got_spans, want_spans)]))
    return report


def _best_span(outputs, mask) -> list:
    """Each window's best (start, end) over its real positions."""
    from bertc.text import question_answering as qa
    start = np.concatenate([o["start_logits"] for o in outputs])
    end = np.concatenate([o["end_logits"] for o in outputs])
    return [qa.best_window_span(s, e, m) for s, e, m in zip(start, end, mask)]


def check(report: Dict[str, dict], thresholds: dict) -> List[str]:
    """The threshold violations of a per-output report, as readable lines."""
    failures = []
    for output, stats in report.items():
        if thresholds.get("max_abs") is not None and output != "probabilities" \
                and stats["max_abs"] > thresholds["max_abs"]:
            failures.append(f"{output}: max_abs {stats['max_abs']:.3g} > {thresholds['max_abs']:g}")
        if stats["min_cos"] < thresholds["min_cos"]:
            failures.append(f"{output}: min cosine {stats['min_cos']:.6f} < {thresholds['min_cos']}")
        if "argmax" in stats and stats["argmax"] < thresholds["argmax"]:
            failures.append(f"{output}: argmax agreement {stats['argmax']:.4f} < {thresholds['argmax']}")
    return failures


def agreeing_rows(got: Dict[str, np.ndarray], want: Dict[str, np.ndarray]) -> np.ndarray:
    """bool [N]: the rows of [N, ...] outputs whose argmax agrees in every argmax output
    (ARGMAX_OUTPUTS); all True for heads without one (embeddings, sequence, spans)."""
    rows = len(next(iter(want.values())))
    agree = np.ones(rows, bool)
    for name in ARGMAX_OUTPUTS:
        if name in want and name in got:
            agree &= np.argmax(got[name], -1) == np.argmax(want[name], -1)
    return agree
