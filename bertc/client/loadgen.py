"""Concurrent load: `clients` coroutines, each sending `cycle` requests one after another.

Like the Neuron demo's bert_client.py (one blocking request at a time per client,
many clients), but in one process with aiohttp, and with every outcome kept:
status, latency, the answer's label. Pair k of the run (client c, request j,
k = c * cycle + j) is row order[k % N] of a seeded shuffle of the N pairs, so
every pair is sent once before any is sent twice.
"""

import asyncio
import dataclasses
import json
import random
import time
from typing import Callable, List, Optional, Sequence

import aiohttp

from bertc.client import protocols
from bertc.errors import BertcError
from bertc.text.pairs import Pair


@dataclasses.dataclass
class Outcome:
    """One request: its status (0: no HTTP answer), latency and answer."""

    index: int                 # position of the pair in the input list
    status: int
    latency_s: float
    expected: Optional[int]    # the TSV label
    label: Optional[int] = None
    truncated: bool = False
    error: Optional[str] = None
    answer: Optional[dict] = None  # the server's prediction for this pair

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclasses.dataclass
class LoadResult:
    url: str
    model_name: str
    clients: int
    cycle: int
    wall_s: float
    outcomes: List[Outcome]


def classify_url(url: str, model_name: str) -> str:
    return f"{url.rstrip('/')}/v1/models/{model_name}:classify"


async def discover_model_name(session: aiohttp.ClientSession, url: str) -> str:
    """The model a bertc server serves, from GET /ping."""
    try:
        async with session.get(f"{url.rstrip('/')}/ping") as response:
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as e:
        raise BertcError(f"--url {url}: GET /ping failed ({e.__class__.__name__}: {e}); "
                         "expected a running bertc serve, or pass --model_name") from None
    name = body.get("model") if isinstance(body, dict) else None
    if not isinstance(name, str):
        raise BertcError(f"--url {url}: /ping does not name the model; pass --model_name")
    return name


async def _one(session, endpoint: str, pair: Pair, index: int) -> Outcome:
    payload = {"text_a": pair.text_a}
    if pair.text_b is not None:
        payload["text_b"] = pair.text_b
    start = time.perf_counter()
    outcome = Outcome(index=index, status=0, latency_s=0.0, expected=pair.label)
    try:
        async with session.post(endpoint, json=payload) as response:
            outcome.status = response.status
            raw = await response.read()
    except asyncio.TimeoutError:
        outcome.error = "timeout"
    except aiohttp.ClientError as e:
        outcome.error = f"{e.__class__.__name__}: {e}"
    outcome.latency_s = time.perf_counter() - start
    if outcome.status == 0:
        return outcome
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        outcome.error = f"HTTP {outcome.status}: body is not JSON"
        return outcome
    if outcome.status != 200:
        message = body.get("error") if isinstance(body, dict) else None
        outcome.error = f"HTTP {outcome.status}: {message or 'no error message'}"
        return outcome
    try:
        answer = body["predictions"][0]
        outcome.answer = answer
        outcome.label = answer.get("label")
        outcome.truncated = bool(answer.get("truncated", False))
    except (KeyError, IndexError, TypeError, AttributeError):
        outcome.error = "HTTP 200: expected {'predictions': [{...}]}"
    return outcome


async def run_load(url: str, pairs: Sequence[Pair], clients: int, cycle: int,
                   model_name: Optional[str] = None, timeout_s: float = 60.0, seed: int = 0,
                   on_outcome: Optional[Callable[[Outcome], None]] = None,
                   protocol: str = "classify", grpc_target: Optional[str] = None,
                   vocab: Optional[str] = None) -> LoadResult:
    """Sends clients * cycle requests, `clients` at a time: text to :classify, or
    token ids over another protocol (bertc.client.protocols)."""
    if not pairs:
        raise BertcError("client: no sentence pairs to send")
    if clients < 1 or cycle < 1:
        raise BertcError(f"--clients {clients} --cycle {cycle}: expected positive integers")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if model_name is None:
            model_name = await discover_model_name(session, url)
        one = await _request_maker(protocol, session, url, model_name, pairs, grpc_target,
                                   vocab, timeout_s)
        outcomes: List[Outcome] = []

        async def client(c: int):
            for j in range(cycle):
                index = order[(c * cycle + j) % len(order)]
                outcome = await one(index)
                outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)

        start = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - start
    return LoadResult(url=url, model_name=model_name, clients=clients, cycle=cycle,
                      wall_s=wall, outcomes=outcomes)


async def _request_maker(protocol, session, url, model_name, pairs, grpc_target, vocab,
                         timeout_s):
    """one(pair index) -> Outcome for the protocol; token ids encoded here, untimed."""
    if protocol == "classify":
        endpoint = classify_url(url, model_name)
        return lambda index: _one(session, endpoint, pairs[index], index)
    if protocol not in protocols.TOKEN_PROTOCOLS:
        raise BertcError(f"--protocol {protocol}: expected one of "
                         f"{', '.join(protocols.PROTOCOLS)}")
    if not vocab:
        raise BertcError(f"--protocol {protocol}: --vocab not given; expected the served "
                         "artifact's vocab.txt (e.g. artifacts/minilm/vocab.txt), to send "
                         "token ids")
    info = await protocols.model_info(session, url, model_name)
    encoded = protocols.encode_pairs(pairs, vocab, info)
    send = await protocols.make_sender(protocol, session, url, grpc_target, model_name)

    async def one(index):
        seconds, answer, status, error = await protocols.timed(send, encoded[index], info,
                                                               timeout_s)
        return Outcome(index=index, status=status, latency_s=seconds,
                       expected=pairs[index].label,
                       label=answer.get("label") if answer else None, error=error,
                       answer=answer)
    return one


def run(*args, **kwargs) -> LoadResult:
    """run_load() on a fresh event loop."""
    return asyncio.run(run_load(*args, **kwargs))
