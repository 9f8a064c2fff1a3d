"""Ray Serve engine vs `bertc serve --parallel`: throughput and the latency Ray adds.

    .venv/bin/python benchmarks/ray_serve.py [--artifact artifacts/minilm]
        [--clients 48] [--cycle 8] [--replicas 1,2,4] [--out bench_out/ray_serve.json]

Workload: MRPC dev pairs to :classify (bertc.client.loadgen, the load `bertc client`
sends), an embedding head, so each request is two rows. In turns, in this process:
  bertc P   `bertc serve --parallel P` for P = 1 (2 intra-op threads), 2 (1 each)
            (subprocess, 127.0.0.1)
  ray N     the Ray Serve application (bertc.serving.ray_engine) with N BertcModel
            replicas of one intra-op thread, bertc's batcher in each replica, on a
            local Ray started here (no dashboard, 127.0.0.1)
  ray 2 sb  2 replicas with @serve.batch instead of bertc's batcher
Each: a warm-up pass, clients x cycle requests (requests/s, rows/s = 2 x requests/s),
then one client x 40 requests (p50 latency without queueing). The latency Ray adds
is ray 2's light-load p50 minus bertc --parallel 2's (both 2 x 1 intra-op thread). On a 2-core machine 4 replicas
oversubscribe the cores. CPU model, ISA flags and the load average are printed.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import serving as bench_serving  # noqa: E402
from bertc.client import loadgen, report  # noqa: E402
from bertc.runtime import machine  # noqa: E402
from bertc.text import pairs as textdata  # noqa: E402

LIGHT_CYCLE = 40


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(url, pairs, clients, cycle, label):
    loadgen.run(url, pairs, clients, 1, model_name="bench")  # warm connections
    foreign = bench_serving.ForeignLoad()
    heavy = report.summarize(loadgen.run(url, pairs, clients, cycle, model_name="bench",
                                         seed=1))
    light = report.summarize(loadgen.run(url, pairs, 1, LIGHT_CYCLE, model_name="bench",
                                         seed=2))
    result = {"stack": label, "requests": heavy["requests"], "errors": heavy["errors"],
              "requests_per_s": heavy["throughput_rps"],
              "rows_per_s": 2 * heavy["throughput_rps"],
              "p50_ms": heavy["latency_ms"]["p50"], "light_p50_ms": light["latency_ms"]["p50"],
              "foreign_cores": foreign.cores(), "loadavg": os.getloadavg()[0]}
    print(json.dumps(result), flush=True)
    return result


def bertc_serve(artifact, parallel, pairs, clients, cycle):
    proc, url = bench_serving.start_server(artifact, parallel, 5)
    try:
        return measure(url, pairs, clients, cycle, f"bertc --parallel {parallel}")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def ray_serve(artifact, replicas, batching, pairs, clients, cycle, port):
    from ray import serve
    from bertc.serving import ray_engine
    options = ray_engine.RayServeOptions(model=artifact, model_name="bench",
                                         num_replicas=replicas, port=port,
                                         max_batch_delay_ms=5, batching=batching)
    url = ray_engine.deploy(options)
    try:
        return measure(url, pairs, clients, cycle,
                       f"ray {replicas} replica(s), batching {batching}")
    finally:
        serve.delete(ray_engine.APP_NAME)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifact", default=os.path.join(REPO, "artifacts", "minilm"))
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--cycle", type=int, default=8)
    parser.add_argument("--replicas", default="1,2,4")
    parser.add_argument("--out", default=os.path.join(REPO, "bench_out", "ray_serve.json"))
    args = parser.parse_args()
    info = machine.describe()
    print(machine.header(), flush=True)
    print(json.dumps({"cores": os.cpu_count(), "loadavg": os.getloadavg()}), flush=True)
    pairs = textdata.read_pairs(textdata.default_mrpc_path())
    results = [bertc_serve(args.artifact, p, pairs, args.clients, args.cycle) for p in (1, 2)]
    import ray
    replicas = [int(r) for r in args.replicas.split(",")]
    ray.init(num_cpus=max(replicas), include_dashboard=False, logging_level="WARNING",
             _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"PYTHONPATH": REPO}})
    port = _free_port()
    try:
        for n in replicas:
            results.append(ray_serve(args.artifact, n, "bertc", pairs, args.clients,
                                     args.cycle, port))
        results.append(ray_serve(args.artifact, 2, "serve", pairs, args.clients, args.cycle,
                                 port))
    finally:
        from ray import serve
        serve.shutdown()
        ray.shutdown()
    by = {r["stack"]: r for r in results}
    summary = {
        # Same threads on both sides: 2 replicas x 1 intra-op thread (bertc --parallel 1
        # runs 2 threads in one replica, ray's replicas 1 each).
        "ray_added_light_p50_ms": round(by["ray 2 replica(s), batching bertc"]["light_p50_ms"]
                                        - by["bertc --parallel 2"]["light_p50_ms"], 2),
        "ray2_over_bertc2_throughput": round(
            by["ray 2 replica(s), batching bertc"]["requests_per_s"]
            / by["bertc --parallel 2"]["requests_per_s"], 3),
        "serve_batch_over_bertc_batcher_at_2": round(
            by["ray 2 replica(s), batching serve"]["requests_per_s"]
            / by["ray 2 replica(s), batching bertc"]["requests_per_s"], 3)}
    print(json.dumps(summary), flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": info, "results": results, "summary": summary,
                   "command": " ".join(sys.argv), "time": time.time()}, f, indent=1)


if __name__ == "__main__":
    main()
