"""A bucket's probe: one batch of verify's text and the fp32 reference's outputs on it,
kept at build so that `bertc serve` can show, on the CPU it serves from, that the
artifact still answers within the bounds verify proved where it was built.

    ARTIFACT/probe/seq_<S>/input_ids.npy    int32 [B, S]   (also input_mask, segment_ids)
    ARTIFACT/probe/seq_<S>/<output>.npy     float32 [R, ...]: the reference's outputs
                                            on the R real rows (R <= B; the rest of the
                                            batch is all-padding dummy rows)
    bertc.json models[i]["probe"] = {"path": "probe/seq_<S>", "rows": R,
        "inputs": [...], "outputs": [...], "source": the text's path, "built": the checked run's
        statistics on these rows where the build ran (bertc.runtime.agreement)}

The rows are the first R of verify's text rows (for int8 the held-out split, never
calibration rows) on which the verified artifact agreed with the reference (the same
argmax), so verify's bounds hold on them where it was
built; anywhere else they are what is being checked.  Plain .npy files (numpy's
format, written the same bytes every time), covered by the artifact's checksums.
"""

import os
from typing import Dict, Tuple

import numpy as np

from bertc.errors import BertcError

DIRECTORY = "probe"


def write(artifact_dir: str, seq_len: int, feeds: Dict[str, np.ndarray], real_rows: int,
          outputs: Dict[str, np.ndarray], source, built: dict) -> dict:
    """Writes the probe of bucket `seq_len`; returns its manifest record."""
    relative = f"{DIRECTORY}/seq_{seq_len}"
    where = os.path.join(artifact_dir, *relative.split("/"))
    os.makedirs(where, exist_ok=True)
    for name, value in feeds.items():
        np.save(os.path.join(where, f"{name}.npy"), np.asarray(value, np.int32))
    for name, value in outputs.items():
        np.save(os.path.join(where, f"{name}.npy"), np.asarray(value, np.float32))
    return {"path": relative, "rows": int(real_rows), "inputs": sorted(feeds),
            "outputs": sorted(outputs),
            "source": source, "built": built}


def read(artifact_dir: str, record: dict) -> Tuple[Dict[str, np.ndarray], int,
                                                   Dict[str, np.ndarray]]:
    """(feeds {input: int32 [B, S]}, real rows, reference outputs {output: [R, ...]})
    of a probe record; BertcError naming the file that is missing or unreadable."""
    where = os.path.join(artifact_dir, *record["path"].split("/"))

    def load(name: str) -> np.ndarray:
        path = os.path.join(where, f"{name}.npy")
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BertcError(f"{path}: cannot read the probe ({e}); expected the .npy "
                             "bertc build wrote") from None

    return ({name: load(name) for name in record["inputs"]}, int(record["rows"]),
            {name: load(name) for name in record["outputs"]})
