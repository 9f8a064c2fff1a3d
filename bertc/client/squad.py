"""`bertc client --squad FILE.json`: every SQuAD v1.1 question sent to :answer, then
exact match and F1 (the official v1.1 evaluation script's), throughput and latency.

normalize(s) = lower-case, punctuation removed, the articles a/an/the removed,
whitespace collapsed.  exact_match = normalize(prediction) == normalize(gold);
f1 = 2 P R / (P + R) over the bag of normalised tokens (P = common / predicted,
R = common / gold; 0 without a common token).  Each question scores the max over its
gold answers; EM and F1 are the means over questions, in percent.  A question whose
request failed scores 0 (and is counted as an error).
"""

import asyncio
import collections
import dataclasses
import json
import re
import string
import time
from typing import Dict, List, Optional, Sequence

import aiohttp
import numpy as np

from bertc.client import loadgen
from bertc.client.report import PERCENTILES
from bertc.errors import BertcError

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


@dataclasses.dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str
    answers: tuple  # gold answer texts


def normalize_answer(s: str) -> str:
    """SQuAD v1.1's normalize_answer: lower, no punctuation, no articles, one space."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def f1_score(prediction: str, gold: str) -> float:
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(predicted) & collections.Counter(wanted)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(wanted)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def evaluate(questions: Sequence[Question], predictions: Dict[str, str]) -> dict:
    """{'exact_match', 'f1'} in percent; a question without a prediction scores 0."""
    em = f1 = 0.0
    for q in questions:
        if q.id not in predictions:
            continue
        p = predictions[q.id]
        em += max(exact_match_score(p, g) for g in q.answers)
        f1 += max(f1_score(p, g) for g in q.answers)
    n = max(len(questions), 1)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n, "questions": len(questions)}


def read_squad(path: str) -> List[Question]:
    """The questions of a SQuAD v1.1 file ({"data": [{"paragraphs": [{"context",
    "qas": [{"id", "question", "answers": [{"text"}]}]}]}]})."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise BertcError(f"--squad {path}: file not found; expected a SQuAD v1.1 JSON "
                         "file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BertcError(f"--squad {path}: not JSON ({e}); expected a SQuAD v1.1 "
                         "file") from None
    questions = []
    try:
        for a, article in enumerate(doc["data"]):
            for p, paragraph in enumerate(article["paragraphs"]):
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    answers = tuple(x["text"] for x in qa["answers"])
                    if not answers:
                        raise BertcError(f"--squad {path}: question {qa['id']!r} has no "
                                         "answers; expected SQuAD v1.1 (every question "
                                         "answered)")
                    questions.append(Question(str(qa["id"]), qa["question"], context,
                                              answers))
    except (KeyError, TypeError) as e:
        raise BertcError(f"--squad {path}: no field {e} where SQuAD v1.1 has one; expected "
                         "data[].paragraphs[].{context, qas[].{id, question, "
                         "answers[].text}}") from None
    if not questions:
        raise BertcError(f"--squad {path}: no questions; expected SQuAD v1.1 data")
    return questions


async def _ask(session, endpoint: str, q: Question) -> tuple:
    """(answer text or None, latency s, error or None) of one question."""
    start = time.perf_counter()
    try:
        async with session.post(endpoint, json={"question": q.question,
                                                "context": q.context}) as response:
            status, raw = response.status, await response.read()
    except asyncio.TimeoutError:
        return None, time.perf_counter() - start, "timeout"
    except aiohttp.ClientError as e:
        return None, time.perf_counter() - start, f"{e.__class__.__name__}: {e}"
    latency = time.perf_counter() - start
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, latency, f"HTTP {status}: body is not JSON"
    if status != 200:
        message = body.get("error") if isinstance(body, dict) else body
        return None, latency, f"HTTP {status}: {message}"
    try:
        return body["predictions"][0]["answer"], latency, None
    except (KeyError, IndexError, TypeError):
        return None, latency, "HTTP 200: expected {'predictions': [{'answer': ...}]}"


