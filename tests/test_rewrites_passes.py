"""Each pass on tiny graphs: it matches every site, refuses near-misses, keeps
its numeric bound, and a second run changes nothing."""

import logging
import math

import numpy as np
import pytest
import tensorflow as tf

import rewrites

import bertc_testing as bt
from bertc.model import modeling
from bertc.runtime import runner

LAYERS = 2
EXPECTED_SITES = {"fused_attention": LAYERS, "fused_layernorm": 2 * LAYERS + 1,
                  "crude_gelu": LAYERS, "tanh_gelu": LAYERS}
EXACT = 1e-5


def _apply(graph_def, name, protected=(), strict=False):
    result = rewrites.run(graph_def, [name], protected_nodes=protected, strict=strict)
    return result.graph_def, result.reports[0]


def _nodes(graph_def):
    return sorted(n.SerializeToString(deterministic=True) for n in graph_def.node)


def _rerun_changes_nothing(graph_def, name, protected=()):
    again, report = _apply(graph_def, name, protected)
    assert report.sites == 0, f"{name} found {report.sites} more site(s) on its own output"
    assert _nodes(again) == _nodes(graph_def)


def _tiny():
    frozen = bt.tiny_frozen("sequence", layers=LAYERS)
    return frozen, bt.protected(frozen), bt.random_bert_feeds(frozen.batch_size, frozen.seq_len)


# ------------------------------------------------------------------ strip_unused
def test_strip_unused_bypasses_weight_identities_and_keeps_outputs_bit_identical():
    frozen, protected, feeds = _tiny()
    wrapped = bt.identity_wrapped(frozen.graph_def)
    out, report = _apply(wrapped, "strip_unused", protected)
    identities = sum(n.op == "Identity" for n in wrapped.node) - sum(
        n.op == "Identity" for n in out.node)
    assert report.details["identities_bypassed"] >= identities > 0
    consts = {n.name for n in out.node if n.op == "Const"}
    assert not [n for n in out.node if n.op == "Identity" and n.input[0] in consts]
    assert report.details["nodes_removed"] >= identities  # and the unused pooler weights
    np.testing.assert_array_equal(bt.run(frozen, out, feeds)["sequence_output"],
                                  bt.run(frozen, frozen.graph_def, feeds)["sequence_output"])
    again, report = _apply(out, "strip_unused", protected)
    assert report.sites == 0


def test_strip_unused_drops_control_edges_that_order_nothing_and_keeps_stateful_ones():
    def fn(x):
        with tf.control_dependencies([tf.constant(1.0)]):
            y = tf.identity(x * 2.0)
        check = tf.debugging.Assert(tf.reduce_all(x > -100.0), [x])
        with tf.control_dependencies([check]):
            z = tf.identity(y + 1.0, name="out")
        return z

    gd = bt.trace(fn, tf.TensorSpec([3], tf.float32, name="x"))
    out, report = _apply(gd, "strip_unused", ["x", "out"])
    assert report.details["control_edges_dropped"] >= 1
    kept = [t for n in out.node for t in n.input if t.startswith("^")]
    assert kept == ["^Assert/AssertGuard/Identity"]  # waits on the (stateful) assertion
    assert "If" in bt.ops(out)
    np.testing.assert_array_equal(bt.session_run(out, {"x": np.ones(3, np.float32)}), [3, 3, 3])
    _rerun_changes_nothing(out, "strip_unused", ["x", "out"])


# ---------------------------------------------------------------- fold_constants
def test_fold_constants_folds_the_position_slice_bit_identically():
    frozen, protected, feeds = _tiny()
    out, report = _apply(frozen.graph_def, "fold_constants", protected)
    assert report.sites == 1 and "Slice" not in bt.ops(out)
    np.testing.assert_array_equal(bt.run(frozen, out, feeds)["sequence_output"],
                                  bt.run(frozen, frozen.graph_def, feeds)["sequence_output"])
    _rerun_changes_nothing(out, "fold_constants", protected)


