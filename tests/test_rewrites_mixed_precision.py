"""mixed_precision: what goes half precision and what stays float32, on tiny
graphs; its bounds on the real all-MiniLM-L6-v2 over the MRPC dev pairs.

The MiniLM tests run the 408 dev pairs (both sentences as one pair, sequence
128, batch 16) through the float32 graph and the rewritten one, twice: the
`embedding` head (cosine of every pair's sentence embedding) and a `classifier`
head built here (random `output_weights` [2, 384] on MiniLM's pooler; argmax
agreement).  bfloat16 covers every pair; float16, which runs at float32 speed on
this CPU (Eigen, no fused kernels), the first 32.
"""

import numpy as np
import pytest
import tensorflow as tf

import rewrites
from rewrites import mixed_precision

import bertc_testing as bt
from bertc.model import freeze
from bertc.model import modeling
from bertc import passes as rewriting

LAYERS = 2
HALF = ("float16", "bfloat16")
#: MatMul + BatchMatMul per layer without fused_attention: Q, K, V, scores,
#: context, output projection, intermediate, output; plus pooler and classifier.
SITES = 8 * LAYERS + 2
#: Casts: per layer the layer input to half, the scores to float32 for the
#: mask add, the probabilities back, the two residual sums to float32 for their
#: LayerNorms and the first LayerNorm's output back (the second one's output is
#: the next layer's input); the pooler input, the logits out.
CASTS = 6 * LAYERS + 2
#: Aggressive (LayerNorm half): the embedding output in, scores out and back, logits out.
AGGRESSIVE_CASTS = 2 * LAYERS + 2
MINILM_BATCH, MINILM_SEQ = 16, 128
MRPC_PAIRS = 408
FLOAT16_PAIRS = 32


def _apply(graph_def, protected, dtype="bfloat16", aggressive=False, names=("mixed_precision",)):
    result = rewrites.run(graph_def, list(names), protected_nodes=protected,
                          options={"dtype": dtype, "aggressive": aggressive})
    return result.graph_def, result.reports[-1]


def _dtype(node):
    for key in ("T", "Tparams", "dtype", "DstT"):
        if key in node.attr:
            return tf.as_dtype(node.attr[key].type).name
    return None


def _by_op(graph_def, op):
    return [n for n in graph_def.node if n.op == op]


def _tiny(head="classifier"):
    frozen = bt.tiny_frozen(head, layers=LAYERS)
    return frozen, bt.protected(frozen), bt.random_bert_feeds(frozen.batch_size, frozen.seq_len)


def _nodes(graph_def):
    return sorted(n.SerializeToString(deterministic=True) for n in graph_def.node)


# ----------------------------------------------------------------- structure
@pytest.mark.parametrize("dtype", HALF)
def test_matmuls_and_the_work_between_them_go_half_the_rest_stays_float32(dtype):
    frozen, protected, feeds = _tiny()
    out, report = _apply(frozen.graph_def, protected, dtype)
    assert report.sites == SITES
    assert report.details["casts"] == CASTS and report.details["kept_float32"] == 0
    nodes = {n.name: n for n in out.node}
    one_hot = {n.name for n in out.node if n.op == "MatMul" and nodes[n.input[0]].op == "OneHot"}
    assert len(one_hot) == 1  # the token-type lookup belongs to the embeddings
    for node in out.node:
        if node.op in ("MatMul", "BatchMatMulV2") and node.name not in one_hot:
            assert _dtype(node) == dtype, node.name
            # Weights converted offline: the kernel is a half-precision Const.
            for text in node.input:
                if nodes[text].op == "Const":
                    assert _dtype(nodes[text]) == dtype
        if node.op in ("BiasAdd", "Erf", "Tanh", "Transpose"):
            assert _dtype(node) == dtype, node.name
        if node.op in ("Mean", "SquaredDifference", "Rsqrt", "Softmax", "GatherV2", "OneHot"):
            assert _dtype(node) == "float32", node.name
    for softmax in _by_op(out, "Softmax"):  # the mask-bias add feeding it too
        assert _dtype(nodes[softmax.input[0]]) == "float32"
    for name in frozen.outputs.values():
        assert _dtype(nodes[name]) == "float32"
    assert _dtype(nodes[next(iter(one_hot))]) == "float32"
    for cast in _by_op(out, "Cast"):  # only at boundaries: never of a Const, never chained
        source = nodes[cast.input[0]]
        assert source.op not in ("Const", "Cast") or source.op == "Cast" and \
            source.input[0] in frozen.inputs.values(), cast.name
    values = bt.run(frozen, out, feeds)
    reference = bt.run(frozen, frozen.graph_def, feeds)
    for key, value in values.items():
        assert value.dtype == np.float32
        assert np.abs(value - reference[key]).max() <= 0.02, key


