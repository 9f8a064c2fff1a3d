"""Protocols benchmark: one `bertc serve`, the same MRPC pairs over every protocol, in turns.

    .venv/bin/python benchmarks/protocols.py [--model artifacts/minilm] [--clients 48]
        [--cycle 8] [--rounds 3] [--parallel 2] [--out bench_out/protocols.json]

The server (`bertc serve --port 0 --grpc_port 0`, a subprocess on 127.0.0.1) serves
REST and gRPC at once; the load generator (`bertc client`'s loadgen, this process)
sends clients x cycle requests per protocol, the protocols taking turns within each
round (the order rotated every round), so drift on the shared machine falls on all
of them alike:
  classify  text to :classify (the server tokenizes)
  rest      token ids to :predict (TF Serving REST, JSON)
  grpc      token ids to TF Serving gRPC Predict (TensorProto tensor_content)
  v2        token ids to KServe v2 REST infer (JSON)
  v2_grpc   token ids to v2 gRPC ModelInfer (raw_input_contents)
The token-id protocols carry the same rows (tokenized before the clock), so only the
wire and its parsing differ. Reported: per protocol the median over rounds of
requests/s and of p50 / p99 latency, the ratios to `rest`, and every request's
outcome (sent, answered, refused with an error, no answer).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bertc.client import loadgen, report  # noqa: E402
from bertc.client.protocols import PROTOCOLS  # noqa: E402
from bertc.runtime import machine  # noqa: E402
from bertc.text import pairs as textdata  # noqa: E402


def start_server(model, parallel):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "bertc.cli", "serve", "--model", model,
                             "--port", "0", "--grpc_port", "0", "--parallel", str(parallel)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)
    url = target = None
    deadline = time.monotonic() + 180
    while (url is None or target is None) and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if m := re.search(r"over gRPC on (127\.0\.0\.1:\d+)", line):
            target = m.group(1)
        if m := re.search(r" on (http://127\.0\.0\.1:\d+) ", line):
            url = m.group(1)
    if url is None or target is None:
        proc.kill()
        raise SystemExit("bertc serve did not start")
    # The log is drained by a thread so the server never blocks on a full pipe.
    import threading
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, url, target


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(REPO, "artifacts", "minilm"))
    parser.add_argument("--tsv", default=textdata.default_mrpc_path())
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--cycle", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(REPO, "bench_out", "protocols.json"))
    args = parser.parse_args()
    print(machine.header())
    pairs = textdata.read_mrpc_tsv(args.tsv)
    vocab = os.path.join(args.model, "vocab.txt")
    proc, url, target = start_server(args.model, args.parallel)
    runs = {p: [] for p in PROTOCOLS}
    try:
        for protocol in PROTOCOLS:  # warm-up: connections, first batches of each bucket
            loadgen.run(url, pairs, clients=4, cycle=2, protocol=protocol, grpc_target=target,
                        vocab=vocab)
        for r in range(args.rounds):
            order = PROTOCOLS[r % len(PROTOCOLS):] + PROTOCOLS[:r % len(PROTOCOLS)]
            for protocol in order:
                result = loadgen.run(url, pairs, args.clients, args.cycle, seed=r,
                                     protocol=protocol, grpc_target=target, vocab=vocab)
                summary = report.summarize(result)
                summary["no_answer"] = sum(1 for o in result.outcomes if o.status == 0)
                runs[protocol].append(summary)
                print(f"round {r} {protocol:8s} {summary['throughput_rps']:7.1f} req/s  "
                      f"p50 {summary['latency_ms']['p50']:6.1f} ms  p99 "
                      f"{summary['latency_ms']['p99']:6.1f} ms  errors {summary['errors']}",
                      flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    table = {}
    for protocol, summaries in runs.items():
        table[protocol] = {
            "requests_per_s": statistics.median(s["throughput_rps"] for s in summaries),
            "p50_ms": statistics.median(s["latency_ms"]["p50"] for s in summaries),
            "p99_ms": statistics.median(s["latency_ms"]["p99"] for s in summaries),
            "sent": sum(s["requests"] for s in summaries),
            "answered": sum(s["ok"] for s in summaries),
            "refused": sum(s["requests"] - s["ok"] - s["no_answer"] for s in summaries),
            "no_answer": sum(s["no_answer"] for s in summaries),
            "accuracy": summaries[-1]["accuracy"]["accuracy"] if summaries[-1]["accuracy"]
            else None}
    rest = table["rest"]
    print(f"\n{args.clients} clients x {args.cycle} requests x {args.rounds} rounds, "
          f"--parallel {args.parallel}; medians over rounds")
    print("| protocol | requests/s | vs rest | p50 ms | vs rest | p99 ms | sent | answered | "
          "refused | no answer | accuracy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for protocol, row in table.items():
        accuracy = f"{100 * row['accuracy']:.1f}%" if row["accuracy"] is not None else "-"
        print(f"| {protocol} | {row['requests_per_s']:.1f} | "
              f"{row['requests_per_s'] / rest['requests_per_s']:.2f} | {row['p50_ms']:.1f} | "
              f"{row['p50_ms'] / rest['p50_ms']:.2f} | {row['p99_ms']:.1f} | {row['sent']} | "
              f"{row['answered']} | {row['refused']} | {row['no_answer']} | {accuracy} |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"machine": machine.describe(), "args": vars(args), "table": table,
                   "runs": runs}, f, indent=2, default=str)


if __name__ == "__main__":
    main()
