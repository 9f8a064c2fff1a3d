"""bertc's question-answering front end (bertc.text.question_answering) against Hugging
Face's `pipeline("question-answering")` (transformers 4.57), recorded on a tiny
BertForQuestionAnswering in tests/fixtures/ by tests/fixtures/make_qa_fixture.py.

The fixture's model is converted by `bertc convert` and built with the span head; the
windows bertc cuts (run_squad's doc_stride 128) are the pipeline's with its stride set
to window length - 128, token for token and offset for offset; on contexts that fit
one window bertc's answer is the pipeline's (text, character offsets, score)."""

import json
import os

import numpy as np
import pytest

import bertc_testing as bt

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
BATCH = 4


@pytest.fixture(scope="module")
def fixture():
    with open(os.path.join(FIXTURES, "qa_pipeline.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def qa_artifact(fixture, tmp_path_factory):
    import bertc
    from bertc.sources import hf_convert
    root = tmp_path_factory.mktemp("qa")
    ckpt = str(root / "google")
    hf_convert.convert(os.path.join(FIXTURES, "qa_tiny"), ckpt)
    art = str(root / "art")
    result = bertc.build(bertc.BuildOptions(output=art, ckpt=ckpt, batch_size=BATCH,
                                            seq_lens=(fixture["seq_len"],), verify_rows=4))
    assert result.manifest["head"] == "span"
    return art


@pytest.fixture(scope="module")
def answers(fixture, qa_artifact):
    """(case, Windows, bertc Answer word-aligned, token-aligned) for every case."""
    from bertc.text import question_answering as qa
    from bertc.text.tokenization import WordPieceTokenizer
    tokenizer = WordPieceTokenizer.from_vocab_file(os.path.join(qa_artifact, "vocab.txt"),
                                                   do_lower_case=True)
    export = os.path.join(qa_artifact, f"seq_{fixture['seq_len']}", "1")
    out = []
    for case in fixture["cases"]:
        win = qa.windows(tokenizer, case["question"], case["context"], fixture["seq_len"],
                         doc_stride=fixture["doc_stride"],
                         max_query_length=fixture["max_query_length"])
        logits = bt.run_saved_model(export, win.features, BATCH)
        args = (win, case["context"], logits["start_logits"], logits["end_logits"])
        out.append((case, win, qa.best_answer(*args, max_answer_length=30),
                    qa.best_answer(*args, max_answer_length=30, align_to_words=False)))
    return out


def test_windows_are_the_pipelines_with_overlap_window_minus_128(answers):
    kinds = {"short": 0, "long": 0}
    for case, win, _, _ in answers:
        assert win.count == len(case["windows"]), case["question"]
        for k, window in enumerate(case["windows"]):
            n = len(window["input_ids"])
            assert win.features["input_ids"][k, :n].tolist() == window["input_ids"]
            assert win.features["input_mask"][k].sum() == n
            got = win.offsets[win.starts[k]:win.starts[k] + win.lengths[k]]
            assert [list(o) for o in got] == window["context_offsets"]
        if win.count > 1:  # doc_stride is the step between window starts
            assert np.diff(win.starts).tolist() == [128] * (win.count - 1)
        kinds[case["kind"]] += win.count > 1
    assert kinds["long"] == 6  # every long context needs several windows


def test_one_window_answers_equal_the_pipeline(answers):
    checked = 0
    for case, win, words, tokens in answers:
        if win.count != 1:
            continue
        hf = case["answer_tokens"]  # align_to_words=False
        assert (tokens.answer, tokens.start, tokens.end) == (hf["answer"], hf["start"],
                                                             hf["end"]), case["question"]
        assert tokens.score == pytest.approx(hf["score"], rel=1e-3)
        best = case["window_best"][0]  # the pipeline's span, word-aligned as it aligns
        assert [words.start, words.end] == best["chars_words"], case["question"]
        assert words.answer == case["context"][words.start:words.end]
        checked += 1
    assert checked >= 10


def test_long_context_answers_come_from_max_context_starts(answers):
    """Across windows bertc compares start + end logits (run_squad); on each window it
    picked from, the span's start has max context and lies within the answer limit."""
    for case, win, _, tokens in answers:
        if win.count == 1:
            continue
        assert 0 <= tokens.window < win.count and tokens.windows == win.count
        assert tokens.answer and tokens.answer == case["context"][tokens.start:tokens.end]
        starts = [o[0] for o in win.offsets]
        token_s = starts.index(tokens.start)
        k = tokens.window
        assert win.max_context[k, token_s - win.starts[k] + win.query_tokens + 2]
