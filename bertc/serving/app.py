"""The HTTP surface (aiohttp): TF Serving's REST paths plus ping and metrics.

  POST /v1/models/<name>:predict            token ids in TF Serving format (predict.py)
  POST /v1/models/<name>:classify           text (classify.py)
  POST /v1/models/<name>:answer             question + context, span head (answer.py)
  GET  /v1/models/<name>                    status, signature, batch, buckets, target
  GET  /ping                                200 while serving, 503 while draining
  GET  /metrics                             Prometheus text
(`/v1/models/<name>/versions/1...` are accepted as well.) Every error is JSON
`{"error": "<field>: <what was expected>"}`: 400 bad input, 404 unknown model or
path, 405 wrong method, 408 body not received within --body_timeout_s, 413 body over
--max_body_bytes, 499 (metrics only) the client hung up, 503 + Retry-After when the
queue is full or the server is draining, 500 when the batch failed (every request
of that batch gets it) or an output holds NaN or Inf (never sent as a 200; counted
in bertc_nonfinite_outputs_total). While draining every response says
`Connection: close`, and requests read after the stop get 503. Handlers stay
thin: parse, `server.infer(rows)`, format.
"""

import asyncio
import json
import logging
import time

import numpy as np
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from bertc.serving import answer, classify, predict
from bertc.serving.batcher import BatcherClosed, QueueFull
from bertc.serving.protocols import v2_rest
from bertc.serving.validation import InputError, parse_json

logger = logging.getLogger(__name__)

SERVER = web.AppKey("bertc_server", object)
ROUTE = web.RequestKey("bertc_route", str)  # the metrics label of a request
RETRY_AFTER_S = "1"
CLIENT_GONE = 499  # nginx's status for a client that closed before its answer
_VERBS = ("predict", "classify", "answer")


def make_app(server) -> web.Application:
    application = web.Application(client_max_size=server.config.max_body_bytes,
                                  middlewares=[_errors_and_metrics])
    application[SERVER] = server
    application.add_routes([
        web.post("/v1/models/{target}", _post_model, name="model_post"),
        web.post("/v1/models/{name}/versions/{version}", _post_model, name="model_post_v"),
        web.get("/v1/models/{name}", _get_model, name="status"),
        web.get("/v1/models/{name}/versions/{version}", _get_model, name="status_v"),
        web.get("/ping", _ping, name="ping"),
        web.get("/metrics", _metrics, name="metrics"),
    ])
    application.add_routes(v2_rest.routes(SERVER, ROUTE, _read_body, _infer))  # KServe v2
    return application


def _json(body: dict, status: int = 200, headers=None) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, headers=headers,
                        content_type="application/json")


@web.middleware
async def _errors_and_metrics(request: web.Request, handler):
    server = request.app[SERVER]
    start = time.monotonic()
    route = "other"
    try:
        if server.draining and request.method == "POST":  # read after the stop
            request[ROUTE] = _route_of(request.path)
            raise _shutting_down()
        response = await handler(request)
    except (asyncio.CancelledError, ConnectionError):  # the client hung up
        logger.info("%s %s: client disconnected before its answer", request.method,
                    request.path)
        server.metrics.observe_request(request.get(ROUTE, route), CLIENT_GONE,
                                       time.monotonic() - start)
        raise
    except InputError as e:
        response = _json(e.body(), e.status, e.headers)
    except web.HTTPException as e:
        response = _json({"error": _http_error_message(request, e, server)}, e.status,
                         _allow_header(e))
    except Exception as e:  # noqa: BLE001 - any failure is a JSON 500
        logger.exception("%s %s failed", request.method, request.path)
        response = _json({"error": f"internal error: {e.__class__.__name__}: {e}"}, 500)
    if server.draining or response.headers.get("Connection") == "close":
        response.force_close()  # draining: the connection closes after this answer
    route = request.get(ROUTE, route)
    seconds = time.monotonic() - start
    server.metrics.observe_request(route, response.status, seconds)
    if route in _VERBS and response.status == 200:
        server.window.add_latency(seconds)
    return response


