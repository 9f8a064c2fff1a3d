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
bf16 where it has AMX-BF16 or is an AMD with AVX512-BF16, else f32 (`default_dtype`;
on an Intel Xeon with AVX512-BF16 and no AMX, bf16 ran MiniLM at 0.65x f32:
BENCHMARKS.md).
How a model is compiled (the properties) and loading `openvino` lazily live in
bertc/runtime/openvino_settings.py, which verify and `bertc serve` use too.
"""

import logging
import os
from typing import Dict, Optional

import numpy as np

from bertc.errors import BertcError
from bertc.runtime.openvino_settings import (DEFAULT_INT8_REST_DTYPE, INSTALL_HINT, PIN,  # noqa: F401
                                             PRECISIONS, artifact_precision,
                                             compile_properties, inference_precision, load,
                                             precision, served_properties, version)

logger = logging.getLogger(__name__)

#: Where the IR of one bucket lives, relative to the artifact.
IR_DIR = "openvino"
XML = "model.xml"


def default_dtype(isa: Optional[Dict[str, bool]] = None, vendor: Optional[str] = None) -> str:
    """bfloat16 where OpenVINO's bf16 was measured faster than its f32, else float32:
    CPUs with AMX-BF16 tiles, and AMD's with AVX512-BF16 (Zen 4).

    AVX512-BF16 alone does not decide it under OpenVINO 2026.4: on an AMD EPYC (Zen 4)
    bf16 ran MiniLM at 1.75x and BERT-Base at 1.87x f32 at [4, 128], quiet; on an Intel
    Xeon with it and no AMX, MiniLM at 0.65x (its bf16 FullyConnected brgemm kernels
    are the slower ones there), while OpenVINO's own default picks bf16 on both
    (BENCHMARKS.md)."""
    from bertc.runtime import machine
    if isa is None:
        isa = machine.isa_flags()
    if vendor is None:
        vendor = machine.cpu_vendor()
    fast = isa.get("amx_bf16") or (isa.get("avx512_bf16") and vendor == "AuthenticAMD")
    return "bfloat16" if fast else "float32"


def emulated_bf16(dtype: str, int8_rest_dtype: Optional[str] = None,
                  isa: Optional[Dict[str, bool]] = None) -> Optional[str]:
    """The warning for a bf16 compile on a CPU with neither AVX512-BF16 nor AMX-BF16,
    where OpenVINO 2026.4 emulates bf16: MiniLM ran at 0.03x float32 on an Intel Xeon
    with AVX-512 VNNI and no BF16 (BENCHMARKS.md); None where bf16 is native or unused."""
    from bertc.runtime import machine
    if inference_precision(dtype, int8_rest_dtype) != "bf16":
        return None
    isa = machine.isa_flags() if isa is None else isa
    if isa.get("avx512_bf16") or isa.get("amx_bf16"):
        return None
    option = "`int8_rest_dtype`" if dtype == "int8" else "`dtype`"
    return (f"{option} bfloat16 on a CPU without AVX512-BF16 or AMX-BF16: OpenVINO emulates "
            "bf16 here (MiniLM ran at 0.03x float32 on such a Xeon); float32 is faster "
            "and exact")


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


def conversion_error(exc: Exception, where: str) -> BertcError:
    """The one-line BertcError for a failed openvino.convert_model of `where`, naming the
    op it cannot convert when OpenVINO's message lists one."""
    ov = load()
    ops = unconverted_ops(str(exc))
    if ops:
        return BertcError(f"{where}: OpenVINO {ov.get_version().split('-')[0]} cannot convert "
                          f"op {', '.join(ops)}; expected a graph of public TensorFlow ops "
                          "(leave out `allow_internal_ops`)")
    first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return BertcError(f"{where}: openvino.convert_model failed: {first.strip()}")


def convert(saved_model_dir: str):
    """openvino.convert_model of a SavedModel (OpenVINO's documented route; the build
    uses convert_frozen, which tests hold to this)."""
    ov = load()
    try:
        return ov.convert_model(saved_model_dir)
    except Exception as exc:  # OpConversionFailure, GeneralFailure: OpenVINO's own types
        raise conversion_error(exc, saved_model_dir) from None


