"""Detached constants: the weights kept beside the GraphDef instead of in it.

`bertc build` runs the pipeline, the exporter and verify on detached graphs so
that BERT-Large's weights exist once.  These tests hold the detached path to the
embedded one: the same passes give the same graph and values, the exported
SavedModel parses with protobuf's own parser into the same graph, and the
streaming reader gives back exactly what protobuf reads.
"""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import rewrites
import rewrites.constants
import bertc_testing as bt
from bertc.artifact import saved_model_writer as export
from bertc.model import freeze
from bertc.model import modeling
from bertc import passes as rewriting
from bertc.artifact import saved_model_reader

#: small enough that the tiny test graphs' kernels are detached
SMALL = 256


def graphs_equal(a, b) -> None:
    """Asserts equal node lists (names, ops, inputs, attrs) and equal Const values."""
    assert [n.name for n in a.node] == [n.name for n in b.node]
    for x, y in zip(a.node, b.node):
        assert (x.op, list(x.input)) == (y.op, list(y.input)), x.name
        assert set(x.attr) == set(y.attr), x.name
        for key in x.attr:
            if key == "value" and x.op == "Const":
                vx, vy = tf.make_ndarray(x.attr[key].tensor), tf.make_ndarray(y.attr[key].tensor)
                assert vx.dtype == vy.dtype and vx.shape == vy.shape, x.name
                np.testing.assert_array_equal(vx, vy, err_msg=x.name)
            else:
                assert x.attr[key] == y.attr[key], (x.name, key)


def test_detach_then_attach_is_the_identity():
    frozen = bt.tiny_frozen("pooled")
    light, values = rewrites.detach_constants(frozen.graph_def, min_bytes=SMALL)
    assert values, "the test graph must have constants over the threshold"
    assert light.ByteSize() < frozen.graph_def.ByteSize() - sum(v.nbytes for v in values.values())
    for name, value in values.items():
        assert value.ctypes.data % rewrites.constants.TF_ALIGNMENT == 0, name
    graphs_equal(rewrites.attach_constants(light, values), frozen.graph_def)


@pytest.mark.parametrize("passes", [
    ["strip_unused", "fold_constants", "fused_attention", "fused_layernorm", "cls_only_tail",
     "remove_padding"],
    ["crude_gelu", "fused_attention", "mixed_precision"],
    ["tanh_gelu", "cpu_embeddings"],
])
def test_detached_pipeline_gives_the_embedded_result(passes, monkeypatch):
    monkeypatch.setattr(rewrites.constants, "DETACH_MIN_BYTES", SMALL)  # new constants too
    frozen = bt.tiny_frozen("pooled")
    protected = bt.protected(frozen)
    options = rewriting.pass_options("float16", False, "cpu")
    embedded = rewrites.run(frozen.graph_def, passes, protected, options=options)
    light, values = rewrites.detach_constants(frozen.graph_def, min_bytes=SMALL)
    kept = dict(values)
    detached = rewrites.run(light, passes, protected, options=options, constants=values)
    assert [r.sites for r in detached.reports] == [r.sites for r in embedded.reports]
    assert all(n in {m.name for m in detached.graph_def.node} for n in detached.constants)
    large_embedded = [n.name for n in detached.graph_def.node
                      if rewrites.constants.detachable(n, SMALL)]
    assert not large_embedded, f"new constants left embedded: {large_embedded[:3]}"
    graphs_equal(rewrites.attach_constants(detached.graph_def, detached.constants),
                 embedded.graph_def)
    for name, value in kept.items():  # the caller's arrays are never written into
        np.testing.assert_array_equal(value, values.get(name, value))


