"""`bertc verify ARTIFACT`: an artifact against the reference built from its source.

The reference is the unrewritten fp32 model built from the checkpoint recorded in
the manifest (its checksums are checked first, so a changed checkpoint is named,
not silently compared); the artifact's own files are checked against the sha256
recorded at build before any is loaded (unless `skip_checksums`). Thresholds come from the manifest (exact or approximate
build) unless given.
"""

import logging
import os
from typing import Optional

from bertc import passes as rewriting
from bertc.artifact import checksums as artifact_checksums
from bertc.artifact import manifest
from bertc.errors import BertcError
from bertc.model import freeze, modeling
from bertc.runtime import openvino_settings
from bertc.runtime import runner as runners
from bertc.sources import google_checkpoint as checkpoint
from bertc.sources import load
from bertc.text import features as features_lib
from bertc.text import splits
from bertc.text import tokenization
from bertc.verify import compare as verify_lib
from bertc.verify import runs as verify_runs


def check_checksums(doc: dict) -> None:
    src = doc["source"]
    for name, digest in (src.get("files") or {}).items():
        path = name if os.path.isabs(name) else os.path.join(src["path"], name)
        if digest is None or not os.path.isfile(path):
            continue
        if checkpoint.sha256_file(path) != digest:
            raise BertcError(f"{path}: sha256 differs from the one recorded in the artifact's "
                             "manifest; expected the checkpoint the artifact was built from")


def verify_artifact(artifact: str, data: str = None, rows: int = None, thresholds: dict = None,
                    seq_lens=None, random_rows: int = 32, per_pass: bool = False,
                    intra_op_threads: int = None, inter_op_threads: int = None,
                    skip_checksums: bool = False) -> dict:
    """Verifies every (or the given) sequence length of an artifact.

    intra_op_threads / inter_op_threads: the served run's threads (default: serve's);
    each run's settings are recorded in the report (`runs[name]['config']`).
    skip_checksums: do not check the artifact's files against their recorded sha256
    (logged as a warning); without it a changed file is refused, naming it.

    With per_pass, also applies the artifact's passes one prefix at a time to the
    reference and reports the error after each (see bertc.verify.per_pass).
    Returns {'passed': bool, 'per_seq_len': {S: report}, 'per_pass': {S: rows}}.
    """
    for flag, value in (("intra_op_threads", intra_op_threads),
                        ("inter_op_threads", inter_op_threads)):
        if value is not None and (isinstance(value, bool) or value < 1):
            raise BertcError(f"`{flag}` {value}: expected a positive integer")
    doc = manifest.read(artifact)
    artifact_checksums.check(artifact, doc, skip_checksums)
    check_checksums(doc)
    ckpt = load.load_source(**load.manifest_source(doc), checksums=False)
    model = modeling.BertModel(ckpt.config, ckpt.weights)
    thresholds = thresholds or doc["verify"]["thresholds"]
    vocab = os.path.join(artifact, doc["tokenizer"]["vocab_file"])
    reports, pass_rows = {}, {}
    tokenizer = tokenization.WordPieceTokenizer.from_vocab_file(
        vocab, doc["tokenizer"]["do_lower_case"])
    held_out = None if data else held_out_split(doc)  # int8: pairs not calibrated on
    if held_out is not None and rows:
        held_out = held_out[:rows]
    for entry in doc["models"]:
        seq_len = entry["seq_len"]
        if seq_lens and seq_len not in seq_lens:
            continue
        reference = freeze.freeze_model(model, doc["head"], doc["batch_size"], seq_len,
                                        detach=True)  # the model's arrays, not a copy
        if held_out is not None:  # an int8 artifact: only pairs it was not calibrated on
            features = features_lib.pair_features(tokenizer, held_out, seq_len)
            source = f"{split_record(doc)['held_out']['path']} (held-out split)"
        else:
            features, source = features_lib.text_features(
                data, vocab, doc["tokenizer"]["do_lower_case"], seq_len, rows)
        runs = verify_runs.artifact_runs(artifact, entry,
                                         openvino_settings.artifact_precision(doc),
                                         intra_op_threads, inter_op_threads)
        reports[str(seq_len)] = verify_lib.verify_runners(
            runs, lambda: runners.graph_def_runner(reference), doc["batch_size"], seq_len,
            features, ckpt.config.vocab_size, ckpt.config.type_vocab_size, thresholds,
            random_rows=random_rows, text_source=source,
            checked_sets=("text",) if held_out is not None else None)
        task_pairs = held_out  # int8 artifacts: the task metric beside fp32's
        if task_pairs:
            from bertc.verify import task_metric
            task = task_metric.task_report(
                next(iter(runs.values()))[0], lambda: runners.graph_def_runner(reference),
                doc, task_pairs, tokenizer, seq_len)
            if task:
                reports[str(seq_len)]["task"] = task
                logging.info("verify %s", task_metric.format_task(task))
        if per_pass and doc["rewrites"]["requested"]:
            from bertc.verify import per_pass as per_pass_lib
            sets = verify_lib.input_sets(features, source, seq_len, ckpt.config.vocab_size,
                                         ckpt.config.type_vocab_size, random_rows)
            batches = [b for feats, _ in sets.values()
                       for b in verify_lib.pad_rows(feats, doc["batch_size"])]
            pass_rows[str(seq_len)] = per_pass_lib.per_pass_report(
                reference, doc["rewrites"]["requested"], pass_options(doc), batches,
                compiled=compiled_step(artifact, entry, doc))
    if not reports:
        raise BertcError(f"`seq_len`: the artifact has lengths "
                         f"{[m['seq_len'] for m in doc['models']]}; none selected")
    passed = all(r["passed"] for r in reports.values())
    logging.info("verify %s: %s", artifact, "passed" if passed else "FAILED")
    return {"artifact": os.path.abspath(artifact), "passed": passed, "per_seq_len": reports,
            "per_pass": pass_rows}


def split_record(doc: dict) -> Optional[dict]:
    """The calibration / held-out split an int8 artifact recorded; None otherwise."""
    return (((doc.get("target") or {}).get("openvino") or {}).get("int8") or {}).get("splits")


def held_out_split(doc: dict) -> Optional[list]:
    record = split_record(doc)
    return splits.held_out_pairs(record) if record else None


def compiled_step(artifact: str, entry: dict, doc: dict):
    """(name, runner factory) of the target's compile, per_pass's last step; None on
    targets whose SavedModel is what runs."""
    if not entry.get("openvino_path"):
        return None
    runs = verify_runs.artifact_runs(artifact, entry, openvino_settings.artifact_precision(doc))
    factory, _ = runs["openvino"]
    # int8: the fp32 compile is exact (verified at build), so this row is the
    # quantization step's own error
    return ("openvino int8" if doc["options"].get("dtype") == "int8" else "openvino"), factory


def pass_options(doc: dict) -> dict:
    """The options the build handed to its passes (dtype, aggressive, target)."""
    opts = doc["options"]
    return rewriting.pass_options(opts.get("dtype", "float32"),
                                  opts.get("aggressive_optimizations", False),
                                  opts.get("target", "cpu"))
