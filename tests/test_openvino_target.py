"""`bertc build --target openvino`: the IR per bucket, checked against Hugging Face.

- The real all-MiniLM-L6-v2 through --target openvino matches transformers'
  BertModel (mean-pooled, normalised) on MRPC dev text: f32 within 1e-4 max abs,
  the CPU's default precision (bf16 on AMX/AVX512-BF16) within cosine 0.999.
- The IR loads and runs in a process that imports only openvino and numpy.
- Every head converts, verifies and keeps the SavedModel's output names.
- The manifest records the OpenVINO version, precision, properties and CPU.
- An op OpenVINO cannot convert is one error line naming it, and no artifact.
- Without openvino the build says what to install, before anything is written.
"""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import bertc_testing as bt
from bertc.builder.targets import openvino as target
from bertc.runtime import openvino_runner

ov = pytest.importorskip("openvino")
BATCH = 4
ROWS = 96  # MRPC dev pairs compared with Hugging Face


def _build(ckpt, out, **kw):
    import bertc
    return bertc.build(bertc.BuildOptions(output=str(out), ckpt=ckpt, batch_size=BATCH,
                                          target="openvino", **kw))


@pytest.fixture(scope="module")
def ov_default(minilm_ckpt, tmp_path_factory):
    """MiniLM at the CPU's default precision, buckets 32 and 128."""
    out = tmp_path_factory.mktemp("ov") / "minilm"
    _build(minilm_ckpt, out, seq_lens=(32, 128), verify_rows=16)
    return str(out)


