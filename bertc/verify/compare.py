"""Numerical equivalence of an artifact with the unrewritten fp32 reference.

Both models are run on the same inputs: (a) real text, pairs tokenized from an
MRPC-format TSV or a plain text file, and (b) random ids with random valid masks
(each row a random real length, the rest padding). Per output the report gives
max_abs, max_rel, min_cos and, for logits, argmax agreement (bertc.runtime.agreement
states them). Batches are filled to the static batch size with all-padding dummy
rows, whose results are dropped, as a server does.

The artifact is run twice (bertc.runtime.runner): `served`, exactly as `bertc serve`
runs it (weights as constants, Grappler's optimizers and the oneDNN remapper on,
the server's thread settings), and `as_written` (Grappler off, weights fed).
The thresholds apply to the served run, what users get; the as-written run shows
what the graph itself computes, so a gap between the two is Grappler's doing.
The reference is always run as written.

A build also keeps a probe of each bucket (bertc.artifact.probe): one batch of the
text rows the checked run agreed on, with the reference's outputs on them, which
`bertc serve` runs again on the CPU it serves from.
"""

import logging
from typing import Callable, Dict, List, Optional

import numpy as np

# The statistics and batches live below verify, where `bertc serve` can use them too;
# they are verify's vocabulary, so its callers keep reaching them here.
from bertc.runtime.agreement import (  # noqa: F401
    Batch, agreeing_rows, check, compare_results, pad_rows)

#: Thresholds of an exact build (fp32, only exact rewrites); approximate passes set
#: their own (bertc.rewriting.APPROXIMATE_THRESHOLDS).
EXACT = {"max_abs": 1e-4, "min_cos": 0.99999, "argmax": 1.0}


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


def run_all(runner_factory, batches: List[Batch]) -> List[Dict[str, np.ndarray]]:
    """Outputs of one runner for every batch; the runner is closed afterwards."""
    runner = runner_factory()
    try:
        return [{k: v[:b.real_rows] for k, v in runner(b.feeds).items()} for b in batches]
    finally:
        close = getattr(runner, "close", None)
        if close:
            close()



def input_sets(text_features, text_source, seq_len: int, vocab_size: int,
               type_vocab_size: int, random_rows: int = 32) -> dict:
    """{'text': (features, source), 'random': (features, None)}: what verify runs on."""
    sets = {}
    if text_features is not None:
        sets["text"] = (text_features, text_source)
    sets["random"] = (random_features(random_rows, seq_len, vocab_size, type_vocab_size), None)
    return sets


def probe_batch(features: Dict[str, np.ndarray], got: List[Dict[str, np.ndarray]],
                want: List[Dict[str, np.ndarray]], batch_size: int):
    """(Batch, reference outputs, checked run's statistics) of a bucket's probe: the
    first `batch_size` rows of `features` [N, S] on which the checked run's outputs
    `got` agreed with the reference's `want` (agreeing_rows: the same argmax), as one
    batch padded with dummy rows, the reference's outputs on its real rows, and
    compare_results of the checked run on them; None when no row agreed."""
    got_rows = {k: np.concatenate([g[k] for g in got]) for k in got[0]}
    want_rows = {k: np.concatenate([w[k] for w in want]) for k in want[0]}
    keep = np.flatnonzero(agreeing_rows(got_rows, want_rows))[:batch_size]
    if not len(keep):
        return None
    batch = pad_rows({k: v[keep] for k, v in features.items()}, batch_size)[0]
    want_kept = {k: v[keep] for k, v in want_rows.items()}
    stats = compare_results([{k: v[keep] for k, v in got_rows.items()}], [want_kept], [batch])
    return batch, want_kept, stats


def verify_runners(artifact, reference, batch_size: int, seq_len: int,
                   text_features: Optional[Dict[str, np.ndarray]], vocab_size: int,
                   type_vocab_size: int, thresholds: dict, random_rows: int = 32,
                   text_source: str = None, checked_sets=None,
                   on_probe: Optional[Callable] = None) -> dict:
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
      on_probe: called once, with (Batch, reference outputs, statistics, source) of
        probe_batch on the text set (random ids when there is no text), when the build
        keeps a probe (bertc.artifact.probe); not called when no row agreed.
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
            if on_probe is not None:
                _keep_probe(on_probe, sets, batches, got, want, batch_size)
    report["inputs"] = report["runs"][checked]["inputs"]
    report["passed"] = not report["failures"]
    return report


def _keep_probe(on_probe, sets: dict, batches: dict, got: list, want: list,
                batch_size: int) -> None:
    """Calls on_probe with the probe of the first input set (text; random without it)."""
    name = next(iter(sets))
    features, source = sets[name]
    end = len(batches[name])  # the first set's batches come first in got and want
    probe = probe_batch(features, got[:end], want[:end], batch_size)
    if probe is not None:
        on_probe(*probe, source)


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
