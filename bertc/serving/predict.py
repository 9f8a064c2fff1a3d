"""`POST /v1/models/<name>:predict`: TF Serving's REST predict API over token ids.

Request (as TF Serving: https://www.tensorflow.org/tfx/serving/api_rest):
  row format   {"instances": [{"input_ids": [...], "input_mask": [...],
                               "segment_ids": [...]}, ...]}
  columnar     {"inputs": {"input_ids": [[...], ...], "input_mask": [[...], ...],
                           "segment_ids": [[...], ...]}}
  optional     "signature_name": "serving_default"
`input_mask` defaults to all ones and `segment_ids` to zeros over the given ids.
Rows may be any length up to the longest bucket and need not be padded: a row's
real length is its last masked-in position, and it runs in the smallest bucket
that holds it (padded with zeros, or cut where the mask is already 0).
Response: {"predictions": [...]} for rows, {"outputs": ...} for columnar; with one
output the name is omitted, as TF Serving does.
"""

import dataclasses
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from bertc.serving.validation import (InputError, instance_list, int_list,
                                      refuse_unknown_keys, require_object)

SIGNATURE_KEY = "serving_default"


@dataclasses.dataclass
class PredictRequest:
    rows: List[Tuple[int, Tuple[np.ndarray, ...]]]   # (bucket, feeds in artifact input order)
    columnar: bool


def parse_predict(doc, art, max_instances: int) -> PredictRequest:
    """Checks a predict body against the artifact; InputError names the first bad field."""
    doc = require_object(doc, "body")
    refuse_unknown_keys(doc, ("signature_name", "instances", "inputs"), "")
    signature = doc.get("signature_name", SIGNATURE_KEY)
    if signature != SIGNATURE_KEY:
        raise InputError("signature_name", f"{signature!r} not found; expected "
                         f"{SIGNATURE_KEY!r}")
    if ("instances" in doc) == ("inputs" in doc):
        raise InputError("body", "expected exactly one of 'instances' (row format) or "
                         "'inputs' (columnar format)")
    if "instances" in doc:
        instances = instance_list(doc["instances"], "instances", max_instances)
        rows = []
        for i, instance in enumerate(instances):
            field = f"instances[{i}]"
            instance = require_object(instance, field)
            refuse_unknown_keys(instance, art.inputs, field)
            rows.append(_row({n: instance[n] for n in art.inputs if n in instance},
                             {n: f"{field}.{n}" for n in art.inputs}, art))
        return PredictRequest(rows, columnar=False)
    inputs = require_object(doc["inputs"], "inputs")
    refuse_unknown_keys(inputs, art.inputs, "inputs")
    columns = {}
    for name, column in inputs.items():
        columns[name] = instance_list(column, f"inputs.{name}", max_instances)
    rows = columns_to_rows(columns, "inputs", lambda n: f"inputs.{n}", art)
    return PredictRequest(rows, columnar=True)


def columns_to_rows(columns: Dict[str, Sequence], where: str, field_of: Callable[[str], str],
                    art) -> List[Tuple[int, Tuple[np.ndarray, ...]]]:
    """(bucket, feeds) rows of named columns (each a sequence of rows of ints: REST's
    columnar `inputs`, or the tensors of the gRPC and v2 protocols); `where` names the
    columns together, `field_of(name)` one column, as the client's protocol spells it."""
    counts = {len(c) for c in columns.values()}
    if len(counts) > 1:
        raise InputError(where, "columns have different numbers of rows ("
                         + ", ".join(f"{n}: {len(c)}" for n, c in columns.items())
                         + "); expected the same batch for every input")
    if "input_ids" not in columns:
        raise InputError(field_of("input_ids"), "missing; expected token ids")
    return [_row({n: c[i] for n, c in columns.items()},
                 {n: f"{field_of(n)}[{i}]" for n in art.inputs}, art)
            for i in range(len(columns["input_ids"]))]


def _row(values: Dict[str, object], fields: Dict[str, str], art):
    """(bucket, feeds) of one instance; checks lengths, ranges and the mask."""
    if "input_ids" not in values:
        raise InputError(fields["input_ids"], "missing; expected token ids")
    max_len = art.max_seq_len
    ids = int_list(values["input_ids"], fields["input_ids"], max_len)
    length = len(ids)
    arrays = {"input_ids": np.asarray(ids, np.int64)}
    for name in ("input_mask", "segment_ids"):
        if name not in values:
            continue
        got = int_list(values[name], fields[name], max_len)
        if len(got) != length:
            raise InputError(fields[name], f"{len(got)} values; expected {length}, as many "
                             "as input_ids")
        arrays[name] = np.asarray(got, np.int64)
    if "input_mask" not in arrays:
        arrays["input_mask"] = np.ones(length, np.int64)
    if "segment_ids" not in arrays:
        arrays["segment_ids"] = np.zeros(length, np.int64)
    _check_range(arrays["input_ids"], 0, art.vocab_size, fields["input_ids"],
                 "token id", "the vocabulary")
    _check_range(arrays["input_mask"], 0, 2, fields["input_mask"], "mask value", "0 or 1")
    _check_range(arrays["segment_ids"], 0, art.type_vocab_size, fields["segment_ids"],
                 "segment id", "the token types")
    real = np.flatnonzero(arrays["input_mask"])
    if not real.size:
        raise InputError(fields["input_mask"], "no 1s; expected at least one real token")
    seq_len = art.bucket_for(int(real[-1]) + 1)
    feeds = []
    for name in art.inputs:
        feed = np.zeros(seq_len, np.int32)
        n = min(length, seq_len)
        feed[:n] = arrays[name][:n]
        feeds.append(feed)
    return seq_len, tuple(feeds)


def _check_range(values: np.ndarray, low: int, high: int, field: str, what: str,
                 expected: str) -> None:
    bad = np.flatnonzero((values < low) | (values >= high))
    if bad.size:
        i = int(bad[0])
        bounds = expected if expected == "0 or 1" else f"in [{low}, {high}) ({expected})"
        raise InputError(f"{field}[{i}]", f"{what} {int(values[i])} out of range; expected "
                         f"{bounds}")


def format_predict(results: Sequence[Dict[str, np.ndarray]], columnar: bool,
                   outputs: Sequence[str]) -> dict:
    """TF Serving's response for row-format or columnar requests."""
    if columnar:
        columns = {n: [r[n].tolist() for r in results] for n in outputs}
        return {"outputs": columns[outputs[0]] if len(outputs) == 1 else columns}
    if len(outputs) == 1:
        return {"predictions": [r[outputs[0]].tolist() for r in results]}
    return {"predictions": [{n: r[n].tolist() for n in outputs} for r in results]}
