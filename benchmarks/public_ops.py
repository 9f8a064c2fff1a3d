"""Public ops against the internal one: the CPU default artifact (public_layernorm's
FusedBatchNormV3 form, fused back to _MklLayerNorm by Grappler at load) against the
same build with --allow_internal_ops (_MklLayerNorm written into the SavedModel).

    python benchmarks/public_ops.py [--models minilm,base] [--batch_size 4] [--seq_len 128]

Both artifacts are run as `bertc serve --parallel 1` runs them (bertc.runtime.runner,
served, every core), timed in turns in one process (throughput.interleaved_rates),
on full-length rows and on the MRPC dev pairs in file order.  Prints inferences/s
and the ratio public / internal (the target: no more than 3% slower).
"""

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from bertc.builder import pipeline as builder  # noqa: E402
from bertc.runtime import runner as runners  # noqa: E402
import padding_free  # noqa: E402
import throughput  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40, help="MRPC batches per pass")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    from bertc.runtime import machine
    print(machine.header(), flush=True)
    b, s = args.batch_size, args.seq_len
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models.split(","):
            ckpt_dir, _, mrpc, full = padding_free.traffic(name, workdir, b, s, args.batches)
            runs, opened = {}, []
            for label, internal in (("public ops", False), ("internal op", True)):
                out = os.path.join(workdir, f"{name}_{'internal' if internal else 'public'}")
                builder.build(builder.BuildOptions(
                    output=out, ckpt=ckpt_dir, head="sequence", batch_size=b, seq_lens=[s],
                    allow_internal_ops=internal, verify=False))
                runner = runners.saved_model_runner(os.path.join(out, f"seq_{s}", "1"),
                                                    throughput.SERVED_ALL_CORES)
                opened.append(runner)
                runs[(label, "full-length")] = (runner, full)
                runs[(label, "mrpc")] = (runner, mrpc)
            rates = throughput.interleaved_rates(runs, args.rounds, 0.0)
            for traffic in ("full-length", "mrpc"):
                public, internal = rates[("public ops", traffic)], rates[("internal op", traffic)]
                print(f"{name:<7} [{b}, {s}] {traffic:<12} public {public:8.2f} inf/s   "
                      f"internal {internal:8.2f} inf/s   public/internal {public / internal:.3f}",
                      flush=True)
            for runner in opened:
                runner.close()


if __name__ == "__main__":
    main()
