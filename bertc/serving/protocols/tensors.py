"""Tensors in, tensors out: what the gRPC and v2 protocols share with REST :predict.

A request's inputs arrive as dense integer tensors, one per input name, each
[B, L] (B rows of L token ids). They become rows through the same checks as REST
(predict.columns_to_rows: names, lengths, token/mask/segment ranges, buckets); each
row runs in its own bucket through the one Batcher, and the answers are stacked
back into dense float32 tensors:

  per-row outputs (embedding, pooled_output, logits, probabilities)  [B, D]
  per-token outputs (sequence_output, start_logits, end_logits)      [B, L, ...]
                    each row's bucket output cut or zero-padded to the request's L
"""

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from bertc.serving import predict
from bertc.serving.validation import InputError

PER_TOKEN = ("sequence_output", "start_logits", "end_logits")
INT_DTYPES = (np.int32, np.int64)


def output_shape(art, name: str) -> List[int]:
    """The output's shape in a signature, -1 where it varies ([B, D], [B, S, D], [B, S])."""
    hidden = int(art.manifest["config"]["hidden_size"])
    if name == "sequence_output":
        return [-1, -1, hidden]
    if name in ("start_logits", "end_logits"):
        return [-1, -1]
    if name in ("logits", "probabilities"):
        return [-1, int(art.manifest.get("num_labels") or -1)]
    return [-1, hidden]


def rows_from_tensors(tensors: Dict[str, np.ndarray], art, max_instances: int,
                      where: str, field_of: Callable[[str], str]):
    """(bucket, feeds) rows of {input name: int [B, L] array}; InputError names the field."""
    for name, array in tensors.items():
        if name not in art.inputs:
            raise InputError(field_of(name), f"unknown input; expected only "
                             f"{', '.join(art.inputs)}")
        if array.dtype.type not in INT_DTYPES:
            raise InputError(f"{field_of(name)}.dtype", f"{array.dtype}; expected int32 or "
                             "int64 token ids")
        if array.ndim != 2 or 0 in array.shape:
            raise InputError(f"{field_of(name)}.shape", f"{list(array.shape)}; expected "
                             "[batch, tokens] with both at least 1")
        if array.shape[0] > max_instances:
            raise InputError(f"{field_of(name)}.shape", f"{array.shape[0]} rows; expected at "
                             f"most {max_instances} per request (--max_instances)")
    columns = {name: array.tolist() for name, array in tensors.items()}
    return predict.columns_to_rows(columns, where, field_of, art)


def check_outputs(requested: Sequence[str], art, field: str) -> List[str]:
    """The outputs to answer, in the order asked (all of the artifact's when none)."""
    for i, name in enumerate(requested):
        if name not in art.outputs:
            raise InputError(f"{field}[{i}]", f"{name!r} not an output of the model; "
                             f"expected one of {', '.join(art.outputs)}")
    return list(dict.fromkeys(requested)) or list(art.outputs)


def stack_outputs(results: Sequence[Dict[str, np.ndarray]], names: Sequence[str],
                  length: Optional[int]) -> Dict[str, np.ndarray]:
    """Dense float32 [B, ...] per output from per-row results (see module docstring)."""
    stacked = {}
    for name in names:
        values = [np.asarray(r[name], np.float32) for r in results]
        if name in PER_TOKEN and length is not None:
            values = [_fit(v, length) for v in values]
        stacked[name] = np.stack(values)
    return stacked


def _fit(value: np.ndarray, length: int) -> np.ndarray:
    """Cuts or zero-pads axis 0 to `length`."""
    if value.shape[0] >= length:
        return value[:length]
    pad = np.zeros((length - value.shape[0],) + value.shape[1:], value.dtype)
    return np.concatenate([value, pad])
