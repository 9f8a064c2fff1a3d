"""A served `:answer` load test: a real `bertc serve` child (127.0.0.1, port 0) on the
fixture's tiny span artifact (tests/fixtures/qa_tiny, buckets 128 and 192) and the real
`bertc client --squad` with 6 concurrent clients over a SQuAD v1.1 file of 36
questions on the fixture's 18 contexts (12 of one window, 6 of 2-7 windows).  Every
served answer must equal the library's answer run offline (TensorFlow's SavedModel
loader, not the server's runner), and the reported EM/F1 must be what those answers
score against golds made to be right on 24 questions and share no token on 12:
exactly 66.67 both.  Bounded: the server gets 120 s to start, the client 120 s."""

import json
import os
import subprocess
import threading

import pytest

import bertc_testing as bt

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
NAME = "qa"
CLIENTS = 6


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    import bertc
    from bertc.sources import hf_convert
    root = tmp_path_factory.mktemp("qa_served")
    ckpt = str(root / "google")
    hf_convert.convert(os.path.join(FIXTURES, "qa_tiny"), ckpt)
    art = str(root / "art")
    bertc.build(bertc.BuildOptions(output=art, ckpt=ckpt, batch_size=2, seq_lens=(128, 192),
                                   verify=False))
    return art


@pytest.fixture(scope="module")
def served(artifact):
    """The URL of `bertc serve --model ARTIFACT --port 0` in a child process."""
    proc = subprocess.Popen(bt.cli_command("serve", "--model", artifact, "--model_name", NAME,
                                           "--port", "0", "--max_batch_delay_ms", "5"),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=bt.cli_env(), cwd=bt.REPO_ROOT)
    try:
        found, lines = bt.wait_for_log(proc, url=bt.SERVING_URL)
        threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
        yield found["url"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def offline_answers(artifact, questions):
    """{id: answer text} from the library's front end, the SavedModel run directly."""
    from bertc.text import question_answering as qa
    from bertc.text.tokenization import WordPieceTokenizer
    tok = WordPieceTokenizer.from_vocab_file(os.path.join(artifact, "vocab.txt"), True)
    out = {}
    for qid, question, context in questions:
        win = qa.windows(tok, question, context, 192)
        logits = bt.run_saved_model(os.path.join(artifact, "seq_192", "1"), win.features, 2)
        out[qid] = qa.best_answer(win, context, logits["start_logits"],
                                  logits["end_logits"]).answer
    return out


def test_concurrent_clients_get_the_offline_answers_and_a_consistent_em_f1(
        served, artifact, tmp_path):
    with open(os.path.join(FIXTURES, "qa_pipeline.json"), encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    questions = []  # (id, question, context): each context with its own question and another's
    for i, case in enumerate(cases):
        for j, asked in enumerate((case, cases[(i + 5) % len(cases)])):
            questions.append((f"c{i}q{j}", asked["question"], case["context"]))
    want = offline_answers(artifact, questions)
    wrong = {qid for k, (qid, _, _) in enumerate(questions) if k % 3 == 2}
    paragraphs = [{"context": context, "qas": [{
        "id": qid, "question": question,
        "answers": [{"text": "zzzz qqqq" if qid in wrong else want[qid]}]}]}
        for qid, question, context in questions]
    squad_file = tmp_path / "squad.json"
    squad_file.write_text(json.dumps({"version": "1.1", "data": [
        {"title": "mrpc", "paragraphs": paragraphs}]}))
    predictions_file = tmp_path / "predictions.json"

    proc = bt.run_cli("client", "--squad", squad_file, "--url", served, "--clients", CLIENTS,
                      "--squad_predictions", predictions_file, "--json", timeout=120)

    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["questions"], summary["ok"], summary["errors"]) == (36, 36, 0)
    assert summary["clients"] == CLIENTS and summary["model_name"] == NAME
    got = json.loads(predictions_file.read_text(encoding="utf-8"))
    assert got == want  # every answer, text for text
    assert len(set(want.values())) > 10  # the answers differ between questions
    assert summary["exact_match"] == pytest.approx(100 * 24 / 36)
    assert summary["f1"] == pytest.approx(100 * 24 / 36)
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    assert summary["throughput_qps"] == pytest.approx(36 / summary["wall_s"])


def test_squad_predictions_needs_squad(tmp_path):
    proc = bt.run_cli("client", "--squad_predictions", tmp_path / "p.json", "--url",
                      "http://127.0.0.1:9")
    assert proc.returncode != 0
    bt.assert_one_error(proc, "--squad_predictions", "--squad")
