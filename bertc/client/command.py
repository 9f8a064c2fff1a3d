"""`bertc client` as a library call: one pair (`--pair A B`) answered, or pairs from
a TSV sent as a load test (clients x cycle), reported and plotted."""

import sys
from typing import List, Optional, Sequence, Tuple

from bertc.text import pairs as textdata
from bertc.client import loadgen, report
from bertc.client import plot as plot_lib
from bertc.client import progress as progress_lib
from bertc.errors import BertcError, CheckFailed
from bertc.text.pairs import Pair


def pairs_from_flags(tsv: Optional[str], pair: Optional[str], args: Sequence[str]
                     ) -> List[Pair]:
    """`--pair A B` (B arrives as the one positional argument) or an MRPC TSV."""
    if pair is not None:
        if tsv:
            raise BertcError("client: --pair and --tsv both given; expected one")
        if len(args) != 1:
            raise BertcError("client: --pair expects two sentences: --pair \"sentence a\" "
                             f"\"sentence b\" (got {1 + len(args)})")
        return [Pair(label=None, text_a=pair, text_b=args[0])]
    if args:
        raise BertcError(f"client: unexpected argument {args[0]!r}; expected only flags "
                         "(quote sentences given to --pair)")
    path = tsv or textdata.default_mrpc_path()
    if not path:
        raise BertcError("client: --tsv not given and ../shared/data/glue_mrpc_dev.tsv not "
                         "found; expected an MRPC-format TSV")
    pairs = textdata.read_mrpc_tsv(path)
    if not pairs:
        raise BertcError(f"--tsv {path}: no rows; expected MRPC sentence pairs")
    return pairs


def run_client(*, url: str, model_name: Optional[str], pairs: Sequence[Pair], clients: int,
               cycle: int, timeout_s: float, seed: int, progress: bool,
               plot: Optional[str], protocol: str = "classify",
               grpc_target: Optional[str] = None,
               vocab: Optional[str] = None) -> Tuple[dict, str]:
    """Runs the load; returns (summary, text report). Writes the plot if asked."""
    bar = _progress_bar(clients * cycle, progress)
    try:
        result = loadgen.run(url, pairs, clients, cycle, model_name=model_name,
                             timeout_s=timeout_s, seed=seed,
                             on_outcome=lambda o: bar.update(o.ok), protocol=protocol,
                             grpc_target=grpc_target, vocab=vocab)
    finally:
        bar.close()
    summary = report.summarize(result)
    summary["protocol"] = protocol
    if plot:
        title = (f"{summary['model_name']}: {clients} clients x {cycle}, "
                 f"{summary['throughput_rps']:.0f} req/s")
        plot_lib.save_latency_histogram(report.latencies_ms(result), plot, title)
        summary["plot"] = plot
    return summary, report.format_text(summary)

def ask_pair(*, url: str, model_name: Optional[str], pair: Pair,
             timeout_s: float) -> dict:
    """`--pair A B`: one request to :classify; {url, model_name, latency_ms, answer}."""
    result = loadgen.run(url, [pair], clients=1, cycle=1, model_name=model_name,
                         timeout_s=timeout_s)
    (outcome,) = result.outcomes
    if not outcome.ok:
        raise CheckFailed(f"--url {url}: the request to model {result.model_name!r} "
                          f"failed ({outcome.error})")
    return {"url": url, "model_name": result.model_name,
            "latency_ms": 1000 * outcome.latency_s, "answer": outcome.answer}


def format_answer(asked: dict) -> str:
    """The decision in words, then the latency."""
    answer = asked["answer"]
    if "similarity" in answer:
        verdict = "a paraphrase" if answer["paraphrase"] else "not a paraphrase"
        decision = (f"similarity {answer['similarity']:.4f}, threshold "
                    f"{answer['threshold']:.4f}: {verdict} (label {answer['label']})")
    elif "score" in answer:
        decision = f"label {answer['label']}, score {answer['score']:.4f}"
    else:
        decision = ", ".join(f"{k} {v}" for k, v in report.short_answer(answer).items()
                             if k not in ("truncated", "num_tokens", "seq_lens"))
    lines = [f"model {asked['model_name']!r} at {asked['url']}: {decision}",
             f"latency: {asked['latency_ms']:.1f} ms"]
    if answer.get("truncated"):
        lines.append("truncated: the pair was longer than the longest bucket")
    return "\n".join(lines)


def _progress_bar(total: int, requested: bool) -> progress_lib.ProgressBar:
    return progress_lib.ProgressBar(total, progress_lib.should_show(requested, sys.stderr))
