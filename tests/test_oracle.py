"""The real all-MiniLM-L6-v2, compiled by bertc, against Hugging Face transformers.

Inputs are real MRPC dev sentence pairs tokenized by bertc's WordPiece tokenizer;
only pairs that fit in 64 tokens untruncated are kept (so seq 64 sees the same
text seq 128 would). The SavedModels are loaded with TensorFlow's own SavedModel
loader (a TF1 Session, as TensorFlow Serving runs them) and compared with
`transformers.BertModel.from_pretrained` (PyTorch, eval) and with
sentence-transformers' mean pooling + L2 normalisation computed here.
"""

import os

import numpy as np
import pytest

import bertc_testing as bt
from conftest import MINILM_BATCH, MINILM_SEQ

ROWS = 12


@pytest.fixture(scope="module")
def mrpc_feeds(minilm_ckpt):
    from bertc.text.pairs import default_mrpc_path, read_mrpc_tsv
    from bertc.text.tokenization import WordPieceTokenizer
    path = default_mrpc_path()
    if path is None:
        pytest.skip("../shared/data/glue_mrpc_dev.tsv not found")
    pairs = read_mrpc_tsv(path)[:80]
    tokenizer = WordPieceTokenizer.from_vocab_file(os.path.join(minilm_ckpt, "vocab.txt"),
                                                   do_lower_case=True)
    full = tokenizer.encode_batch([(p.text_a, p.text_b) for p in pairs], seq_len=128)
    fits = np.flatnonzero(full["input_mask"].sum(1) <= MINILM_SEQ)[:ROWS]
    assert len(fits) == ROWS, "not enough short MRPC pairs"
    feeds = {k: np.ascontiguousarray(v[fits, :MINILM_SEQ]) for k, v in full.items()}
    assert not full["input_mask"][fits, MINILM_SEQ:].any()
    # Real pairs: both segments present, lengths vary (so padding is exercised).
    assert feeds["segment_ids"].any(1).all()
    assert len(set(feeds["input_mask"].sum(1))) > 3
    return feeds


@pytest.fixture(scope="module")
def hf_reference(minilm_hf_dir, mrpc_feeds):
    import transformers
    model = transformers.BertModel.from_pretrained(minilm_hf_dir).eval()
    hidden, pooled = bt.hf_forward(model, mrpc_feeds)
    assert np.abs(hidden).max() > 0.5  # a real, non-degenerate reference
    return hidden, pooled


def _saved_model(artifact):
    return os.path.join(artifact, f"seq_{MINILM_SEQ}", "1")


def test_sequence_output_matches_transformers(minilm_sequence_artifact, mrpc_feeds,
                                              hf_reference):
    out = bt.run_saved_model_session(_saved_model(minilm_sequence_artifact), mrpc_feeds,
                                     MINILM_BATCH)
    assert set(out) == {"sequence_output"}
    seq = out["sequence_output"]
    assert seq.shape == (ROWS, MINILM_SEQ, 384) and seq.dtype == np.float32
    hidden, _ = hf_reference
    err = bt.max_abs_valid(seq, hidden, mrpc_feeds["input_mask"])
    assert err < 1e-4, f"sequence_output max abs {err:.3g} vs transformers"


def test_embedding_matches_sentence_transformers_pooling(minilm_artifact, mrpc_feeds,
                                                         hf_reference):
    out = bt.run_saved_model_session(_saved_model(minilm_artifact), mrpc_feeds, MINILM_BATCH)
    assert set(out) == {"embedding"}
    emb = out["embedding"]
    assert emb.shape == (ROWS, 384)
    hidden, _ = hf_reference
    ref = bt.mean_pool_normalize(hidden, mrpc_feeds["input_mask"])
    cos = bt.row_cosines(emb, ref)
    assert cos.min() > 0.99999, cos
    err = float(np.abs(emb - ref).max())
    assert err < 1e-5, f"embedding max abs {err:.3g}"
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Mean pooling over real tokens only: the plain mean over all 64 positions differs.
    wrong = bt.mean_pool_normalize(hidden, np.ones_like(mrpc_feeds["input_mask"]))
    assert np.abs(emb - wrong).max() > 1e-3


def test_embedding_does_not_depend_on_padding_or_batch_neighbours(minilm_artifact, mrpc_feeds):
    """A row's embedding is the same alone (with dummy rows) as among real rows."""
    fn_out = bt.run_saved_model_session(_saved_model(minilm_artifact), mrpc_feeds,
                                        MINILM_BATCH)
    single = {k: v[3:4] for k, v in mrpc_feeds.items()}
    alone = bt.run_saved_model_session(_saved_model(minilm_artifact), single, MINILM_BATCH)
    np.testing.assert_allclose(alone["embedding"][0], fn_out["embedding"][3], atol=1e-6)


def test_pooled_output_matches_transformers_pooler(minilm_ckpt, mrpc_feeds, hf_reference):
    """The pooled head as bertc freezes it at the artifact's static shape (the export
    path itself is covered by the two artifacts above) vs transformers' pooler_output."""
    from bertc.sources import google_checkpoint as checkpoint
    from bertc.model import freeze
    from bertc.model import modeling
    ckpt = checkpoint.load_checkpoint(minilm_ckpt, checksums=False)
    model = modeling.BertModel(ckpt.config, ckpt.weights)
    frozen = freeze.freeze_model(model, "pooled", MINILM_BATCH, MINILM_SEQ)
    assert set(frozen.outputs) == {"pooled_output"}
    got = bt.run_graph_def(frozen.graph_def, ["pooled_output"], mrpc_feeds, MINILM_BATCH)
    _, pooled = hf_reference
    err = float(np.abs(got["pooled_output"] - pooled).max())
    assert err < 1e-4, f"pooled_output max abs {err:.3g} vs transformers pooler_output"


def test_default_build_is_the_embedding_head_and_verified(minilm_artifact):
    """bertc_hints.json from the sentence-transformers directory makes `embedding` the
    default head; the build's own verify ran on MRPC text and random rows and passed."""
    from bertc.artifact import manifest
    doc = manifest.read(minilm_artifact)
    assert doc["head"] == "embedding" and doc["options"]["head"] is None
    assert doc["outputs"] == ["embedding"]
    assert doc["hints"]["head"] == "embedding"
    assert doc["tokenizer"]["do_lower_case"] is True
    report = doc["verify"]["per_seq_len"][str(MINILM_SEQ)]
    assert report["passed"] and not report["failures"]
    assert report["inputs"]["text"]["rows"] == 8
    assert report["inputs"]["random"]["rows"] == 32
    stats = report["inputs"]["text"]["outputs"]["embedding"]
    assert stats["max_abs"] < 1e-5 and stats["min_cos"] > 0.99999