@dataclasses.dataclass
class Answers:
    """What the server answered: {question id: answer text}, the latency (s) of each
    answered question, the errors of the others, and the wall time of the whole run."""
    model_name: str
    predictions: Dict[str, str]
    latencies: List[float]
    errors: List[str]
    wall_s: float


async def ask_all(url: str, questions: Sequence[Question], clients: int = 4,
                  model_name: Optional[str] = None, timeout_s: float = 60.0) -> Answers:
    """Each question once, `clients` at a time."""
    if clients < 1:
        raise BertcError(f"--clients {clients}: expected a positive integer")
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=clients)
    predictions, latencies, errors = {}, [], []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if model_name is None:
            model_name = await loadgen.discover_model_name(session, url)
        endpoint = f"{url.rstrip('/')}/v1/models/{model_name}:answer"
        pending = iter(questions)

        async def client():
            for q in pending:
                answer, latency, error = await _ask(session, endpoint, q)
                if error is None:
                    predictions[q.id] = answer
                    latencies.append(latency)
                else:
                    errors.append(error)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - start
    return Answers(model_name, predictions, latencies, errors, wall)


def summarize(url: str, questions: Sequence[Question], answers: Answers,
              clients: int) -> dict:
    """The summary: EM/F1 of `answers` against the gold, throughput and latency."""
    ms = np.asarray(answers.latencies) * 1000
    wall, ok = answers.wall_s, len(answers.predictions)
    summary = {"url": url, "model_name": answers.model_name, "clients": clients,
               "questions": len(questions), "ok": ok, "errors": len(answers.errors),
               "error_examples": list(dict.fromkeys(answers.errors))[:3], "wall_s": wall,
               "throughput_qps": ok / wall if wall > 0 else 0.0,
               "latency_ms": ({f"p{p}": float(v) for p, v in
                               zip(PERCENTILES, np.percentile(ms, PERCENTILES))}
                              if len(ms) else None)}
    summary.update(evaluate(questions, answers.predictions))
    return summary


def write_predictions(path: str, answers: Answers) -> None:
    """{question id: answer text}, the predictions file SQuAD v1.1's evaluate-v1.1.py reads."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(answers.predictions, f, ensure_ascii=False, indent=1)
    except OSError as e:
        raise BertcError(f"--squad_predictions {path}: cannot write ({e.strerror})") from None


async def run_squad(url: str, questions: Sequence[Question], clients: int = 4,
                    model_name: Optional[str] = None, timeout_s: float = 60.0,
                    predictions_path: Optional[str] = None) -> dict:
    """Each question once, `clients` at a time; the summary with EM/F1 and latency
    (and, with predictions_path, the predictions written there)."""
    answers = await ask_all(url, questions, clients, model_name, timeout_s)
    if predictions_path:
        write_predictions(predictions_path, answers)
    return summarize(url, questions, answers, clients)


def format_text(summary: dict) -> str:
    lines = [f"SQuAD: {summary['questions']} questions to {summary['url']} model "
             f"{summary['model_name']!r} ({summary['clients']} clients) in "
             f"{summary['wall_s']:.2f} s",
             f"exact match {summary['exact_match']:.2f}, F1 {summary['f1']:.2f} "
             "(SQuAD v1.1 normalisation, max over gold answers)",
             f"throughput: {summary['throughput_qps']:.2f} questions/s ({summary['ok']} ok, "
             f"{summary['errors']} errors)"]
    if summary["latency_ms"]:
        lines.append("latency: " + ", ".join(f"p{p} {summary['latency_ms'][f'p{p}']:.1f} ms"
                                             for p in PERCENTILES))
    lines += [f"  e.g. {e}" for e in summary["error_examples"]]
    return "\n".join(lines)


def run(*args, **kwargs) -> dict:
    return asyncio.run(run_squad(*args, **kwargs))
