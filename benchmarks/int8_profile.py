"""Where an int8 batch spends its time: bertc's int8 IR beside NNCF's default on the HF model.

    python benchmarks/int8_profile.py [--model base|minilm] [--seq_len 128] [--runs 20]

One `--target openvino --dtype int8` build of one bucket (100 MRPC calibration pairs,
float32 rest) and `nncf.quantize(model_type=TRANSFORMER)` of the Hugging Face model
exported to ONNX (as int8.py builds its "OV+NNCF default" stack, calibrated on the
same pairs), each compiled with PERF_COUNT (bertc's as served: 1 stream, every core;
NNCF's with no other property), then per model: the mean time of one [4, S] batch of
full rows over --runs runs (5 warm-up runs first), and OpenVINO's profiling info of
the last run summed by (node type, exec type), the largest first.  Twice, in turns.
"""

import argparse
import collections
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import openvino_target as ovb  # noqa: E402
import padding_free  # noqa: E402
import throughput  # noqa: E402
from bertc.builder import pipeline as builder  # noqa: E402
from bertc.builder.targets import openvino as target  # noqa: E402
from bertc.runtime import machine  # noqa: E402

BATCH, CALIBRATION, TOP = 4, 100, 12


def profile(compiled, feeds, runs):
    """(seconds per batch, {(node type, exec type): (count, seconds)}) of the last run."""
    request = compiled.create_infer_request()
    for _ in range(5):
        request.infer(feeds)
    start = time.perf_counter()
    for _ in range(runs):
        request.infer(feeds)
    per_batch = (time.perf_counter() - start) / runs
    totals = collections.defaultdict(lambda: [0, 0.0])
    for node in request.profiling_info:
        key = (node.node_type, node.exec_type)
        totals[key][0] += 1
        totals[key][1] += node.real_time.total_seconds()
    return per_batch, totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="base", help="base (random weights) or minilm")
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    import openvino as ov
    print(machine.header(), flush=True)
    with tempfile.TemporaryDirectory() as work:
        ckpt_dir = throughput.checkpoint_for(args.model, work)
        from bertc.sources import google_checkpoint as checkpoint
        ckpt = checkpoint.load_checkpoint(ckpt_dir, checksums=False)
        every = padding_free.mrpc_batches(ckpt.vocab_file, BATCH, args.seq_len)
        out = os.path.join(work, "int8")
        builder.build(builder.BuildOptions(
            output=out, ckpt=ckpt_dir, head="embedding", batch_size=BATCH,
            seq_lens=[args.seq_len], target="openvino", dtype="int8", verify=False,
            calibration_rows=CALIBRATION))
        model = throughput.torch_model(ckpt)
        onnx = throughput.export_onnx(model, padding_free.trimmed(every[0]),
                                      os.path.join(work, "hf.onnx"))
        core = ov.Core()
        hf_int8 = ovb.nncf_default(onnx, every[:CALIBRATION // BATCH])
        props = target.compile_properties("f32", 1, os.cpu_count())
        full = padding_free.full_length(every[CALIBRATION // BATCH:][:1])[0]
        stacks = {
            "bertc ov int8": (core.compile_model(os.path.join(out, target.ir_path(args.seq_len)),
                                                 "CPU", dict(props, PERF_COUNT=True)),
                              {k: full[k] for k in ovb.INPUTS}),
            "OV+NNCF default (HF)": (core.compile_model(hf_int8, "CPU", {"PERF_COUNT": True}),
                                     [full[k].astype(np.int64) for k in ovb.INPUTS])}
        for turn in (1, 2):
            for label, (compiled, feeds) in stacks.items():
                per_batch, totals = profile(compiled, feeds, args.runs)
                summed = sum(seconds for _, seconds in totals.values())
                print(f"\n{label}, turn {turn}: {1000 * per_batch:.1f} ms per [{BATCH}, "
                      f"{args.seq_len}] batch ({BATCH / per_batch:.1f} inf/s); profiled "
                      f"{1000 * summed:.1f} ms\n| node type | exec type | ops | ms |\n"
                      "|---|---|---|---|")
                ranked = sorted(totals.items(), key=lambda item: -item[1][1])[:TOP]
                for (node_type, exec_type), (count, seconds) in ranked:
                    print(f"| {node_type} | {exec_type} | {count} | {1000 * seconds:.2f} |")


if __name__ == "__main__":
    main()
