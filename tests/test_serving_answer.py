"""`POST /v1/models/<name>:answer` on a real server (127.0.0.1, port 0): the fixture's
tiny BertForQuestionAnswering (tests/fixtures/qa_tiny, converted and built with buckets
128 and 192); answers equal Hugging Face's pipeline on one-window contexts (recorded in
tests/fixtures/qa_pipeline.json) and the library's front end on long ones; bad input is
a 400 naming the field."""

import json
import os

import pytest

from test_serving import request

from bertc.serving.server import BackgroundServer, ServerConfig

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
NAME = "qa"


@pytest.fixture(scope="module")
def fixture():
    with open(os.path.join(FIXTURES, "qa_pipeline.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    import bertc
    from bertc.sources import hf_convert
    root = tmp_path_factory.mktemp("qa_serve")
    ckpt = str(root / "google")
    hf_convert.convert(os.path.join(FIXTURES, "qa_tiny"), ckpt)
    art = str(root / "art")
    bertc.build(bertc.BuildOptions(output=art, ckpt=ckpt, batch_size=2, seq_lens=(128, 192),
                                   verify=False))
    return art


@pytest.fixture(scope="module")
def server(artifact):
    config = ServerConfig(model=artifact, model_name=NAME, port=0, parallel=1,
                          max_batch_delay_ms=5, max_instances=8)
    with BackgroundServer(config) as background:
        yield background


def offline(artifact, question, context):
    """The library's answer, the model run directly (TensorFlow's SavedModel loader)."""
    import bertc_testing as bt
    from bertc.text import question_answering as qa
    from bertc.text.tokenization import WordPieceTokenizer
    tok = WordPieceTokenizer.from_vocab_file(os.path.join(artifact, "vocab.txt"), True)
    win = qa.windows(tok, question, context, 192)
    out = bt.run_saved_model(os.path.join(artifact, "seq_192", "1"), win.features, 2)
    return qa.best_answer(win, context, out["start_logits"], out["end_logits"])


def test_answers_equal_the_pipeline_and_the_library(server, artifact, fixture):
    cases = fixture["cases"]
    short = [c for c in cases if len(c["windows"]) == 1][:4]
    long = [c for c in cases if c["kind"] == "long"][:2]
    body = {"instances": [{"question": c["question"], "context": c["context"]}
                          for c in short + long]}
    status, _, doc = request(server.url, "POST", f"/v1/models/{NAME}:answer", body)
    assert status == 200, doc
    got = doc["predictions"]
    for case, answer in zip(short, got):
        assert answer["windows"] == 1
        assert [answer["start"], answer["end"]] == case["window_best"][0]["chars_words"]
        assert answer["answer"] == case["context"][answer["start"]:answer["end"]]
    for case, answer in zip(long, got[len(short):]):
        assert answer["windows"] == len(case["windows"]) > 1
        want = offline(artifact, case["question"], case["context"])
        assert (answer["answer"], answer["start"], answer["end"]) == (want.answer, want.start,
                                                                      want.end)
        assert answer["score"] == pytest.approx(want.score, rel=1e-3)
    # one object, not a list: the same answer
    one = {"question": long[0]["question"], "context": long[0]["context"]}
    status, _, doc = request(server.url, "POST", f"/v1/models/{NAME}:answer", one)
    assert status == 200 and doc["predictions"][0] == got[len(short)]


@pytest.mark.parametrize("body,field", [
    ({"question": "", "context": "some text"}, "question"),
    ({"question": "who ?", "context": "   "}, "context"),
    ({"question": "who ?"}, "context"),
    ({"question": 3, "context": "text"}, "question"),
    ({"question": "who ?", "context": ["a"]}, "context"),
    ({"question": "who ?", "context": "x" * 100_001}, "context"),
    ({"question": "who ?", "context": "text", "extra": 1}, "extra"),
    ({"instances": [{"question": "q", "context": "c"}, {"question": "q"}]},
     "instances[1].context"),
    ({"instances": []}, "instances"),
    ([1, 2], "body"),
])
def test_bad_answer_input_is_a_400_naming_the_field(server, body, field):
    status, _, doc = request(server.url, "POST", f"/v1/models/{NAME}:answer", body)
    assert status == 400, doc
    assert doc["error"].startswith(f"{field}:"), doc


def test_answer_on_another_head_is_refused():
    from bertc.serving import answer
    from bertc.serving.validation import InputError
    with pytest.raises(InputError, match="head is 'embedding'.*span"):
        answer.parse_answer({"question": "q", "context": "c"}, 8, "embedding")


def test_client_squad_reports_em_f1_and_latency(server, fixture, tmp_path):
    """`bertc client --squad` against this server: gold = the pipeline's answers on four
    one-window contexts and a wrong gold on a fifth: EM = F1 = 80 exactly."""
    import bertc_testing as bt
    short = [c for c in fixture["cases"] if len(c["windows"]) == 1][:5]
    qas = []
    for i, case in enumerate(short):
        s, e = case["window_best"][0]["chars_words"]
        gold = case["context"][s:e] if i < 4 else "zzzz qqqq"
        qas.append({"context": case["context"], "qas": [
            {"id": f"q{i}", "question": case["question"], "answers": [{"text": gold}]}]})
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t",
                                                            "paragraphs": qas}]}))
    proc = bt.run_cli("client", "--squad", str(path), "--url", server.url, "--clients", "2",
                      "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["questions"] == 5 and summary["ok"] == 5 and summary["errors"] == 0
    assert summary["exact_match"] == pytest.approx(80.0)
    assert summary["f1"] == pytest.approx(80.0)
    assert set(summary["latency_ms"]) == {"p50", "p90", "p99"}
    assert summary["throughput_qps"] > 0
    bad = bt.run_cli("client", "--squad", str(tmp_path / "none.json"), "--url", server.url)
    assert bad.returncode != 0
    bt.assert_one_error(bad, "--squad", "file not found")
