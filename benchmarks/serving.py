"""Serving benchmark: offline artifact throughput vs `bertc serve` under `bertc client` load.

    .venv/bin/python benchmarks/serving.py [--single A128] [--bucketed A64_128]
        [--clients 48] [--cycle 16] [--parallel 1,2] [--repeats 2] [--out bench_out/serving.json]

Workload: the MRPC dev pairs (../shared/data/glue_mrpc_dev.tsv) as the client sends
them to :classify. The artifacts are embedding heads (MiniLM), so a pair is two
rows (each sentence embedded alone); "inferences" are real rows, padding excluded.
  offline   the same rows, routed to the same buckets, run directly through the
            artifact's SavedModels in full batches of 4 (one Session; and two
            concurrent Sessions with one thread each), no HTTP
  served    `bertc serve` in a subprocess on 127.0.0.1:<free port>, the load
            generator in this process (same 2 cores); inferences/s from the
            server's /metrics (bertc_inferences_total) over the load's wall time;
            then one client x 40 requests for latency without queueing
  accuracy  cosine of the two embeddings vs the threshold; the threshold
            calibrated on the same 408 pairs (in-sample) and by 5-fold cross
            validation (out-of-sample estimate)
The machine is shared: before each measurement the script waits (bounded) until
other processes use at most --quiet_cores, and it records how many cores other
processes used during the measurement (/proc/stat minus our processes). The
summary takes, per configuration, the best of --repeats runs.
Everything runs on 127.0.0.1, bounded in requests (clients x cycle) and time.
Missing artifacts are built with `bertc build --noverify` under bench_out/.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bertc.text import pairs as textdata  # noqa: E402
from bertc.client import loadgen, report  # noqa: E402
from bertc.serving import artifact as artifact_lib  # noqa: E402
from bertc.serving import classify, paraphrase, replica  # noqa: E402

#: This checkout's CLI (run from the repository root, so a worktree runs its own code).
BERTC = [sys.executable, "-m", "bertc.cli"]
LIGHT_CYCLE = 40  # one client, one request at a time: latency without queueing


def ensure_artifact(path, seq_lens):
    """Builds `path` unless it is there with its file checksums (older ones are rebuilt)."""
    manifest_path = os.path.join(path, "bertc.json")
    if not os.path.isfile(manifest_path) or '"checksums"' not in open(manifest_path).read():
        subprocess.run([*BERTC, "build", "--output", path, "--seq_len", seq_lens,
                        "--noverify", "--overwrite"], check=True, cwd=REPO)
    return path


def mrpc_rows(art, pairs):
    """Each pair's two sentences as (bucket, feeds) rows, as the server routes them."""
    encoder = classify.TextEncoder(art)
    rows = []
    for p in pairs:
        for text in (p.text_a, p.text_b):
            r = encoder.encode(text, None, "text")
            rows.append((r.seq_len, r.feeds))
    return rows


def batches_of(art, rows):
    """Full batches per bucket (the last one of a bucket padded)."""
    by_bucket = {}
    for seq_len, feeds in rows:
        by_bucket.setdefault(seq_len, []).append(feeds)
    batches = []
    for seq_len, members in sorted(by_bucket.items()):
        for start in range(0, len(members), art.batch_size):
            chunk = members[start:start + art.batch_size]
            arrays = [np.zeros((art.batch_size, seq_len), np.int32) for _ in range(3)]
            for i, feeds in enumerate(chunk):
                for a, f in zip(arrays, feeds):
                    a[i] = f
            batches.append((seq_len, len(chunk), arrays))
    return batches


