"""bertc `--target openvino --dtype int8` beside bf16, f32 and the int8 peers.

    python benchmarks/int8.py [--models minilm,base] [--batches 40] [--rounds 4]
        [--buckets 64,128]

Per model (minilm: the real all-MiniLM-L6-v2; base: random weights shaped like
BERT-Base), batch 4, every core, timed in turns in one process
(throughput.interleaved_rates: the best pass of each), on
  full   [4, 128] rows of random ids
  mrpc   --batches x 4 MRPC dev pairs after the first 100 (the int8 build
         calibrates on those 100): bertc's --buckets (64, 128) get the rows routed
         as `bertc serve` routes them; peers get each batch padded to its longest row.
Stacks:
  bertc ov f32 / bf16 / int8   one artifact each (--dtype), IR compiled as served (at the
                               precision its manifest records), 1 stream; int8's float
                               rest in f32 (the default)
  bertc ov int8, bf16 rest     an int8 artifact built with --int8_rest_dtype bfloat16
  OV+NNCF default (HF)         nncf.quantize(model_type=TRANSFORMER) on the HF model
                               exported to ONNX (dynamic axes; throughput.export_onnx)
                               and read by OpenVINO, calibrated on the same 100 MRPC
                               pairs, compiled with no properties
  ORT fp32 / ORT int8 dynamic  ONNX Runtime on the same export, and
                               onnxruntime.quantization.quantize_dynamic(QInt8)
Each int8 build's search is printed per bucket (steps, ops kept out of int8, metric):
a fallback makes a bucket slower and more accurate.
cosine: the minimum embedding cosine vs PyTorch fp32 on the MRPC rows.
accuracy: MRPC paraphrase accuracy on the 308 held-out pairs (each sentence embedded
alone; paraphrase when cos(e_a, e_b) >= the artifact's threshold, as verify's task
metric decides), real weights only.
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
from bertc.artifact import manifest as manifest_lib  # noqa: E402
from bertc.builder import pipeline as builder  # noqa: E402
from bertc.builder.targets import openvino as target  # noqa: E402
from bertc.errors import BertcError  # noqa: E402
from bertc.text import pairs as textdata  # noqa: E402
from bertc.text.tokenization import WordPieceTokenizer  # noqa: E402
from bertc.verify import task_metric  # noqa: E402

BATCH, SEQ, CALIBRATION = 4, 128, 100


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


def sentence_batches(vocab_file, sentences):
    """[4, longest] batches of single sentences, in order (the last one zero-padded)."""
    tokenizer = WordPieceTokenizer.from_vocab_file(vocab_file, do_lower_case=True)
    features = tokenizer.encode_batch([(s, None) for s in sentences], SEQ)
    rows = len(sentences)
    pad = -rows % BATCH
    features = {k: np.concatenate([v, np.zeros((pad, SEQ), v.dtype)]) for k, v in
                features.items()}
    return [padding_free.trimmed({k: v[i:i + BATCH] for k, v in features.items()})
            for i in range(0, rows + pad, BATCH)]


def bucketed(batch, buckets):
    """The trimmed batch widened to the smallest bucket that holds it (bertc's IRs)."""
    width = next(s for s in buckets if batch["input_ids"].shape[1] <= s)
    extra = width - batch["input_ids"].shape[1]
    return {k: np.pad(v, ((0, 0), (0, extra))) for k, v in batch.items()}


def embeddings(fn, batches, sequence_output, rows, buckets):
    """Embeddings of the first `rows` rows; `buckets`: bertc's (None: the peers' own
    shapes)."""
    out = []
    for b in batches:
        b = bucketed(b, buckets) if buckets else b
        got = fn(b)
        out.append(ovb.embedding(got, b["input_mask"]) if sequence_output
                   else np.asarray(got["embedding"], np.float64))
    return np.concatenate(out)[:rows]


def paraphrase_accuracy(fn, side_a, side_b, labels, threshold, sequence_output, buckets):
    """MRPC accuracy (%) and F1 of one stack: cos(e_a, e_b) >= threshold."""
    a = embeddings(fn, side_a, sequence_output, len(labels), buckets)
    b = embeddings(fn, side_b, sequence_output, len(labels), buckets)
    similarity = np.sum(a * b, 1) / np.maximum(
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return task_metric.scores(similarity >= threshold, labels)


def torch_fn(model):
    import torch

    def run(b):
        with torch.inference_mode():
            return model(input_ids=torch.from_numpy(b["input_ids"]).long(),
                         attention_mask=torch.from_numpy(b["input_mask"]).long(),
                         token_type_ids=torch.from_numpy(b["segment_ids"]).long()
                         ).last_hidden_state.numpy()
    return run


def run_model(name, args, workdir):
    import openvino as ov
    buckets = tuple(sorted(int(s) for s in args.buckets.split(",")))
    cores = os.cpu_count() or 1
    ckpt_dir = throughput.checkpoint_for(name, workdir)
    from bertc.sources import google_checkpoint as checkpoint
    ckpt = checkpoint.load_checkpoint(ckpt_dir, checksums=False)
    every = padding_free.mrpc_batches(ckpt.vocab_file, BATCH, SEQ)
    calibration = every[:CALIBRATION // BATCH]
    mrpc = every[CALIBRATION // BATCH:][:args.batches]
    full = padding_free.full_length(mrpc[:max(4, args.batches // 4)])
    trimmed = [padding_free.trimmed(b) for b in mrpc]
    held_out = textdata.read_mrpc_tsv(padding_free.MRPC_DEV)[CALIBRATION:]
    real = name == "minilm"
    labels = np.array([p.label for p in held_out]) == 1
    side_a = sentence_batches(ckpt.vocab_file, [p.text_a for p in held_out])
    side_b = sentence_batches(ckpt.vocab_file, [p.text_b for p in held_out])
    model = throughput.torch_model(ckpt)
    reference = ovb.reference_embeddings(model, trimmed)
    runs, cosines, accuracy, threshold = {}, {}, {}, None
    for dtype, rest in (("float32", None), ("bfloat16", None), ("int8", None),
                        ("int8", "bfloat16")):
        label = f"bertc ov {dtype}" + (", bf16 rest" if rest else "")
        out = os.path.join(workdir, f"{name}_{dtype}" + (f"_{rest}_rest" if rest else ""))
        try:
            builder.build(builder.BuildOptions(
                output=out, ckpt=ckpt_dir, head="embedding", batch_size=BATCH,
                seq_lens=list(buckets), target="openvino", dtype=dtype, verify=False,
                calibration_rows=CALIBRATION if dtype == "int8" else None,
                int8_rest_dtype=rest))
        except BertcError as exc:  # an int8 build that refuses its bound: not a row
            print(f"{label}: refused: {exc}", flush=True)
            continue
        doc = manifest_lib.read(out)
        for call in doc["target"]["compile"]:  # the search per bucket: a fallback is slower
            if "int8" in call:
                search = call["int8"]
                print(f"{label} seq {call['seq_len']}: {len(search['steps'])} search steps, "
                      f"{len(search['kept_in_f32'])} ops kept out of int8, "
                      f"{search['bound']['metric']} {search['metric']:.6f}", flush=True)
        threshold = textdata.paraphrase_threshold(doc)
        fn = ovb.ov_bucket_fn(out, buckets, target.artifact_precision(doc), cores)
        runs[(label, "full")] = (fn, full)
        runs[(label, "mrpc")] = (fn, ovb.routed(mrpc, buckets))
        cosines[label] = ovb.min_cosine(fn, ovb.routed_in_order(mrpc, buckets),
                                        reference, False)
        if real:
            accuracy[label] = paraphrase_accuracy(fn, side_a, side_b, labels, threshold,
                                                  False, buckets)
    fp32_path = throughput.export_onnx(model, trimmed[0], os.path.join(workdir, f"{name}.onnx"))
    hf_int8 = ovb.nncf_default(fp32_path, calibration)
    peers = {"OV+NNCF default (HF)": ovb.ov_hf_fn(ov.Core().compile_model(hf_int8, "CPU"))}
    from onnxruntime.quantization import QuantType, quantize_dynamic
    int8_path = os.path.join(workdir, f"{name}_int8.onnx")
    quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8)
    peers["ORT fp32 (HF)"] = ort_fn(fp32_path, cores)
    peers["ORT int8 quantize_dynamic (HF)"] = ort_fn(int8_path, cores)
    for label, fn in peers.items():
        runs[(label, "full")] = (fn, full)
        runs[(label, "mrpc")] = (fn, trimmed)
        cosines[label] = ovb.min_cosine(fn, trimmed, reference, True)
        if real:
            accuracy[label] = paraphrase_accuracy(fn, side_a, side_b, labels, threshold,
                                                  True, None)
    if real:
        accuracy["torch fp32 (reference)"] = paraphrase_accuracy(
            torch_fn(model), side_a, side_b, labels, threshold, True, None)
    rates = throughput.interleaved_rates(runs, args.rounds, 0.0)
    base = {t: rates[("bertc ov float32", t)] for t in ("full", "mrpc")}
    bf16 = {t: rates[("bertc ov bfloat16", t)] for t in ("full", "mrpc")}
    print(f"\n{name}: inf/s (ratio to bertc ov f32); min embedding cosine vs torch fp32; "
          f"MRPC paraphrase accuracy / F1 on {len(held_out)} held-out pairs at threshold "
          f"{threshold:g}" + ("" if real else " (not measured: random weights)"))
    print("| stack | full [4,128] | MRPC | cosine | accuracy | F1 |\n|---|---|---|---|---|---|")
    for label in dict.fromkeys(lab for lab, _ in runs):
        cells = [f"{rates[(label, t)]:.1f} ({rates[(label, t)] / base[t]:.2f}x)"
                 for t in ("full", "mrpc")]
        score = accuracy.get(label)
        task = f"{score['accuracy']:.2f}% | {score['f1']:.2f}" if score else "- | -"
        print(f"| {label} | {cells[0]} | {cells[1]} | {cosines[label]:.5f} | {task} |",
              flush=True)
    if "torch fp32 (reference)" in accuracy:
        score = accuracy["torch fp32 (reference)"]
        print(f"| torch fp32 (reference) | - | - | 1.00000 | {score['accuracy']:.2f}% | "
              f"{score['f1']:.2f} |")
    for t in ("full", "mrpc") if ("bertc ov int8", "full") in rates else ():
        print(f"{name} int8 / bf16 ({t}): {rates[('bertc ov int8', t)] / bf16[t]:.2f}x; "
              f"int8 / f32: {rates[('bertc ov int8', t)] / base[t]:.2f}x", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm",
                        help="comma-separated: minilm (real weights), base (random)")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--buckets", default="64,128",
                        help="bertc's sequence buckets (the largest must be 128)")
    args = parser.parse_args()
    import openvino as ov
    import nncf
    from bertc.runtime import machine
    print(machine.header(), flush=True)
    print(f"OpenVINO {ov.get_version()}, NNCF {nncf.__version__}; load "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as workdir:
            run_model(name, args, workdir)
        print(f"load after {name}: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