def test_fold_constants_never_folds_what_a_placeholder_feeds():
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)

    def fn(x):
        w = tf.transpose(tf.reshape(tf.constant(weight), [3, 2]))        # foldable
        scale = tf.sqrt(tf.constant(4.0)) * tf.cast(tf.constant(3), tf.float32)  # foldable
        shaped = tf.reshape(x, [2, 3])                                   # fed by x
        return tf.identity(shaped * scale + tf.reshape(w, [2, 3]), name="out")

    gd = bt.trace(fn, tf.TensorSpec([6], tf.float32, name="x"))
    out, report = _apply(gd, "fold_constants", ["x", "out"])
    assert report.sites == 2
    assert {"Sqrt", "Cast", "Transpose"}.isdisjoint(bt.ops(out))
    assert "Reshape" in bt.ops(out)  # the Placeholder's reshape stays
    feeds = {"x": np.linspace(-1, 1, 6).astype(np.float32)}
    np.testing.assert_array_equal(bt.session_run(out, feeds), bt.session_run(gd, feeds))
    _rerun_changes_nothing(out, "fold_constants", ["x", "out"])


# ------------------------------------------------------------------------- GELU
def _gelu_forms(x):
    erf = tf.math.erf
    forms = [
        x * (0.5 * (1.0 + erf(x / math.sqrt(2.0)))),           # bertc / Google
        x * 0.5 * (1.0 + erf(x * 0.70710678)),                  # product form
        0.5 * x * (1.0 + erf(x / math.sqrt(2.0))),              # Hugging Face
        tf.nn.gelu(x, approximate=False),                       # TF 2.21: 0.5x * erfc(-x/sqrt2)
    ]
    return forms


@pytest.mark.parametrize("name,bound", [("crude_gelu", 0.0204), ("tanh_gelu", 4.8e-4)])
def test_gelu_pass_matches_every_exact_form_within_its_documented_bound(name, bound):
    def fn(x):
        return tf.identity(tf.stack(_gelu_forms(x)), name="out")

    gd = bt.trace(fn, tf.TensorSpec([4001], tf.float32, name="x"))
    out, report = _apply(gd, name, ["x", "out"])
    assert report.sites == 4
    assert not {"Erf", "Erfc"} & set(bt.ops(out))
    grid = np.linspace(-8, 8, 4001).astype(np.float32)
    approx = bt.session_run(out, {"x": grid})
    exact = bt.gelu_exact_numpy(grid.astype(np.float64))
    error = np.abs(approx - exact).max()
    assert error <= bound
    assert error >= 0.8 * bound  # the bound is tight: it is the measured worst case
    _rerun_changes_nothing(out, name, ["x", "out"])


@pytest.mark.parametrize("name", ["crude_gelu", "tanh_gelu"])
def test_gelu_pass_finds_one_site_per_layer_and_refuses_near_misses(name, monkeypatch):
    frozen, protected, feeds = _tiny()
    out, report = _apply(frozen.graph_def, name, protected)
    assert report.sites == LAYERS and "Erf" not in bt.ops(out)
    _rerun_changes_nothing(out, name, protected)

    def near_misses(x):
        y = x + 1.0
        erf = tf.math.erf
        wrong_half = x * (0.6 * (1.0 + erf(x / math.sqrt(2.0))))
        wrong_root = x * (0.5 * (1.0 + erf(x / 2.0)))
        two_inputs = x * (0.5 * (1.0 + erf(y / math.sqrt(2.0))))
        leaked = erf(x / math.sqrt(2.0))
        uses_leak = x * (0.5 * (1.0 + leaked))
        return tf.identity(tf.stack([wrong_half, wrong_root, two_inputs, uses_leak, leaked]),
                           name="out")

    gd = bt.trace(near_misses, tf.TensorSpec([5], tf.float32, name="x"))
    _, report = _apply(gd, name, ["x", "out"])
    assert report.sites == 0


# -------------------------------------------------------------------- LayerNorm
def _layer_norm_numpy(x, gamma, beta, eps=1e-12):
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def test_fused_layernorm_fuses_every_layernorm_of_the_model():
    frozen, protected, feeds = _tiny()
    out, report = _apply(frozen.graph_def, "fused_layernorm", protected)
    assert report.sites == EXPECTED_SITES["fused_layernorm"]
    assert bt.ops(out).count("_MklLayerNorm") == report.sites
    assert not {"Rsqrt", "SquaredDifference", "Mean"} & set(bt.ops(out))
    got = bt.run(frozen, out, feeds)["sequence_output"]
    want = bt.run(frozen, frozen.graph_def, feeds)["sequence_output"]
    assert np.abs(got - want).max() <= EXACT
    _rerun_changes_nothing(out, "fused_layernorm", protected)