@pytest.mark.parametrize("dtype", HALF)
def test_aggressive_runs_the_encoder_layernorms_half_as_aws_does(dtype):
    frozen, protected, feeds = _tiny()
    out, report = _apply(frozen.graph_def, protected, dtype, aggressive=True)
    assert report.sites == SITES and report.details["layer_norms"] == 2 * LAYERS
    assert report.details["casts"] == AGGRESSIVE_CASTS
    rsqrt = [_dtype(n) for n in _by_op(out, "Rsqrt")]
    assert sorted(rsqrt) == sorted(["float32"] + [dtype] * 2 * LAYERS)  # embedding LN: float32
    if dtype == "float16":  # eps 1e-12 underflows in float16: it stays positive
        nodes = {n.name: n for n in out.node}
        eps = [tf.make_ndarray(nodes[i].attr["value"].tensor) for n in _by_op(out, "AddV2")
               for i in n.input if nodes[i].op == "Const" and _dtype(nodes[i]) == "float16"
               and tf.make_ndarray(nodes[i].attr["value"].tensor).size == 1
               and tf.make_ndarray(nodes[i].attr["value"].tensor) < 1e-6]
        assert len(eps) == 2 * LAYERS and all(e > 0 for e in eps)
    values = bt.run(frozen, out, feeds)
    reference = bt.run(frozen, frozen.graph_def, feeds)
    assert np.abs(values["probabilities"] - reference["probabilities"]).max() <= 0.02


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("aggressive", [False, True])
def test_fused_layernorm_stays_float32_unless_aggressive_and_it_runs_here(dtype, aggressive):
    frozen, protected, feeds = _tiny()
    out, report = _apply(frozen.graph_def, protected, dtype, aggressive,
                         names=rewriting.CPU_DEFAULT + ("mixed_precision",))
    # one QKV MatMul per layer; cls_only_tail (CPU default) splits the last one into Q, K/V
    assert report.sites == 6 * LAYERS + 2 + ("cls_only_tail" in rewriting.CPU_DEFAULT)
    fused = sorted(_dtype(n) for n in _by_op(out, "_MklLayerNorm"))
    if not fused:
        pytest.skip("this TensorFlow has no _MklLayerNorm")
    # oneDNN's float16 LayerNorm needs a CPU with AVX512-FP16: probed, else float32.
    runs = aggressive and mixed_precision.fused_layer_norm_runs(dtype)
    assert fused == sorted(["float32"] + [dtype if runs else "float32"] * 2 * LAYERS)
    assert report.details["kept_float32"] == (2 * LAYERS if aggressive and not runs else 0)
    values = bt.run(frozen, out, feeds)
    reference = bt.run(frozen, frozen.graph_def, feeds)
    assert np.abs(values["probabilities"] - reference["probabilities"]).max() <= 0.02


@pytest.mark.parametrize("dtype", HALF)
def test_second_run_changes_nothing(dtype):
    frozen, protected, _ = _tiny()
    once, _ = _apply(frozen.graph_def, protected, dtype)
    twice, report = _apply(once, protected, dtype)
    assert report.sites == 0 and _nodes(twice) == _nodes(once)


def test_same_sites_under_other_names():
    config = bt.tiny_bert_config(LAYERS)
    scoped = bt.scoped_frozen(config, bt.random_bert_weights(config), "classifier", 2, 8)
    assert not any(n.name.startswith("weights/") for n in scoped.graph_def.node)
    out, report = _apply(bt.identity_wrapped(scoped.graph_def), bt.protected(scoped))
    assert report.sites == SITES and report.details["casts"] == CASTS
    # Weights behind Identity nodes are converted too, not Cast.
    nodes = {n.name: n for n in out.node}
    assert not [c for c in _by_op(out, "Cast") if nodes[c.input[0]].op in ("Const", "Identity")
                and c.input[0] not in scoped.outputs.values()]


