"""aiohttp's connection handler, with the house's errors, a header time-out and a drain.

- Parser errors in JSON: aiohttp answers requests its HTTP parser refuses (a bad
  Content-Length, a header over 8190 bytes, Content-Length with Transfer-Encoding,
  ...) itself, as text/plain, before any middleware runs. They are served as
  `{"error": "http: <what the parser said>"}` with the same status, and the
  connection is closed as aiohttp does.
- Header time-out (aiohttp has none): a connection whose request headers are not
  complete within `header_timeout_s` (nginx's client_header_timeout, 60 s) is
  closed: counted from the connection's start for its first request, from the first
  byte of the next one on a keep-alive connection (idle time between requests is
  the keep-alive time-out's).
- Drain (`drain_connections`, at shutdown): aiohttp's own shutdown closes idle
  keep-alive connections at once, so a request a client sent at that instant meets
  a closed socket (a reset: 6 of 200 in issue 16). Instead, every connection stays
  open for `idle_s` after the stop: a request arriving on it is read and answered
  (503 + Connection: close, app.py), in-flight ones get their answer with
  Connection: close, and only connections still idle after `idle_s` are closed,
  by a lingering close (FIN first, then what the client still sends is read and
  dropped for LINGER_S; RFC 9112 9.6), so even then the client sees an end of
  stream, not a reset.
Private API of aiohttp (pinned 3.14.5): `RequestHandler`'s `_waiter` (set while it
waits for a request), `_messages`, `_close`; and the class swap of `web.Server`.
"""

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Callable, Optional

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

logger = logging.getLogger(__name__)

LINGER_S = 2.0  # after the FIN of a drained idle connection, read and drop this long


class ConnectionHandler(RequestHandler):
    header_timeout_s: Optional[float] = None  # set per server (JsonErrorRunner)
    on_header_timeout: Optional[Callable[[], None]] = None  # counts it (JsonErrorRunner)
    _header_timer: Optional[asyncio.TimerHandle] = None

    def handle_error(self, request, status=500, exc=None, message=None):
        super().handle_error(request, status, exc, message)  # logs; raises if already sent
        what = (message or HTTPStatus(status).phrase).replace("\n", " ").strip()
        if status == 500:
            what = "internal error"
        response = web.Response(text=json.dumps({"error": f"http: {what}"}), status=status,
                                content_type="application/json")
        response.force_close()
        return response

    # --- header time-out ---------------------------------------------------------

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages:  # a request's headers are complete
            self._cancel_header_timer()
        elif data and self._header_timer is None and self.waiting_for_request:
            self._arm_header_timer()  # the first bytes of a keep-alive's next request

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    @property
    def waiting_for_request(self) -> bool:
        """Between requests, or reading a request's headers (no handler running)."""
        return (self._waiter is not None and not self._waiter.done()
                and not self._messages)

    def _arm_header_timer(self) -> None:
        if self.header_timeout_s:
            self._header_timer = self._loop.call_later(self.header_timeout_s,
                                                       self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.waiting_for_request and self.transport is not None:
            logger.info("closing a connection from %s: request headers not received "
                        "within %g s (`header_timeout_s`)",
                        self.transport.get_extra_info("peername"), self.header_timeout_s)
            if self.on_header_timeout is not None:
                self.on_header_timeout()
            self.force_close()

    # --- drain ---------------------------------------------------------------------

    def close_idle(self) -> None:
        """Lingering close of a connection waiting for a request: FIN, then read and drop
        what still comes for LINGER_S, then close (no reset for a request in flight)."""
        if self._close or self._force_close:
            return
        self._close = True  # data_received drops what arrives from now on
        self._cancel_header_timer()
        transport = self.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()
            self._loop.call_later(LINGER_S, self.force_close)
        else:
            self.force_close()


async def drain_connections(server: web.Server, idle_s: float, timeout_s: float) -> int:
    """Waits until every connection of `server` has closed: in-flight requests finish
    (their responses say Connection: close), connections still idle `idle_s` after the
    call get a lingering close; gives up after timeout_s. Returns those left open."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while server.connections and loop.time() - start < timeout_s:
        if loop.time() - start >= idle_s:
            for connection in server.connections:
                if isinstance(connection, ConnectionHandler) and \
                        connection.waiting_for_request:
                    connection.close_idle()
        await asyncio.sleep(0.02)
    return len(server.connections)


class _Server(web.Server):
    header_timeout_s: Optional[float] = None
    on_header_timeout: Optional[Callable[[], None]] = None

    def __call__(self) -> RequestHandler:
        handler = ConnectionHandler(self, loop=self._loop, **self._kwargs)
        handler.header_timeout_s = self.header_timeout_s
        handler.on_header_timeout = self.on_header_timeout
        return handler


class JsonErrorRunner(web.AppRunner):
    """web.AppRunner whose connections are ConnectionHandlers (see the module
    docstring); `header_timeout_s`: None for none; `on_header_timeout()` is called for
    each connection the header time-out closes (the server counts them)."""

    def __init__(self, app: web.Application, *, header_timeout_s: Optional[float] = None,
                 on_header_timeout: Optional[Callable[[], None]] = None, **kwargs):
        super().__init__(app, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._on_header_timeout = on_header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # same state; only __call__ differs
        server.header_timeout_s = self._header_timeout_s
        server.on_header_timeout = self._on_header_timeout
        return server
