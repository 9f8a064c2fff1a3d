"""One entry to every checkpoint source: a Google checkpoint or a BERT SavedModel.

`load_source(ckpt=...)` or `load_source(saved_model=..., bert_config=..., vocab=...)`
gives the validated Checkpoint (config, weights keyed by Google variable names,
vocab file, hints).  `manifest_source(doc)` gives the keyword arguments that read
an artifact's recorded source again (what verify and inspect do).
"""

import os
from typing import Optional

from bertc.sources import google_checkpoint


def load_source(ckpt: Optional[str] = None, saved_model: Optional[str] = None,
                bert_config: Optional[str] = None, vocab: Optional[str] = None,
                checksums: bool = True) -> google_checkpoint.Checkpoint:
    """The checkpoint at `ckpt`, or the BERT weights of the SavedModel `saved_model`."""
    if saved_model:
        from bertc.sources import saved_model as saved_model_source
        return saved_model_source.load_saved_model(saved_model, bert_config, vocab,
                                                   checksums=checksums)
    loaded = google_checkpoint.load_checkpoint(ckpt, checksums=checksums)
    if vocab:
        loaded.vocab_file = vocab
    return loaded


def manifest_source(doc: dict) -> dict:
    """load_source's keyword arguments for the source an artifact's manifest records."""
    src = doc["source"]
    if src["kind"] == "google_checkpoint":
        return {"ckpt": os.path.join(src["path"],
                                     src.get("prefix", google_checkpoint.DEFAULT_PREFIX))}
    return {"saved_model": src["path"], "bert_config": src.get("bert_config"),
            "vocab": src.get("vocab")}
