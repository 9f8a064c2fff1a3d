"""The reference every check compares with: the unrewritten fp32 graph of a source.

reference_graph(source, head, B, S) reads the checkpoint again from disk (so the
build's own arrays, handed to the rewrite pipeline, are not reused) and freezes
bertc's TensorFlow BERT at [B, S] for `head`, weights detached.
"""

from bertc.model import freeze, modeling
from bertc.sources import load


def reference_graph(source: dict, head: str, batch_size: int,
                    seq_len: int) -> freeze.FrozenGraph:
    """`source`: load_source's keyword arguments (ckpt=... or saved_model=...)."""
    ckpt = load.load_source(**source, checksums=False)
    model = modeling.BertModel(ckpt.config, ckpt.weights)
    frozen = freeze.freeze_model(model, head, batch_size, seq_len, detach=True)
    # the traced function keeps `model` alive in a reference cycle; its weights
    # must go with the returned graph, not wait for the garbage collector
    model.weights = ckpt.weights = None
    return frozen
