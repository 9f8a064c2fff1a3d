"""What the server knows of an artifact: its manifest, vocabulary and SavedModels.

Serving stands on what `bertc build` wrote (ARTIFACT/bertc.json, ARTIFACT/vocab.txt,
ARTIFACT/seq_<S>/1/) and never rebuilds the model: nothing here imports the
model code. Every missing piece is reported as a BertcError naming the path, and
every file is checked against the sha256 the build recorded (bertc/artifact/checksums.py)
before anything is loaded, unless `skip_checksums`.
"""

import dataclasses
import logging
import os
from typing import Optional, Tuple

from bertc.artifact import checksums, manifest
from bertc.errors import BertcError
from bertc.serving import paraphrase

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A built artifact, as the server sees it."""

    path: str
    manifest: dict
    batch_size: int
    seq_lens: Tuple[int, ...]          # ascending: the buckets
    head: str
    inputs: Tuple[str, ...]            # input_ids, input_mask, segment_ids
    outputs: Tuple[str, ...]
    vocab_file: str
    do_lower_case: bool
    vocab_size: int
    type_vocab_size: int
    target: str

    @property
    def default_name(self) -> str:
        """The model name clients use when --model_name is not given: the directory name."""
        return os.path.basename(os.path.normpath(self.path))

    @property
    def max_seq_len(self) -> int:
        return self.seq_lens[-1]

    def saved_model_dir(self, seq_len: int) -> str:
        """The CPU SavedModel of one bucket (ARTIFACT/seq_<S>/1)."""
        for entry in self.manifest["models"]:
            if entry["seq_len"] == seq_len:
                return os.path.join(self.path, entry["path"])
        raise KeyError(seq_len)

    def openvino_xml(self, seq_len: int) -> str:
        """The OpenVINO IR of one bucket (ARTIFACT/openvino/seq_<S>/model.xml)."""
        for entry in self.manifest["models"]:
            if entry["seq_len"] == seq_len and entry.get("openvino_path"):
                return os.path.join(self.path, entry["openvino_path"])
        raise KeyError(seq_len)

    def bucket_for(self, num_tokens: int) -> Optional[int]:
        """The smallest bucket that holds `num_tokens`; None when none does."""
        for seq_len in self.seq_lens:
            if num_tokens <= seq_len:
                return seq_len
        return None


def load_artifact(path: str, skip_checksums: bool = False) -> Artifact:
    """Reads and checks an artifact directory written by `bertc build`; its files'
    checksums too, unless skip_checksums."""
    if not os.path.isdir(path):
        raise BertcError(f"`model` {path}: not a directory; expected an artifact written by "
                         "bertc build (bertc.json, vocab.txt, seq_<S>/1/)")
    doc = manifest.read(path)
    try:
        models = doc["models"]
        seq_lens = tuple(sorted(int(m["seq_len"]) for m in models))
        config = doc["config"]
        art = Artifact(
            path=os.path.abspath(path), manifest=doc, batch_size=int(doc["batch_size"]),
            seq_lens=seq_lens, head=doc["head"], inputs=tuple(doc["inputs"]),
            outputs=tuple(doc["outputs"]),
            vocab_file=os.path.join(path, doc["tokenizer"]["vocab_file"]),
            do_lower_case=bool(doc["tokenizer"]["do_lower_case"]),
            vocab_size=int(config["vocab_size"]),
            type_vocab_size=int(config.get("type_vocab_size", 2)),
            target=doc.get("target", {}).get("name", "cpu"))
    except (KeyError, TypeError, ValueError) as e:
        raise BertcError(f"{os.path.join(path, manifest.FILE_NAME)}: missing or malformed "
                         f"field {e}; expected a manifest written by bertc build") from None
    if not seq_lens:
        raise BertcError(f"{os.path.join(path, manifest.FILE_NAME)}: 'models' is empty; "
                         "expected one SavedModel per sequence length")
    for seq_len in seq_lens:
        export_dir = art.saved_model_dir(seq_len)
        if not os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
            raise BertcError(f"{export_dir}: no saved_model.pb; expected the seq {seq_len} "
                             "SavedModel of the artifact")
    if not os.path.isfile(art.vocab_file):
        raise BertcError(f"{art.vocab_file}: file not found; expected the artifact's "
                         "vocabulary")
    if art.target == "openvino":
        _check_openvino(art)
    elif art.target != "cpu":
        logger.warning("%s: built for target %s; serving its CPU SavedModels (seq_<S>/1)",
                       path, art.target)
    checksums.check(art.path, doc, skip_checksums)
    return art


def _check_openvino(art: Artifact) -> None:
    """Every bucket's IR (model.xml + model.bin) is there."""
    for seq_len in art.seq_lens:
        try:
            xml = art.openvino_xml(seq_len)
        except KeyError:
            raise BertcError(f"{os.path.join(art.path, manifest.FILE_NAME)}: seq {seq_len} "
                             "has no openvino_path; expected one IR per bucket "
                             "(--target openvino)") from None
        for path in (xml, xml[:-len(".xml")] + ".bin"):
            if not os.path.isfile(path):
                raise BertcError(f"{path}: file not found; expected the seq {seq_len} "
                                 "OpenVINO IR of the artifact")


def paraphrase_threshold(art: Artifact, requested: Optional[float]) -> Tuple[float, str]:
    """The cosine threshold for embedding heads, and where it came from.

    Order: --paraphrase_threshold, the manifest (`paraphrase_threshold` at the top or
    in `hints`), else `paraphrase.DEFAULT_THRESHOLD` (calibrated on MRPC dev for
    all-MiniLM-L6-v2; see bertc/serving/paraphrase.py).
    """
    if requested is not None:
        if not -1.0 <= requested <= 1.0:
            raise BertcError(f"`paraphrase_threshold` {requested}: expected a cosine "
                             "similarity in [-1, 1]")
        return float(requested), "--paraphrase_threshold"
    for where, doc in (("manifest", art.manifest), ("manifest hints",
                                                    art.manifest.get("hints") or {})):
        value = doc.get("paraphrase_threshold")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), where
    return paraphrase.DEFAULT_THRESHOLD, "default (MiniLM on MRPC dev)"
