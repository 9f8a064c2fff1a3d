"""`bertc inspect ARTIFACT_OR_CKPT`: what the rewrite pipeline did to the graph.

For an artifact: the unrewritten reference (rebuilt from the source recorded in
the manifest) against the SavedModel's graph, with the manifest's per-pass site
counts. For a checkpoint: its reference graph at the default shape against the CPU
default pipeline's output. Reports the op-type histogram before and after,
sites rewritten per pass, and parameters (Const elements) and bytes by dtype.
`--tensorboard DIR` writes both graphs, weights stripped, for TensorBoard's graph view.
"""

import collections
import copy
import os
from typing import Optional

import numpy as np
import tensorflow as tf

import rewrites
from bertc.sources import google_checkpoint as checkpoint
from bertc.sources import load
from bertc.model import freeze
from bertc.artifact import manifest
from bertc.model import modeling
from bertc import passes as rewriting
from bertc.runtime import runner as runners
from bertc.artifact import saved_model_reader
from bertc.errors import BertcError


def op_histogram(graph_def) -> dict:
    """op type -> node count, most frequent first."""
    return dict(collections.Counter(n.op for n in graph_def.node).most_common())


def parameter_stats(graph_def) -> dict:
    """dtype -> {'tensors', 'parameters', 'bytes'} over Const nodes of rank >= 1."""
    stats = {}
    for node in graph_def.node:
        if node.op != "Const":
            continue
        proto = node.attr["value"].tensor
        shape = [d.size for d in proto.tensor_shape.dim]
        if not shape:
            continue
        dtype = tf.as_dtype(proto.dtype)
        count = int(np.prod(shape))
        entry = stats.setdefault(dtype.name, {"tensors": 0, "parameters": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["parameters"] += count
        entry["bytes"] += count * dtype.size
    return stats


def strip_weights(graph_def):
    """A copy of `graph_def` whose large Const values are cleared (shape and dtype kept)."""
    return rewrites.detach_constants(graph_def, min_bytes=1024)[0]


def write_tensorboard(logdir: str, graphs: dict) -> None:
    """One TensorBoard run per graph (e.g. 'before', 'after'), weights stripped."""
    for name, graph_def in graphs.items():
        writer = tf.summary.create_file_writer(os.path.join(logdir, name))
        with writer.as_default():
            tf.summary.graph(strip_weights(graph_def))
        writer.close()


def _from_artifact(path: str) -> dict:
    doc = manifest.read(path)
    entry = doc["models"][0]
    ckpt = load.load_source(**load.manifest_source(doc), checksums=False)
    model = modeling.BertModel(ckpt.config, ckpt.weights)
    before = freeze.freeze_model(model, doc["head"], doc["batch_size"], entry["seq_len"],
                                 detach=True)
    after, _, _ = saved_model_reader.read_detached(os.path.join(path, entry["path"]),
                                                   with_values=False)
    sites = doc["rewrites"]["per_seq_len"].get(str(entry["seq_len"]), [])
    return {"kind": "artifact", "head": doc["head"], "seq_len": entry["seq_len"],
            "batch_size": doc["batch_size"], "before": before.graph_def, "after": after,
            "sites": sites}


def _from_checkpoint(path: str, batch_size: int, seq_len: int) -> dict:
    ckpt = checkpoint.load_checkpoint(path, checksums=False)
    head = modeling.default_head(ckpt.weights, ckpt.hints)
    model = modeling.BertModel(ckpt.config, ckpt.weights)
    before = freeze.freeze_model(model, head, batch_size, seq_len, detach=True)
    passes = rewriting.for_head(rewriting.resolve(target="cpu"), head)
    after, sites = rewriting.apply(before, passes, rewriting.pass_options())
    return {"kind": "checkpoint", "head": head, "seq_len": seq_len, "batch_size": batch_size,
            "before": before.graph_def, "after": after.graph_def, "sites": sites}


def inspect_path(path: str, tensorboard: Optional[str] = None, batch_size: int = 4,
                 seq_len: int = 128) -> dict:
    """The inspection report of an artifact or checkpoint directory (see module doc)."""
    if os.path.isfile(os.path.join(path, manifest.FILE_NAME)):
        found = _from_artifact(path)
    elif os.path.isdir(path) or os.path.isfile(path + ".index"):
        found = _from_checkpoint(path, batch_size, seq_len)
    else:
        raise BertcError(f"inspect: {path}: not found; expected an artifact (with bertc.json) "
                         "or a Google checkpoint directory")
    if tensorboard:
        write_tensorboard(tensorboard, {"before": found["before"], "after": found["after"]})
    return {
        "path": os.path.abspath(path), "kind": found["kind"], "head": found["head"],
        "batch_size": found["batch_size"], "seq_len": found["seq_len"],
        "ops_before": op_histogram(found["before"]), "ops_after": op_histogram(found["after"]),
        "nodes_before": len(found["before"].node), "nodes_after": len(found["after"].node),
        "sites": [{"name": s["name"], "sites": s["sites"], "warning": s.get("warning")}
                  for s in found["sites"]],
        "parameters_before": parameter_stats(found["before"]),
        "parameters_after": parameter_stats(found["after"]),
        "tensorboard": os.path.abspath(tensorboard) if tensorboard else None,
    }


def format_inspection(report: dict) -> str:
    lines = [f"{report['kind']} {report['path']}: head {report['head']}, batch "
             f"{report['batch_size']} x seq {report['seq_len']}",
             f"nodes: {report['nodes_before']} before, {report['nodes_after']} after", "",
             "sites rewritten per pass:"]
    lines += [f"  {s['name']:<18} {s['sites']:>4}" + (f"   ({s['warning']})" if s["warning"]
                                                      else "") for s in report["sites"]]
    if not report["sites"]:
        lines.append("  (no passes)")
    lines += ["", f"  {'op type':<28} {'before':>7} {'after':>7}"]
    ops = list(report["ops_before"]) + [o for o in report["ops_after"]
                                        if o not in report["ops_before"]]
    for op in ops:
        lines.append(f"  {op:<28} {report['ops_before'].get(op, 0):>7} "
                     f"{report['ops_after'].get(op, 0):>7}")
    lines += ["", "parameters (Const elements) by dtype:"]
    for when in ("before", "after"):
        for dtype, s in report[f"parameters_{when}"].items():
            lines.append(f"  {when:<7} {dtype:<9} {s['parameters']:>13,} in {s['tensors']:>4} "
                         f"tensors, {s['bytes'] / 2**20:9.1f} MiB")
    if report["tensorboard"]:
        lines += ["", f"TensorBoard graphs: tensorboard --logdir {report['tensorboard']}"]
    return "\n".join(lines)
