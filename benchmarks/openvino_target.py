"""`--target openvino` against OpenVINO's own default and the other CPU stacks.

    python benchmarks/openvino_target.py [--models minilm] [--batches 40] [--rounds 4]
        [--served]

All stacks run in this process, timed in turns (throughput.interleaved_rates: the
best pass of each), batch 4, every core, on two kinds of traffic:
  full   [4, 128] rows of random ids, no padding
  mrpc   the first --batches x 4 MRPC dev pairs in file order.  bertc's buckets
         get the rows routed as `bertc serve` routes them (each row to the smallest
         bucket that holds it, full batches per bucket; partial batches dropped);
         the peers get each batch padded to its longest row (dynamic shapes).
Stacks:
  bertc ov <buckets> [+passes]   bertc build --target openvino (bf16 where the CPU
                                 has it), IR compiled as serve compiles it, 1 stream
  OV default (HF)                the Hugging Face model exported to ONNX with dynamic batch
                                 and sequence axes, read by OpenVINO and compiled with no
                                 properties (its default precision: bf16 where the CPU
                                 has it)
  OV f32 (HF)                    the same, INFERENCE_PRECISION_HINT f32
  ORT fp32                       ONNX Runtime on the same export, fused by its
                                 transformer optimizer (throughput.onnxruntime_runner)
  torch fp32 / torch bf16        PyTorch, and PyTorch with bf16 autocast
  bertc TF                       the CPU default artifact (TensorFlow, fp32)
cosine: the minimum mean-pooled embedding cosine vs PyTorch fp32 on the MRPC rows.
With --served: `bertc serve --parallel 2` on the bf16 IR under 48 clients vs the
same rows offline.  Then OpenVINO's per-layer counters (PERF_COUNT) of the bertc
IR and of OV default at full length, summed by layer type.
"""

import argparse
import collections
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import padding_free  # noqa: E402
import throughput  # noqa: E402
from bertc.builder import pipeline as builder  # noqa: E402
from bertc.builder.targets import openvino as target  # noqa: E402
from bertc.runtime import openvino_runner  # noqa: E402
from bertc.runtime import runner as runners  # noqa: E402

SEQ = 128
BATCH = 4
INPUTS = ("input_ids", "input_mask", "segment_ids")
#: (label, buckets, passes beyond the target's default, --dtype); models other than
#: MiniLM run the BERTC_OV_SHORT labels only (BERT-Base builds take a minute each here).
BERTC_OV = (
    ("bertc ov 128", (128,), (), None),
    ("bertc ov 32,64,128", (32, 64, 128), (), None),
    ("bertc ov 16..128", (16, 32, 48, 64, 96, 128), (), None),
    ("bertc ov 128 +remove_padding", (128,), ("remove_padding",), None),
    ("bertc ov 32,64,128 +remove_padding", (32, 64, 128), ("remove_padding",), None),
    ("bertc ov 128 +fused_attention", (128,), ("fused_attention",), None),
    ("bertc ov 128 +fused_layernorm", (128,), ("fused_layernorm",), None),
    ("bertc ov f32 16..128", (16, 32, 48, 64, 96, 128), (), "float32"),
)
BERTC_OV_SHORT = ("bertc ov 128", "bertc ov 16..128", "bertc ov f32 16..128")


def routed(batches, buckets):
    """The rows of `batches` regrouped as the server groups them: each row to the
    smallest bucket holding it, full batches of BATCH per bucket, cut to the bucket."""
    by_bucket = collections.defaultdict(list)
    for b in batches:
        for i, length in enumerate(b["input_mask"].sum(1)):
            bucket = next(s for s in buckets if length <= s)
            by_bucket[bucket].append({k: b[k][i, :bucket] for k in INPUTS})
    out = []
    for bucket, rows in sorted(by_bucket.items()):
        for start in range(0, len(rows) - BATCH + 1, BATCH):
            chunk = rows[start:start + BATCH]
            out.append({k: np.stack([r[k] for r in chunk]) for k in INPUTS})
    return out


def ov_bucket_fn(artifact, buckets, precision, threads):
    """fn(batch) running the bucket of the batch's width (1 stream, `threads`)."""
    props = target.compile_properties(precision, 1, threads)
    request = {s: openvino_runner.ir_runner(os.path.join(artifact, target.ir_path(s)), props)
               for s in buckets}
    return lambda b: request[b["input_ids"].shape[1]](b)


def nncf_default(onnx_path, calibration):
    """OpenVINO + NNCF's default recipe on the HF model's ONNX export, as NNCF's docs
    show it: nncf.quantize(model_type=TRANSFORMER) calibrated on the `calibration`
    batches (each trimmed to its longest row, int64 as the export takes them)."""
    import nncf
    import openvino as ov
    batches = [[b[k].astype(np.int64) for k in INPUTS]
               for b in (padding_free.trimmed(c) for c in calibration)]
    return nncf.quantize(ov.Core().read_model(onnx_path), nncf.Dataset(batches),
                         model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches))


