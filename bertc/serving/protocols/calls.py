"""One call of any tensor protocol: the model check, and a refusal as a gRPC status.

Every protocol refuses with the same InputError (`field: what was expected`) the
REST handlers raise; gRPC carries it as a status code and the same message:

  400 bad input                        INVALID_ARGUMENT
  404 unknown model or version         NOT_FOUND
  413 more than the server takes       RESOURCE_EXHAUSTED
  503 queue full (field `queue`)       RESOURCE_EXHAUSTED
  503 shutting down (field `server`)   UNAVAILABLE
  500 the batch failed                 INTERNAL
Each call is counted in /metrics as bertc_requests_total{route, status=<code name>}.
"""

import asyncio
import logging
import time
from typing import Awaitable, Callable, Optional

import grpc

from bertc.serving.validation import InputError

logger = logging.getLogger(__name__)

_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
          413: grpc.StatusCode.RESOURCE_EXHAUSTED, 500: grpc.StatusCode.INTERNAL}


def check_model(server, name: str, version: Optional[str], name_field: str,
                version_field: str) -> None:
    """InputError 404 unless `name` is the served model and `version` is None, "" or 1."""
    if name != server.name:
        raise InputError(name_field, f"{name!r} not found; this server serves "
                         f"{server.name!r}", status=404)
    if version not in (None, "", "1"):
        raise InputError(version_field, f"{version!r} not found; expected 1", status=404)


def status_code(error: InputError) -> grpc.StatusCode:
    if error.status == 503:
        return (grpc.StatusCode.RESOURCE_EXHAUSTED if error.field == "queue"
                else grpc.StatusCode.UNAVAILABLE)
    return _CODES.get(error.status, grpc.StatusCode.INVALID_ARGUMENT
                      if 400 <= error.status < 500 else grpc.StatusCode.INTERNAL)


async def serve(server, route: str, context: grpc.aio.ServicerContext,
                call: Callable[[], Awaitable]):
    """Runs `call()`; an InputError (or any failure) ends the RPC with its status."""
    start = time.monotonic()
    code, message = grpc.StatusCode.OK, ""
    try:
        return await call()
    except InputError as e:
        code, message = status_code(e), str(e)
    except asyncio.CancelledError:  # the client hung up; its rows are dropped
        code = grpc.StatusCode.CANCELLED
        raise
    except Exception as e:  # noqa: BLE001 - any other failure is INTERNAL
        logger.exception("%s failed", route)
        code, message = grpc.StatusCode.INTERNAL, f"internal error: {e.__class__.__name__}: {e}"
    finally:
        seconds = time.monotonic() - start
        server.metrics.observe_request(route, code.name, seconds)
        if code == grpc.StatusCode.OK:
            server.window.add_latency(seconds)
    await context.abort(code, message)
