"""bertc `--target openvino --dtype int8` beside bf16, f32 and the int8 peers.

    python benchmarks/int8.py [--batches 40] [--rounds 4]

MiniLM (the real all-MiniLM-L6-v2), batch 4, every core, timed in turns in one
process (throughput.interleaved_rates: the best pass of each), on
  full   [4, 128] rows of random ids
  mrpc   --batches x 4 MRPC dev pairs after the first 100 (the int8 build
         calibrates on those 100): bertc's buckets (64, 128) get the rows routed
         as `bertc serve` routes them; peers get each batch padded to its longest row.
Stacks:
  bertc ov f32 / bf16 / int8   one artifact each (--dtype), IR compiled as served, 1 stream
  OV+NNCF default (HF)         nncf.quantize(model_type=TRANSFORMER) on the HF model
                               exported to ONNX (dynamic axes; throughput.export_onnx)
                               and read by OpenVINO, calibrated on the same 100 MRPC
                               pairs, compiled with no properties
  ORT fp32 / ORT int8 dynamic  ONNX Runtime on the same export, and
                               onnxruntime.quantization.quantize_dynamic(QInt8)
cosine: the minimum embedding cosine vs PyTorch fp32 on the MRPC rows.
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
import padding_free  # noqa: E402
import throughput  # noqa: E402
from bertc.builder import pipeline as builder  # noqa: E402
from bertc.builder.targets import openvino as target  # noqa: E402

BATCH, SEQ, CALIBRATION = 4, 128, 100
BUCKETS = (64, 128)


def ort_fn(path, threads):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def run(b):
        return session.run(None, {"input_ids": b["input_ids"].astype(np.int64),
                                  "attention_mask": b["input_mask"].astype(np.int64),
                                  "token_type_ids": b["segment_ids"].astype(np.int64)})[0]
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    import openvino as ov
    import nncf
    from bertc.runtime import machine
    print(machine.header(), flush=True)
    print(f"OpenVINO {ov.get_version()}, NNCF {nncf.__version__}; load "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as workdir:
        ckpt_dir = throughput.checkpoint_for("minilm", workdir)
        from bertc.sources import google_checkpoint as checkpoint
        ckpt = checkpoint.load_checkpoint(ckpt_dir, checksums=False)
        every = padding_free.mrpc_batches(ckpt.vocab_file, BATCH, SEQ)
        calibration = every[:CALIBRATION // BATCH]
        mrpc = every[CALIBRATION // BATCH:][:args.batches]
        full = padding_free.full_length(mrpc[:max(4, args.batches // 4)])
        trimmed = [padding_free.trimmed(b) for b in mrpc]
        model = throughput.torch_model(ckpt)
        reference = ovb.reference_embeddings(model, trimmed)
        runs, cosines = {}, {}
        for dtype in ("float32", "bfloat16", "int8"):
            label = f"bertc ov {dtype}"
            out = os.path.join(workdir, dtype)
            builder.build(builder.BuildOptions(
                output=out, ckpt=ckpt_dir, head="embedding", batch_size=BATCH,
                seq_lens=list(BUCKETS), target="openvino", dtype=dtype, verify=False,
                calibration_rows=CALIBRATION if dtype == "int8" else None))
            fn = ovb.ov_bucket_fn(out, BUCKETS, target.precision(dtype), cores)
            runs[(label, "full")] = (fn, full)
            runs[(label, "mrpc")] = (fn, ovb.routed(mrpc, BUCKETS))
            cosines[label] = ovb.min_cosine(fn, ovb.routed_in_order(mrpc, BUCKETS),
                                            reference, False)
        fp32_path = throughput.export_onnx(model, trimmed[0], os.path.join(workdir, "hf.onnx"))
        hf_ov = ov.Core().read_model(fp32_path)
        calib = [[b[k].astype(np.int64) for k in ovb.INPUTS]
                 for b in (padding_free.trimmed(c) for c in calibration)]
        hf_int8 = nncf.quantize(hf_ov, nncf.Dataset(calib),
                                model_type=nncf.ModelType.TRANSFORMER,
                                subset_size=CALIBRATION)
        peers = {"OV+NNCF default (HF)": ovb.ov_hf_fn(ov.Core().compile_model(hf_int8, "CPU"))}
        try:
            from onnxruntime.quantization import QuantType, quantize_dynamic
            int8_path = os.path.join(workdir, "hf_int8.onnx")
            quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8)
            peers["ORT fp32 (HF)"] = ort_fn(fp32_path, cores)
            peers["ORT int8 quantize_dynamic (HF)"] = ort_fn(int8_path, cores)
        except Exception as exc:  # noqa: BLE001  a peer that cannot be built is reported
            print(f"ONNX Runtime peers skipped: {type(exc).__name__}: {exc}", flush=True)
        for label, fn in peers.items():
            runs[(label, "full")] = (fn, full)
            runs[(label, "mrpc")] = (fn, trimmed)
            cosines[label] = ovb.min_cosine(fn, trimmed, reference, True)
        rates = throughput.interleaved_rates(runs, args.rounds, 0.0)
        base = {t: rates[("bertc ov float32", t)] for t in ("full", "mrpc")}
        bf16 = {t: rates[("bertc ov bfloat16", t)] for t in ("full", "mrpc")}
        print("\nminilm: inf/s (ratio to bertc ov f32); min embedding cosine vs torch fp32")
        print("| stack | full [4,128] | MRPC | cosine |\n|---|---|---|---|")
        for label in dict.fromkeys(lab for lab, _ in runs):
            cells = [f"{rates[(label, t)]:.1f} ({rates[(label, t)] / base[t]:.2f}x)"
                     for t in ("full", "mrpc")]
            print(f"| {label} | {cells[0]} | {cells[1]} | {cosines[label]:.5f} |", flush=True)
        for t in ("full", "mrpc"):
            print(f"int8 / bf16 ({t}): {rates[('bertc ov int8', t)] / bf16[t]:.2f}x")


if __name__ == "__main__":
    main()
