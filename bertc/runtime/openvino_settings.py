"""OpenVINO's runtime settings: the pinned package, loading it lazily, and the one
set of compile properties that verify, `bertc serve` and the benchmarks all use.

NUM_STREAMS infer requests run at once on INFERENCE_NUM_THREADS threads in all;
INFERENCE_PRECISION_HINT is the precision (--dtype float32 -> f32, bfloat16 -> bf16,
float16 -> f16; int8: the precision of what the quantized IR leaves float, its
`int8_rest_dtype`); f32 compiles in ACCURACY mode, so no plugin-chosen lower
precision runs anywhere.
"""

import logging
from typing import Optional

from bertc.errors import BertcError

#: The pinned release (requirements/runtime.txt).
PIN = "openvino==2026.4.1"
INSTALL_HINT = f"pip install {PIN}"
#: --dtype -> OpenVINO's inference precision (int8: the quantized IR's other ops in f32,
#: unless the build's `int8_rest_dtype` says otherwise: inference_precision).
PRECISIONS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "int8": "f32"}
#: What the float rest of an int8 IR may run in (`int8_rest_dtype`); the first is the default.
INT8_REST_DTYPES = ("float32", "bfloat16")
DEFAULT_INT8_REST_DTYPE = INT8_REST_DTYPES[0]


def precision(dtype: str) -> str:
    """OpenVINO's name for a --dtype ('bf16' for 'bfloat16')."""
    if dtype not in PRECISIONS:
        raise BertcError(f"`dtype` {dtype}: expected one of {', '.join(PRECISIONS)}")
    return PRECISIONS[dtype]


def inference_precision(dtype: str, int8_rest_dtype: Optional[str] = None) -> str:
    """The INFERENCE_PRECISION_HINT an artifact of `dtype` compiles with: precision(dtype),
    and for int8 that of `int8_rest_dtype` (float32 when None), the precision of the
    ops NNCF left float (LayerNorm, Softmax, GELU, the layers kept out of int8)."""
    if dtype != "int8":
        return precision(dtype)
    rest = int8_rest_dtype or DEFAULT_INT8_REST_DTYPE
    if rest not in INT8_REST_DTYPES:
        raise BertcError(f"`int8_rest_dtype` {rest}: expected one of "
                         f"{', '.join(INT8_REST_DTYPES)}")
    return precision(rest)


def artifact_precision(doc: dict) -> str:
    """The inference precision an OpenVINO artifact's manifest records (the one verify
    proved and serve compiles with); precision(--dtype) for manifests without it."""
    record = ((doc.get("target") or {}).get("openvino") or {})
    return record.get("inference_precision") or precision(
        (doc.get("options") or {}).get("dtype") or "float32")


def load():
    """The `openvino` module; BertcError naming the package when it is missing.

    Importing it (openvino.tools.ovc.logger) takes absl's handler off the root
    logger, which left `bertc serve` on an OpenVINO artifact with no log at all
    (not even its "serving ... on http://" line); the handlers are put back."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        import openvino
    except ImportError as exc:
        raise BertcError(f"`target` openvino: the openvino package is not installed "
                         f"({exc}); run: {INSTALL_HINT}") from None
    finally:
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
    return openvino


def version() -> str:
    return load().get_version()


def compile_properties(inference_precision: str, streams: int, threads: int) -> dict:
    """The CPU plugin's properties for a served model: `streams` infer requests run
    at once on `threads` threads in all.  f32 compiles in ACCURACY mode (no
    plugin-chosen lower precision anywhere)."""
    return {"INFERENCE_PRECISION_HINT": inference_precision,
            "EXECUTION_MODE_HINT": "ACCURACY" if inference_precision == "f32"
            else "PERFORMANCE",
            "NUM_STREAMS": str(max(1, streams)),
            "INFERENCE_NUM_THREADS": str(max(1, threads))}


def served_properties(inference_precision: str, parallel: Optional[int] = None,
                      threads_per_stream: Optional[int] = None) -> dict:
    """compile_properties for `bertc serve --parallel N [--intra_op_threads T]`
    (defaults as serve's: N = 2, T = cores / N); verify compiles with these too."""
    from bertc.runtime import tf_settings
    parallel = parallel or tf_settings.DEFAULT_REPLICAS
    threads = threads_per_stream or tf_settings.default_intra_op_threads(parallel)
    return compile_properties(inference_precision, parallel, parallel * threads)
