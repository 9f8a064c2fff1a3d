"""Calibration and held-out splits of the verification text (`--dtype int8`).

The pairs of one file are split by position: the first `calibration_rows` pairs
calibrate the quantizer, the rest are held out for verify.  With a separate
`--calibration_data` file, all of it (up to `calibration_rows`) calibrates and the
verify text is held out whole; a held-out pair whose text also appears in the
calibration pairs is dropped, so the two never share a pair.  Each split is
recorded as {path, rows [start, end), size, sha256 of its pairs' text}.
"""

import hashlib
from typing import List, Optional, Tuple

from bertc.errors import BertcError
from bertc.text import pairs as textdata

#: MRPC dev pairs that calibrate by default (the other 308 are held out).
DEFAULT_CALIBRATION_ROWS = 100


def pairs_sha256(pairs) -> str:
    """sha256 of the pairs' text, one `a<TAB>b` line each (b empty for a sentence)."""
    digest = hashlib.sha256()
    for p in pairs:
        digest.update(f"{p.text_a}\t{p.text_b or ''}\n".encode("utf-8"))
    return digest.hexdigest()


def _record(path: str, start: int, pairs) -> dict:
    return {"path": path, "rows": [start, start + len(pairs)], "size": len(pairs),
            "sha256": pairs_sha256(pairs)}


def split(verify_data: Optional[str], calibration_data: Optional[str] = None,
          calibration_rows: Optional[int] = None,
          verify_rows: Optional[int] = None) -> Tuple[List, List, dict]:
    """(calibration pairs, held-out pairs, record {'calibration', 'held_out'})."""
    rows = calibration_rows or DEFAULT_CALIBRATION_ROWS
    if isinstance(rows, bool) or rows < 1:
        raise BertcError(f"`calibration_rows` {rows}: expected a positive number of pairs")
    verify_path = verify_data or textdata.default_mrpc_path()
    if not verify_path:
        raise BertcError("`verify_data`: none given and ../shared/data/glue_mrpc_dev.tsv not "
                         "found; expected text to calibrate --dtype int8 on")
    held = textdata.read_pairs(verify_path)
    if calibration_data is None or calibration_data == verify_path:
        if len(held) <= rows:
            raise BertcError(f"{verify_path}: {len(held)} pairs; expected more than "
                             f"`calibration_rows` {rows}, so that some are held out")
        calibration, held, start = held[:rows], held[rows:], rows
        calibration_path = verify_path
    else:
        calibration = textdata.read_pairs(calibration_data)[:rows]
        calibration_path, start = calibration_data, 0
        seen = {(p.text_a, p.text_b) for p in calibration}
        held = [p for p in held if (p.text_a, p.text_b) not in seen]
        if not held:
            raise BertcError(f"{verify_path}: every pair is also in `calibration_data` "
                             f"{calibration_data}; expected held-out pairs")
    if verify_rows:
        held = held[:verify_rows]
    return calibration, held, {"calibration": _record(calibration_path, 0, calibration),
                               "held_out": _record(verify_path, start, held)}


def held_out_pairs(record: dict) -> List:
    """The held-out pairs a manifest's split record names, checked against its sha256."""
    held = record["held_out"]
    start, end = held["rows"]
    pairs = textdata.read_pairs(held["path"])
    calibration = record["calibration"]
    if calibration["path"] == held["path"]:
        pairs = pairs[start:end]
    else:
        # rebuilt as split() built it: the held-out file minus the calibration pairs
        cal = textdata.read_pairs(calibration["path"])[:calibration["size"]]
        seen = {(p.text_a, p.text_b) for p in cal}
        pairs = [p for p in pairs if (p.text_a, p.text_b) not in seen][:held["size"]]
    if pairs_sha256(pairs) != held["sha256"]:
        raise BertcError(f"{held['path']}: rows {start}-{end} differ from the held-out split "
                         "recorded in the manifest (sha256); expected the file the artifact "
                         "was calibrated against")
    return pairs
