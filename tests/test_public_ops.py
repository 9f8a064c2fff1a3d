"""Portable artifacts, verified the way they are served.

- The default artifact holds only ops of TensorFlow's public op set; the served
  Session (Grappler's oneDNN remapper) fuses public_layernorm's form back into
  _MklLayerNorm with eps 1e-12 kept; the artifact runs without oneDNN, and
  OpenVINO converts it (outputs within 1e-4 of TensorFlow's).
- The Grappler optimizers the served Session turns off to save memory
  (runner.OFF_FOR_MEMORY) change nothing: the same ops run after Grappler and the
  outputs are bitwise those of Grappler's full default.
- verify's served run catches a graph that Grappler changes (Google's contrib
  LayerNorm form with constant gamma/beta, whose fusion drops eps), where the
  as-written run cannot.
- `--dtype bfloat16` on the real MiniLM: cosine >= 0.999 against Hugging Face's
  fp32 model on all 408 MRPC dev pairs.
"""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import bertc_testing as bt
import rewrites
from conftest import MINILM_BATCH, MINILM_SEQ
from bertc.artifact import saved_model_writer as export
from bertc.model import freeze
from bertc import passes as rewriting
from bertc.runtime import runner as runners
from bertc.artifact import saved_model_reader
from bertc.runtime import tf_settings as tf_runtime
from bertc.verify import compare as verify

tf1 = tf.compat.v1
LAYERS = 6  # all-MiniLM-L6-v2
needs_onednn = pytest.mark.skipif(
    not tf_runtime.onednn_enabled(),
    reason="Grappler's LayerNorm fusion is a oneDNN remapper rewrite; oneDNN is off here")


def _export_dir(artifact):
    return os.path.join(artifact, f"seq_{MINILM_SEQ}", "1")


def _served_ops(export_dir, feeds):
    """{op type: [node attrs]} of what the served Session runs after Grappler."""
    graph_def, constants, signature = saved_model_reader.read_detached(export_dir)
    nodes = bt.served_partition_nodes(
        rewrites.attach_constants(graph_def, constants),
        [o.name for o in signature.outputs.values()],
        {signature.inputs[n].name: v for n, v in feeds.items()},
        runners.RunConfig(runners.SERVED, 1))
    ops = collections.defaultdict(list)
    for node in nodes:
        ops[node.op].append(node.attr)
    return ops


def _feeds(rows=MINILM_BATCH, seq=MINILM_SEQ, seed=0):
    return bt.random_feeds(rows, seq, 30522, seed=seed)


def test_default_artifact_holds_only_public_ops(minilm_artifact):
    graph_def, _, _ = saved_model_reader.read_detached(_export_dir(minilm_artifact))
    ops = collections.Counter(n.op for n in graph_def.node)
    assert rewriting.internal_ops(graph_def) == [], ops
    # every LayerNorm is there, in public_layernorm's form
    assert ops["FusedBatchNormV3"] == 2 * LAYERS + 1
    with open(os.path.join(minilm_artifact, "bertc.json"), encoding="utf-8") as f:
        doc = json.load(f)
    assert doc["options"]["allow_internal_ops"] is False
    assert doc["rewrites"]["requested"][-1] == "public_layernorm"


@needs_onednn
def test_served_session_fuses_layernorm_back_with_eps_kept(minilm_artifact):
    ops = _served_ops(_export_dir(minilm_artifact), _feeds())
    fused = ops["_MklLayerNorm"]
    assert len(fused) == 2 * LAYERS + 1, sorted(ops)
    assert all(attrs["epsilon"].f == pytest.approx(1e-12, rel=1e-6) for attrs in fused)
    assert not [op for op in ops if "BatchNorm" in op], "a LayerNorm was left unfused"


