"""Numerical equivalence of an artifact with the unrewritten fp32 reference.

Both models are run on the same inputs: (a) real text, pairs tokenized from an
MRPC-format TSV or a plain text file, and (b) random ids with random valid masks
(each row a random real length, the rest padding). Per output the report gives
  max_abs   = max |a - r|
  max_rel   = max |a - r| / max |r|              (normwise)
  min_cos   = min over rows of cos(a_row, r_row)
  argmax    = fraction of rows whose argmax agrees (logits, probabilities)
`sequence_output`, `start_logits` and `end_logits` are compared at real (mask = 1)
positions only (padding positions read 0 in both), and a span head also reports
`answer`: the fraction of windows whose best span (bertc.text.question_answering
.best_window_span over the real positions) is the same in both. Batches are
filled to the static batch size with all-padding dummy rows, whose results are
dropped, as a server does.

The artifact is run twice (bertc.runtime.runner): `served`, exactly as `bertc serve`
runs it (weights as constants, Grappler's optimizers and the oneDNN remapper on,
the server's thread settings), and `as_written` (Grappler off, weights fed).
The thresholds apply to the served run, what users get; the as-written run shows
what the graph itself computes, so a gap between the two is Grappler's doing.
The reference is always run as written.
"""

import dataclasses
import logging
from typing import Dict, List, Optional

import numpy as np

from bertc.errors import BertcError

#: Thresholds of an exact build (fp32, only exact rewrites); approximate passes set
#: their own (bertc.rewriting.APPROXIMATE_THRESHOLDS).
EXACT = {"max_abs": 1e-4, "min_cos": 0.99999, "argmax": 1.0}


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


