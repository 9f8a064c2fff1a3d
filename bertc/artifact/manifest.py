"""`bertc.json`: what an artifact is, how it was built, and from what.

The manifest is the contract between `build` and everything downstream
(`verify`, `inspect`, `serve`): the source checkpoint and its checksums, the
config, every build option, the rewrites applied and their site counts, the
target (and the Neuron compile call), the SavedModel per sequence length, the
tokenizer settings, verify results and the versions of TensorFlow and bertc.
"""

import dataclasses
import datetime
import json
import os
import platform

from bertc.errors import BertcError

FILE_NAME = "bertc.json"
FORMAT = "bertc-artifact/1"


def versions() -> dict:
    import numpy
    import tensorflow as tf
    from bertc.version import __version__
    return {"bertc": __version__, "tensorflow": tf.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def make_manifest(*, options, source, config, head, num_labels, do_lower_case, passes, exact,
                  rewrite_reports, models, thresholds, compile_calls, verify_reports, stages,
                  hints, built_on=None) -> dict:
    """The manifest; `built_on`: the CPU the build ran on (bertc.runtime.machine)."""
    from bertc.model import modeling
    return {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "built_on": built_on,
        "source": source,
        "hints": hints,
        "config": config.to_dict(),
        # every option but --output: where the artifact lives is not part of it (it may move)
        "options": {k: (list(v) if isinstance(v, tuple) else v)
                    for k, v in dataclasses.asdict(options).items() if k != "output"},
        "head": head,
        "num_labels": num_labels,
        "batch_size": options.batch_size,
        "seq_lens": sorted(options.seq_lens),
        "inputs": list(modeling.INPUT_NAMES),
        "outputs": list(modeling.HEAD_OUTPUTS[head]),
        "tokenizer": {"vocab_file": "vocab.txt", "do_lower_case": do_lower_case},
        "rewrites": {"requested": list(passes), "exact": exact, "per_seq_len": rewrite_reports,
                     "warnings": sorted({r["warning"] for rs in rewrite_reports.values()
                                         for r in rs if r.get("warning")})},
        "target": {"name": options.target, "compile": compile_calls},
        "models": models,
        "verify": {"thresholds": thresholds, "per_seq_len": verify_reports},
        "stages": stages,
    }


def write(artifact_dir: str, doc: dict) -> None:
    with open(os.path.join(artifact_dir, FILE_NAME), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=False, default=_jsonable)
        f.write("\n")


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def read(artifact_dir: str) -> dict:
    """The manifest of an artifact directory; BertcError when it is not one."""
    path = os.path.join(artifact_dir, FILE_NAME)
    if not os.path.isfile(path):
        raise BertcError(f"{artifact_dir}: no {FILE_NAME}; expected an artifact written by "
                         "bertc build")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise BertcError(f"{path}: malformed JSON at line {e.lineno} ({e.msg})") from None
    if doc.get("format") != FORMAT:
        raise BertcError(f"{path}: format is {doc.get('format')!r}; expected {FORMAT!r}")
    return doc