def convert_frozen(frozen):
    """openvino.convert_model of a detached FrozenGraph, its weights shared with the
    build instead of copied.

    Converting the bucket's SavedModel parses its 1.24 GiB saved_model.pb (BERT-Large)
    and copies every weight into the OpenVINO model while the parsed file is alive:
    3.1x the weights at its peak.  Here the weights never pass through a file:

      weights/W: Const [H, H] ──▶ MatMul        the frozen graph (W detached)
      weights/W: Placeholder [H, H] ──▶ MatMul  rewrites.constants.consts_as_placeholders
      Parameter weights/W ──▶ MatMul            openvino.convert_model
      Constant(W, shared_memory) ──▶ MatMul     each weight Parameter replaced
      ShapeOf(W) -> Constant, ConstantFolding  what hung on a weight's value or
                                               shape only (a Gather's index bounds,
                                               the position table's slice) folded

    The last step leaves nothing foldable and the computing ops of OpenVINO's own
    conversion of the bucket's SavedModel, type for type (views aside; a test holds
    the two to it): without it the IR kept those subgraphs for the CPU plugin to fold
    at every compile.  The model's inputs and outputs carry the signature's names, as
    the SavedModel's conversion names them.  The Constants point into
    `frozen.constants`: keep it alive until the model is saved."""
    import rewrites.constants
    ov = load()
    from openvino import opset13
    light = rewrites.constants.consts_as_placeholders(frozen.graph_def, frozen.constants or {})
    try:
        model = ov.convert_model(light)
    except Exception as exc:  # OpConversionFailure, GeneralFailure: OpenVINO's own types
        raise conversion_error(exc, f"seq {frozen.seq_len}") from None
    del light
    # a tf.Graph's conversion names every tensor "<node>:0" and makes every tensor that
    # nothing consumes a model output (an unused weight's Placeholder too): keep the
    # signature's outputs only
    outputs = {}
    for port in model.outputs:
        for name, node in frozen.outputs.items():
            if f"{node}:0" in port.get_names():
                outputs[name] = port.get_node().input_value(0)
    constants, inputs = frozen.constants or {}, {}
    by_node = {node: name for name, node in frozen.inputs.items()}
    for parameter in list(model.get_parameters()):
        name = parameter.get_friendly_name().rsplit(":", 1)[0]
        if name in constants:
            constant = opset13.constant(constants[name], name=name, shared_memory=True)
            parameter.output(0).replace(constant.output(0))
        elif name in by_node:
            parameter.set_friendly_name(by_node[name])
            parameter.output(0).get_tensor().set_names({by_node[name]})
            inputs[by_node[name]] = parameter
    missing = set(frozen.outputs) - set(outputs) or set(frozen.inputs) - set(inputs)
    if missing:
        raise RuntimeError(f"openvino.convert_model lost {sorted(missing)}")
    results = []
    for name in frozen.outputs:
        result = opset13.result(outputs[name])
        result.output(0).get_tensor().set_names({name})
        results.append(result)
    model = ov.Model(results, [inputs[name] for name in frozen.inputs], "bertc")
    model.validate_nodes_and_infer_types()
    # the TF frontend marks these ShapeOfs DisableConstantFolding (its Slice and
    # Gather conversions); over a Constant the shape is static: put it in their place
    for op in model.get_ordered_ops():
        if op.get_type_name() == "ShapeOf" and \
                op.input_value(0).get_node().get_type_name() == "Constant":
            shape = np.array(op.get_input_shape(0), op.get_output_element_type(0).to_dtype())
            op.output(0).replace(opset13.constant(shape).output(0))
    from openvino import passes
    manager = passes.Manager()
    manager.register_pass(passes.ConstantFolding())
    manager.run_passes(model)
    return model


def compile_bucket(artifact_dir: str, frozen, saved_model_relative: str,
                   inference: str) -> dict:
    """Converts one bucket's detached `frozen` graph (convert_frozen: its weights shared,
    not copied) and writes its IR; returns the manifest record (paths relative to the
    artifact, the SavedModel it equals, input/output names and shapes, the `inference`
    precision: inference_precision).  `frozen.constants` must stay alive until it returns."""
    ov = load()
    seq_len = frozen.seq_len
    model = convert_frozen(frozen)
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
              "weights": "shared with the build: the frozen graph converted with its "
                         "weights as Parameters, each replaced by a Constant over the "
                         "weight's array (convert_frozen)",
              "call": f"openvino.save_model(openvino.convert_model({saved_model_relative!r}), "
                      f"{relative!r}, compress_to_fp16=False)",
              "summary": f"openvino.convert_model(seq {seq_len}, weights shared; equals "
                         f"{saved_model_relative!r}) -> {relative} "
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