def offline_throughput(art, rows, parallel, min_seconds=8.0):
    """Real rows/s running the MRPC rows through `parallel` Sessions (cores/parallel
    threads each), each Session taking every parallel-th batch."""
    import threading
    threads = max(1, (os.cpu_count() or 1) // parallel)
    models = [replica.load_model(art, threads) for _ in range(parallel)]
    batches = batches_of(art, rows)
    done = [0] * parallel

    def work(k, deadline):
        while time.perf_counter() < deadline:
            for seq_len, real, arrays in batches[k::parallel]:
                models[k].run(seq_len, arrays)
                done[k] += real
    for k in range(parallel):  # warm
        work(k, 0)
    load = ForeignLoad()
    start = time.perf_counter()
    workers = [threading.Thread(target=work, args=(k, start + min_seconds))
               for k in range(parallel)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    foreign = load.cores()
    for m in models:
        m.close()
    return sum(done) / elapsed, foreign


def offline_embeddings(art, pairs):
    model = replica.load_model(art, os.cpu_count() or 1)
    rows = mrpc_rows(art, pairs)
    out = []
    for start in range(0, len(rows), art.batch_size):
        chunk = rows[start:start + art.batch_size]
        for seq_len in {s for s, _ in chunk}:
            members = [(i, f) for i, (s, f) in enumerate(chunk) if s == seq_len]
            arrays = [np.zeros((art.batch_size, seq_len), np.int32) for _ in range(3)]
            for j, (_, feeds) in enumerate(members):
                for a, f in zip(arrays, feeds):
                    a[j] = f
            emb = model.run(seq_len, arrays)["embedding"]
            for j, (i, _) in enumerate(members):
                out.append((start + i, emb[j]))
    model.close()
    out.sort(key=lambda t: t[0])
    return np.stack([e for _, e in out])


def calibrate(art, pairs):
    emb = offline_embeddings(art, pairs)
    sims = np.array([paraphrase.cosine(emb[2 * i], emb[2 * i + 1]) for i in range(len(pairs))])
    labels = np.array([p.label for p in pairs])
    threshold, accuracy = paraphrase.calibrate(sims, labels)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(pairs))
    folds = np.array_split(order, 5)
    correct = 0
    for k, test in enumerate(folds):
        train = np.concatenate([f for j, f in enumerate(folds) if j != k])
        t, _ = paraphrase.calibrate(sims[train], labels[train])
        correct += int(np.sum((sims[test] >= t) == (labels[test] == 1)))
    default_acc = float(np.mean((sims >= paraphrase.DEFAULT_THRESHOLD) == (labels == 1)))
    return {"threshold": threshold, "in_sample_accuracy": accuracy,
            "cv5_accuracy": correct / len(pairs),
            "default_threshold": paraphrase.DEFAULT_THRESHOLD,
            "accuracy_at_default": default_acc,
            "majority_baseline": max(labels.mean(), 1 - labels.mean())}


def inferences_total(url):
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    return sum(float(v) for v in re.findall(r'^bertc_inferences_total\{[^}]*\} (\S+)$', text,
                                            re.M))


def start_server(artifact, parallel, delay_ms):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([*BERTC, "serve", "--model", artifact, "--port", "0",
                             "--parallel", str(parallel), "--max_batch_delay_ms",
                             str(delay_ms), "--model_name", "bench"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                            cwd=REPO)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if m:
            # keep reading its log: a full stderr pipe would block the server's writes
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError(f"bertc serve did not start: {proc.stderr.read()}")


def served(artifact, pairs, parallel, clients, cycle, delay_ms):
    proc, url = start_server(artifact, parallel, delay_ms)
    try:
        loadgen.run(url, pairs, clients, 1, model_name="bench")  # warm connections, buckets
        before = inferences_total(url)
        load = ForeignLoad([proc.pid])
        result = loadgen.run(url, pairs, clients, cycle, model_name="bench", seed=1)
        foreign = load.cores()
        rows = inferences_total(url) - before
        summary = report.summarize(result)
        light = report.summarize(loadgen.run(url, pairs, 1, LIGHT_CYCLE, model_name="bench",
                                             seed=2))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"parallel": parallel, "requests": summary["requests"], "ok": summary["ok"],
            "errors": summary["errors"], "wall_s": summary["wall_s"],
            "requests_per_s": summary["throughput_rps"], "inferences_per_s": rows / result.wall_s,
            "latency_ms": summary["latency_ms"], "accuracy": summary["accuracy"],
            "foreign_cores": foreign, "light_load_latency_ms": light["latency_ms"]}


_TICK = os.sysconf("SC_CLK_TCK")


def _system_busy_s():
    """CPU-seconds all processes have been busy since boot (from /proc/stat)."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICK


def _process_cpu_s(pid):
    """utime + stime of a process, all its threads, in seconds (0 once it is gone)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


class ForeignLoad:
    """Cores used by processes other than ours while a measurement ran."""

    def __init__(self, pids=()):
        self.pids = [os.getpid(), *pids]
        self.start = (time.monotonic(), _system_busy_s(), self._ours())

    def _ours(self):
        return sum(_process_cpu_s(p) for p in self.pids)

    def cores(self):
        wall = time.monotonic() - self.start[0]
        busy = _system_busy_s() - self.start[1]
        ours = self._ours() - self.start[2]
        return round(max(0.0, busy - ours) / max(wall, 1e-9), 2)


def wait_for_quiet(max_foreign_cores, max_wait_s):
    """Waits (bounded) until other processes use at most `max_foreign_cores`."""
    deadline = time.monotonic() + max_wait_s
    while True:
        probe = ForeignLoad()
        time.sleep(2)
        foreign = probe.cores()
        if foreign <= max_foreign_cores or time.monotonic() > deadline:
            return foreign


def summarize(results):
    """Best run per (artifact, parallel), and the ratios the issue asks for."""
    def best(runs, p):
        rates = [r["inferences_per_s"] for r in runs if r["parallel"] == p]
        return max(rates) if rates else None

    out = {}
    for key in ("single_128", "bucketed_64_128"):
        offline = results["offline"].get(key, [])
        served = results["served"].get(key, [])
        parallels = sorted({r["parallel"] for r in offline + served})
        entry = {}
        for p in parallels:
            entry[f"parallel_{p}"] = {"offline": best(offline, p), "served": best(served, p)}
            runs = [r for r in served if r["parallel"] == p]
            if runs:
                top = max(runs, key=lambda r: r["inferences_per_s"])
                entry[f"parallel_{p}"].update(
                    requests_per_s=top["requests_per_s"], p50_ms=top["latency_ms"]["p50"],
                    p99_ms=top["latency_ms"]["p99"], errors=top["errors"],
                    one_client_p50_ms=top["light_load_latency_ms"]["p50"],
                    one_client_p99_ms=top["light_load_latency_ms"]["p99"],
                    served_accuracy=(top["accuracy"] or {}).get("accuracy"))
        offline_best = max((v["offline"] for v in entry.values() if v["offline"]),
                           default=None)
        served_best = max((v["served"] for v in entry.values() if v["served"]), default=None)
        entry["served_over_offline"] = (served_best / offline_best
                                        if served_best and offline_best else None)
        out[key] = entry
    single = out.get("single_128", {})
    bucketed = out.get("bucketed_64_128", {})
    sb = max((v["served"] for k, v in single.items() if k.startswith("parallel")
              and v["served"]), default=None)
    bb = max((v["served"] for k, v in bucketed.items() if k.startswith("parallel")
              and v["served"]), default=None)
    out["bucketed_over_single_served"] = bb / sb if sb and bb else None
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", default=os.path.join(REPO, "bench_out", "minilm_128"))
    parser.add_argument("--bucketed", default=os.path.join(REPO, "bench_out", "minilm_64_128"))
    parser.add_argument("--tsv", default=textdata.default_mrpc_path())
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--cycle", type=int, default=16)
    parser.add_argument("--parallel", default="1,2")
    parser.add_argument("--delay_ms", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quiet_cores", type=float, default=0.15,
                        help="wait until other processes use at most this many cores")
    parser.add_argument("--quiet_wait_s", type=float, default=120,
                        help="but no longer than this before each measurement")
    parser.add_argument("--only", choices=["calibrate", "offline", "served"], default=None)
    parser.add_argument("--out", default=os.path.join(REPO, "bench_out", "serving.json"))
    args = parser.parse_args()
    from bertc.runtime import machine
    print(machine.header(), flush=True)
    pairs = textdata.read_mrpc_tsv(args.tsv)
    arts = {"single_128": ensure_artifact(args.single, "128"),
            "bucketed_64_128": ensure_artifact(args.bucketed, "64,128")}
    parallels = [int(p) for p in args.parallel.split(",")]
    results = {"cpu_count": os.cpu_count(), "clients": args.clients, "cycle": args.cycle,
               "delay_ms": args.delay_ms, "offline": {}, "served": {}}
    if args.only in (None, "calibrate"):
        art = artifact_lib.load_artifact(arts["bucketed_64_128"])
        results["paraphrase"] = calibrate(art, pairs)
        print("paraphrase:", json.dumps(results["paraphrase"]), flush=True)
    for key, path in arts.items():
        art = artifact_lib.load_artifact(path)
        rows = mrpc_rows(art, pairs)
        buckets = {s: sum(1 for r in rows if r[0] == s) for s in art.seq_lens}
        results.setdefault("rows_per_bucket", {})[key] = buckets
        for repeat in range(args.repeats):
            for p in parallels:
                if args.only in (None, "offline"):
                    before = wait_for_quiet(args.quiet_cores, args.quiet_wait_s)
                    rate, foreign = offline_throughput(art, rows, p)
                    results["offline"].setdefault(key, []).append(
                        {"parallel": p, "inferences_per_s": rate, "foreign_cores": foreign,
                         "foreign_cores_before": before})
                    print(f"offline {key} parallel {p}: {rate:.1f} inferences/s "
                          f"(other processes used {foreign} cores)", flush=True)
                if args.only in (None, "served"):
                    before = wait_for_quiet(args.quiet_cores, args.quiet_wait_s)
                    s = served(path, pairs, p, args.clients, args.cycle, args.delay_ms)
                    s["foreign_cores_before"] = before
                    results["served"].setdefault(key, []).append(s)
                    print(f"served {key} parallel {p}: {s['inferences_per_s']:.1f} "
                          f"inferences/s, {s['requests_per_s']:.1f} req/s, p50 "
                          f"{s['latency_ms']['p50']:.0f} ms p99 {s['latency_ms']['p99']:.0f} ms, "
                          f"errors {s['errors']}, one-client p50 "
                          f"{s['light_load_latency_ms']['p50']:.0f} ms p99 "
                          f"{s['light_load_latency_ms']['p99']:.0f} ms, accuracy "
                          f"{s['accuracy']['accuracy'] if s['accuracy'] else None} "
                          f"(other processes used {s['foreign_cores']} cores)", flush=True)
    results["summary"] = summarize(results)
    print(json.dumps(results["summary"], indent=2))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