def test_a_dense_stack_on_a_float_input_converts_its_matmuls():
    rng = np.random.default_rng(3)
    k1, k2 = (rng.standard_normal((16, 16)).astype(np.float32) for _ in range(2))

    def fn(x):
        hidden = modeling.gelu(modeling.dense(x, k1, np.zeros(16, np.float32)))
        return tf.identity(tf.matmul(hidden, k2), name="out")

    gd = bt.trace(fn, tf.TensorSpec([4, 16], tf.float32, name="x"))
    out, report = _apply(gd, ["x", "out"], "float16")
    assert report.sites == 2 and report.details["casts"] == 2  # x in, result out
    x = rng.standard_normal((4, 16)).astype(np.float32)
    got, want = bt.session_run(out, {"x": x}), bt.session_run(gd, {"x": x})
    assert got.dtype == np.float32 and np.abs(got - want).max() <= 0.05 * np.abs(want).max()


def test_near_misses_change_nothing(caplog):
    """Embeddings alone (their one-hot MatMul is a lookup), float64 matmuls,
    a one-hot of an int input times a table: nothing to convert."""
    config = bt.tiny_bert_config(1)
    weights = {k: tf.constant(v) for k, v in bt.random_bert_weights(config).items()}

    def embeddings_only(ids, segments):
        return tf.identity(modeling.embeddings(weights, config, ids, segments), name="out")

    def float64_dense(x):
        return tf.identity(tf.matmul(x, tf.ones([8, 8], tf.float64)), name="out")

    def one_hot_lookup(ids):
        return tf.identity(tf.matmul(tf.one_hot(ids, 8), tf.ones([8, 4])), name="out")

    ints = [tf.TensorSpec([2, 8], tf.int32, name=n) for n in ("ids", "segments")]
    graphs = [(bt.trace(embeddings_only, *ints), ["ids", "segments", "out"]),
              (bt.trace(float64_dense, tf.TensorSpec([2, 8], tf.float64, name="x")), ["x", "out"]),
              (bt.trace(one_hot_lookup, tf.TensorSpec([2], tf.int32, name="ids")), ["ids", "out"])]
    for gd, protected in graphs:
        out, report = _apply(gd, protected)
        assert report.sites == 0 and report.warning and _nodes(out) == _nodes(gd)


def test_an_op_without_a_half_kernel_stays_float32(monkeypatch):
    real = mixed_precision.has_cpu_kernel
    monkeypatch.setattr(mixed_precision, "has_cpu_kernel",
                        lambda node, dtype: node.op != "Erf" and real(node, dtype))
    frozen, protected, feeds = _tiny()
    out, report = _apply(frozen.graph_def, protected, "float16")
    assert report.sites == SITES and report.details["kept_float32"] == LAYERS
    assert all(_dtype(n) == "float32" for n in _by_op(out, "Erf"))
    reference = bt.run(frozen, frozen.graph_def, feeds)
    values = bt.run(frozen, out, feeds)
    assert np.abs(values["probabilities"] - reference["probabilities"]).max() <= 0.02


def test_dtype_option_is_checked():
    frozen, protected, _ = _tiny()
    with pytest.raises(ValueError, match="expected one of float16, bfloat16"):
        _apply(frozen.graph_def, protected, "float32")


def test_bertc_asks_for_it_by_dtype_and_verifies_it_approximately():
    assert rewriting.resolve(dtype="bfloat16")[-2:] == ["mixed_precision", "public_layernorm"]
    assert rewriting.resolve(["remove_padding"], dtype="float16")[-3:] == [
        "remove_padding", "mixed_precision", "public_layernorm"]
    assert rewriting.resolve(dtype="float16", target="neuron") == [
        "mixed_precision", "cpu_embeddings"]
    assert not rewriting.is_exact(["mixed_precision"])
    assert rewriting.thresholds(["mixed_precision"], {"max_abs": 1e-4, "min_cos": 0.99999,
                                                      "argmax": 1.0}) == {
        "max_abs": None, "min_cos": 0.999, "argmax": 0.995}
    with pytest.raises(Exception, match="`dtype` float16 or bfloat16"):
        rewriting.resolve(["mixed_precision"], dtype="float32")