def test_grappler_optimizers_turned_off_for_memory_change_nothing(minilm_artifact):
    export_dir = _export_dir(minilm_artifact)
    graph_def, constants, signature = saved_model_reader.read_detached(export_dir)
    full = runners.RunConfig(runners.SERVED, 1).session_config()
    full.graph_options.rewrite_options.Clear()  # Grappler's own defaults, all on
    assert runners.RunConfig(runners.SERVED, 1).session_config() != full
    feeds = _feeds(seed=3)
    outputs, ops = [], []
    for config in (runners.RunConfig(runners.SERVED, 1),
                   runners.RunConfig(runners.SERVED, 1, proto=full)):
        with runners.saved_model_runner(export_dir, config) as run:
            outputs.append(run(feeds))
        ops.append(sorted(n.op for n in bt.served_partition_nodes(
            rewrites.attach_constants(graph_def, constants),
            [o.name for o in signature.outputs.values()],
            {signature.inputs[n].name: v for n, v in feeds.items()}, config)))
    assert ops[0] == ops[1]
    for name in outputs[1]:
        np.testing.assert_array_equal(outputs[0][name], outputs[1][name], err_msg=name)


CHILD = """
import json, sys
import numpy as np
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port
feeds = dict(np.load(sys.argv[2]))
fn = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
out = {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in feeds.items()}).items()}
np.savez(sys.argv[3], **out)
print(json.dumps({"onednn": bool(_pywrap_util_port.IsMklEnabled())}))
"""


def test_default_artifact_runs_without_onednn(minilm_artifact, tmp_path):
    feeds = _feeds(seed=1)
    np.savez(tmp_path / "feeds.npz", **feeds)
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", CHILD, _export_dir(minilm_artifact),
                           str(tmp_path / "feeds.npz"), str(tmp_path / "out.npz")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"onednn": False}
    plain = np.load(tmp_path / "out.npz")["embedding"]
    with runners.saved_model_runner(_export_dir(minilm_artifact)) as runner:
        served = runner(feeds)["embedding"]
    assert np.abs(plain - served).max() < 1e-4


def test_default_artifact_converts_and_runs_with_openvino(minilm_artifact):
    ov = pytest.importorskip("openvino")
    model = ov.convert_model(_export_dir(minilm_artifact))
    assert sorted(i.get_any_name() for i in model.inputs) == [
        "input_ids", "input_mask", "segment_ids"]
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    feeds = _feeds(seed=2)
    got = compiled({name: feeds[name] for name in feeds})
    output = next(o for o in compiled.outputs if "embedding" in o.get_names())
    with runners.saved_model_runner(_export_dir(minilm_artifact)) as runner:
        want = runner(feeds)["embedding"]
    assert np.abs(got[output] - want).max() < 1e-4


# ----------------------------------------------------------------- verify as served

B, S, V, D = 2, 8, 40, 32