def random_features(rows: int, seq_len: int, vocab_size: int, type_vocab_size: int = 2,
                    seed: int = 0) -> Dict[str, np.ndarray]:
    """Random ids with random valid masks: row i has a random length in [2, S]."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_size, size=(rows, seq_len), dtype=np.int32)
    lengths = rng.integers(2, seq_len + 1, size=rows)
    lengths[0] = seq_len  # always one full-length row
    positions = np.arange(seq_len)[None, :]
    mask = (positions < lengths[:, None]).astype(np.int32)
    split = (lengths * rng.uniform(0.3, 0.7, size=rows)).astype(int)
    segments = ((positions >= split[:, None]) & (mask == 1)).astype(np.int32)
    segments = np.minimum(segments, type_vocab_size - 1)
    return {"input_ids": ids * mask, "input_mask": mask, "segment_ids": segments}


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
    if name in ("logits", "probabilities"):
        result["argmax"] = float(np.mean(np.argmax(a, -1) == np.argmax(r, -1)))
    return result


def run_all(runner_factory, batches: List[Batch]) -> List[Dict[str, np.ndarray]]:
    """Outputs of one runner for every batch; the runner is closed afterwards."""
    runner = runner_factory()
    try:
        return [{k: v[:b.real_rows] for k, v in runner(b.feeds).items()} for b in batches]
    finally:
        close = getattr(runner, "close", None)
        if close:
            close()


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


def input_sets(text_features, text_source, seq_len: int, vocab_size: int,
               type_vocab_size: int, random_rows: int = 32) -> dict:
    """{'text': (features, source), 'random': (features, None)}: what verify runs on."""
    sets = {}
    if text_features is not None:
        sets["text"] = (text_features, text_source)
    sets["random"] = (random_features(random_rows, seq_len, vocab_size, type_vocab_size), None)
    return sets


def verify_runners(artifact, reference, batch_size: int, seq_len: int,
                   text_features: Optional[Dict[str, np.ndarray]], vocab_size: int,
                   type_vocab_size: int, thresholds: dict, random_rows: int = 32,
                   text_source: str = None, checked_sets=None) -> dict:
    """The full verify report: per run of the artifact, per input set, per output,
    and pass/fail.

    Args:
      artifact: {run name: (runner factory, description)}, the run the thresholds
        apply to first (bertc.runners.saved_model_runs: 'served', then
        'as_written'); or one runner factory.
      reference: a runner factory.  A factory is called once and its runner run
        on every input set, the reference first, so one model is in memory at a time.
      checked_sets: the input sets the thresholds apply to (default: all; int8
        artifacts: 'text', their bound is on held-out text, random ids are reported).
    Returns: {'checked': the first run's name, 'inputs': that run's per-set
      statistics, 'runs': {name: {'config', 'inputs', 'passed'}}, 'failures' and
      'passed' (the checked run's), ...}.  The other runs' 'passed' applies the same
      thresholds: it tells a fault of one runtime from a fault of the reference.
    """
    runs = artifact if isinstance(artifact, dict) else {"artifact": (artifact, {})}
    sets = input_sets(text_features, text_source, seq_len, vocab_size, type_vocab_size,
                      random_rows)
    checked = next(iter(runs))
    report = {"thresholds": thresholds, "batch_size": batch_size, "seq_len": seq_len,
              "checked": checked, "inputs": {}, "runs": {}, "failures": []}
    batches = {name: pad_rows(features, batch_size) for name, (features, _) in sets.items()}
    every = [b for set_batches in batches.values() for b in set_batches]
    want = run_all(reference, every)  # each model is built once and alone in memory
    for run_name, (factory, description) in runs.items():
        got = run_all(factory, every)
        inputs, start, run_failures = {}, 0, []
        for set_name, (features, source) in sets.items():
            end = start + len(batches[set_name])
            stats = compare_results(got[start:end], want[start:end], batches[set_name])
            start = end
            inputs[set_name] = {"rows": int(len(features["input_ids"])), "source": source,
                                "outputs": stats}
            if checked_sets is None or set_name in checked_sets:
                run_failures += [f"{set_name}: {line}" for line in check(stats, thresholds)]
            for output, s in stats.items():
                logging.info("verify %s %-6s %-16s max_abs %.3g  max_rel %.3g  min_cos %.7f%s",
                             run_name, set_name, output, s["max_abs"], s["max_rel"],
                             s["min_cos"],
                             f"  argmax {s['argmax']:.4f}" if "argmax" in s else
                             f"  answer {s['answer']:.4f}" if "answer" in s else "")
        report["runs"][run_name] = {"config": description, "inputs": inputs,
                                    "passed": not run_failures}
        if run_name == checked:
            report["failures"] = run_failures
    report["inputs"] = report["runs"][checked]["inputs"]
    report["passed"] = not report["failures"]
    return report


def other_runs(report: dict) -> str:
    """' (the served run passes; ...)': how the artifact's other runs fared on the same
    thresholds, for a failed verify's one line (which runtime, or the reference, is at
    fault); '' for a report of one run."""
    others = [f"the {name} run {'passes' if run.get('passed') else 'fails too'}"
              for name, run in report.get("runs", {}).items() if name != report["checked"]]
    return f" ({'; '.join(others)})" if others else ""


def format_report(report: dict) -> str:
    """A human-readable table of a verify report (for the CLI to print): every run,
    the checked one first and marked as the one the thresholds apply to."""
    lines = [f"verify: batch {report['batch_size']} x seq {report['seq_len']}, thresholds "
             + ", ".join(f"{k} {v}" for k, v in report["thresholds"].items() if v is not None)
             + (f" (applied to the {report['checked']} run)" if len(report.get("runs", {})) > 1
                else "")]
    lines.append(f"  {'run':<10} {'inputs':<8} {'output':<16} {'max_abs':>10} {'max_rel':>10} "
                 f"{'min_cos':>11} {'argmax':>8}")
    runs = report.get("runs") or {report.get("checked", "artifact"): {"inputs": report["inputs"]}}
    for run_name, run in runs.items():
        for set_name, entry in run["inputs"].items():
            for output, s in entry["outputs"].items():
                arg = (f"{s['argmax']:.4f}" if "argmax" in s else
                       f"{s['answer']:.4f}" if "answer" in s else "-")
                lines.append(f"  {run_name:<10} {set_name:<8} {output:<16} {s['max_abs']:>10.3g} "
                             f"{s['max_rel']:>10.3g} {s['min_cos']:>11.7f} {arg:>8}")
            lines[-1] += (f"   ({entry['rows']} rows"
                          f"{', ' + entry['source'] if entry['source'] else ''})")
    if any("answer" in s for run in runs.values() for e in run["inputs"].values()
           for s in e["outputs"].values()):
        lines.append("  (end_logits' argmax column: answer agreement, the windows whose best "
                     "span is the same as the reference's)")
    lines.append("verify: PASSED" if report["passed"] else
                 "verify: FAILED: " + "; ".join(report["failures"]))
    return "\n".join(lines)
