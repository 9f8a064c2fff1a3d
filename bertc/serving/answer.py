"""`POST /v1/models/<name>:answer`: extractive question answering on a span-head artifact.

Request: one instance, or up to --max_instances of them:
  {"question": "...", "context": "..."}
  {"instances": [{"question": ..., "context": ...}, ...]}
Each context is cut into run_squad's windows (bertc.text.question_answering: question
cut to 64 tokens, windows of the longest bucket's length, doc_stride 128); every window
is a row of the server's batcher (so one request can fill several batches), in the
smallest bucket that holds it, and the answer is the best span over all its windows.
Response: {"predictions": [{"answer", "score", "start", "end", "windows"}]}: the text,
p_start * p_end in its window, character offsets [start, end) into the context, and
the number of windows run.
Refused (400, naming the field): a missing, empty or non-string question or context,
unknown keys, a context over MAX_CONTEXT_CHARS characters; a model whose head is not
`span` answers 400 at once.
"""

import asyncio
import dataclasses
from typing import List, Sequence

import numpy as np

from bertc.errors import BertcError
from bertc.serving.validation import (InputError, instances_or_one, refuse_unknown_keys,
                                      text_field)
from bertc.text import question_answering as qa

HEAD = "span"
_KEYS = ("question", "context")
#: The longest context accepted (characters): 100 windows of 384 at most for
#: English text (about 5 characters a token), a bounded amount of work per request.
MAX_CONTEXT_CHARS = 100_000


@dataclasses.dataclass(frozen=True)
class QuestionInstance:
    question: str
    context: str
    field: str  # "" or "instances[3]"


def parse_answer(doc, max_instances: int, head: str) -> List[QuestionInstance]:
    if head != HEAD:
        raise InputError("", f"the model's head is '{head}', which :answer does not "
                         "answer; expected a span head (build with --head span)")
    return instances_or_one(doc, max_instances, _instance)


def _instance(obj: dict, field: str) -> QuestionInstance:
    refuse_unknown_keys(obj, _KEYS, field)
    values = {}
    for key in _KEYS:
        where = f"{field}.{key}" if field else key
        if key not in obj:
            raise InputError(where, "missing; expected a string")
        values[key] = text_field(obj[key], where)
    if len(values["context"]) > MAX_CONTEXT_CHARS:
        where = f"{field}.context" if field else "context"
        raise InputError(where, f"{len(values['context'])} characters; expected at most "
                         f"{MAX_CONTEXT_CHARS} (this server's limit)")
    return QuestionInstance(values["question"], values["context"], field)


def plan(instances: Sequence[QuestionInstance], tokenizer, art):
    """(windows per instance, batcher rows): every window of every instance, each in
    the smallest bucket that holds its tokens."""
    planned, rows = [], []
    for inst in instances:
        try:
            win = qa.windows(tokenizer, inst.question, inst.context, art.max_seq_len)
        except BertcError as e:  # a question too long for the bucket, a context of no token
            key = "question" if str(e).startswith("`seq_len`") else "context"
            where = f"{inst.field}.{key}" if inst.field else key
            raise InputError(where, str(e).split(": ", 1)[-1]) from None
        planned.append(win)
        for k in range(win.count):
            seq_len = art.bucket_for(int(win.features["input_mask"][k].sum()))
            rows.append((seq_len, tuple(np.asarray(win.features[n][k, :seq_len], np.int32)
                                        for n in art.inputs)))
    return planned, rows


def format_answers(instances, planned, results: Sequence[dict], seq_len: int) -> List[dict]:
    """One answer per instance from its windows' start/end logits (rows in order)."""
    answers, i = [], 0
    for inst, win in zip(instances, planned):
        start = np.zeros((win.count, seq_len), np.float32)
        end = np.zeros((win.count, seq_len), np.float32)
        for k in range(win.count):
            row = results[i + k]
            start[k, :len(row["start_logits"])] = row["start_logits"]
            end[k, :len(row["end_logits"])] = row["end_logits"]
        i += win.count
        best = qa.best_answer(win, inst.context, start, end)
        answers.append({"answer": best.answer, "score": best.score, "start": best.start,
                        "end": best.end, "windows": best.windows})
    return answers


async def handle(server, doc, infer) -> dict:
    """The :answer response body; `infer` queues rows on the server's batcher."""
    art = server.artifact
    instances = parse_answer(doc, server.config.max_instances, art.head)
    # Off the event loop, as :classify's tokenizing: a long context must not stall others.
    planned, rows = await asyncio.get_running_loop().run_in_executor(
        server.text_pool, plan, instances, server.encoder.tokenizer, art)
    results = await infer(server, rows)
    return {"predictions": format_answers(instances, planned, results, art.max_seq_len)}
