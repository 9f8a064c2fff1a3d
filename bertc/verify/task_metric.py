"""The task metric of verify: MRPC paraphrase accuracy and F1, artifact beside fp32.

Embedding head: each sentence is embedded alone and a pair is a paraphrase when
cos(e_a, e_b) >= the artifact's threshold (as `bertc serve`'s :classify decides;
bertc.text.pairs.paraphrase_threshold).  Classifier head: label = argmax of the
logits of [CLS] a [SEP] b [SEP].  Accuracy = mean(pred == label); F1 of class 1.
Pairs without labels are skipped; None when no pair has one.
"""

from typing import Dict, List, Optional

import numpy as np

from bertc.text import features as features_lib
from bertc.text import pairs as textdata
from bertc.verify import compare as verify_lib


def scores(predicted: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """{'accuracy', 'f1'} (percent) of 0/1 predictions against 0/1 labels."""
    predicted, labels = np.asarray(predicted, bool), np.asarray(labels, bool)
    tp = float(np.sum(predicted & labels))
    precision = tp / max(float(np.sum(predicted)), 1.0)
    recall = tp / max(float(np.sum(labels)), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": 100.0 * float(np.mean(predicted == labels)), "f1": 100.0 * f1}


def _output(factory, features, batch_size: int, name: str) -> np.ndarray:
    """Output `name` of one model on every row of `features` [N, ...]."""
    outputs = verify_lib.run_all(factory, verify_lib.pad_rows(features, batch_size))
    return np.concatenate([o[name] for o in outputs])


def predictions(factory, head: str, pairs: List, tokenizer, seq_len: int, batch_size: int,
                threshold: float) -> np.ndarray:
    """0/1 paraphrase decisions of one model (runner factory) on `pairs`."""
    if head == "embedding":
        a = _output(factory, tokenizer.encode_batch([(p.text_a, None) for p in pairs], seq_len),
                    batch_size, "embedding").astype(np.float64)
        b = _output(factory, tokenizer.encode_batch([(p.text_b or "", None) for p in pairs],
                                                    seq_len), batch_size,
                    "embedding").astype(np.float64)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        similarity = np.sum(a * b, 1) / np.maximum(norms, 1e-30)
        return similarity >= threshold
    logits = _output(factory, features_lib.pair_features(tokenizer, pairs, seq_len),
                     batch_size, "logits")
    return logits.argmax(-1) == 1


def task_report(artifact_factory, reference_factory, doc: dict, pairs: List, tokenizer,
                seq_len: int) -> Optional[dict]:
    """{'task', 'pairs', 'threshold', 'artifact': scores, 'fp32': scores} on the
    labelled `pairs`; None for heads without a pair decision or without labels."""
    head = doc["head"]
    labelled = [p for p in pairs if p.label is not None and (head != "embedding" or p.text_b)]
    if head not in ("embedding", "classifier") or not labelled:
        return None
    labels = np.array([p.label for p in labelled]) == 1
    threshold = textdata.paraphrase_threshold(doc) if head == "embedding" else None
    batch = doc["batch_size"]
    got = predictions(artifact_factory, head, labelled, tokenizer, seq_len, batch, threshold)
    want = predictions(reference_factory, head, labelled, tokenizer, seq_len, batch, threshold)
    return {"task": "MRPC paraphrase", "pairs": len(labelled), "threshold": threshold,
            "artifact": scores(got, labels), "fp32": scores(want, labels),
            "agreement": 100.0 * float(np.mean(got == want))}


def format_task(report: dict) -> str:
    a, f = report["artifact"], report["fp32"]
    at = f" at threshold {report['threshold']:g}" if report["threshold"] is not None else ""
    return (f"task: {report['task']} on {report['pairs']} held-out pairs{at}: accuracy "
            f"{a['accuracy']:.2f}% (fp32 {f['accuracy']:.2f}%), F1 {a['f1']:.2f} "
            f"(fp32 {f['f1']:.2f}), decisions equal {report['agreement']:.2f}%")