def ov_hf_fn(compiled):
    request = compiled.create_infer_request()

    def run(b):
        return request.infer([b[k].astype(np.int64) for k in INPUTS])[0]
    return run


def reference_embeddings(model, batches):
    """PyTorch fp32's mean-pooled, normalised embeddings of every row [rows, D]: what
    min_cosine compares the stacks against."""
    import torch
    with torch.inference_mode():
        return np.concatenate([embedding(model(
            input_ids=torch.from_numpy(b["input_ids"]).long(),
            attention_mask=torch.from_numpy(b["input_mask"]).long(),
            token_type_ids=torch.from_numpy(b["segment_ids"]).long()
        ).last_hidden_state.numpy(), b["input_mask"]) for b in batches])


def embedding(hidden, mask):
    m = mask[:, :, None].astype(np.float64)
    mean = (np.asarray(hidden, np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def min_cosine(fn, batches, reference, sequence_output):
    """Minimum row cosine of fn's embeddings vs the reference's ([rows, D])."""
    got = []
    real = 1 if isinstance(batches, _FirstRow) else BATCH
    for b in batches:
        out = fn(b)
        emb = embedding(out, b["input_mask"]) if sequence_output else out["embedding"]
        got.append(emb[:real])
    got = np.concatenate(got)
    return float(np.min(np.sum(got * reference, 1) / np.linalg.norm(got, axis=1)))


def perf_counters(compiled, batch, top=8):
    """{layer type: ms} of one inference, from OpenVINO's per-layer counters."""
    request = compiled.create_infer_request()
    request.infer(batch)
    request.infer(batch)
    by_type = collections.Counter()
    for info in request.profiling_info:
        by_type[f"{info.node_type}/{info.exec_type}"] += info.real_time.total_seconds() * 1e3
    return by_type.most_common(top)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--served", action="store_true")
    args = parser.parse_args()
    import openvino as ov
    import torch
    from bertc.runtime import machine
    print(machine.header(), flush=True)
    print(f"OpenVINO {ov.get_version()}; load {os.getloadavg()[0]:.2f}", flush=True)
    cores = os.cpu_count() or 1
    default_dtype = target.default_dtype()
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models.split(","):
            ckpt_dir, ckpt, mrpc, full = padding_free.traffic(name, workdir, BATCH, SEQ,
                                                              args.batches)
            trimmed = [padding_free.trimmed(b) for b in mrpc]
            model = throughput.torch_model(ckpt)
            reference = reference_embeddings(model, trimmed)
            runs, cosines, compiled_ir = {}, {}, None
            for label, buckets, extra, dtype in BERTC_OV:
                if name != "minilm" and label not in BERTC_OV_SHORT:
                    continue
                out = os.path.join(workdir, f"{name}_{len(runs)}")
                dtype = dtype or default_dtype
                builder.build(builder.BuildOptions(
                    output=out, ckpt=ckpt_dir, head="embedding", batch_size=BATCH,
                    seq_lens=list(buckets), rewrites=list(extra), target="openvino",
                    dtype=dtype, verify=False))
                fn = ov_bucket_fn(out, buckets, target.precision(dtype), cores)
                traffic = routed(mrpc, buckets)
                runs[(label, "full")] = (fn, full)
                runs[(label, "mrpc")] = (fn, traffic)
                cosines[label] = min_cosine(fn, routed_in_order(mrpc, buckets), reference,
                                            False)
                if label == "bertc ov 128":
                    compiled_ir = openvino_runner.compile_ir(
                        os.path.join(out, target.ir_path(128)),
                        dict(target.compile_properties(target.precision(dtype), 1, cores),
                             PERF_COUNT="YES"))
            hf_ov = ov.Core().read_model(throughput.export_onnx(
                model, trimmed[0], os.path.join(workdir, f"{name}.onnx")))
            core = ov.Core()
            ov_default = core.compile_model(hf_ov, "CPU")
            ov_f32 = core.compile_model(hf_ov, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            peers = {"OV default (HF)": ov_hf_fn(ov_default),
                     "OV f32 (HF)": ov_hf_fn(ov_f32)}
            torch_fn = throughput.torch_runner(model)
            peers["ORT fp32"] = throughput.onnxruntime_runner(model, ckpt.config, trimmed[0],
                                                              workdir)[0]
            peers["torch fp32"] = torch_fn

            def torch_bf16(b, fn=torch_fn):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return fn(b)
            peers["torch bf16"] = torch_bf16
            for label, fn in peers.items():
                runs[(label, "full")] = (fn, full)
                runs[(label, "mrpc")] = (fn, trimmed)
            for label in ("OV default (HF)", "OV f32 (HF)", "ORT fp32"):
                cosines[label] = min_cosine(peers[label], trimmed, reference, True)
            tf_out = os.path.join(workdir, f"{name}_tf")
            builder.build(builder.BuildOptions(output=tf_out, ckpt=ckpt_dir, head="embedding",
                                               batch_size=BATCH, seq_lens=[SEQ], verify=False))
            tf_runner = runners.saved_model_runner(os.path.join(tf_out, f"seq_{SEQ}", "1"),
                                                   throughput.SERVED_ALL_CORES)
            runs[("bertc TF", "full")] = (tf_runner, full)
            runs[("bertc TF", "mrpc")] = (tf_runner, mrpc)
            cosines["bertc TF"] = min_cosine(tf_runner, mrpc, reference, False)
            rates = throughput.interleaved_rates(runs, args.rounds, 0.0)
            base = {t: rates[("OV default (HF)", t)] for t in ("full", "mrpc")}
            print(f"\n{name}: inf/s (ratio to OV default); min embedding cosine vs torch fp32")
            print(f"| stack | full [4,128] | MRPC | cosine |\n|---|---|---|---|")
            for label in dict.fromkeys(lab for lab, _ in runs):
                cells = [f"{rates[(label, t)]:.1f} ({rates[(label, t)] / base[t]:.2f}x)"
                         for t in ("full", "mrpc")]
                cos = f"{cosines[label]:.5f}" if label in cosines else "-"
                print(f"| {label} | {cells[0]} | {cells[1]} | {cos} |", flush=True)
            feeds = {k: full[0][k] for k in INPUTS}
            print("\nper-layer time, one [4,128] inference, ms (bertc ov 128):")
            for kind, ms in perf_counters(compiled_ir, feeds):
                print(f"  {kind:<40} {ms:8.2f}")
            print("per-layer time, one [4,128] inference, ms (OV default on the HF model):")
            for kind, ms in perf_counters(core.compile_model(hf_ov, "CPU",
                                                             {"PERF_COUNT": "YES"}),
                                          [feeds[k].astype(np.int64) for k in INPUTS]):
                print(f"  {kind:<40} {ms:8.2f}")
            tf_runner.close()
            if args.served:
                served_vs_offline(ckpt_dir, workdir)


def routed_in_order(batches, buckets):
    """Every row (original order) as its own one-row batch padded to BATCH, cut to its
    bucket: for accuracy, so rows line up with the reference."""
    out = []
    for b in batches:
        for i, length in enumerate(b["input_mask"].sum(1)):
            bucket = next(s for s in buckets if length <= s)
            out.append({k: np.concatenate([b[k][i:i + 1, :bucket],
                                           np.zeros((BATCH - 1, bucket), np.int32)])
                        for k in INPUTS})
    return _FirstRow(out)


class _FirstRow(list):
    """Batches whose first row only is real (min_cosine keeps row 0 of each)."""


def served_vs_offline(ckpt_dir, workdir, buckets=(16, 32, 48, 64, 96, 128)):
    """bertc serve --parallel 2 on the IR under 48 clients, vs the same rows offline
    through the same compiled model (2 streams, 2 replica threads)."""
    import threading
    import time
    import serving
    from bertc.serving import artifact as artifact_lib
    from bertc.serving import replica
    from bertc.text import pairs as textdata
    out = os.path.join(workdir, "served_ov")
    builder.build(builder.BuildOptions(output=out, ckpt=ckpt_dir, batch_size=BATCH,
                                       seq_lens=list(buckets), target="openvino",
                                       verify=False))
    art = artifact_lib.load_artifact(out)
    pairs = textdata.read_pairs(padding_free.MRPC_DEV)
    batches = serving.batches_of(art, serving.mrpc_rows(art, pairs))
    load = replica.model_factory(art, 2)
    models = [load(art, 1) for _ in range(2)]
    done = [0, 0]

    def work(k, deadline):
        while time.perf_counter() < deadline:
            for seq_len, real, arrays in batches[k::2]:
                models[k].run(seq_len, arrays)
                done[k] += real
    start = time.perf_counter()
    workers = [threading.Thread(target=work, args=(k, start + 8.0)) for k in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    offline = sum(done) / (time.perf_counter() - start)
    for m in models:
        m.close()
    result = serving.served(out, pairs, 2, 48, 16, 5.0)
    print(f"\nserved (bertc serve --parallel 2, 48 clients, MRPC sentences): "
          f"{result['inferences_per_s']:.1f} inf/s; offline same rows, 2 streams: "
          f"{offline:.1f} inf/s; served/offline {result['inferences_per_s'] / offline:.2f}; "
          f"ok {result['ok']}/{result['requests']}", flush=True)


if __name__ == "__main__":
    main()