def _contrib_layer_norm_graph() -> freeze.FrozenGraph:
    """Embedding rows of variance ~1e-12 -> tf.nn.moments + tf.nn.batch_normalization
    over axis 1 (Google's contrib layer_norm) with constant gamma/beta and eps 1e-12."""
    rng = np.random.default_rng(3)
    table = (0.5 + 1e-6 * rng.standard_normal((V, D))).astype(np.float32)
    table[::2] = rng.standard_normal((V // 2, D))  # and rows of variance ~1
    gamma = rng.uniform(0.5, 1.5, D).astype(np.float32)
    beta = rng.standard_normal(D).astype(np.float32)
    with tf.Graph().as_default() as graph:
        ids = tf1.placeholder(tf.int32, [B, S], name="input_ids")
        tf1.placeholder(tf.int32, [B, S], name="input_mask")
        tf1.placeholder(tf.int32, [B, S], name="segment_ids")
        x = tf.reshape(tf.gather(tf.constant(table), ids), [B * S, D])
        mean, variance = tf.nn.moments(x, axes=[1], keepdims=True)
        y = tf.nn.batch_normalization(x, mean, variance, offset=tf.constant(beta),
                                      scale=tf.constant(gamma), variance_epsilon=1e-12)
        tf.reshape(y, [B, S, D], name="sequence_output")
    return freeze.FrozenGraph(
        graph.as_graph_def(), {n: n for n in ("input_ids", "input_mask", "segment_ids")},
        {"sequence_output": "sequence_output"},
        {"sequence_output": (tf.float32, [B, S, D])}, B, S)


@needs_onednn
def test_verify_as_served_catches_what_grappler_changes(tmp_path):
    frozen = _contrib_layer_norm_graph()
    export_dir = str(tmp_path / "contrib_layer_norm")
    export.write_saved_model(frozen, export_dir)
    report = verify.verify_runners(runners.saved_model_runs(export_dir),
                                   lambda: runners.graph_def_runner(frozen), B, S, None, V, 2,
                                   verify.EXACT, random_rows=16)
    assert report["checked"] == "served"
    written = report["runs"]["as_written"]["inputs"]["random"]["outputs"]["sequence_output"]
    served = report["runs"]["served"]["inputs"]["random"]["outputs"]["sequence_output"]
    # As written, the artifact is the reference; as served, Grappler's fused LayerNorm
    # runs with eps 1e-3 and the rows of tiny variance come out wrong.
    assert written["max_abs"] < 1e-5, written
    assert served["max_abs"] > 1e-2, served
    assert not report["passed"]
    assert any(f.startswith("random: sequence_output:") for f in report["failures"])
    text = verify.format_report(report)
    assert "applied to the served run" in text and "as_written" in text


def test_allow_internal_ops_keeps_the_oneDNN_op_and_says_so(tiny_ckpt, tmp_path):
    import bertc
    result = bertc.build(bertc.BuildOptions(
        output=str(tmp_path / "internal"), ckpt=tiny_ckpt, batch_size=2, seq_lens=(16,),
        allow_internal_ops=True, verify_rows=4))
    assert result.manifest["options"]["allow_internal_ops"] is True
    assert "public_layernorm" not in result.manifest["rewrites"]["requested"]
    graph_def, _, _ = saved_model_reader.read_detached(str(tmp_path / "internal/seq_16/1"))
    assert rewriting.internal_ops(graph_def) == ["_MklLayerNorm"]
    assert all(r["passed"] for r in result.verify_report.values())


# ----------------------------------------------------------------- bfloat16 vs HF

def test_bfloat16_minilm_matches_transformers_on_all_mrpc_pairs(minilm_ckpt, minilm_hf_dir,
                                                                tmp_path):
    import bertc
    import transformers
    from bertc.text.pairs import default_mrpc_path, read_mrpc_tsv
    from bertc.text.tokenization import WordPieceTokenizer
    path = default_mrpc_path()
    if path is None:
        pytest.skip("../shared/data/glue_mrpc_dev.tsv not found")
    pairs = read_mrpc_tsv(path)
    assert len(pairs) == 408
    out = str(tmp_path / "bf16")
    bertc.build(bertc.BuildOptions(output=out, ckpt=minilm_ckpt, dtype="bfloat16",
                                   batch_size=8, seq_lens=(128,), verify=False))
    tokenizer = WordPieceTokenizer.from_vocab_file(os.path.join(out, "vocab.txt"), True)
    feeds = tokenizer.encode_batch([(p.text_a, p.text_b) for p in pairs], seq_len=128)
    with runners.saved_model_runner(os.path.join(out, "seq_128", "1")) as runner:
        got = np.concatenate([
            runner({k: v for k, v in batch.feeds.items()})["embedding"][:batch.real_rows]
            for batch in verify.pad_rows(feeds, 8)])
    model = transformers.BertModel.from_pretrained(minilm_hf_dir).eval()
    hidden, _ = bt.hf_forward(model, feeds)
    want = bt.mean_pool_normalize(hidden, feeds["input_mask"])
    cosines = bt.row_cosines(got, want)
    assert len(cosines) == 408 and cosines.min() >= 0.999, cosines.min()
    assert cosines.min() < 0.999999  # bf16 rounding is there: this is not the fp32 graph