# -------------------------------------------------------- MiniLM, MRPC dev
@pytest.fixture(scope="module")
def mrpc_features():
    from bertc.text.tokenization import WordPieceTokenizer
    _, _, vocab = bt.minilm()
    pairs = bt.mrpc_pairs(MRPC_PAIRS)
    assert len(pairs) == MRPC_PAIRS
    tokenizer = WordPieceTokenizer.from_vocab_file(vocab, do_lower_case=True)
    return tokenizer.encode_batch(pairs, MINILM_SEQ)


@pytest.fixture(scope="module")
def minilm_heads():
    """{'embedding': FrozenGraph, 'classifier': FrozenGraph}: MiniLM's mean-pooled
    embedding, and a random 2-label classifier on its pooler."""
    config, weights, _ = bt.minilm()
    rng = np.random.default_rng(0)
    with_head = dict(weights)
    with_head["output_weights"] = (0.02 * rng.standard_normal((2, config.hidden_size))
                                   ).astype(np.float32)
    with_head["output_bias"] = np.zeros(2, np.float32)
    classifier = modeling.BertModel(config, with_head)
    return {"embedding": bt.minilm_frozen("embedding", MINILM_BATCH, MINILM_SEQ),
            "classifier": freeze.freeze_model(classifier, "classifier", MINILM_BATCH,
                                              MINILM_SEQ)}


def _run_rows(frozen, graph_def, features, rows, output):
    """`output` of `graph_def` for the first `rows` feature rows, batch by batch
    (the last batch filled with all-zero rows), in one Session."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.constant_folding = 2  # RewriterConfig.OFF
    values = []
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        for start in range(0, rows, MINILM_BATCH):
            feeds = {}
            for name, node in frozen.inputs.items():
                chunk = features[name][start:min(start + MINILM_BATCH, rows)]
                filler = np.zeros((MINILM_BATCH - len(chunk), MINILM_SEQ), np.int32)
                feeds[f"{node}:0"] = np.concatenate([chunk, filler])
            values.append(session.run(f"{frozen.outputs[output]}:0", feeds))
    return np.concatenate(values)[:rows]


@pytest.fixture(scope="module")
def minilm_float32(minilm_heads, mrpc_features):
    return {head: _run_rows(frozen, frozen.graph_def, mrpc_features, MRPC_PAIRS,
                            "embedding" if head == "embedding" else "logits")
            for head, frozen in minilm_heads.items()}


# Measured (this CPU, TF 2.21), all 408 pairs: embedding cosine min 0.999999
# (float16) / 0.99995 (bfloat16); argmax 408/408 (float16) / 407/408 (bfloat16).
# Aggressive: 0.999997 / 0.99987, 408/408 / 406/408.
@pytest.mark.parametrize("dtype,rows", [("bfloat16", MRPC_PAIRS), ("float16", FLOAT16_PAIRS)])
def test_minilm_mrpc_embeddings_and_classifier_within_bounds(minilm_heads, minilm_float32,
                                                             mrpc_features, dtype, rows):
    embedding, classifier = minilm_heads["embedding"], minilm_heads["classifier"]
    lengths = mrpc_features["input_mask"][:rows].sum(1)
    assert lengths.max() < MINILM_SEQ  # no pair truncated
    out, report = _apply(embedding.graph_def, bt.protected(embedding), dtype)
    assert report.sites == 8 * 6  # no pooler on the embedding head
    vectors = _run_rows(embedding, out, mrpc_features, rows, "embedding")
    assert vectors.dtype == np.float32
    cosine = bt.cosine_rows(vectors, minilm_float32["embedding"][:rows])
    assert cosine.min() >= 0.999, (cosine.min(), int(np.argmin(cosine)))
    out, report = _apply(classifier.graph_def, bt.protected(classifier), dtype)
    assert report.sites == 8 * 6 + 2
    logits = _run_rows(classifier, out, mrpc_features, rows, "logits")
    assert logits.dtype == np.float32
    reference = minilm_float32["classifier"][:rows]
    assert 0.05 < (reference.argmax(1) == 1).mean() < 0.95  # both labels occur
    agreement = (logits.argmax(1) == reference.argmax(1)).mean()
    assert agreement >= 0.995, agreement