@pytest.fixture(scope="module")
def ov_f32(minilm_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("ov") / "minilm_f32"
    _build(minilm_ckpt, out, seq_lens=(128,), dtype="float32", verify_rows=16)
    return str(out)


@pytest.fixture(scope="module")
def mrpc(minilm_ckpt):
    from bertc.text.pairs import default_mrpc_path, read_mrpc_tsv
    from bertc.text.tokenization import WordPieceTokenizer
    path = default_mrpc_path()
    if path is None:
        pytest.skip("../shared/data/glue_mrpc_dev.tsv not found")
    pairs = read_mrpc_tsv(path)[:ROWS]
    tokenizer = WordPieceTokenizer.from_vocab_file(os.path.join(minilm_ckpt, "vocab.txt"),
                                                   do_lower_case=True)
    return tokenizer.encode_batch([(p.text_a, p.text_b) for p in pairs], seq_len=128)


@pytest.fixture(scope="module")
def hf_embedding(minilm_hf_dir, mrpc):
    import transformers
    model = transformers.BertModel.from_pretrained(minilm_hf_dir).eval()
    hidden, _ = bt.hf_forward(model, mrpc)
    return bt.mean_pool_normalize(hidden, mrpc["input_mask"])


def _manifest(artifact):
    with open(os.path.join(artifact, "bertc.json"), encoding="utf-8") as f:
        return json.load(f)


def _run_ir(artifact, seq_len, feeds):
    """The IR of one bucket compiled as `bertc serve` compiles it, run in batches."""
    doc = _manifest(artifact)
    xml = os.path.join(artifact, target.ir_path(seq_len))
    runner = openvino_runner.ir_runner(
        xml, target.served_properties(doc["target"]["openvino"]["inference_precision"]))
    outs = []
    for start in range(0, len(feeds["input_ids"]), BATCH):
        chunk = {k: v[start:start + BATCH, :seq_len] for k, v in feeds.items()}
        real = len(chunk["input_ids"])
        chunk = {k: np.concatenate([v, np.zeros((BATCH - real, seq_len), np.int32)])
                 for k, v in chunk.items()}
        outs.append({k: v[:real] for k, v in runner(chunk).items()})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def test_layout_manifest_and_ports(ov_default):
    doc = _manifest(ov_default)
    record = doc["target"]["openvino"]
    assert doc["target"]["name"] == "openvino"
    assert record["version"] == ov.get_version()
    assert record["dtype"] == target.default_dtype() == doc["options"]["dtype"]
    assert record["inference_precision"] == target.precision(record["dtype"])
    assert record["compile_properties"]["INFERENCE_PRECISION_HINT"] == \
        record["inference_precision"]
    assert set(record["cpu"]["isa"]) >= {"amx_bf16", "avx512_bf16"} and record["cpu"]["model"]
    core = ov.Core()
    for entry, call in zip(doc["models"], doc["target"]["compile"]):
        seq = entry["seq_len"]
        assert entry["openvino_path"] == call["ir"] == f"openvino/seq_{seq}/model.xml"
        assert os.path.isfile(os.path.join(ov_default, entry["path"], "saved_model.pb"))
        assert os.path.isfile(os.path.join(ov_default, f"openvino/seq_{seq}/model.bin"))
        model = core.read_model(os.path.join(ov_default, entry["openvino_path"]))
        assert {p.get_any_name(): (list(p.get_shape()), p.get_element_type().get_type_name())
                for p in model.inputs} == {n: ([BATCH, seq], "i32") for n in doc["inputs"]}
        assert [p.get_any_name() for p in model.outputs] == doc["outputs"] == ["embedding"]
        # the IR keeps fp32 weights: the precision is chosen at compile time
        types = {op.get_element_type().get_type_name() for op in model.get_ops()
                 if op.get_type_name() == "Constant"}
        assert "f16" not in types and "f32" in types
    report = doc["verify"]["per_seq_len"]["128"]
    assert report["checked"] == "openvino" and report["passed"]
    assert report["runs"]["openvino"]["config"]["effective_properties"][
        "NUM_STREAMS"] == record["compile_properties"]["NUM_STREAMS"]


def test_minilm_matches_hugging_face_at_each_precision(ov_default, ov_f32, mrpc,
                                                       hf_embedding):
    f32 = _run_ir(ov_f32, 128, mrpc)["embedding"]
    assert np.abs(f32 - hf_embedding).max() <= 1e-4
    default = _run_ir(ov_default, 128, mrpc)["embedding"]
    cos = bt.row_cosines(default, hf_embedding)
    assert cos.min() >= 0.999, cos.min()
    if target.default_dtype() == "bfloat16":  # the precision really is bf16
        assert np.abs(default - hf_embedding).max() > 1e-4


def test_buckets_route_to_the_smallest_fit(ov_default, mrpc):
    """Short pairs go to bucket 32 through the served model and give what bucket 128
    gives for the same pairs (the padding is masked), at the bucket's own shape."""
    from bertc.serving import artifact as artifact_lib
    from bertc.serving import openvino_model
    art = artifact_lib.load_artifact(ov_default)
    model = openvino_model.factory(art, 2)(art, 1)
    short = np.flatnonzero(mrpc["input_mask"].sum(1) <= 32)[:BATCH]
    assert len(short) == BATCH and art.bucket_for(int(mrpc["input_mask"][short].sum(1).max())) == 32
    rows = [mrpc[n][short] for n in art.inputs]
    small = model.run(32, [r[:, :32] for r in rows])["embedding"]
    large = model.run(128, rows)["embedding"]
    assert small.shape == large.shape == (BATCH, 384)
    assert bt.row_cosines(small, large).min() >= 0.999
    with pytest.raises(Exception):
        model.run(32, rows)  # a [4, 128] batch does not fit the seq 32 model
    model.close()


FRESH = r"""
import sys
import numpy as np
import openvino as ov
xml, feeds_path, out_path = sys.argv[1:]
feeds = dict(np.load(feeds_path))
compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
result = compiled.create_infer_request().infer(feeds)
np.save(out_path, result[compiled.output("embedding")])
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "bertc", "torch"))
assert not bad, bad
"""


def test_ir_runs_in_a_fresh_process_with_only_openvino_and_numpy(ov_f32, mrpc, tmp_path):
    feeds = {k: v[:BATCH] for k, v in mrpc.items()}
    np.savez(tmp_path / "feeds.npz", **feeds)
    proc = subprocess.run([sys.executable, "-c", FRESH,
                           os.path.join(ov_f32, "openvino/seq_128/model.xml"),
                           str(tmp_path / "feeds.npz"), str(tmp_path / "out.npy")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(got, _run_ir(ov_f32, 128, feeds)["embedding"], atol=1e-6)


def test_verify_runs_the_ir_as_served_and_per_pass_ends_with_the_compile(ov_f32):
    import bertc
    report = bertc.verify_artifact(ov_f32, rows=8, per_pass=True)
    seq = report["per_seq_len"]["128"]
    assert report["passed"] and seq["checked"] == "openvino"
    assert list(seq["runs"])[:2] == ["openvino", "served"]
    assert seq["thresholds"]["max_abs"] == 1e-4  # f32 is exact
    assert seq["inputs"]["text"]["outputs"]["embedding"]["max_abs"] <= 1e-4
    rows = report["per_pass"]["128"]
    assert rows[-1]["pass"] == "openvino" and [r["pass"] for r in rows[:-1]] == \
        _manifest(ov_f32)["rewrites"]["requested"]


@pytest.mark.parametrize("head", ["sequence", "pooled", "classifier", "embedding", "span"])
def test_every_head_converts_verifies_and_matches_its_saved_model(head, tiny_cfg,
                                                                  tmp_path):
    weights = bt.random_weights(tiny_cfg, seed=3, num_labels=3 if head == "classifier"
                                else None)
    if head == "span":  # run_squad's head (issue 17)
        rng = np.random.default_rng(4)
        weights["cls/squad/output_weights"] = rng.standard_normal(
            (2, tiny_cfg["hidden_size"])).astype(np.float32)
        weights["cls/squad/output_bias"] = rng.standard_normal(2).astype(np.float32)
    ckpt = bt.write_google_checkpoint(str(tmp_path / "ckpt"), tiny_cfg, weights)
    result = _build(ckpt, tmp_path / "art", head=head, seq_lens=(16, 32),
                    dtype="float32", verify_rows=8)
    doc = result.manifest
    assert all(r["passed"] for r in result.verify_report.values())
    feeds = bt.random_feeds(BATCH, 32, tiny_cfg["vocab_size"], seed=5)
    ir = _run_ir(result.artifact, 32, feeds)
    tf_out = bt.run_saved_model_session(os.path.join(result.artifact, "seq_32", "1"), feeds,
                                        BATCH)
    assert sorted(ir) == sorted(tf_out) == sorted(doc["outputs"])
    for name in doc["outputs"]:
        np.testing.assert_allclose(ir[name], tf_out[name], atol=1e-4, err_msg=name)
    assert doc["rewrites"]["requested"] == ["strip_unused"]
    # the build converts its frozen graph with the weights shared: the same model as
    # OpenVINO's own conversion of the bucket's SavedModel, bit for bit at f32
    reference = target.convert(os.path.join(result.artifact, "seq_32", "1"))
    built = ov.Core().read_model(os.path.join(result.artifact, target.ir_path(32)))
    ports = lambda m: sorted((p.get_any_name(), tuple(p.get_shape()), p.get_element_type().get_type_name())  # noqa: E501,E731
                             for p in list(m.inputs) + list(m.outputs))
    assert ports(built) == ports(reference)
    # nothing left for the CPU plugin to fold, and the same computing ops as OpenVINO's
    # own conversion (views aside: the span head keeps two more Reshapes here)
    foldable = [op.get_friendly_name() for op in built.get_ops()
                if op.get_type_name() not in ("Constant", "Result", "Parameter")
                and all(i.get_source_output().get_node().get_type_name() == "Constant"
                        for i in op.inputs())]
    assert foldable == []
    op_types = lambda m: collections.Counter(  # noqa: E731
        op.get_type_name() for op in m.get_ops()
        if op.get_type_name() not in ("Constant", "Reshape", "Squeeze"))
    assert op_types(built) == op_types(reference)
    properties = target.served_properties("f32")
    compiled = [ov.Core().compile_model(m, "CPU", properties) for m in (built, reference)]
    chunk = {k: v[:, :32] for k, v in feeds.items()}
    got, want = (c.create_infer_request().infer(chunk) for c in compiled)
    for name in doc["outputs"]:
        np.testing.assert_array_equal(got[compiled[0].output(name)],
                                      want[compiled[1].output(name)], err_msg=name)


def test_the_converted_model_shares_the_builds_weights():
    """convert_frozen's Constants point into the frozen graph's arrays: no copy."""
    from bertc.model import freeze, modeling
    config = bt.tiny_bert_config(2, 32, 4, intermediate=64)
    model = modeling.BertModel(config, bt.random_bert_weights(config, 1))
    frozen = freeze.freeze_model(model, "sequence", BATCH, 16, detach=True)
    converted = target.convert_frozen(frozen)
    constants = {op.get_friendly_name(): op for op in converted.get_ops()
                 if op.get_type_name() == "Constant"}
    assert sorted(p.get_any_name() for p in converted.inputs) == sorted(modeling.INPUT_NAMES)
    used = [n for n in frozen.constants if n.startswith(("weights/bert/embeddings/",
                                                         "weights/bert/encoder/"))]
    assert len(used) == 3 + 2 + 16 * 2  # the sequence head's
    # every weight a MatMul or Gather reads whole is shared; the position table is
    # sliced to the bucket's rows by ConstantFolding (a copy of 16 of its rows)
    sliced = [n for n in used if n.endswith("position_embeddings")]
    assert len(sliced) == 1 and sliced[0] not in constants
    for name in set(used) - set(sliced):
        assert np.shares_memory(constants[name].data, frozen.constants[name]), name


def test_cls_only_tail_is_refused_where_openvino_crashes_on_it(tiny_ckpt, tmp_path):
    proc = bt.run_cli("build", "--ckpt", tiny_ckpt, "--output", tmp_path / "art",
                      "--target", "openvino", "--head", "pooled", "--seq_len", "16",
                      "--rewrites", "cls_only_tail", "--noverify")
    bt.assert_one_error(proc, "--rewrites cls_only_tail", "--target openvino")
    assert proc.returncode == 2 and not (tmp_path / "art").exists()


def test_an_op_openvino_cannot_convert_is_one_line_naming_it(tiny_ckpt, tmp_path):
    out = tmp_path / "internal"
    proc = bt.run_cli("build", "--ckpt", tiny_ckpt, "--output", out, "--target", "openvino",
                      "--seq_len", "16", "--rewrites", "fused_layernorm",
                      "--allow_internal_ops", "--noverify")
    bt.assert_one_error(proc, "_MklLayerNorm", "OpenVINO", "cannot convert")
    assert proc.returncode == 2
    assert not out.exists() and not bt.leftovers(tmp_path)


def test_unconverted_ops_are_read_from_openvinos_summary():
    message = ("Model wasn't fully converted.\nSummary:\n-- No conversion rule found for "
               "operations: _MklLayerNorm, Foo\nTo facilitate the conversion ...")
    assert target.unconverted_ops(message) == ["_MklLayerNorm", "Foo"]


def test_without_openvino_the_build_says_what_to_install(tiny_ckpt, tmp_path, monkeypatch):
    import bertc
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    out = tmp_path / "art"
    with pytest.raises(bertc.BertcError, match=r"pip install openvino==2026\.4\.1"):
        _build(tiny_ckpt, out, seq_lens=(16,))
    assert not out.exists()


@pytest.mark.parametrize("isa, vendor, want", [
    ({"amx_bf16": True, "avx512_bf16": True}, "GenuineIntel", "bfloat16"),
    ({"avx512_bf16": True}, "GenuineIntel", "float32"),  # measured slower than f32
    ({"avx512_bf16": True}, "AuthenticAMD", "bfloat16"),  # Zen 4: measured faster
    ({"avx2": True, "avx512f": True}, "AuthenticAMD", "float32"),
    ({"avx2": True}, "GenuineIntel", "float32")])
def test_default_precision_follows_the_cpu(isa, vendor, want):
    assert target.default_dtype(isa, vendor) == want


@pytest.mark.parametrize("dtype, rest, isa, warned", [
    ("bfloat16", None, {"avx512f": True, "avx512_vnni": True}, "`dtype` bfloat16"),
    ("int8", "bfloat16", {"avx2": True}, "`int8_rest_dtype` bfloat16"),
    ("bfloat16", None, {"avx512_bf16": True}, None),
    ("bfloat16", None, {"amx_bf16": True}, None),
    ("float32", None, {"avx2": True}, None),
    ("int8", "float32", {"avx2": True}, None)])
def test_a_bf16_compile_without_native_bf16_is_warned_of(dtype, rest, isa, warned):
    message = target.emulated_bf16(dtype, rest, isa)
    assert (message is None) == (warned is None)
    if warned:
        assert message.startswith(warned) and "emulates" in message


def test_the_cpu_vendor_is_read_from_cpuinfo(tmp_path):
    from bertc.runtime import machine
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"
                       "flags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert machine.cpu_vendor(str(cpuinfo)) == "AuthenticAMD"
    assert target.default_dtype(machine.isa_flags(str(cpuinfo)),
                                machine.cpu_vendor(str(cpuinfo))) == "bfloat16"


def test_serve_on_an_openvino_artifact_logs_where_it_serves(ov_f32):
    """Importing openvino takes absl's handler off the root logger; serve must still say
    where it listens (the benchmarks and operators wait for that line)."""
    import queue
    import threading
    proc = subprocess.Popen(bt.cli_command("serve", "--model", ov_f32, "--port", "0"),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=bt.cli_env(), cwd=bt.REPO_ROOT)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr],
                     daemon=True).start()
    seen = []
    try:
        while not any("http://127.0.0.1:" in line for line in seen):
            seen.append(lines.get(timeout=120))  # queue.Empty: no such line in 120 s
        assert any("OpenVINO" in line for line in seen), "".join(seen)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
