"""Connections under time-outs and shutdown, over real sockets on 127.0.0.1.

- header time-out: a silent socket, partial headers and a slow drip of header bytes
  are closed after --header_timeout_s; an idle keep-alive connection is not (that is
  the keep-alive time-out's), and a normal request works;
- keep-alive time-out: an idle keep-alive connection is closed after it;
- SIGTERM under keep-alive load: a real `bertc serve` process, 8 aiohttp sessions of
  one persistent connection each, 200 requests; SIGTERM mid-load. Every request
  sent gets its correct answer or the documented 503 + Connection: close; none
  meets a reset or a closed connection (aiohttp's own shutdown lost 6 of 200).
"""

import asyncio
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import aiohttp
import numpy as np
import pytest

import bertc_testing as bt
from test_serving import ATOL, NAME, bucket_of, predict_row, request
from test_serving_support import OfflineModel, tiny_artifact

from bertc.serving.server import BackgroundServer, ServerConfig


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return tiny_artifact(tmp_path_factory)


def _address(url):
    host, port = url[len("http://"):].split(":")
    return host, int(port)


def _connect(url):
    sock = socket.create_connection(_address(url), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _closed_at(sock, limit=10.0):
    """The monotonic time the server closed `sock` (recv returns b''); fails past limit."""
    sock.settimeout(limit)
    data = sock.recv(65536)
    assert not data, f"unexpected bytes before the close: {data[:200]!r}"
    return time.monotonic()


def _read_response(sock):
    """(status, headers, body) of one HTTP/1.1 response read off `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    length = int(headers["Content-Length"])
    while len(body) < length:
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


PING = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _header_timeouts(url):
    metrics = request(url, "GET", "/metrics")[2]
    return float(re.search(r"^bertc_header_timeouts_total (\S+)$", metrics, re.M).group(1))


def test_header_timeout_closes_slow_and_silent_connections(artifact):
    config = ServerConfig(model=artifact, model_name=NAME, port=0, parallel=1,
                          header_timeout_s=1.0, keepalive_timeout_s=30.0)
    with BackgroundServer(config) as background:
        url = background.url
        start = time.monotonic()
        silent, partial, drip = _connect(url), _connect(url), _connect(url)
        partial.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        dripped = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
        drip_closed = None
        for i in range(len(dripped)):  # a byte every 0.1 s: activity does not extend it
            if select.select([drip], [], [], 0.1)[0]:
                drip_closed = _closed_at(drip) - start
                break
            drip.sendall(dripped[i:i + 1])
        assert drip_closed is not None and 0.8 < drip_closed < 2.5, drip_closed
        for sock in (silent, partial):
            assert 0.8 < _closed_at(sock) - start < 3.0
        assert _header_timeouts(url) == 3.0  # each one counted for the operator

        # a normal keep-alive connection: idle between requests longer than the header
        # time-out (the keep-alive time-out governs idle time), then its next request
        # sent in two halves within the time-out
        sock = _connect(url)
        sock.sendall(PING)
        assert _read_response(sock)[0] == 200
        time.sleep(1.5)
        sock.sendall(PING[:10])
        time.sleep(0.3)
        sock.sendall(PING[10:])
        status, headers, _ = _read_response(sock)
        assert status == 200 and headers.get("Connection") != "close"
        # ...and the next request's partial headers are closed 1 s after their first byte
        sent = time.monotonic()
        sock.sendall(PING[:10])
        assert 0.8 < _closed_at(sock) - sent < 2.5
        assert _header_timeouts(url) == 4.0


def test_keepalive_timeout_closes_an_idle_connection(artifact):
    config = ServerConfig(model=artifact, model_name=NAME, port=0, parallel=1,
                          keepalive_timeout_s=1.0)
    with BackgroundServer(config) as background:
        sock = _connect(background.url)
        sock.sendall(PING)
        status, headers, _ = _read_response(sock)
        assert status == 200 and headers.get("Connection") != "close"  # kept alive
        answered = time.monotonic()
        assert 0.8 < _closed_at(sock) - answered < 2.5


# --- SIGTERM with keep-alive clients -----------------------------------------------

CLIENTS = 8
REQUESTS = 200


def _start_server(artifact):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bertc.cli", "serve", "--model", artifact, "--model_name",
         NAME, "--port", "0", "--parallel", "1", "--max_batch_delay_ms", "2"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    found, lines = bt.wait_for_log(proc, 90, url=bt.SERVING_URL)
    url = found["url"]
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()  # keeps the pipe drained (the per-second traffic lines)
    return proc, url, lines, reader


async def _load(url, bodies, on_answer):
    """Sends bodies[i] from CLIENTS sessions of one persistent connection each; returns
    {i: ("answer", status, headers, json) | ("refused", error) | ("lost", error)}."""
    queue = list(range(len(bodies)))
    outcomes = {}

    async def client(k):
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            while queue:
                i = queue.pop(0)
                try:
                    async with session.post(f"{url}/v1/models/{NAME}:predict",
                                            json=bodies[i]) as response:
                        outcomes[i] = ("answer", response.status, dict(response.headers),
                                       await response.json())
                except aiohttp.ClientConnectorError as e:  # connect() refused: not sent
                    outcomes[i] = ("refused", repr(e))
                    return
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
                    outcomes[i] = ("lost", repr(e))
                    return
                on_answer(k)
                if outcomes[i][1] == 503:
                    return  # told to go elsewhere

    await asyncio.wait_for(asyncio.gather(*(client(k) for k in range(CLIENTS))), 60)
    return outcomes


@pytest.mark.parametrize("stop_after", [40, 110])
def test_sigterm_under_keepalive_load_loses_nothing(artifact, stop_after):
    offline = OfflineModel(artifact)
    rng = np.random.default_rng(stop_after)
    rows = [predict_row(rng, int(n)) for n in rng.integers(5, 60, REQUESTS)]
    expected = [offline.run_rows(bucket_of(len(r["input_ids"])),
                                 [(r["input_ids"], r["input_mask"], r["segment_ids"])]
                                 )[0]["embedding"] for r in rows]
    bodies = [{"instances": [r]} for r in rows]
    proc, url, lines, reader = _start_server(artifact)
    try:
        answered = {"count": 0, "clients": set(), "sent": False}

        def on_answer(k):
            answered["count"] += 1
            answered["clients"].add(k)
            if (not answered["sent"] and answered["count"] >= stop_after
                    and len(answered["clients"]) == CLIENTS):
                answered["sent"] = True
                proc.send_signal(signal.SIGTERM)

        outcomes = asyncio.run(_load(url, bodies, on_answer))
        assert answered["sent"], answered
        assert proc.wait(30) == 0
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = "".join(lines)
    lost = {i: o for i, o in outcomes.items() if o[0] == "lost"}
    assert not lost, (lost, log[-3000:])
    kinds = {"ok": 0, "503": 0, "refused": 0}
    for i, outcome in outcomes.items():
        if outcome[0] == "refused":
            kinds["refused"] += 1
            continue
        _, status, headers, doc = outcome
        if status == 503:
            assert doc == {"error": "server: shutting down; retry on another replica"}
            assert headers.get("Connection") == "close" and headers.get("Retry-After")
            kinds["503"] += 1
        else:
            assert status == 200, outcome
            np.testing.assert_allclose(doc["predictions"][0], expected[i], atol=ATOL)
            kinds["ok"] += 1
    assert kinds["ok"] >= stop_after and kinds["ok"] + kinds["503"] + kinds["refused"] == \
        len(outcomes), kinds
    assert "drained; stopped" in log
