"""Which rewrite passes help or fight TensorFlow's runtime: oneDNN, Grappler's remapper, XLA.

  .venv/bin/python benchmarks/runtime_sweep.py --models minilm,base [--rounds 3]
      [--passes "none;strip_unused,fold_constants;fused_attention;fused_layernorm;default"]
      [--settings tf_defaults,onednn_off,avx2_tf_defaults,avx2_bertc,remapper_off,xla,inter_op_1]

Builds one artifact per model and pass list (`default` is the CPU target's default
for the head), at [4, 128], and times each on full-length rows under each runtime
setting:
  tf_defaults   TensorFlow as installed. On x86 CPUs with AVX512_VNNI/BF16 or AMX
                (this machine), TF 2.21 turns its oneDNN ops on by default; elsewhere off
  onednn_off    TF_ENABLE_ONEDNN_OPTS=0 (Eigen kernels, no _Mkl* ops)
  onednn_on     TF_ENABLE_ONEDNN_OPTS=1 (the default here; on by request elsewhere, and
                what bertc's own processes set: bertc/runtime/tf_settings.py)
  avx2_tf_defaults  TF_ENABLE_ONEDNN_OPTS=0 and ONEDNN_MAX_CPU_ISA=AVX2: TensorFlow's
                own default on an AVX2-only CPU (Eigen kernels; the wheel's Eigen code is
                built for AVX, and its GEMMs call oneDNN's sgemm, here limited to AVX2)
  avx2_bertc    TF_ENABLE_ONEDNN_OPTS=1 and ONEDNN_MAX_CPU_ISA=AVX2: bertc's runtime on
                such a CPU. The two avx2 settings simulate the instruction set only: the
                cores stay this machine's
  remapper_off  Grappler's remapper off (no MatMul+BiasAdd+activation fusions)
  xla           XLA auto-clustering (global_jit_level ON_1, TF_XLA_FLAGS
                --tf_xla_auto_jit=2 --tf_xla_cpu_global_jit)
  inter_op_1    one inter-op thread (what `bertc serve` and TF Serving's batching use)
Each setting that needs an environment variable runs in its own Python process; all
artifacts of a process are timed in turns, best pass kept (the 2 vCPUs are shared
and noisy: see BENCHMARKS.md). Every process also measures the FP32 GEMM rate, so
results are shown as inferences/s, FLOP utilisation, and the ratio to the
unrewritten graph under `tf_defaults`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

SETTINGS = {
    "tf_defaults": ({}, {}),
    "onednn_off": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, {}),
    "onednn_on": ({"TF_ENABLE_ONEDNN_OPTS": "1"}, {}),
    "avx2_tf_defaults": ({"TF_ENABLE_ONEDNN_OPTS": "0", "ONEDNN_MAX_CPU_ISA": "AVX2"}, {}),
    "avx2_bertc": ({"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2"}, {}),
    "remapper_off": ({}, {"remapper": False}),
    "xla": ({"TF_XLA_FLAGS": "--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit"}, {"xla": True}),
    "inter_op_1": ({}, {"inter_op": 1}),
}


def session_config(remapper=True, xla=False, inter_op=None):
    """The served session config with one setting changed (all cores, one Session)."""
    import tensorflow as tf
    from bertc.runtime import runner as runners
    config = runners.RunConfig(runners.SERVED, os.cpu_count() or 1).session_config()
    config.inter_op_parallelism_threads = 0  # TensorFlow's default unless the setting says
    if not remapper:
        config.graph_options.rewrite_options.remapping = 2  # RewriterConfig.OFF
    if xla:
        config.graph_options.optimizer_options.global_jit_level = (
            tf.compat.v1.OptimizerOptions.ON_1)
    if inter_op:
        config.inter_op_parallelism_threads = inter_op
    return config


def child(args):
    """Times every artifact under the settings of this process; prints one JSON line."""
    # TensorFlow first: its oneDNN choice is then the setting's (or TensorFlow's own
    # default), not the one `import bertc` makes for its processes.
    import tensorflow  # noqa: F401
    import throughput
    from bertc.runtime import runner as runners
    jobs = json.loads(args.child)
    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(1000, 30000, (args.batch_size, args.seq_len),
                                       dtype=np.int32),
             "input_mask": np.ones((args.batch_size, args.seq_len), np.int32),
             "segment_ids": np.zeros((args.batch_size, args.seq_len), np.int32)}
    runs, opened, failed = {}, [], {}
    for job in jobs:
        try:
            runner = runners.saved_model_runner(job["path"], runners.RunConfig(
                proto=session_config(**job["config"])))
            runner(batch)
        except Exception as e:  # a setting a graph cannot run under is a result too
            failed[job["key"]] = str(e).strip().splitlines()[0][:160]
            continue
        opened.append(runner)
        runs[job["key"]] = (runner, [batch] * 3)
    rates = throughput.interleaved_rates(runs, args.rounds, 0.0) if runs else {}
    print(json.dumps({"gemm_gflops": throughput.gemm_gflops(), "rates": rates,
                      "failed": failed}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,base")
    parser.add_argument("--passes",
                        default="none;strip_unused,fold_constants;fused_attention;"
                                "fused_layernorm;default")
    parser.add_argument("--settings",
                        default="tf_defaults,onednn_off,avx2_tf_defaults,avx2_bertc,"
                                "remapper_off,xla,inter_op_1")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from bertc.runtime import machine
    print(machine.header(), flush=True)
    if args.child:
        return child(args)
    import throughput
    from bertc.builder import pipeline as builder
    from bertc.sources import google_checkpoint as checkpoint
    from bertc.model import modeling
    from bertc import passes as rewriting
    print(f"load average before: {os.getloadavg()}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        artifacts = []  # (model, passes label, path, gflop)
        for name in args.models.split(","):
            ckpt_dir = throughput.checkpoint_for(name, workdir)
            ckpt = checkpoint.load_checkpoint(ckpt_dir, checksums=False)
            head = modeling.default_head(ckpt.weights, ckpt.hints)
            gflop = throughput.model_gflop(ckpt.config, args.seq_len)
            for label in args.passes.split(";"):
                passes = ([] if label == "none" else
                          rewriting.for_head(rewriting.CPU_DEFAULT, head) if label == "default"
                          else label.split(","))
                out = os.path.join(workdir, f"{name}_{len(artifacts)}")
                builder.build(builder.BuildOptions(
                    output=out, ckpt=ckpt_dir, head=head, batch_size=args.batch_size,
                    seq_lens=[args.seq_len], rewrites=passes, default_rewrites=False,
                    verify=False))
                artifacts.append((name, label, os.path.join(out, f"seq_{args.seq_len}", "1"),
                                  gflop, head))
        for setting in args.settings.split(","):
            env_vars, config = SETTINGS[setting]
            jobs = [{"key": f"{name}|{label}", "path": path, "config": config}
                    for name, label, path, _, _ in artifacts]
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **env_vars)
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(jobs),
                                   "--rounds", str(args.rounds), "--batch_size",
                                   str(args.batch_size), "--seq_len", str(args.seq_len)],
                                  env=env, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode or not lines:
                print(f"{setting}: failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            out = json.loads(lines[-1])
            for name, label, _, gflop, head in artifacts:
                key = f"{name}|{label}"
                rate = out["rates"].get(key)
                results.append({"setting": setting, "model": name, "head": head,
                                "passes": label, "inferences_per_s": rate,
                                "gemm_gflops": out["gemm_gflops"],
                                "flop_utilisation": rate * gflop / out["gemm_gflops"]
                                if rate else None, "error": out["failed"].get(key)})
            print(f"{setting}: done (GEMM {out['gemm_gflops']:.1f} GFLOP/s)", flush=True)
    base = {r["model"]: r["inferences_per_s"] for r in results
            if r["setting"] == "tf_defaults" and r["passes"] == "none"}
    print(f"\n{'model':<7} {'head':<9} {'passes':<30} {'setting':<13} {'inf/s':>8} "
          f"{'% GEMM':>7} {'vs none@tf_defaults':>20}")
    for r in results:
        if r["inferences_per_s"] is None:
            print(f"{r['model']:<7} {r['head']:<9} {r['passes']:<30} {r['setting']:<13} "
                  f"failed: {r['error']}")
            continue
        ratio = r["inferences_per_s"] / base[r["model"]] if base.get(r["model"]) else float("nan")
        print(f"{r['model']:<7} {r['head']:<9} {r['passes']:<30} {r['setting']:<13} "
              f"{r['inferences_per_s']:8.2f} {100 * r['flop_utilisation']:6.1f}% {ratio:19.3f}x")
    rates_by_key = {(r["model"], r["setting"], r["passes"]): r["inferences_per_s"]
                    for r in results}
    for model in dict.fromkeys(r["model"] for r in results):
        eigen = rates_by_key.get((model, "avx2_tf_defaults", "none"))
        ours = rates_by_key.get((model, "avx2_bertc", "default"))
        if eigen and ours:
            print(f"{model}: on an AVX2-only CPU (simulated), bertc's default under its "
                  f"runtime (avx2_bertc) is {ours / eigen:.3f}x the unrewritten graph under "
                  f"TensorFlow's default there (avx2_tf_defaults)")
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