def test_detached_export_is_the_embedded_saved_model(tmp_path):
    config = bt.tiny_bert_config(2, 32, 4, 64)
    model = modeling.BertModel(config, bt.random_bert_weights(config))
    embedded = freeze.freeze_model(model, "classifier", 2, 8)
    detached = freeze.freeze_model(model, "classifier", 2, 8, detach=True)
    assert detached.constants and all(
        not n.attr["value"].tensor.tensor_content for n in detached.graph_def.node
        if n.name in detached.constants)
    export.write_saved_model(embedded, str(tmp_path / "embedded"))
    export.write_saved_model(detached, str(tmp_path / "detached"))
    parsed = {}
    for kind in ("embedded", "detached"):
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((tmp_path / kind / "saved_model.pb").read_bytes())
        parsed[kind] = proto.meta_graphs[0]
    graphs_equal(parsed["detached"].graph_def, parsed["embedded"].graph_def)
    assert parsed["detached"].signature_def == parsed["embedded"].signature_def
    # the streaming reader gives back what protobuf parsed, weights detached
    light, values, signature = saved_model_reader.read_detached(str(tmp_path / "detached"),
                                                                min_bytes=SMALL)
    assert values and signature == parsed["embedded"].signature_def["serving_default"]
    graphs_equal(rewrites.attach_constants(light, values), parsed["embedded"].graph_def)
    # and TensorFlow loads and runs both to the same numbers
    feeds = {k: tf.constant(v) for k, v in bt.random_bert_feeds(2, 8).items()}
    got, want = (export.load_signature(str(tmp_path / kind))(**feeds)
                 for kind in ("detached", "embedded"))
    assert set(got) == {"logits", "probabilities"}
    for name in want:
        np.testing.assert_array_equal(got[name].numpy(), want[name].numpy())


def test_checkpoint_weights_are_aligned_numpy_memory(tmp_path):
    from bertc.sources import google_checkpoint as checkpoint
    cfg = bt.tiny_config()
    bt.write_google_checkpoint(str(tmp_path), cfg, bt.random_weights(cfg))
    weights = checkpoint.load_checkpoint(str(tmp_path), checksums=False).weights
    for name, value in weights.items():
        assert value.dtype == np.float32 and value.flags.c_contiguous, name
        assert value.ctypes.data % rewrites.constants.TF_ALIGNMENT == 0, name
        assert type(value.base) is np.ndarray, f"{name} is not numpy-owned memory"


#: Every dtype a pass can leave in a weight Const: fp32, the half types of
#: mixed_precision, the integer and quantized types of an INT8 target, ids.
EXPORT_DTYPES = [tf.float32, tf.float16, tf.bfloat16, tf.float64, tf.int8, tf.uint8, tf.int16,
                 tf.int32, tf.int64, tf.qint8, tf.quint8, tf.qint16, tf.quint16, tf.qint32]


def _weight(dtype, shape, rng):
    """A random value of `dtype` as TensorFlow holds it in numpy."""
    if dtype.is_floating:
        return rng.standard_normal(shape).astype(dtype.as_numpy_dtype)
    plain = np.dtype(dtype.name[1:] if dtype.is_quantized else dtype.name)  # qint8 -> int8
    info = np.iinfo(plain)
    raw = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(plain)
    return raw.view(dtype.as_numpy_dtype)


def test_detached_export_keeps_every_dtype_byte_exact(tmp_path):
    """A weight of each dtype goes through the detached path (values held beside
    the GraphDef, written by export's zero-copy chunks) and TensorFlow's own
    SavedModel loader gives back the same bytes."""
    rng = np.random.default_rng(0)
    graph_def = tf.compat.v1.GraphDef()
    with tf.Graph().as_default() as graph:
        tf.compat.v1.placeholder(tf.int32, [1, 2], name="input_ids")
        values, outputs, specs = {}, {}, {}
        for dtype in EXPORT_DTYPES:
            value = _weight(dtype, (64, 300), rng)  # 19-150 KiB
            name = f"w_{dtype.name}"
            tf.constant(value, dtype=dtype, name=name)
            values[name] = value
            outputs[name] = name
            specs[name] = (dtype, list(value.shape))
        graph_def.CopyFrom(graph.as_graph_def())
    light, detached = rewrites.detach_constants(graph_def, min_bytes=SMALL)
    assert set(detached) == set(values), "every weight must take the detached path"
    frozen = freeze.FrozenGraph(light, {"input_ids": "input_ids"}, outputs, specs, 1, 2,
                                constants=detached)
    export_dir = str(tmp_path / "all_dtypes")
    export.write_saved_model(frozen, export_dir)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        signature = meta.signature_def["serving_default"]
        for name, value in values.items():
            tensor = session.graph.get_tensor_by_name(signature.outputs[name].name)
            assert tensor.dtype == specs[name][0], name
            got = session.run(tensor)
            assert got.shape == value.shape, name
            assert got.tobytes() == value.tobytes(), f"{name}: bytes differ after export"
