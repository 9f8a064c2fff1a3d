"""Offline throughput on MRPC-length traffic: remove_padding beside ONNX Runtime and PyTorch.

  .venv/bin/python benchmarks/padding_free.py --models minilm,base [--rounds 3]
Batches are the MRPC dev pairs (/work/shared/data/glue_mrpc_dev.tsv), tokenized
for the model and cut into [batch, seq] batches in file order (the real length
distribution: about 40% of the 4 x 128 tokens are real).  Stacks, each timed in
this process over the same batches (inferences/s = pairs / seconds):
  bertc [cpu default]                    the CPU target's default passes
  bertc [cpu default + remove_padding]   the same plus remove_padding
  ONNX Runtime, PyTorch at fixed [B, S]  every batch padded to S
  ONNX Runtime, PyTorch dynamic          each batch padded only to its longest pair
and full-length batches (every row S real tokens: remove_padding's worst case)
for the two bertc stacks.  Artifacts use the `sequence` head (the peers return
the sequence output and the pooler).  benchmarks/throughput.py has the peers'
runners; this script reuses them.  The stacks are timed in turns (a pass of
each per round, best pass kept; see `throughput.interleaved_rates`).  Check the machine is
quiet first (uptime); the load average is printed before and after.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bertc.builder import pipeline as builder  # noqa: E402
from bertc.sources import google_checkpoint as checkpoint
from bertc import passes as rewriting
from bertc.runtime import runner as runners
from bertc.text import pairs as textdata
from bertc.text.tokenization import WordPieceTokenizer  # noqa: E402
import throughput  # noqa: E402

MRPC_DEV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                        "shared", "data", "glue_mrpc_dev.tsv")


def mrpc_batches(vocab_file, batch_size, seq_len, path=MRPC_DEV):
    """[batch, seq] feature dicts of the MRPC dev pairs in file order (the last,
    partial batch is dropped)."""
    pairs = textdata.read_mrpc_tsv(path)
    tokenizer = WordPieceTokenizer.from_vocab_file(vocab_file, do_lower_case=True)
    features = tokenizer.encode_batch([(p.text_a, p.text_b) for p in pairs], seq_len)
    count = len(pairs) // batch_size * batch_size
    return [{k: v[i:i + batch_size] for k, v in features.items()}
            for i in range(0, count, batch_size)]


def traffic(name, workdir, batch_size, seq_len, batches):
    """(checkpoint dir, Checkpoint, MRPC batches, full-length batches) of a model name
    (throughput.checkpoint_for): what the benchmarks time their stacks on."""
    ckpt_dir = throughput.checkpoint_for(name, workdir)
    ckpt = checkpoint.load_checkpoint(ckpt_dir, checksums=False)
    mrpc = mrpc_batches(ckpt.vocab_file, batch_size, seq_len)[:batches]
    return ckpt_dir, ckpt, mrpc, full_length(mrpc[:max(4, batches // 4)])


def trimmed(batch):
    """The batch padded only to its longest row (dynamic padding)."""
    longest = int(batch["input_mask"].sum(1).max())
    return {k: np.ascontiguousarray(v[:, :longest]) for k, v in batch.items()}


def full_length(batches, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for b in batches:
        shape = b["input_ids"].shape
        out.append({"input_ids": rng.integers(1000, 30000, shape, dtype=np.int32),
                    "input_mask": np.ones(shape, np.int32),
                    "segment_ids": np.zeros(shape, np.int32)})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,base")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40, help="MRPC batches per pass")
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="time rounds until at least this long")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per stack")
    parser.add_argument("--peers", default="torch,onnxruntime")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from bertc.runtime import machine
    print(machine.header(), flush=True)
    b, s = args.batch_size, args.seq_len
    print(f"load average before: {os.getloadavg()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models.split(","):
            ckpt_dir = throughput.checkpoint_for(name, workdir)
            ckpt = checkpoint.load_checkpoint(ckpt_dir, checksums=False)
            batches = mrpc_batches(ckpt.vocab_file, b, s)[:args.batches]
            full = full_length(batches[:max(4, args.batches // 4)])
            real = np.mean([x["input_mask"].mean() for x in batches])

            print(f"{name}: {len(batches)} MRPC batches of [{b}, {s}], {100 * real:.0f}% real "
                  f"tokens", flush=True)
            base = list(rewriting.EXACT_FUSIONS)
            runs, closers = {}, []
            for label, passes in (("cpu default", base), ("cpu default + remove_padding",
                                                         base + ["remove_padding"])):
                out = os.path.join(workdir, f"art_{name}_{len(closers)}")
                builder.build(builder.BuildOptions(
                    output=out, ckpt=ckpt_dir, head="sequence", batch_size=b, seq_lens=[s],
                    rewrites=passes, default_rewrites=False, verify=False))
                runner = runners.saved_model_runner(os.path.join(out, f"seq_{s}/1"),
                                                    throughput.SERVED_ALL_CORES)
                closers.append(runner)
                runs[(f"bertc [{label}]", "mrpc")] = (runner, batches)
                runs[(f"bertc [{label}]", "full-length")] = (runner, full)
            if args.peers:
                model = throughput.torch_model(ckpt)
                dynamic = [trimmed(x) for x in batches]
                if "onnxruntime" in args.peers:
                    run, _ = throughput.onnxruntime_runner(model, ckpt.config, batches[0],
                                                           workdir)
                    runs[("ONNX Runtime + transformer optimizer", "mrpc")] = (run, batches)
                    runs[("ONNX Runtime + transformer optimizer", "mrpc dynamic")] = (run,
                                                                                      dynamic)
                if "torch" in args.peers:
                    run = throughput.torch_runner(model)
                    runs[("PyTorch BertModel", "mrpc")] = (run, batches)
                    runs[("PyTorch BertModel", "mrpc dynamic")] = (run, dynamic)
            for (stack, traffic), value in throughput.interleaved_rates(runs, args.rounds,
                                                             args.seconds).items():
                rows.append({"model": name, "stack": stack, "traffic": traffic,
                             "inferences_per_s": value})
                print(f"{name:<7} {traffic:<12} {stack:<44} {value:8.2f} inf/s", flush=True)
            for runner in closers:
                runner.close()
    print(f"load average after: {os.getloadavg()}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "cpu_default": list(rewriting.CPU_DEFAULT)}, f, indent=2)


if __name__ == "__main__":
    main()
