"""Memory of a served TensorFlow artifact: resident set and its peak, at load and per run.

    python benchmarks/served_memory.py ARTIFACT [--seq 384] [--runs 2]
        [--grappler served|full|off] [--intra_op_threads 2]

Loads bucket seq_<seq> of ARTIFACT as `bertc serve` does (runner.saved_model_runner,
the served Session: the weights as constants) and runs `--runs` batches of full-length
rows, printing after each step VmRSS and VmHWM (the process's peak) from
/proc/self/status, beside the artifact's weight bytes.  `--grappler` picks the
session's Grappler settings: `served` (bertc's: Grappler's defaults but
runner.OFF_FOR_MEMORY), `full` (all of Grappler's defaults, what a plain TF1 Session
or TensorFlow Serving runs) or `off` (the meta-optimizer disabled: the memory of the
graph alone).  Run each setting in its own process: VmHWM never goes down.
"""

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bertc.runtime import machine  # noqa: E402


def memory() -> str:
    """'RSS r GiB, peak p GiB' of this process."""
    with open("/proc/self/status") as f:
        kib = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)
               if k in ("VmRSS", "VmHWM")}
    return f"RSS {kib['VmRSS'] / 2**20:.2f} GiB, peak {kib['VmHWM'] / 2**20:.2f} GiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--seq", type=int, default=384)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--grappler", choices=("served", "full", "off"), default="served")
    parser.add_argument("--intra_op_threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    print(machine.header(), flush=True)
    from bertc.artifact import manifest
    from bertc.runtime import runner as runners
    export_dir = os.path.join(args.artifact, f"seq_{args.seq}", "1")
    print(f"tensorflow imported: {memory()}", flush=True)
    config = runners.RunConfig(runners.SERVED, args.intra_op_threads, 1)
    if args.grappler != "served":
        proto = config.session_config()
        proto.graph_options.rewrite_options.Clear()
        proto.graph_options.rewrite_options.disable_meta_optimizer = args.grappler == "off"
        config = runners.RunConfig(runners.SERVED, args.intra_op_threads, 1, proto=proto)
    model_bytes = os.path.getsize(os.path.join(export_dir, "saved_model.pb"))
    run = runners.saved_model_runner(export_dir, config)
    shape = [manifest.read(args.artifact)["batch_size"], args.seq]
    print(f"{args.artifact} seq_{args.seq}, batch {shape[0]}, saved_model.pb (the weights "
          f"are constants in it) {model_bytes / 2**30:.2f} GiB, Grappler {args.grappler}; "
          f"loaded: {memory()}", flush=True)
    rng = np.random.default_rng(0)
    rows = {"input_ids": rng.integers(1000, 30000, shape).astype(np.int32),
            "input_mask": np.ones(shape, np.int32), "segment_ids": np.zeros(shape, np.int32)}
    for i in range(args.runs):
        start = time.perf_counter()
        run(rows)
        print(f"run {i}: {time.perf_counter() - start:.1f} s, {memory()}", flush=True)


if __name__ == "__main__":
    main()
