"""bertc's int8 IR against its f32 IR, bucket by bucket (issue 15).

    python benchmarks/int8_per_bucket.py [--model minilm|base] [--buckets 16,32,64,128]
        [--batches 24] [--rounds 3]

One `--target openvino` build at float32 and one at int8 (100 MRPC calibration pairs,
float32 rest) of the same checkpoint, then per bucket width S: `--batches` batches of
4 full rows of random ids [4, S], the two IRs compiled as int8.py compiles them (1
stream, every core) and timed in turns (throughput.interleaved_rates: best pass).
It separates what int8 gains per bucket from what routing MRPC traffic across the
buckets does to the ratio (int8.py's MRPC column).
"""

import argparse
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import openvino_target as ovb  # noqa: E402
import throughput  # noqa: E402
from bertc.artifact import manifest as manifest_lib  # noqa: E402
from bertc.builder import pipeline as builder  # noqa: E402
from bertc.builder.targets import openvino as target  # noqa: E402
from bertc.runtime import machine  # noqa: E402

BATCH, CALIBRATION = 4, 100


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="minilm or base (random weights)")
    parser.add_argument("--buckets", default="16,32,64,128")
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(machine.header(), flush=True)
    buckets = sorted(int(s) for s in args.buckets.split(","))
    threads = os.cpu_count()
    with tempfile.TemporaryDirectory() as work:
        ckpt = throughput.checkpoint_for(args.model, work)
        artifacts = {}
        for dtype in ("float32", "int8"):
            out = os.path.join(work, dtype)
            builder.build(builder.BuildOptions(
                output=out, ckpt=ckpt, head="embedding", batch_size=BATCH, seq_lens=buckets,
                target="openvino", dtype=dtype, verify=False,
                calibration_rows=CALIBRATION if dtype == "int8" else None))
            artifacts[dtype] = out
        rng = np.random.default_rng(0)
        print("| bucket | f32 inf/s | int8 inf/s | int8 / f32 |\n|---|---|---|---|")
        for seq in buckets:
            batches = [{"input_ids": rng.integers(1000, 20000, (BATCH, seq)).astype(np.int32),
                        "input_mask": np.ones((BATCH, seq), np.int32),
                        "segment_ids": np.zeros((BATCH, seq), np.int32)}
                       for _ in range(args.batches)]
            runs = {dtype: (ovb.ov_bucket_fn(out, [seq], target.artifact_precision(
                manifest_lib.read(out)), threads), batches)
                for dtype, out in artifacts.items()}
            rates = throughput.interleaved_rates(runs, args.rounds, 0)
            print(f"| {seq} | {rates['float32']:.1f} | {rates['int8']:.1f} | "
                  f"{rates['int8'] / rates['float32']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
