"""Question answering at the Intel BF16 guide's shape: BERT-Large, span head, seq 384.

    python benchmarks/squad.py [--layers 24] [--batch 32] [--seq 384] [--rounds 1]
        [--stacks bertc_f32,bertc_bf16,bertc_ov_f32,bertc_ov_bf16,torch_f32,torch_bf16,ov_default]
        [--intra_op_threads N] [--inter_op_threads 1] [--build_only] [--workdir DIR]

A BERT-Large-shaped random checkpoint with run_squad's span head
(make_random_checkpoint.py --span; --layers cuts the depth for a quick look) is built
by `bertc build --head span` at [batch, seq] in float32 and bfloat16 and with
`--target openvino`; each build runs in a child process, and its wall time and peak
RSS (GNU time's) are printed beside the weights' size (targets: under 90 s and under
three times the weights).  Then, in this process, timed in turns
(throughput.interleaved_rates: best pass of each, every pass printed):
  bertc_f32 / bertc_bf16   the artifact's SavedModel, run as `bertc serve` runs it
                           (runner.RunConfig served, the thread flags given here)
  bertc_ov_f32 / _bf16     the --target openvino IR, compiled as serve compiles it
                           (1 stream, the intra-op threads) at f32 and at bf16
  torch_f32 / torch_bf16   transformers' BertForQuestionAnswering on the same weights,
                           fp32 and under torch.autocast("cpu", bfloat16)
  ov_default               that PyTorch model exported to ONNX (throughput.export_onnx)
                           and compiled with no properties (OpenVINO's default precision)
on two kinds of rows: `full` (every row 384 real tokens) and `squad` (windows of
SQuAD-like traffic: a 100-300-word context of MRPC dev sentences and a question,
cut by bertc.text.question_answering.windows, doc_stride 128; padded rows).  The
first pass of each stack is its warm-up and its correctness check against torch_f32
(start/end logits at real positions, and whether the best span is the same); the
timed passes follow.  Figures are sequences (windows) per second and the ratio to
torch_bf16; the load average is printed before and after the timed passes.  Where
memory is short (the seven BERT-Large stacks at 32 x 384 do not fit in one process on
the 24 GiB development machine: BENCHMARKS.md), run them in groups with the same
--workdir, each with torch_bf16 as the common yardstick: a group without torch_f32
checks against the outputs an earlier group saved.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import throughput  # noqa: E402
from make_random_checkpoint import SHAPES, random_weights  # noqa: E402
from served_memory import memory as rss  # noqa: E402
from bertc.runtime import machine  # noqa: E402

INPUTS = ("input_ids", "input_mask", "segment_ids")


def make_checkpoint(out: str, layers: int, seq: int, shape: str = "large") -> str:
    from bertc.model.config import BertConfig
    from bertc.sources import embedded as defaults
    from bertc.sources import google_checkpoint as checkpoint
    shape = dict(SHAPES[shape], num_hidden_layers=layers or SHAPES[shape]["num_hidden_layers"])
    config = BertConfig(vocab_size=30522, max_position_embeddings=max(512, seq), **shape)
    weights = random_weights(config, span=True)
    rng = np.random.default_rng(1)  # a span head whose logits vary between tokens
    weights["cls/squad/output_weights"] = rng.standard_normal((2, config.hidden_size)
                                                              ).astype(np.float32)
    checkpoint.write_checkpoint(out, config, weights,
                                os.path.join(defaults.minilm_hf_dir(), "vocab.txt"),
                                hints={"do_lower_case": True})
    return out


def timed_build(ckpt: str, out: str, batch: int, seq: int, dtype: str, target: str = "cpu"):
    """(wall s, peak RSS bytes) of `bertc build` in a child process.  The peak is
    /usr/bin/time's (GNU time, wait4 of a small parent): wait4 from this process would
    count the RSS this process had when it forked (Linux copies the high-water mark)."""
    cmd = ["/usr/bin/time", "-f", "maxrss_kib %M", sys.executable, "-m", "bertc.cli", "build",
           "--ckpt", ckpt, "--output", out, "--head", "span", "--batch_size", str(batch),
           "--seq_len", str(seq), "--dtype", dtype, "--target", target, "--noverify"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=dict(os.environ, PYTHONPATH=os.path.dirname(HERE)))
    wall = time.perf_counter() - start
    err = proc.stderr.decode()
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode}):\n{err[-2000:]}")
    kib = int(err.rsplit("maxrss_kib", 1)[1].split()[0])
    return wall, kib * 1024


def squad_questions(count: int, seed: int = 0) -> list:
    """`count` SQuAD-like (question, context) pairs: a context of 100-300 consecutive
    MRPC dev words, and "what" + the first 8 words of the next sentence + "?"."""
    from bertc.text import pairs as textdata
    sentences = [s for p in textdata.read_mrpc_tsv(textdata.default_mrpc_path())
                 for s in (p.text_a, p.text_b)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        words, start = [], int(rng.integers(0, len(sentences) - 40))
        target = int(rng.integers(100, 301))
        while len(words) < target:
            words += sentences[start].split()
            start += 1
        out.append(("what " + " ".join(sentences[start].split()[:8]) + " ?",
                    " ".join(words[:target])))
    return out


def squad_rows(vocab: str, seq: int, count: int, seed: int = 0) -> dict:
    """`count` windows of SQuAD-like requests (squad_questions), cut at `seq`."""
    from bertc.text import question_answering as qa
    from bertc.text.tokenization import WordPieceTokenizer
    tok = WordPieceTokenizer.from_vocab_file(vocab, True)
    rows = {n: [] for n in INPUTS}
    for question, context in squad_questions(count, seed):
        win = qa.windows(tok, question, context, seq)
        for n in INPUTS:
            rows[n].extend(win.features[n])
        if len(rows["input_ids"]) >= count:
            break
    return {n: np.stack(v[:count]).astype(np.int32) for n, v in rows.items()}


def full_rows(batch: int, seq: int) -> dict:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, size=(batch, seq)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    segments = np.zeros((batch, seq), np.int32)
    segments[:, 40:] = 1
    return {"input_ids": ids, "input_mask": np.ones_like(ids), "segment_ids": segments}


def torch_qa(ckpt):
    import torch
    import transformers
    from bertc.sources import hf_convert
    c = ckpt.config
    model = transformers.BertForQuestionAnswering(transformers.BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
        layer_norm_eps=1e-12, hidden_act="gelu")).eval()
    state = {}
    for name in model.state_dict():
        mapped = hf_convert.google_name(name)
        if mapped is None or mapped[0] not in ckpt.weights:
            continue
        google, transpose = mapped
        value = ckpt.weights[google]
        state[name] = torch.from_numpy(np.ascontiguousarray(value.T if transpose else value))
    missing, _ = model.load_state_dict(state, strict=False)
    assert all(k.endswith("_ids") for k in missing), missing
    return model


def torch_fn(model, bf16: bool):
    import torch

    def run(b):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=torch.from_numpy(b["input_ids"]).long(),
                        attention_mask=torch.from_numpy(b["input_mask"]).long(),
                        token_type_ids=torch.from_numpy(b["segment_ids"]).long())
        return out.start_logits.float().numpy(), out.end_logits.float().numpy()
    return run


def export_hf_onnx(ckpt_dir: str, rows: dict, path: str) -> str:
    """The HF model of the checkpoint exported to ONNX at `path`, in a child process
    (tracing and serializing BERT-Large holds several copies of its weights; the
    child's memory is returned before any stack is loaded here)."""
    if not os.path.isfile(path):
        np.savez(path + ".rows.npz", **rows)
        subprocess.run([sys.executable, os.path.abspath(__file__), "--onnx_child", ckpt_dir,
                        path], check=True, env=dict(os.environ, PYTHONPATH=os.path.dirname(HERE)))
    return path


def onnx_child(ckpt_dir: str, path: str) -> None:
    from bertc.sources import google_checkpoint as checkpoint
    import torch
    rows = {k: v[:2, :64] for k, v in np.load(path + ".rows.npz").items()}  # axes are dynamic
    model = torch_qa(checkpoint.load_checkpoint(ckpt_dir, checksums=False)).requires_grad_(False)
    with torch.no_grad():  # tracing with autograd on kept every layer's activations (OOM)
        throughput.export_onnx(model, rows, path, outputs=("start_logits", "end_logits"))


def ov_default_fn(path: str):
    """OpenVINO's default on the HF model's ONNX export: compiled with no properties."""
    import openvino as ov
    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU")
    print(f"ov_default: inference precision "
          f"{compiled.get_property('INFERENCE_PRECISION_HINT')}", flush=True)
    request = compiled.create_infer_request()

    def run(b):
        result = request.infer([b[k].astype(np.int64) for k in INPUTS])
        return result[0], result[1]
    return run


def bertc_tf_fn(artifact: str, seq: int, intra: int, inter: int):
    from bertc.runtime import runner as runners
    run = runners.saved_model_runner(os.path.join(artifact, f"seq_{seq}", "1"),
                                     runners.RunConfig(runners.SERVED, intra, inter))
    return lambda b: (lambda o: (o["start_logits"], o["end_logits"]))(run(b))


def bertc_ov_fn(artifact: str, seq: int, intra: int, dtype: str):
    from bertc.runtime import openvino_runner, openvino_settings
    run = openvino_runner.ir_runner(
        os.path.join(artifact, "openvino", f"seq_{seq}", "model.xml"),
        openvino_settings.compile_properties(openvino_settings.precision(dtype), 1, intra))
    return lambda b: (lambda o: (o["start_logits"], o["end_logits"]))(run(b))


def best_spans(start, end, mask, longest: int = 30):
    """(s, e) per row: argmax of start[s] + end[e] over real positions, s <= e < s + longest."""
    out = []
    for st, en, m in zip(start, end, mask):
        n = int(m.sum())
        score = st[:n, None] + en[None, :n]
        s_idx, e_idx = np.indices(score.shape)
        score[(e_idx < s_idx) | (e_idx >= s_idx + longest)] = -np.inf
        out.append(np.unravel_index(np.argmax(score), score.shape))
    return out


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--stacks", default="bertc_f32,bertc_bf16,bertc_ov_f32,bertc_ov_bf16,"
                                            "torch_f32,torch_bf16,ov_default")
    parser.add_argument("--kinds", default="full,squad")
    parser.add_argument("--intra_op_threads", type=int, default=os.cpu_count())
    parser.add_argument("--inter_op_threads", type=int, default=1)
    parser.add_argument("--build_only", action="store_true")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--onnx_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.onnx_child:
        onnx_child(*args.onnx_child)
        return
    print(machine.header(), flush=True)
    print(f"BERT-Large-shaped ({args.layers} of 24 layers), span head, batch {args.batch} x "
          f"seq {args.seq}; intra_op_threads {args.intra_op_threads}, inter_op_threads "
          f"{args.inter_op_threads}; {load()}", flush=True)
    work = args.workdir or tempfile.mkdtemp(prefix="bertc_squad_")
    os.makedirs(work, exist_ok=True)
    ckpt_dir = os.path.join(work, "ckpt")
    if not os.path.isdir(ckpt_dir):
        make_checkpoint(ckpt_dir, args.layers, args.seq)
    weight_bytes = sum(os.path.getsize(os.path.join(ckpt_dir, f)) for f in os.listdir(ckpt_dir)
                       if ".data-" in f)
    stacks = args.stacks.split(",")
    builds = [("float32", "cpu")]
    if "bertc_bf16" in stacks:
        builds.append(("bfloat16", "cpu"))
    if any(s.startswith("bertc_ov") for s in stacks):
        builds.append((None, "openvino"))
    artifacts = {}
    for dtype, target in builds:
        out = os.path.join(work, f"art_{target}_{dtype}")
        if not os.path.isdir(out):
            from bertc.builder.targets import openvino as ov_target
            wall, peak = timed_build(ckpt_dir, out, args.batch, args.seq,
                                    dtype or ov_target.default_dtype(), target)
            print(f"build {target} {dtype or 'default'}: {wall:.1f} s, peak RSS "
                  f"{peak / 2**30:.2f} GiB = {peak / weight_bytes:.2f}x the weights "
                  f"({weight_bytes / 2**30:.2f} GiB); {load()}", flush=True)
        artifacts[(dtype, target)] = out
    if args.build_only:
        return
    from bertc.sources import google_checkpoint as checkpoint
    vocab = os.path.join(ckpt_dir, "vocab.txt")
    traffic = {"full": full_rows(args.batch, args.seq),
               "squad": squad_rows(vocab, args.seq, args.batch)}
    traffic = {k: traffic[k] for k in args.kinds.split(",")}
    if "squad" in traffic:
        real = traffic["squad"]["input_mask"].sum(1)
        print(f"squad rows: {len(real)} windows, real tokens min {real.min()} median "
              f"{int(np.median(real))} max {real.max()}", flush=True)
    fns = {}
    if "ov_default" in stacks:  # first, while this process is small
        fns["ov_default"] = ov_default_fn(export_hf_onnx(
            ckpt_dir, traffic[next(iter(traffic))], os.path.join(work, "hf_qa.onnx")))
        print(f"ov_default compiled; {rss()}", flush=True)
    if any(s.startswith("torch") for s in stacks):
        import torch
        torch.set_num_threads(args.intra_op_threads)
        model = torch_qa(checkpoint.load_checkpoint(ckpt_dir, checksums=False))
        if "torch_f32" in stacks:
            fns["torch_f32"] = torch_fn(model, False)
        if "torch_bf16" in stacks:
            fns["torch_bf16"] = torch_fn(model, True)
        print(f"torch model loaded; {rss()}", flush=True)
    for name, dtype in (("bertc_f32", "float32"), ("bertc_bf16", "bfloat16")):
        if name in stacks:
            fns[name] = bertc_tf_fn(artifacts[(dtype, "cpu")], args.seq,
                                    args.intra_op_threads, args.inter_op_threads)
            print(f"{name} loaded; {rss()}", flush=True)
    for name, dtype in (("bertc_ov_f32", "float32"), ("bertc_ov_bf16", "bfloat16")):
        if name in stacks:
            fns[name] = bertc_ov_fn(artifacts[(None, "openvino")], args.seq,
                                    args.intra_op_threads, dtype)
            print(f"{name} compiled; {rss()}", flush=True)
    order = ["torch_f32"] + [n for n in fns if n != "torch_f32"]
    for kind, rows in traffic.items():
        mask = rows["input_mask"]
        got = {}
        for name in order:  # the warm-up pass, kept for the check
            if name in fns:
                t = time.perf_counter()
                got[name] = fns[name](rows)
                print(f"{kind:<6} {name:<13} warm-up {time.perf_counter() - t:6.1f} s; "
                      f"{rss()}", flush=True)
        saved = os.path.join(work, f"torch_f32_{kind}_{args.batch}x{args.seq}.npz")
        want = got.get("torch_f32")
        if want is not None:
            np.savez(saved, start=want[0], end=want[1])
        elif os.path.isfile(saved):  # an earlier run's (another group of stacks)
            with np.load(saved) as f:
                want = (f["start"], f["end"])
        if want is not None:
            want_spans = best_spans(*want, mask)
            for name, out in got.items():
                err = max(float(np.abs((g - w) * mask).max()) for g, w in zip(out, want))
                same = np.mean([a == b for a, b in zip(best_spans(*out, mask), want_spans)])
                print(f"{kind:<6} {name:<13} vs torch_f32: max abs {err:.3g} (real positions), "
                      f"same best span {same:.3f}", flush=True)
        print(f"{kind}: timing, {load()}", flush=True)
        runs = {name: (fn, [rows]) for name, fn in fns.items()}
        passes = {}
        rates = throughput.interleaved_rates(runs, args.rounds, 0.0, warm_up=False,
                                             passes=passes)
        base = rates.get("torch_bf16")
        for name, rate in rates.items():
            ratio = f"  {rate / base:.2f}x torch_bf16" if base else ""
            spread = " ".join(f"{args.batch / r:.1f}" for r in passes[name])
            print(f"{kind:<6} {name:<13} {rate:8.2f} sequences/s  "
                  f"{args.batch / rate:7.1f} s/batch (best; passes {spread} s){ratio}",
                  flush=True)
        print(f"{kind}: done, {load()}", flush=True)


if __name__ == "__main__":
    main()
