"""The sha256 of every file of an artifact, recorded at build, checked before use.

    bertc.json  "checksums": {"sha256": {"seq_32/1/saved_model.pb": "<hex>", ...}}

`record` hashes every file under the artifact directory as it is about to be
renamed into place (each SavedModel's files, the OpenVINO IR, the Neuron
SavedModels, vocab.txt), the manifest itself excepted. `check` re-hashes what was
recorded and refuses the first file that is missing or differs, naming it:
`bertc serve` and `bertc verify` call it before they load anything, so a
corrupted file (a disk error, a partial copy, a hand edit) is reported instead of
served. Files added later (TF Serving's configs, written after the manifest) are
not checked. An artifact built before checksums existed has no "checksums" and is
refused with a line saying to rebuild it or pass `skip_checksums`.
"""

import logging
import os
from typing import Dict

from bertc.artifact import manifest
from bertc.errors import BertcError
from bertc.sources.google_checkpoint import sha256_file

logger = logging.getLogger(__name__)

KEY = "checksums"
ALGORITHM = "sha256"


def record(artifact_dir: str) -> dict:
    """{"sha256": {relative path: hex digest}} of every file but the manifest."""
    digests: Dict[str, str] = {}
    for base, dirs, files in os.walk(artifact_dir):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(base, name)
            relative = os.path.relpath(full, artifact_dir).replace(os.sep, "/")
            if relative != manifest.FILE_NAME and not os.path.islink(full):
                digests[relative] = sha256_file(full)
    return {ALGORITHM: digests}


def check(artifact_dir: str, doc: dict, skip_checksums: bool = False) -> int:
    """Re-hashes every recorded file; BertcError naming the first that differs.

    Returns the number of files checked (0 when skipped)."""
    where = os.path.join(artifact_dir, manifest.FILE_NAME)
    if skip_checksums:
        logger.warning("%s: `skip_checksums` set; the artifact's files are not checked "
                       "against the sha256 recorded at build", artifact_dir)
        return 0
    recorded = (doc.get(KEY) or {}).get(ALGORITHM)
    if not isinstance(recorded, dict) or not recorded:
        raise BertcError(f"{where}: no file checksums (built by a bertc before they were "
                         "recorded); expected an artifact whose files can be checked: "
                         "rebuild it, or pass `skip_checksums` to use it unchecked")
    for relative, digest in recorded.items():
        path = os.path.join(artifact_dir, *relative.split("/"))
        if not os.path.isfile(path):
            raise BertcError(f"{path}: file not found; expected the file recorded in "
                             f"{where} (rebuild the artifact)")
        if sha256_file(path) != digest:
            raise BertcError(f"{path}: sha256 differs from the one recorded at build in "
                             f"{where}: the file is corrupted or was changed; rebuild the "
                             "artifact, or pass `skip_checksums` to use it anyway")
    return len(recorded)
