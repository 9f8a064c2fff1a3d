"""aiohttp's connection handler with its own errors in the house's JSON form.

aiohttp answers requests its HTTP parser refuses (a bad Content-Length, a header
over 8190 bytes, Content-Length with Transfer-Encoding, ...) itself, as text/plain,
before any middleware runs. `JsonErrorRunner` serves the same answers as
`{"error": "http: <what the parser said>"}` with the same status, and closes the
connection as aiohttp does.
"""

import json
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler


class JsonErrorHandler(RequestHandler):
    def handle_error(self, request, status=500, exc=None, message=None):
        super().handle_error(request, status, exc, message)  # logs; raises if already sent
        what = (message or HTTPStatus(status).phrase).replace("\n", " ").strip()
        if status == 500:
            what = "internal error"
        response = web.Response(text=json.dumps({"error": f"http: {what}"}), status=status,
                                content_type="application/json")
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    """web.AppRunner whose connections answer parser errors in JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # same state; only __call__ differs
        return server
