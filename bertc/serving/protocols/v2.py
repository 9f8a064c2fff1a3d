"""The Open Inference Protocol v2 (KServe, Triton) as both its transports share it.

  model metadata   {name, versions ["1"], platform, inputs, outputs:
                    [{name, datatype, shape}]}   inputs INT32 [-1, -1], outputs FP32
  infer            inputs [{name, datatype INT32 | INT64, shape [B, L], data}]
                   outputs [{name}] (optional; all when absent)
                -> outputs [{name, datatype FP32, shape, data}]
The tensors become rows through REST's checks and the one Batcher (tensors.py).
Field names in refusals: `inputs["input_ids"].shape`, `outputs[1]`, `model_name`.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from bertc.serving.protocols import calls, tensors
from bertc.serving.validation import InputError

DATATYPES = {"INT32": np.dtype("<i4"), "INT64": np.dtype("<i8")}
OUTPUT_DATATYPE = "FP32"
PLATFORM = "tensorflow_savedmodel"
SERVER_NAME = "bertc"
EXTENSIONS = ("binary_tensor_data",)


def input_field(name: str) -> str:
    return f'inputs["{name}"]'


def check_model(server, name: str, version: Optional[str]) -> None:
    calls.check_model(server, name, version, "model_name", "model_version")


def metadata(server) -> dict:
    art = server.artifact
    return {"name": server.name, "versions": ["1"], "platform": PLATFORM,
            "inputs": [{"name": n, "datatype": "INT32", "shape": [-1, -1]}
                       for n in art.inputs],
            "outputs": [{"name": n, "datatype": OUTPUT_DATATYPE,
                         "shape": tensors.output_shape(art, n)} for n in art.outputs]}


def check_shape(shape, field: str) -> List[int]:
    if (not isinstance(shape, (list, tuple))
            or not all(type(s) is int and s >= 0 for s in shape)):
        raise InputError(f"{field}.shape", f"{shape!r}; expected a list of sizes "
                         "[batch, tokens]")
    return list(shape)


def dtype_of(datatype, field: str) -> np.dtype:
    if datatype not in DATATYPES:
        raise InputError(f"{field}.datatype", f"{datatype!r}; expected INT32 or INT64 "
                         "token ids")
    return DATATYPES[datatype]


def from_bytes(raw: bytes, dtype: np.dtype, shape: Sequence[int], field: str) -> np.ndarray:
    """A tensor sent as raw little-endian bytes (binary extension, raw_input_contents)."""
    count = int(np.prod(shape)) if len(shape) else 1
    if len(raw) != count * dtype.itemsize:
        raise InputError(field, f"{len(raw)} bytes; expected {count * dtype.itemsize} for "
                         f"shape {list(shape)}")
    return np.frombuffer(raw, dtype).reshape(shape)


def from_values(values: Sequence[int], dtype: np.dtype, shape: Sequence[int],
                field: str) -> np.ndarray:
    count = int(np.prod(shape)) if len(shape) else 1
    if len(values) != count:
        raise InputError(field, f"{len(values)} values; expected {count} for shape "
                         f"{list(shape)}")
    return np.asarray(values, dtype).reshape(shape)


async def infer(server, infer_fn, arrays: Dict[str, np.ndarray],
                requested: Sequence[str]) -> Tuple[List[str], Dict[str, np.ndarray]]:
    """(output names, {name: float32 [B, ...]}) of the named input tensors."""
    art = server.artifact
    names = tensors.check_outputs(requested, art, "outputs")
    rows = tensors.rows_from_tensors(arrays, art, server.config.max_instances, "inputs",
                                     input_field)
    results = await infer_fn(server, rows)
    return names, tensors.stack_outputs(results, names, arrays["input_ids"].shape[1])
