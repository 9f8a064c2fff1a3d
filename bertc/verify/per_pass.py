"""`bertc verify --per_pass`: the error after each rewrite pass, so the one that breaks
numerics is named.

The artifact's passes (from its manifest) are applied to the unrewritten reference
one prefix at a time: passes[:1], passes[:2], ... (each prefix's graph is the
previous one with one more pass run on it); after each prefix the graph runs
on the same inputs as `bertc verify` and is compared with the reference (max abs,
min cosine, argmax agreement per output). The reference runs once.
"""

import logging
from typing import List

from bertc import passes as rewriting
from bertc.runtime import runner as runners
from bertc.verify import compare as verify_lib
from bertc.model.freeze import FrozenGraph


def per_pass_report(reference: FrozenGraph, passes: List[str], options: dict,
                    batches: List[verify_lib.Batch], compiled=None) -> List[dict]:
    """[{'pass', 'sites', 'outputs': {name: stats}}] for each prefix of `passes`, and
    last, with compiled=(name, runner factory), the target's compiled model (all
    passes, then the compile: --target openvino's IR as served)."""
    want = verify_lib.run_all(lambda: runners.graph_def_runner(reference), batches)
    rows = []
    rewritten = reference
    for k, name in enumerate(passes):
        # passes[:k + 1] is passes[:k]'s graph with one more pass run on it; the
        # intermediate graphs are ours to hand over, the reference is not
        rewritten, reports = rewriting.apply(rewritten, [name], options, consume=k > 0)
        got = verify_lib.run_all(lambda: runners.graph_def_runner(rewritten), batches)
        stats = verify_lib.compare_results(got, want, batches)
        rows.append({"pass": name, "sites": reports[-1]["sites"], "outputs": stats})
        logging.info("per-pass %-16s sites %3d  %s", name, reports[-1]["sites"],
                     "  ".join(f"{n}: max_abs {s['max_abs']:.3g} min_cos {s['min_cos']:.6f}"
                               for n, s in stats.items()))
    if compiled is not None:
        name, factory = compiled
        stats = verify_lib.compare_results(verify_lib.run_all(factory, batches), want, batches)
        rows.append({"pass": name, "sites": 1, "outputs": stats})
    return rows


def format_per_pass(rows: List[dict], seq_len: int) -> str:
    """A table: one line per pass (cumulative), one column group per output."""
    lines = [f"per-pass errors at seq {seq_len} (each row: all passes up to and including it, "
             "vs the unrewritten reference)",
             f"  {'pass':<18} {'sites':>5}  {'output':<16} {'max_abs':>10} {'min_cos':>11} "
             f"{'argmax':>8}"]
    for row in rows:
        for i, (name, s) in enumerate(row["outputs"].items()):
            head = f"  {row['pass']:<18} {row['sites']:>5}" if i == 0 else " " * 26
            arg = f"{s['argmax']:.4f}" if "argmax" in s else "-"
            lines.append(f"{head}  {name:<16} {s['max_abs']:>10.3g} {s['min_cos']:>11.7f} "
                         f"{arg:>8}")
    return "\n".join(lines)