@pytest.mark.parametrize("shape", [(6, 16), (2, 3, 16), (2, 3, 1, 16)])
def test_fused_layernorm_keeps_epsilon_1e_12_and_any_rank(shape):
    rng = np.random.default_rng(0)
    gamma = (1 + 0.1 * rng.standard_normal(16)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(16)).astype(np.float32)

    def fn(x):
        return tf.identity(modeling.layer_norm(x, gamma, beta), name="out")

    gd = bt.trace(fn, tf.TensorSpec(shape, tf.float32, name="x"))
    out, report = _apply(gd, "fused_layernorm", ["x", "out"])
    assert report.sites == 1
    x = (rng.standard_normal(shape) + 3.0).astype(np.float32)
    x.reshape(-1, 16)[0] = 1e-6 * rng.standard_normal(16)  # variance 1e-12: eps decides
    got = bt.session_run(out, {"x": x})
    want = _layer_norm_numpy(x, gamma, beta)
    assert np.abs(got - want).max() <= EXACT  # a clamped eps (1e-5, 1e-3) is off by ~1


def _moments_form(x, gamma, beta):
    mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
    return tf.nn.batch_normalization(x, mean, var, offset=beta, scale=gamma,
                                     variance_epsilon=1e-12)


def test_fused_layernorm_matches_google_and_keras_forms():
    rng = np.random.default_rng(1)
    gamma = (1 + 0.1 * rng.standard_normal(16)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(16)).astype(np.float32)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    spec = tf.TensorSpec([5, 16], tf.float32, name="x")
    google = bt.trace(lambda t: tf.identity(_moments_form(t, tf.constant(gamma),
                                                          tf.constant(beta)), name="out"), spec)
    import keras
    layer = keras.layers.LayerNormalization(epsilon=1e-12)
    layer.build((None, 16))
    layer.set_weights([gamma, beta])
    from tensorflow.python.framework import convert_to_constants
    keras_fn = tf.function(lambda t: tf.identity(layer(t), name="out"), input_signature=[spec])
    keras_gd = convert_to_constants.convert_variables_to_constants_v2(
        keras_fn.get_concrete_function()).graph.as_graph_def()
    for gd in (google, keras_gd):
        result = rewrites.run(gd, ["strip_unused", "fold_constants", "fused_layernorm"],
                              protected_nodes=["x", "out"])
        assert result.reports[-1].sites == 1
        assert np.abs(bt.session_run(result.graph_def, {"x": x}) -
                      _layer_norm_numpy(x, gamma, beta)).max() <= EXACT


def test_fused_layernorm_refuses_other_axes_and_non_constant_parameters():
    gamma = np.ones(16, np.float32)
    beta = np.zeros(16, np.float32)

    def fn(x, g):
        over_rows = (x - tf.reduce_mean(x, 0, keepdims=True)) * tf.math.rsqrt(
            tf.reduce_mean(tf.math.squared_difference(x, tf.reduce_mean(x, 0, keepdims=True)),
                           0, keepdims=True) + 1e-12) * gamma + beta
        runtime_gamma = modeling.layer_norm(x, g, beta)
        return tf.identity(over_rows + runtime_gamma, name="out")

    gd = bt.trace(fn, tf.TensorSpec([6, 16], tf.float32, name="x"),
                  tf.TensorSpec([16], tf.float32, name="g"))
    _, report = _apply(gd, "fused_layernorm", ["x", "g", "out"])
    assert report.sites == 0


def test_fused_layernorm_logs_why_it_gives_up(caplog):
    def fn(x):
        return tf.identity(modeling.layer_norm(x, np.ones(16, np.float32),
                                               np.zeros(16, np.float32), epsilon=0.1), name="out")

    gd = bt.trace(fn, tf.TensorSpec([6, 16], tf.float32, name="x"))
    with caplog.at_level(logging.DEBUG, logger="rewrites.fused_layernorm"):
        _, report = _apply(gd, "fused_layernorm", ["x", "out"])
    assert report.sites == 0
    assert "not fused: epsilon is not a scalar in [0, 0.01]" in caplog.text


