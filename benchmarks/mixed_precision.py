"""MiniLM speed in float32, float16 and bfloat16 (the mixed_precision pass) on this CPU.

  .venv/bin/python benchmarks/mixed_precision.py [--batch 4] [--seq 128] [--rounds 7]
                                                 [--aggressive]

Builds all-MiniLM-L6-v2's `embedding` head at [batch, seq], applies the CPU default
passes, then mixed_precision for each half type, and times each graph in a TF
Session (Grappler on, as served) on full-length random rows: median seconds per
call of each round, rounds interleaved across the variants so that machine noise
hits them alike; reports the best round.  Also lists the matmul kernels that
actually ran (oneDNN's fused ones, or Eigen's plain MatMul) and the CPU's
AVX-512 features.  A script, not a test: it prints.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

import tensorflow as tf  # noqa: E402

import rewrites  # noqa: E402
import bertc_testing as bt  # noqa: E402
from bertc import passes as rewriting  # noqa: E402
from bertc.verify import compare as verify


def _session(graph_def):
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    return tf.compat.v1.Session(graph=graph)


def _kernels(session, fetch, feeds):
    metadata = tf.compat.v1.RunMetadata()
    session.run(fetch, feeds, options=tf.compat.v1.RunOptions(output_partition_graphs=True),
                run_metadata=metadata)
    found = {}
    for graph in metadata.partition_graphs:
        for node in graph.node:
            if "MatMul" in node.op:
                fused = "+".join(s.decode() for s in node.attr["fused_ops"].list.s)
                key = node.op + (f"[{fused}]" if fused else "")
                dtype = tf.as_dtype(node.attr["T"].type).name if "T" in node.attr else "?"
                found[f"{key} {dtype}"] = found.get(f"{key} {dtype}", 0) + 1
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--aggressive", action="store_true")
    args = parser.parse_args()
    from bertc.runtime import machine
    print(machine.header(), flush=True)
    frozen = bt.minilm_frozen("embedding", args.batch, args.seq)
    config, _, _ = bt.minilm()
    feeds = verify.random_features(args.batch, args.seq, config.vocab_size, seed=1)
    feeds["input_mask"][:] = 1  # full-length rows
    feeds = {f"{frozen.inputs[k]}:0": v for k, v in feeds.items()}
    fetch = f"{frozen.outputs['embedding']}:0"
    passes = rewriting.for_head(rewriting.CPU_DEFAULT, "embedding")
    base = rewrites.run(frozen.graph_def, passes, protected_nodes=bt.protected(frozen)).graph_def
    variants = {"float32": base}
    for dtype in ("float16", "bfloat16"):
        variants[dtype] = rewrites.run(base, ["mixed_precision"],
                                       protected_nodes=bt.protected(frozen),
                                       options={"dtype": dtype,
                                                "aggressive": args.aggressive}).graph_def
    sessions = {name: _session(gd) for name, gd in variants.items()}
    reference = sessions["float32"].run(fetch, feeds)
    for name, session in sessions.items():
        value = session.run(fetch, feeds)
        cosine = bt.cosine_rows(value, reference).min()
        print(f"{name:9s} kernels: {_kernels(session, fetch, feeds)}; cosine min {cosine:.6f}")
    best = {name: float("inf") for name in sessions}
    for _ in range(args.rounds):
        for name, session in sessions.items():
            times = []
            for _ in range(args.calls):
                start = time.perf_counter()
                session.run(fetch, feeds)
                times.append(time.perf_counter() - start)
            best[name] = min(best[name], float(np.median(times)))
    print(f"MiniLM [{args.batch}, {args.seq}], CPU default passes"
          f"{', aggressive' if args.aggressive else ''}; best round's median ms per call:")
    for name, seconds in best.items():
        print(f"  {name:9s} {seconds * 1e3:8.2f} ms  {args.batch / seconds:7.1f} inferences/s"
              f"  {best['float32'] / seconds:5.2f}x float32")


if __name__ == "__main__":
    main()
