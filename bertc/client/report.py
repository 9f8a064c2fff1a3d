"""The client's summary: throughput, latency percentiles, errors, accuracy.

Accuracy is over every answered request that has a TSV label (a pair sent twice
counts twice), next to the majority baseline of the same requests (MRPC dev:
68.4% by always answering "paraphrase"; a model near it has learned nothing).
"""

import collections
from typing import Optional

import numpy as np

from bertc.client.loadgen import LoadResult

PERCENTILES = (50, 90, 99)
_ERROR_EXAMPLES = 3


def summarize(result: LoadResult) -> dict:
    outcomes = result.outcomes
    ok = [o for o in outcomes if o.ok]
    errors = collections.Counter(_error_kind(o) for o in outcomes if not o.ok)
    examples = []
    for o in outcomes:
        if not o.ok and o.error not in examples and len(examples) < _ERROR_EXAMPLES:
            examples.append(o.error)
    latency_ms = np.asarray([1000 * o.latency_s for o in ok], np.float64)
    latency = None
    if latency_ms.size:
        latency = {f"p{p}": float(v) for p, v in zip(PERCENTILES,
                                                     np.percentile(latency_ms, PERCENTILES))}
        latency.update(mean=float(latency_ms.mean()), min=float(latency_ms.min()),
                       max=float(latency_ms.max()))
    labelled = [o for o in outcomes if o.expected is not None]
    graded = [o for o in labelled if o.ok and o.label is not None]
    accuracy = None
    if graded:
        positives = sum(1 for o in labelled if o.expected == 1)
        accuracy = {
            "accuracy": sum(1 for o in graded if o.label == o.expected) / len(graded),
            "graded": len(graded),
            "majority_baseline": max(positives, len(labelled) - positives) / len(labelled),
        }
    return {
        "url": result.url, "model_name": result.model_name, "clients": result.clients,
        "cycle": result.cycle, "requests": len(outcomes), "ok": len(ok),
        "errors": dict(errors), "error_examples": examples,
        "wall_s": result.wall_s,
        "throughput_rps": len(ok) / result.wall_s if result.wall_s > 0 else 0.0,
        "latency_ms": latency,
        "truncated": sum(1 for o in ok if o.truncated),
        "accuracy": accuracy,
        "example_answer": short_answer(ok[0].answer) if ok else None,
    }


def short_answer(answer: Optional[dict]) -> Optional[dict]:
    """An answer without long vectors (embeddings), for the report."""
    if not isinstance(answer, dict):
        return None
    return {k: (f"<{len(v)} floats>" if isinstance(v, list) and len(v) > 8 else v)
            for k, v in answer.items()}


def latencies_ms(result: LoadResult) -> list:
    return [1000 * o.latency_s for o in result.outcomes if o.ok]


def _error_kind(outcome) -> str:
    if outcome.status:
        return str(outcome.status)
    return "timeout" if outcome.error == "timeout" else "connection"


def format_text(summary: dict) -> str:
    lines = [f"{summary['requests']} requests ({summary['clients']} clients x "
             f"{summary['cycle']}) to {summary['url']} model {summary['model_name']!r}"
             f"{' over ' + summary['protocol'] if summary.get('protocol') else ''} in "
             f"{summary['wall_s']:.2f} s",
             f"throughput: {summary['throughput_rps']:.1f} requests/s "
             f"({summary['ok']} ok)"]
    latency = summary["latency_ms"]
    if latency:
        lines.append("latency: " + ", ".join(f"p{p} {latency[f'p{p}']:.1f} ms"
                                             for p in PERCENTILES)
                     + f", mean {latency['mean']:.1f} ms, max {latency['max']:.1f} ms")
    if summary["errors"]:
        lines.append("errors: " + ", ".join(f"{k}: {v}" for k, v in
                                            sorted(summary["errors"].items())))
        lines += [f"  e.g. {e}" for e in summary["error_examples"]]
    else:
        lines.append("errors: none")
    if summary["truncated"]:
        lines.append(f"truncated: {summary['truncated']} answers say their text was cut")
    acc = summary["accuracy"]
    if not acc and summary["example_answer"]:
        lines.append("answer: " + ", ".join(f"{k} {v}" for k, v in
                                            summary["example_answer"].items()))
    if acc:
        lines.append(f"accuracy: {100 * acc['accuracy']:.1f}% over {acc['graded']} labelled "
                     f"answers (majority baseline {100 * acc['majority_baseline']:.1f}%)")
    return "\n".join(lines)