# -------------------------------------------------------------------- attention
@pytest.mark.parametrize("hidden,heads", [(32, 4), (48, 2)])  # head size 8, and 24
def test_fused_attention_one_projection_per_layer_scale_folded(hidden, heads):
    frozen = bt.tiny_frozen("sequence", layers=LAYERS, hidden=hidden, heads=heads)
    protected = bt.protected(frozen)
    feeds = bt.random_bert_feeds(frozen.batch_size, frozen.seq_len)
    out, report = _apply(frozen.graph_def, "fused_attention", protected)
    assert report.sites == LAYERS
    ops = bt.ops(out)
    assert ops.count("Split") == LAYERS
    assert ops.count("MatMul") == bt.ops(frozen.graph_def).count("MatMul") - 2 * LAYERS
    nodes = {n.name: n for n in out.node}
    for node in out.node:  # nothing multiplies the scores any more
        if node.op == "Mul":
            assert not any(nodes[t.split(":")[0]].op == "BatchMatMulV2" for t in node.input)
    got = bt.run(frozen, out, feeds)["sequence_output"]
    want = bt.run(frozen, frozen.graph_def, feeds)["sequence_output"]
    assert np.abs(got - want).max() <= EXACT
    _rerun_changes_nothing(out, "fused_attention", protected)


def _attention_graph(same_input=True, scale_scores=True, leak_scores=False):
    """One BERT attention block in raw TF (not bertc): B 2, S 4, N 2, H 4."""
    rng = np.random.default_rng(2)
    w = {k: rng.standard_normal((8, 8)).astype(np.float32) for k in "qkv"}
    b = {k: rng.standard_normal(8).astype(np.float32) for k in "qkv"}

    def heads(t):
        return tf.transpose(tf.reshape(t, [2, 4, 2, 4]), [0, 2, 1, 3])

    def fn(x, y, mask):
        q = heads(tf.nn.bias_add(tf.matmul(x, w["q"]), b["q"]))
        k = heads(tf.nn.bias_add(tf.matmul(x if same_input else y, w["k"]), b["k"]))
        v = heads(tf.nn.bias_add(tf.matmul(x, w["v"]), b["v"]))
        scores = tf.matmul(q, k, transpose_b=True)
        bias = (1.0 - tf.cast(tf.reshape(mask, [2, 1, 1, 4]), tf.float32)) * -10000.0
        if scale_scores:
            probs = tf.nn.softmax(scores * 0.5 + bias)
        else:
            probs = tf.nn.softmax(scores + bias) * 0.5
        context = tf.matmul(probs, v)
        extra = tf.reduce_sum(scores) if leak_scores else 0.0
        return tf.identity(tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [8, 8]) + extra,
                           name="out")

    return bt.trace(fn, tf.TensorSpec([8, 8], tf.float32, name="x"),
                    tf.TensorSpec([8, 8], tf.float32, name="y"),
                    tf.TensorSpec([2, 4], tf.int32, name="mask"))


def test_fused_attention_on_a_graph_bertc_did_not_build_and_its_near_misses():
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((8, 8)).astype(np.float32),
             "y": rng.standard_normal((8, 8)).astype(np.float32),
             "mask": np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.int32)}
    protected = ["x", "y", "mask", "out"]
    gd = _attention_graph()
    out, report = _apply(gd, "fused_attention", protected)
    assert report.sites == 1
    assert np.abs(bt.session_run(out, feeds) - bt.session_run(gd, feeds)).max() <= EXACT
    for near_miss in (_attention_graph(same_input=False),     # K reads another tensor
                      _attention_graph(scale_scores=False),   # the 0.5 scales probabilities
                      _attention_graph(leak_scores=True)):    # raw scores read elsewhere
        _, report = _apply(near_miss, "fused_attention", protected)
        assert report.sites == 0


def test_served_grappler_merges_a_per_layer_mask_bias():
    """fused_attention leaves a per-layer mask bias as it is: the served run's
    common-subexpression elimination computes it once."""
    frozen, protected, feeds = _tiny()
    duplicated = bt.duplicate_mask_bias(frozen.graph_def)
    assert bt.ops(duplicated).count("Cast") == LAYERS
    out, report = _apply(duplicated, "fused_attention", protected)
    assert report.sites == LAYERS and bt.ops(out).count("Cast") == LAYERS
    assert bt.served_partition_ops(frozen, out, feeds).count("Cast") == 1
    no_cse = tf.compat.v1.ConfigProto()
    no_cse.graph_options.rewrite_options.disable_meta_optimizer = True
    no_cse.graph_options.optimizer_options.opt_level = tf.compat.v1.OptimizerOptions.L0
    assert bt.served_partition_ops(frozen, out, feeds, runner.RunConfig(
        proto=no_cse)).count("Cast") == LAYERS  # without CSE the copies run
    want = bt.run(frozen, frozen.graph_def, feeds)["sequence_output"]
    assert np.abs(bt.run(frozen, out, feeds)["sequence_output"] - want).max() <= EXACT