def _shutting_down() -> InputError:
    return InputError("server", "shutting down; retry on another replica", status=503,
                      headers={"Retry-After": RETRY_AFTER_S, "Connection": "close"})


def _route_of(path: str) -> str:
    verb = path.rpartition(":")[2]
    return verb if verb in _VERBS else "other"


def _allow_header(e: web.HTTPException):
    return {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None


def _http_error_message(request, e: web.HTTPException, server) -> str:
    if e.status == 413:
        return (f"body: larger than {server.config.max_body_bytes} bytes; expected at most "
                "--max_body_bytes")
    if e.status == 405:
        return f"{request.method} {request.path}: method not allowed"
    if e.status == 404:
        return (f"{request.path}: no such path; expected /v1/models/{server.name}:predict, "
                f"/v1/models/{server.name}:classify, /v1/models/{server.name}, /ping, "
                "/metrics")
    return f"{request.path}: {e.reason}"


def _check_model(request: web.Request, name: str, version) -> None:
    server = request.app[SERVER]
    if name != server.name:
        raise InputError("model", f"{name!r} not found; this server serves {server.name!r}",
                         status=404)
    if version is not None and version != "1":
        raise InputError("version", f"{version!r} not found; expected 1", status=404)


async def _post_model(request: web.Request) -> web.Response:
    info = request.match_info
    if "target" in info:  # /v1/models/<name>:<verb>
        version = None
        name, _, verb = info["target"].rpartition(":")
    else:  # /v1/models/<name>/versions/<version>:<verb>
        name = info["name"]
        version, _, verb = info["version"].rpartition(":")
    if verb not in _VERBS:
        raise InputError("path", f"{request.path}: expected /v1/models/<name>:predict or "
                         ":classify", status=404)
    request[ROUTE] = verb
    _check_model(request, name, version)
    server = request.app[SERVER]
    doc = parse_json(await _read_body(request, server))
    if verb == "predict":
        parsed = predict.parse_predict(doc, server.artifact, server.config.max_instances)
        results = await _infer(server, parsed.rows)
        return _json(predict.format_predict(results, parsed.columnar,
                                            server.artifact.outputs))
    if verb == "answer":
        return _json(await answer.handle(server, doc, _infer))
    instances = classify.parse_classify(doc, server.config.max_instances)
    # Off the event loop (a pool of one thread per replica): tokenizing large texts must
    # not stall /ping and other requests.
    planned = await asyncio.get_running_loop().run_in_executor(
        server.text_pool, classify.encode_instances, instances, server.encoder,
        server.artifact.head)
    rows = [(r.seq_len, r.feeds) for inst_rows in planned for r in inst_rows]
    results = await _infer(server, rows)
    answers, i = [], 0
    for inst_rows in planned:
        answers.append(classify.format_instance(server.artifact.head, inst_rows,
                                                results[i:i + len(inst_rows)],
                                                server.threshold))
        i += len(inst_rows)
    return _json({"predictions": answers})


async def _read_body(request: web.Request, server) -> bytes:
    limit = server.config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise InputError("body", f"{request.content_length} bytes; expected at most {limit} "
                         "(--max_body_bytes)", status=413)
    try:
        # Bounded: a slow or stalled body (or one aiohttp's decoder gave up on without
        # ending it, e.g. a truncated deflate stream) cannot hold the handler forever.
        return await asyncio.wait_for(request.read(), server.config.body_timeout_s)
    except asyncio.TimeoutError:
        raise InputError("body", f"not received within {server.config.body_timeout_s:g} s "
                         "(--body_timeout_s)", status=408,
                         headers={"Connection": "close"}) from None
    except RequestPayloadError as e:  # e.g. Content-Encoding: gzip over bytes not gzip
        header = "Content-Encoding" if request.headers.get("Content-Encoding") else "body"
        raise InputError(header, f"{request.headers.get(header, 'body')!r} could not be "
                         f"read ({str(e).splitlines()[-1].strip()}); expected a body in "
                         "that encoding") from None


async def _infer(server, rows):
    try:
        results = await server.infer(rows)
    except QueueFull as e:
        raise InputError("queue", f"full ({e.depth} rows waiting, --max_queue {e.limit}); "
                         "retry later", status=503,
                         headers={"Retry-After": RETRY_AFTER_S}) from None
    except BatcherClosed:
        raise _shutting_down() from None
    except Exception as e:  # noqa: BLE001 - the batch failed; every request in it gets this
        raise InputError("inference", f"failed: {e.__class__.__name__}: {e}",
                         status=500) from None
    _refuse_nonfinite(server, results)
    return results


def _refuse_nonfinite(server, results) -> None:
    """A NaN or Inf in any output is a 500 naming it (JSON has no NaN; a corrupted
    model must not answer with numbers that look normal, such as a cosine of 0)."""
    for name in (results[0] if results else ()):
        bad = sum(1 for r in results if not np.all(np.isfinite(r[name])))
        if bad:
            server.metrics.observe_nonfinite(name)
            logger.error("output %s: NaN or Inf in %d of %d row(s); is the artifact "
                         "corrupted? (bertc verify checks it)", name, bad, len(results))
            raise InputError(f"outputs.{name}", f"NaN or Inf in {bad} of {len(results)} "
                             "row(s); the model gave no valid answer (the artifact may be "
                             "corrupted)", status=500)


infer_or_refuse = _infer  # the gRPC services refuse through the same errors


async def _get_model(request: web.Request) -> web.Response:
    request[ROUTE] = "status"
    server = request.app[SERVER]
    last = request.match_info.get("version", request.match_info["name"])
    if last.rpartition(":")[2] in _VERBS:  # GET /v1/models/<name>:predict
        raise web.HTTPMethodNotAllowed(request.method, ["POST"])
    _check_model(request, request.match_info["name"], request.match_info.get("version"))
    art = server.artifact
    available = not server.draining
    shape = [art.batch_size, -1]
    return _json({
        "model_version_status": [{
            "version": "1", "state": "AVAILABLE" if available else "END",
            "status": {"error_code": "OK" if available else "UNAVAILABLE",
                       "error_message": "" if available else "draining"}}],
        "bertc": {
            "name": server.name, "artifact": art.path, "head": art.head,
            "signature": {"name": predict.SIGNATURE_KEY,
                          "inputs": {n: {"dtype": "int32", "shape": shape} for n in art.inputs},
                          "outputs": list(art.outputs)},
            "batch_size": art.batch_size, "seq_lens": list(art.seq_lens),
            "target": art.target, "do_lower_case": art.do_lower_case,
            "paraphrase_threshold": server.threshold if art.head == "embedding" else None,
            "paraphrase_threshold_source": (server.threshold_source
                                            if art.head == "embedding" else None),
            "parallel": server.config.parallel,
            "intra_op_threads": server.config.threads_per_replica(),
            "inter_op_threads": server.config.inter_op_threads,
            "max_batch_delay_ms": server.config.max_batch_delay_ms,
            "max_queue": server.config.max_queue,
            "max_instances": server.config.max_instances,
            "queue_depth": server.batcher.depth(),
            # the build's probe held to verify's bounds on this CPU at start (probe.py)
            "probe": server.probe}})


async def _ping(request: web.Request) -> web.Response:
    request[ROUTE] = "ping"
    server = request.app[SERVER]
    if server.draining:
        return _json({"status": "draining", "model": server.name}, 503,
                     {"Retry-After": RETRY_AFTER_S})
    return _json({"status": "ok", "model": server.name})


async def _metrics(request: web.Request) -> web.Response:
    request[ROUTE] = "metrics"
    server = request.app[SERVER]
    return web.Response(body=server.metrics.exposition(),
                        headers={"Content-Type": server.metrics.content_type})
