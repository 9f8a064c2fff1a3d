"""Compile a bucket's SavedModel for OpenVINO's CPU plugin (`--target openvino`).

One static-shape model per sequence bucket, converted by `openvino.convert_model`
from the bucket's fp32 SavedModel and saved as IR without weight compression:

  ARTIFACT/openvino/seq_<S>/model.xml + model.bin
  inputs  input_ids, input_mask, segment_ids   int32 [batch, S]
  outputs the SavedModel signature's names and shapes

The precision is OpenVINO's, not the graph's: `--dtype` maps to the compile
property INFERENCE_PRECISION_HINT (float32 -> f32, bfloat16 -> bf16, float16 ->
f16), so the IR stays fp32 and one IR runs at every precision.  Without --dtype
the build takes the fastest precision the CPU runs natively within verify's bound:
bf16 where it has AMX-BF16, else f32 (`default_dtype`; on a Xeon with AVX512-BF16
and no AMX, bf16 ran MiniLM at 0.65x f32: BENCHMARKS.md).
How a model is compiled (the properties) and loading `openvino` lazily live in
bertc/runtime/openvino_settings.py, which verify and `bertc serve` use too.
"""

import logging
import os
from typing import Dict, Optional

from bertc.errors import BertcError
from bertc.runtime.openvino_settings import (DEFAULT_INT8_REST_DTYPE, INSTALL_HINT, PIN,  # noqa: F401
                                             PRECISIONS, artifact_precision,
                                             compile_properties, inference_precision, load,
                                             precision, served_properties, version)

logger = logging.getLogger(__name__)

#: Where the IR of one bucket lives, relative to the artifact.
IR_DIR = "openvino"
XML = "model.xml"


def default_dtype(isa: Optional[Dict[str, bool]] = None) -> str:
    """bfloat16 where the CPU has AMX-BF16 tiles, else float32.

    AVX512-BF16 alone does not pay under OpenVINO 2026.4: on a Xeon with it and no
    AMX, MiniLM's IR at [4, 128] ran 0.65x as fast in bf16 as in f32 (its bf16
    FullyConnected brgemm kernels are the slower ones there; BENCHMARKS.md), while
    OpenVINO's own default picks bf16 on that CPU."""
    if isa is None:
        from bertc.runtime import machine
        isa = machine.isa_flags()
    return "bfloat16" if isa.get("amx_bf16") else "float32"


#: Passes this target refuses, and why (measured on OpenVINO 2026.4.1).
REFUSED_PASSES = {
    "cls_only_tail": "OpenVINO 2026.4's CPU plugin crashes (SIGSEGV) compiling its graph at "
                     "f32",
}


def check_passes(pass_names) -> None:
    """BertcError for a requested pass that this target cannot run."""
    for name in pass_names:
        if name in REFUSED_PASSES:
            raise BertcError(f"`rewrites` {name}: not on `target` openvino "
                             f"({REFUSED_PASSES[name]}); expected it left out")


def ir_path(seq_len: int) -> str:
    """openvino/seq_<S>/model.xml, relative to the artifact."""
    return os.path.join(IR_DIR, f"seq_{seq_len}", XML)


def unconverted_ops(message: str) -> list:
    """The op names of OpenVINO's 'Model wasn't fully converted' summary
    ('-- No conversion rule found for operations: A, B')."""
    ops = []
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("--") and ":" in line:
            ops += [op.strip() for op in line.split(":", 1)[1].split(",") if op.strip()]
    return ops


def convert(saved_model_dir: str):
    """openvino.convert_model of a SavedModel; BertcError naming an op it cannot convert."""
    ov = load()
    try:
        return ov.convert_model(saved_model_dir)
    except Exception as exc:  # OpConversionFailure, GeneralFailure: OpenVINO's own types
        ops = unconverted_ops(str(exc))
        if ops:
            raise BertcError(f"{saved_model_dir}: OpenVINO {ov.get_version().split('-')[0]} "
                             f"cannot convert op {', '.join(ops)}; expected a graph of "
                             "public TensorFlow ops (leave out `allow_internal_ops`)") from None
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise BertcError(f"{saved_model_dir}: openvino.convert_model failed: "
                         f"{first.strip()}") from None


def compile_bucket(artifact_dir: str, saved_model_relative: str, seq_len: int,
                   inference: str) -> dict:
    """Converts one bucket's SavedModel and writes its IR; returns the manifest record
    (paths relative to the artifact, input/output names and shapes, the `inference`
    precision: inference_precision)."""
    ov = load()
    model = convert(os.path.join(artifact_dir, saved_model_relative))
    relative = ir_path(seq_len)
    # compress_to_fp16=False: the IR keeps the fp32 weights; the precision is chosen
    # when the model is compiled
    ov.save_model(model, os.path.join(artifact_dir, relative), compress_to_fp16=False)
    ports = lambda items: {p.get_any_name(): [int(d) for d in p.get_shape()]  # noqa: E731
                           for p in items}
    record = {"seq_len": seq_len, "dry_run": False, "api": "openvino.convert_model",
              "model_dir": saved_model_relative, "ir": relative,
              "bin": relative[:-len(".xml")] + ".bin", "relative_to": "the artifact",
              "inputs": ports(model.inputs), "outputs": ports(model.outputs),
              "inference_precision": inference,
              "call": f"openvino.save_model(openvino.convert_model({saved_model_relative!r}), "
                      f"{relative!r}, compress_to_fp16=False)",
              "summary": f"openvino.convert_model({saved_model_relative!r}) -> {relative} "
                         f"(inference precision {inference})"}
    logger.info("openvino: wrote %s (%s)", relative, ", ".join(
        f"{n} {s}" for n, s in record["outputs"].items()))
    return record


def target_record(dtype: str, dtype_source: str, inference: str,
                  int8_rest_dtype: Optional[str] = None) -> dict:
    """What the manifest's target records once per build: the OpenVINO version, the
    precision (and why; for int8, the dtype of its float rest), the properties serve
    and verify compile with by default, and the CPU the build saw."""
    from bertc.runtime import machine
    record = {"version": version(), "dtype": dtype, "dtype_source": dtype_source}
    if dtype == "int8":
        record["int8_rest_dtype"] = int8_rest_dtype or DEFAULT_INT8_REST_DTYPE
    return {**record, "inference_precision": inference,
            "compile_properties": served_properties(inference),
            "cpu": machine.describe()}