# --------------------------------------------------- graphs bertc's names do not help
@pytest.fixture(scope="module")
def hub_like_graph():
    """The tiny BERT traced under tf.name_scope('tf_hub_bert/encoder') with GELU
    written as tf.nn.gelu(approximate=False), weights behind Identity nodes."""
    config = bt.tiny_bert_config(LAYERS)
    weights = bt.random_bert_weights(config)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modeling, "gelu", lambda x: tf.nn.gelu(x, approximate=False))
        frozen = bt.scoped_frozen(config, weights, "sequence", 2, 8)
    assert not any(n.name.startswith(("bert/", "weights/")) for n in frozen.graph_def.node)
    return bt.with_graph(frozen, bt.identity_wrapped(frozen.graph_def))


@pytest.mark.parametrize("name", ["strip_unused", "fold_constants", "fused_attention",
                                  "fused_layernorm", "crude_gelu", "tanh_gelu"])
def test_every_pass_finds_every_site_under_other_names(hub_like_graph, name):
    frozen = hub_like_graph
    assert "Erfc" in bt.ops(frozen.graph_def)
    _, report = _apply(frozen.graph_def, name, bt.protected(frozen))
    if name in EXPECTED_SITES:
        assert report.sites == EXPECTED_SITES[name]
    else:
        assert report.sites >= 1


def test_exact_pipeline_on_the_renamed_graph(hub_like_graph):
    frozen = hub_like_graph
    feeds = bt.random_bert_feeds(2, 8)
    result = rewrites.run(frozen.graph_def, ["strip_unused", "fold_constants", "fused_attention",
                                             "fused_layernorm"],
                          protected_nodes=bt.protected(frozen), strict=True)
    assert [r.sites for r in result.reports][2:] == [LAYERS, 2 * LAYERS + 1]
    got = bt.run(frozen, result.graph_def, feeds)["sequence_output"]
    want = bt.run(frozen, frozen.graph_def, feeds)["sequence_output"]
    assert np.abs(got - want).max() <= EXACT


def _ops_that_ran(graph_def, feeds):
    """Op types (with fused_ops) of the graph Grappler actually ran."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    metadata = tf.compat.v1.RunMetadata()
    with tf.compat.v1.Session(graph=graph) as session:
        session.run("out:0", {f"{k}:0": v for k, v in feeds.items()},
                    options=tf.compat.v1.RunOptions(output_partition_graphs=True),
                    run_metadata=metadata)
    return [n.op + "".join(f"[{s.decode()}]" for s in n.attr["fused_ops"].list.s)
            for g in metadata.partition_graphs for n in g.node]


def test_tanh_gelu_keeps_the_form_grappler_fuses_into_the_matmul():
    rng = np.random.default_rng(4)
    kernel = rng.standard_normal((16, 32)).astype(np.float32)
    bias = rng.standard_normal(32).astype(np.float32)

    def fn(x):
        return tf.identity(modeling.gelu(modeling.dense(x, kernel, bias)), name="out")

    gd = bt.trace(fn, tf.TensorSpec([8, 16], tf.float32, name="x"))
    feeds = {"x": rng.standard_normal((8, 16)).astype(np.float32)}
    before = _ops_that_ran(gd, feeds)
    if not any("GeluExact" in op for op in before):
        pytest.skip("this TensorFlow's remapper does not fuse GELU (oneDNN off)")
    out, _ = _apply(gd, "tanh_gelu", ["x", "out"])
    after = _ops_that_ran(out, feeds)
    assert any("GeluApproximate" in op for op in after), after
    assert "Tanh" not in after


def test_fused_layernorm_does_nothing_without_the_onednn_op(monkeypatch, caplog):
    from rewrites import fused_layernorm
    real_get = fused_layernorm.op_def_registry.get
    monkeypatch.setattr(fused_layernorm.op_def_registry, "get",
                        lambda op: None if op == "_MklLayerNorm" else real_get(op))
    frozen, protected, _ = _tiny()
    out, report = _apply(frozen.graph_def, "fused_layernorm", protected)
    assert report.sites == 0 and "has no _MklLayerNorm" in caplog.text
    assert _nodes(out) == _nodes(frozen.graph_def)
