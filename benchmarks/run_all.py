"""`make bench`: every benchmark behind BENCHMARKS.md, one after the other.

  .venv/bin/python benchmarks/run_all.py [--only throughput,padding_free,...] [--out bench_out]

Each step is its own process (so one step's memory and threads do not colour the
next), prints as it goes, and writes its JSON under --out. The whole run takes about
an hour on the 2-core machine; the machine should be otherwise quiet (the steps
print the load average). Steps:
  large_build    BERT-Large-shaped random checkpoint: `bertc build` with the CPU default
                 and verify on 8 MRPC pairs + 32 random rows, under /usr/bin/time -v
                 (wall time, peak memory)
  throughput     full-length [4, 128]: passes vs PyTorch vs ONNX Runtime, % of GEMM
  runtime_sweep  passes x oneDNN (also on a simulated AVX2-only CPU) / remapper / XLA / inter-op
  padding_free   MRPC-length batches: remove_padding vs ONNX Runtime and PyTorch
  mixed_precision  float32 vs float16 vs bfloat16 on MiniLM
  serving        `bertc serve` + `bertc client` at 48 clients vs offline
"""

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PYTHON = sys.executable
BERTC = os.path.join(os.path.dirname(PYTHON), "bertc")


def steps(out):
    large = os.path.join(out, "bert_large_ckpt")
    return {
        "large_build": [
            [PYTHON, os.path.join(HERE, "make_random_checkpoint.py"), "--shape", "large",
             "--output", large],
            ["/usr/bin/time", "-v", BERTC, "build", "--ckpt", large, "--output",
             os.path.join(out, "bert_large_artifact"), "--overwrite", "--verify_rows", "8"],
        ],
        "throughput": [[PYTHON, os.path.join(HERE, "throughput.py"), "--models", "minilm,base",
                        "--passes", "none;strip_unused,fold_constants;fused_attention;"
                        "fused_layernorm;crude_gelu;default", "--rounds", "4",
                        "--json", os.path.join(out, "throughput.json")]],
        "runtime_sweep": [[PYTHON, os.path.join(HERE, "runtime_sweep.py"), "--models",
                           "minilm,base", "--json", os.path.join(out, "runtime_sweep.json")]],
        "padding_free": [[PYTHON, os.path.join(HERE, "padding_free.py"), "--models",
                          "minilm,base", "--batches", "20", "--rounds", "3",
                          "--json", os.path.join(out, "padding_free.json")]],
        "mixed_precision": [[PYTHON, os.path.join(HERE, "mixed_precision.py")]],
        "serving": [[PYTHON, os.path.join(HERE, "serving.py"), "--out",
                     os.path.join(out, "serving.json")]],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO, "bench_out"))
    parser.add_argument("--only", default=None, help="comma-separated step names")
    args = parser.parse_args()
    from bertc.runtime import machine
    print(machine.header(), flush=True)
    os.makedirs(args.out, exist_ok=True)
    plan = steps(args.out)
    chosen = args.only.split(",") if args.only else list(plan)
    unknown = [s for s in chosen if s not in plan]
    if unknown:
        parser.error(f"--only: unknown step {unknown[0]!r}; expected some of {', '.join(plan)}")
    failed = []
    for name in chosen:
        print(f"== {name} (load average {os.getloadavg()})", flush=True)
        start = time.perf_counter()
        for command in plan[name]:
            if subprocess.run(command, cwd=REPO).returncode:
                failed.append(name)
                break
        print(f"== {name}: {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        print(f"failed steps: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
