"""What the serve-time probe adds to `bertc serve`'s start-up (bertc/serving/probe.py).

  .venv/bin/python benchmarks/probe_cost.py [--artifact DIR ...] [--rounds 5]

For each artifact (default: MiniLM built here with six buckets, verify on 8 pairs, for
the CPU target and for --target openvino --dtype int8): the time to load one replica
(its Session or compiled IRs and the all-zero warm-up) and the time of probe.check on it,
the best of --rounds each; the CPU model and ISA flags first.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BUCKETS = (16, 32, 48, 64, 96, 128)


def default_artifacts(out: str):
    import bertc
    from bertc.sources import embedded
    ckpt = embedded.ensure_default_checkpoint()
    built = []
    for name, extra in (("cpu", {}), ("openvino_int8", {"target": "openvino",
                                                        "dtype": "int8"})):
        path = os.path.join(out, f"minilm_{name}")
        if not os.path.isfile(os.path.join(path, "bertc.json")):
            bertc.build(bertc.BuildOptions(output=path, ckpt=ckpt, seq_lens=BUCKETS,
                                           verify_rows=8, overwrite=True, **extra))
        built.append(path)
    return built


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", action="append")
    parser.add_argument("--out", default="bench_out/probe_cost")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from bertc.runtime import machine
    from bertc.serving import artifact as artifact_lib, probe, replica
    print(machine.header(), flush=True)
    print(f"{'artifact':<40} {'buckets':>7} {'load + warm-up s':>17} {'probe s':>8} "
          f"{'probe / load':>12}")
    for path in args.artifact or default_artifacts(args.out):
        art = artifact_lib.load_artifact(path)
        loads, probes = [], []
        for _ in range(args.rounds):
            factory = replica.model_factory(art, 1)  # a new one: OpenVINO compiles again
            start = time.perf_counter()
            model = factory(art, os.cpu_count() or 1)
            loads.append(time.perf_counter() - start)
            start = time.perf_counter()
            probe.check(model, art)
            probes.append(time.perf_counter() - start)
            model.close()
        print(f"{os.path.basename(path):<40} {len(art.seq_lens):>7} {min(loads):>17.2f} "
              f"{min(probes):>8.3f} {min(probes) / min(loads):>12.1%}", flush=True)


if __name__ == "__main__":
    main()
