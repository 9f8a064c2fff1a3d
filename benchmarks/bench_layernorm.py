"""Micro-benchmark: LayerNorm forms on CPU, speed and exactness.

    python benchmarks/bench_layernorm.py [--rows 512] [--depths 384,768] [--rounds 7] [--threads N]

For each [rows, depth] it builds a graph of 12 chained LayerNorms (each with a
residual add, the input read from a variable so Grappler cannot fold it) in:

  arithmetic      bertc's form: mean, squared_difference, rsqrt, * gamma + beta
  fused_layernorm what the fused_layernorm pass makes of that graph (_MklLayerNorm)
  batchnorm_nchw  FusedBatchNormV3(is_training) on x reshaped to NCHW [1, T, D, 1],
                  scale 1, offset 0, then * gamma + beta (the Keras trick)
  google_form     x * inv + (beta - mean * inv), inv = rsqrt(var + eps) * gamma,
                  axis written as 1: the form Grappler's oneDNN remapper fuses itself

and reports microseconds per LayerNorm (best of `rounds` rounds of 10 runs,
Session API, default Grappler options; wall time and the process's CPU time;
`--threads 1` gives one intra-op and one inter-op thread, the least noisy on a
shared machine), the max abs error against a float64
LayerNorm with eps 1e-12, the same on rows of variance ~1e-12 (where eps
matters), and the ops that actually ran.  A script, not a test: it prints.
"""

import argparse
import os
import sys
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rewrites import pipeline  # noqa: E402

EPS = 1e-12
CHAIN = 12


def _arithmetic(x, gamma, beta, rows, depth):
    mean = tf.reduce_mean(x, axis=-1, keepdims=True)
    variance = tf.reduce_mean(tf.math.squared_difference(x, mean), axis=-1, keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + EPS) * gamma + beta


def _batchnorm_nchw(x, gamma, beta, rows, depth):
    y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=tf.reshape(x, [1, rows, depth, 1]), scale=tf.ones([rows]), offset=tf.zeros([rows]),
        mean=tf.constant([], tf.float32), variance=tf.constant([], tf.float32),
        epsilon=EPS, data_format="NCHW", is_training=True)
    return tf.reshape(y, [rows, depth]) * gamma + beta


def _google_form(x, gamma, beta, rows, depth):
    mean = tf.reduce_mean(x, axis=1, keepdims=True)
    variance = tf.reduce_mean(tf.math.squared_difference(x, mean), axis=1, keepdims=True)
    inv = tf.math.rsqrt(variance + EPS) * gamma
    return x * inv + (beta - mean * inv)


def _graph(form, x0, gamma, beta):
    rows, depth = x0.shape
    graph = tf.Graph()
    with graph.as_default():
        source = tf.compat.v1.Variable(x0, use_resource=True, name="source")
        x = tf.identity(source.read_value(), name="x")
        y = x
        for _ in range(CHAIN):
            y = form(y, tf.constant(gamma), tf.constant(beta), rows, depth) + x
        tf.identity(form(x, tf.constant(gamma), tf.constant(beta), rows, depth), name="single")
        tf.identity(tf.reduce_sum(y), name="chain")
        tf.compat.v1.variables_initializer([source], name="init")
    return graph.as_graph_def()


def _reference(x, gamma, beta):
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + EPS) * gamma + beta


def _measure(graph_def, rounds, threads):
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                      inter_op_parallelism_threads=threads)
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        session.run("init")
        metadata = tf.compat.v1.RunMetadata()
        single = session.run("single:0", options=tf.compat.v1.RunOptions(
            output_partition_graphs=True), run_metadata=metadata)
        ran = sorted({n.op for g in metadata.partition_graphs for n in g.node}
                     - {"_Arg", "_Retval", "Const", "Identity", "ReadVariableOp",
                        "VarHandleOp", "_Recv", "_Send"})
        session.run("chain:0")
        times, cpu = [], []
        for _ in range(rounds):
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(10):
                session.run("chain:0")
            times.append((time.perf_counter() - start) / 10 / CHAIN)
            cpu.append((time.process_time() - start_cpu) / 10 / CHAIN)
    return min(times), float(np.median(times)), min(cpu), single, ran


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--depths", default="384,768")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="0: TensorFlow's default")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"TensorFlow {tf.__version__}; {CHAIN} chained LayerNorms per run; eps {EPS}; "
          f"threads {args.threads or 'default'}")
    for depth in [int(d) for d in args.depths.split(",")]:
        x0 = (rng.standard_normal((args.rows, depth)) + 3.0).astype(np.float32)
        x0[:4] = 1e-6 * rng.standard_normal((4, depth))  # variance ~1e-12: eps matters
        gamma = (1.0 + 0.1 * rng.standard_normal(depth)).astype(np.float32)
        beta = (0.1 * rng.standard_normal(depth)).astype(np.float32)
        reference = _reference(x0, gamma, beta)
        arithmetic = _graph(_arithmetic, x0, gamma, beta)
        fused = pipeline.run(arithmetic, ["fused_layernorm"], protected_nodes=[
            "single", "chain", "init", "x"]).graph_def
        forms = {"arithmetic": arithmetic, "fused_layernorm": fused,
                 "batchnorm_nchw": _graph(_batchnorm_nchw, x0, gamma, beta),
                 "google_form": _graph(_google_form, x0, gamma, beta)}
        print(f"\n[{args.rows}, {depth}]")
        print(f"  {'form':16s} {'best us/LN':>10s} {'median':>8s} {'cpu us':>8s} {'err':>9s} "
              f"{'err var~1e-12':>13s}  ops")
        for name, graph_def in forms.items():
            best, median, cpu, single, ran = _measure(graph_def, args.rounds, args.threads)
            error = np.abs(single[4:] - reference[4:]).max()
            tiny = np.abs(single[:4] - reference[:4]).max()
            print(f"  {name:16s} {best * 1e6:10.1f} {median * 1e6:8.1f} {cpu * 1e6:8.1f} "
                  f"{error:9.2e} {tiny:13.2e}  {', '.join(ran)}")


if __name__ == "__main__":
    main()
