"""Offline throughput at [batch, seq]: bertc artifacts beside PyTorch and ONNX Runtime.

  .venv/bin/python benchmarks/throughput.py --models minilm,base [--passes none,crude_gelu,...]
For each model (minilm: the real all-MiniLM-L6-v2; base/large: Google-shaped random
weights) it builds bertc artifacts (no rewrites, each requested pass list, and
`default`: the CPU target's default for the sequence head), then times, in this one
process and in turns (--rounds passes over all stacks, each stack's best pass kept,
so load that comes and goes on the shared VM hits them alike): the artifact in a TF
Session (Grappler on, as served), Hugging Face's PyTorch BertModel on the same
weights, and ONNX Runtime on that model exported to ONNX and fused by its
transformer optimizer (when installed).
The machine's FP32 GEMM rate (a large TF MatMul) is measured first, so every result
is also shown as FLOP utilisation. Prints one table; --json writes the rows.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bertc.builder import pipeline as builder  # noqa: E402
from bertc.sources import google_checkpoint as checkpoint
from bertc.sources import embedded as defaults
from bertc import passes as rewriting
from bertc.runtime import runner as runners
from bertc.sources import hf_convert  # noqa: E402


#: bertc's artifacts as `bertc serve --parallel 1` runs them: one Session on every core
#: (the peers get every core too).
SERVED_ALL_CORES = runners.RunConfig(runners.SERVED, os.cpu_count() or 1)


def gemm_gflops(n: int = 2048, repeats: int = 10, trials: int = 3) -> float:
    """Best of `trials` timings of a large TF MatMul (the machine's FP32 GEMM rate)."""
    import tensorflow as tf
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    matmul = tf.function(lambda x, y: tf.matmul(x, y))
    matmul(a, b).numpy()
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            matmul(a, b).numpy()
        best = max(best, 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


#: Seconds of rest before each timed pass: ONNX Runtime's and OpenMP's worker threads
#: spin-wait after a call, and would otherwise steal the cores from the next stack.
PAUSE_S = 0.5


def interleaved_rates(runs, rounds, min_seconds, pause_s=PAUSE_S, warm_up=True, passes=None):
    """{label: inferences/s} of `runs` ({label: (fn, batches)}), timed in turns:
    each round times one whole pass of every run, and a run's figure is its best
    pass, so load that comes and goes on a shared machine hits every run alike
    and the best passes are the quiet ones.  The order rotates every round and
    each pass starts after `pause_s` of rest, so no stack always follows the one
    whose threads are still spinning.  One warm-up pass each first (warm_up=False:
    the caller has already run each, e.g. for its correctness check).  `passes`, a
    dict, gets {label: [every pass's rate]} to show the spread."""
    for fn, batches in runs.values() if warm_up else ():
        for b in batches:
            fn(b)
    best = {label: 0.0 for label in runs}
    labels = list(runs)
    start = time.perf_counter()
    done = 0
    while done < rounds or time.perf_counter() - start < min_seconds:
        shift = done % len(labels)
        for label in labels[shift:] + labels[:shift]:
            fn, batches = runs[label]
            rows = sum(len(b["input_ids"]) for b in batches)
            time.sleep(pause_s)
            t = time.perf_counter()
            for b in batches:
                fn(b)
            rate = rows / (time.perf_counter() - t)
            best[label] = max(best[label], rate)
            if passes is not None:
                passes.setdefault(label, []).append(rate)
        done += 1
    return best


def model_gflop(config, seq: int) -> float:
    """Forward FLOPs of one sequence (2 per multiply-add): dense layers + attention."""
    d, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    dense = 2 * seq * (4 * d * d + 2 * d * i)
    attention = 2 * 2 * seq * seq * d
    return layers * (dense + attention) / 1e9


def torch_model(ckpt):
    import torch
    import transformers
    c = ckpt.config
    hf_config = transformers.BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
        layer_norm_eps=1e-12, hidden_act="gelu")
    model = transformers.BertModel(hf_config, add_pooling_layer=True).eval()
    state = {}
    for name in model.state_dict():
        mapped = hf_convert.google_name(name)
        if mapped is None or mapped[0] not in ckpt.weights:
            continue
        google, transpose = mapped
        value = ckpt.weights[google]
        state[name] = torch.from_numpy(np.ascontiguousarray(value.T if transpose else value))
    model.load_state_dict(state, strict=False)
    torch.set_num_threads(os.cpu_count())
    return model


def torch_runner(model):
    import torch

    def run(batch):
        with torch.inference_mode():
            model(input_ids=torch.from_numpy(batch["input_ids"]).long(),
                  attention_mask=torch.from_numpy(batch["input_mask"]).long(),
                  token_type_ids=torch.from_numpy(batch["segment_ids"]).long())
    return run


def positional(model, outputs):
    """An nn.Module calling the HF `model` with positional (input_ids, attention_mask,
    token_type_ids) and returning the named `outputs` of its result, in order: the
    form torch.onnx.export and openvino.convert_model trace.  The wrapper takes the
    model's train/eval mode: torch.onnx.export restores the wrapper's mode after
    tracing, and a new Module is in training mode, which turned the HF model's
    dropout on for every later call."""
    import torch

    class Positional(torch.nn.Module):
        def __init__(self, hf_model):
            super().__init__()
            self.hf_model = hf_model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.hf_model(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids)
            return tuple(getattr(out, name) for name in outputs)

    return Positional(model).train(model.training)


def export_onnx(model, batch, path, outputs=("last_hidden_state", "pooler_output")):
    """The HF model exported to ONNX (opset 17), batch and sequence dynamic; its
    `outputs` in order (a BertModel's last_hidden_state [B, S, D] and pooler_output
    [B, D] by default; BertForQuestionAnswering's start_logits, end_logits [B, S])."""
    import torch
    inputs = tuple(torch.from_numpy(batch[k]).long()
                   for k in ("input_ids", "input_mask", "segment_ids"))
    torch.onnx.export(positional(model, outputs), inputs, path,
                      input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=list(outputs),
                      dynamic_axes={n: {0: "batch", 1: "seq"} for n in
                                    ("input_ids", "attention_mask", "token_type_ids")},
                      opset_version=17, dynamo=False)
    return path


def onnxruntime_runner(model, config, batch, workdir):
    """ONNX Runtime on the PyTorch model exported to ONNX and fused by its optimizer;
    run(b) returns last_hidden_state."""
    import onnxruntime as ort
    from onnxruntime.transformers import optimizer
    path = export_onnx(model, batch, os.path.join(workdir, "model.onnx"))
    optimized = optimizer.optimize_model(path, model_type="bert",
                                         num_heads=config.num_attention_heads,
                                         hidden_size=config.hidden_size)
    fused = optimized.get_fused_operator_statistics()
    opt_path = os.path.join(workdir, "model_opt.onnx")
    optimized.save_model_to_file(opt_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    session = ort.InferenceSession(opt_path, options, providers=["CPUExecutionProvider"])

    def run(b):
        return session.run(None, {"input_ids": b["input_ids"].astype(np.int64),
                                  "attention_mask": b["input_mask"].astype(np.int64),
                                  "token_type_ids": b["segment_ids"].astype(np.int64)})[0]
    return run, fused


def checkpoint_for(name: str, workdir: str) -> str:
    if name == "minilm":
        return defaults.ensure_default_checkpoint()
    from make_random_checkpoint import SHAPES, random_weights
    from bertc.model.config import BertConfig
    config = BertConfig(vocab_size=30522, **SHAPES[name])
    out = os.path.join(workdir, f"ckpt_{name}")
    vocab = os.path.join(defaults.minilm_hf_dir(), "vocab.txt")
    checkpoint.write_checkpoint(out, config, random_weights(config), vocab,
                                hints={"do_lower_case": True})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,base")
    parser.add_argument("--passes", default="none",
                        help="';'-separated pass lists, each ','-separated ('none' = no rewrites)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--peers", default="torch,onnxruntime")
    parser.add_argument("--rounds", type=int, default=5,
                        help="passes over the stacks, in turns; each stack's best is kept")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from bertc.runtime import machine
    print(machine.header(), flush=True)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    rng = np.random.default_rng(0)
    b, s = args.batch_size, args.seq_len
    batch = {"input_ids": rng.integers(1000, 30000, (b, s), dtype=np.int32),
             "input_mask": np.ones((b, s), np.int32), "segment_ids": np.zeros((b, s), np.int32)}
    peak = gemm_gflops()
    print(f"FP32 GEMM (TF MatMul 2048^3): {peak:.1f} GFLOP/s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models.split(","):
            ckpt_dir = checkpoint_for(name, workdir)
            ckpt = checkpoint.load_checkpoint(ckpt_dir, checksums=False)
            gflop = model_gflop(ckpt.config, s)

            def add(stack, seconds, extra=""):
                rate = b / seconds
                util = rate * gflop / peak
                rows.append({"model": name, "stack": stack, "inferences_per_s": rate,
                             "flop_utilisation": util, "note": extra})
                print(f"{name:<7} {stack:<42} {rate:8.2f} inf/s  {100 * util:5.1f}% of GEMM "
                      f"{extra}", flush=True)

            runs, notes, opened = {}, {}, []
            for passes in args.passes.split(";"):
                names = ([] if passes == "none" else
                         rewriting.for_head(rewriting.CPU_DEFAULT, "sequence")
                         if passes == "default" else passes.split(","))
                out = os.path.join(workdir, f"art_{name}_{len(opened)}")
                result = builder.build(builder.BuildOptions(
                    output=out, ckpt=ckpt_dir, head="sequence", batch_size=b, seq_lens=[s],
                    rewrites=names, default_rewrites=False, verify=False))
                runner = runners.saved_model_runner(os.path.join(out, "seq_%d/1" % s),
                                                    SERVED_ALL_CORES)
                opened.append(runner)
                sites = {r["name"]: r["sites"] for r in
                         result.manifest["rewrites"]["per_seq_len"][str(s)]}
                runs[f"bertc [{passes}]"] = (runner, [batch] * 3)
                notes[f"bertc [{passes}]"] = json.dumps(sites) if sites else ""
            if "torch" in args.peers or "onnxruntime" in args.peers:
                model = torch_model(ckpt)
                if "torch" in args.peers:
                    runs["PyTorch BertModel"] = (torch_runner(model), [batch] * 3)
                if "onnxruntime" in args.peers:
                    try:
                        run, fused = onnxruntime_runner(model, ckpt.config, batch, workdir)
                        runs["ONNX Runtime + transformer optimizer"] = (run, [batch] * 3)
                        notes["ONNX Runtime + transformer optimizer"] = json.dumps(
                            {k: v for k, v in fused.items() if v})
                    except ImportError as e:
                        print(f"{name:<7} ONNX Runtime skipped ({e})")
            for stack, rate in interleaved_rates(runs, args.rounds, 0.0).items():
                add(stack, b / rate, notes.get(stack, ""))
            for runner in opened:
                runner.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gemm_gflops": peak, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
