"""`bertc serve --engine ray`: the artifact as a Ray Serve application.

    HTTP (Serve's proxy, route "/")
      v
    BertcIngress (one replica): TF Serving's REST paths, parse + tokenize
      |  (predict.py, classify.py, validation.py), the same JSON errors
      |  DeploymentHandle.infer(rows)   (Serve routes to the least-loaded replica)
      v
    BertcModel x num_replicas, spread over the cluster's nodes; each one process
      with the artifact's Session (replica.py) and dynamic batching:
        batching "bertc"  bertc's Batcher + one Replica thread (batcher.py)
        batching "serve"  @serve.batch per bucket, max_batch_size = the artifact's
                          batch, batch_wait_timeout_s = max_batch_delay

Which requests a lost replica takes with it: at most `max_ongoing_requests` (those
Serve had handed to it); each gets 503 `{"error": "replica: lost ..."}` with
Retry-After, and every other request is routed to the live replicas.

Entry point for a Serve config file (`serve run` / `serve deploy`):
    import_path: bertc.serving.ray_engine:build_app
    args: {model: /models/minilm, num_replicas: 2}
Ray is imported only inside functions: bertc imports and runs without it.
"""

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import re
import signal
import threading
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from bertc.errors import BertcError, CheckFailed
from bertc.serving import artifact as artifact_lib
from bertc.serving import classify, defaults, predict, probe
from bertc.serving.batcher import Batch, BatcherClosed, QueueFull, Row
from bertc.serving.validation import InputError, parse_json

logger = logging.getLogger(__name__)

APP_NAME = "bertc"
BATCHING = ("bertc", "serve")
#: The options that are true or false (a config file's YAML bool or "true"/"false").
BOOLEANS = ("skip_checksums", "skip_probe")
RETRY_AFTER_S = "1"
_VERBS = ("predict", "classify")


@dataclasses.dataclass
class RayServeOptions:
    """What the Ray Serve application takes (`bertc serve` flags of the same names)."""

    model: str
    model_name: Optional[str] = None
    num_replicas: int = 1
    ray_address: Optional[str] = None     # None: a local Ray started for this server
    host: str = defaults.HOST
    port: int = defaults.PORT
    intra_op_threads: int = 1             # per replica
    replica_cpus: float = 1.0             # Ray logical CPUs each replica reserves
    max_batch_delay_ms: float = defaults.MAX_BATCH_DELAY_MS
    max_queue: int = defaults.MAX_QUEUE   # per replica (batching "bertc")
    max_instances: int = defaults.MAX_INSTANCES
    max_body_bytes: int = defaults.MAX_BODY_BYTES
    max_ongoing_requests: Optional[int] = None  # per replica; default 2 x batch
    paraphrase_threshold: Optional[float] = None
    batching: str = "bertc"
    skip_checksums: bool = False          # load without checking the files' sha256
    skip_probe: bool = False              # replicas serve without running the probe

    @classmethod
    def from_args(cls, args: Dict) -> "RayServeOptions":
        """From a Serve config file's `args` (values may come as strings)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - set(fields))
        if unknown:
            raise BertcError(f"`{unknown[0]}`: not an option of {__name__}:build_app; "
                             f"expected some of {', '.join(fields)}")
        if "model" not in args:
            raise BertcError("`model` is required; expected an artifact directory")
        kinds = {"num_replicas": int, "port": int, "intra_op_threads": int,
                 "max_queue": int, "max_instances": int, "max_body_bytes": int,
                 "max_ongoing_requests": int, "replica_cpus": float,
                 "max_batch_delay_ms": float, "paraphrase_threshold": float}
        values = {}
        for name, value in args.items():
            if name in BOOLEANS:
                values[name] = _boolean(name, value)
                continue
            try:
                values[name] = kinds[name](value) if name in kinds and value is not None \
                    else value
            except (TypeError, ValueError):
                raise BertcError(f"`{name}` {value!r}: expected a number") from None
        return cls(**values)

    def check(self) -> None:
        for name in BOOLEANS:
            if not isinstance(getattr(self, name), bool):
                raise BertcError(f"`{name}` {getattr(self, name)!r}: expected true or false")
        for name in ("num_replicas", "intra_op_threads", "max_queue", "max_instances",
                     "max_body_bytes"):
            if getattr(self, name) < 1:
                raise BertcError(f"`{name}` {getattr(self, name)}: expected a positive "
                                 "integer")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < 1:
            raise BertcError(f"`max_ongoing_requests` {self.max_ongoing_requests}: expected "
                             "a positive integer")
        if self.max_batch_delay_ms < 0:
            raise BertcError(f"`max_batch_delay_ms` {self.max_batch_delay_ms}: expected >= 0")
        if self.batching not in BATCHING:
            raise BertcError(f"`batching` {self.batching!r}: expected one of "
                             f"{', '.join(BATCHING)}")
        if not self.replica_cpus >= 0:
            raise BertcError(f"`replica_cpus` {self.replica_cpus}: expected >= 0")


def _boolean(name: str, value) -> bool:
    """A config file's true/false (a YAML bool, or the strings true/false/1/0)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise BertcError(f"`{name}` {value!r}: expected true or false")


# --- the model replica ----------------------------------------------------------------

class ModelReplica:
    """One BertcModel replica: infer([(seq_len, feeds)]) -> ("ok", [outputs per row]) or
    ("queue_full", depth, limit) / ("closed",) / ("failed", message)."""

    def __init__(self, options: RayServeOptions):
        from bertc.serving import replica as replica_lib
        self.art = artifact_lib.load_artifact(options.model, options.skip_checksums)
        factory = replica_lib.model_factory(self.art, 1)
        self.model = factory(self.art, options.intra_op_threads)
        # each replica proves the artifact on its own node's CPU and runtime
        probe.check(self.model, self.art, options.skip_probe)
        self.batching = options.batching
        delay_s = options.max_batch_delay_ms / 1000.0
        if self.batching == "bertc":
            from bertc.serving.batcher import Batcher
            self.batcher = Batcher(self.art.seq_lens, self.art.batch_size, delay_s,
                                   options.max_queue)
            replica_lib.start_replicas([self.model], self.batcher, lambda batch, s: None)
        else:
            from ray import serve
            self._pool = concurrent.futures.ThreadPoolExecutor(1, "bertc-serve-batch")
            self._batched = {
                s: serve.batch(max_batch_size=self.art.batch_size,
                               batch_wait_timeout_s=delay_s)(self._bucket_runner(s))
                for s in self.art.seq_lens}
        logger.info("BertcModel replica (pid %d): %s, batching %s", os.getpid(),
                    self.art.path, self.batching)

    def _bucket_runner(self, seq_len: int):
        async def run(feeds_list: List[tuple]) -> List[dict]:
            batch = Batch(seq_len, [Row(seq_len, f, None, 0.0) for f in feeds_list],
                          self.art.batch_size)
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._pool, self.model.run, seq_len, batch.inputs())
            return [{n: v[i] for n, v in outputs.items()} for i in range(len(feeds_list))]
        return run

    async def infer(self, rows: Sequence) -> tuple:
        try:
            if self.batching == "serve":
                results = await asyncio.gather(*(self._batched[s](tuple(f)) for s, f in rows))
            else:
                futures = self.batcher.submit(rows)
                results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except QueueFull as e:
            return ("queue_full", e.depth, e.limit)
        except BatcherClosed:
            return ("closed",)
        except Exception as e:  # noqa: BLE001 - the batch failed; its requests get 500
            return ("failed", f"{e.__class__.__name__}: {e}")
        return ("ok", list(results))

    def where(self) -> dict:
        """Which node and process this replica is (tests: spread, replacement)."""
        import ray
        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


# --- the HTTP ingress -----------------------------------------------------------------

class Ingress:
    """TF Serving's REST API over the BertcModel deployment:
    POST /v1/models/<name>:predict, :classify; GET /v1/models/<name>; GET /ping."""

    def __init__(self, options: RayServeOptions, model_handle):
        self.options = options
        self.art = artifact_lib.load_artifact(options.model, options.skip_checksums)
        self.name = options.model_name or self.art.default_name
        self.encoder = classify.TextEncoder(self.art)
        self.threshold, _ = artifact_lib.paraphrase_threshold(self.art,
                                                              options.paraphrase_threshold)
        self.model = model_handle

    async def __call__(self, request):
        from starlette.responses import JSONResponse
        try:
            status, body, headers = 200, await self._route(request), None
        except InputError as e:
            status, body, headers = e.status, e.body(), e.headers
        except Exception as e:  # noqa: BLE001 - any failure is a JSON 500
            logger.exception("%s %s failed", request.method, request.url.path)
            status, body, headers = 500, {"error": f"internal error: "
                                                   f"{e.__class__.__name__}: {e}"}, None
        return JSONResponse(body, status_code=status, headers=headers)

    async def _route(self, request) -> dict:
        path = request.url.path.rstrip("/") or "/"
        if path == "/ping":
            self._method(request, "GET")
            return {"status": "ok", "model": self.name}
        prefix = "/v1/models/"
        if path.startswith(prefix):
            name, _, verb = path[len(prefix):].partition(":")
            name, _, version = name.partition("/versions/")
            if "/" not in name:
                if verb:
                    self._method(request, "POST")
                    return await self._post(request, name, version or None, verb)
                self._method(request, "GET")
                self._check_model(name, version or None)
                return self.metadata()
        raise InputError("", f"{path}: no such path; expected /v1/models/{self.name}:predict, "
                         f"/v1/models/{self.name}:classify, /v1/models/{self.name}, /ping",
                         status=404)

    @staticmethod
    def _method(request, allowed: str) -> None:
        if request.method != allowed:
            raise InputError("", f"{request.method} {request.url.path}: method not allowed",
                             status=405, headers={"Allow": allowed})

    def _check_model(self, name: str, version: Optional[str]) -> None:
        if name != self.name:
            raise InputError("model", f"{name!r} not found; this server serves "
                             f"{self.name!r}", status=404)
        if version is not None and version != "1":
            raise InputError("version", f"{version!r} not found; expected 1", status=404)

    async def _post(self, request, name: str, version: Optional[str], verb: str) -> dict:
        if verb not in _VERBS:
            raise InputError("path", f"{request.url.path}: expected /v1/models/<name>:predict "
                             "or :classify", status=404)
        self._check_model(name, version)
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise InputError("body", f"{declared} bytes; expected at most {limit} "
                             "(--max_body_bytes)", status=413)
        raw = await request.body()
        if len(raw) > limit:
            raise InputError("body", f"{len(raw)} bytes; expected at most {limit} "
                             "(--max_body_bytes)", status=413)
        doc = parse_json(raw)
        if verb == "predict":
            parsed = predict.parse_predict(doc, self.art, self.options.max_instances)
            results = await self._infer(parsed.rows)
            return predict.format_predict(results, parsed.columnar, self.art.outputs)
        instances = classify.parse_classify(doc, self.options.max_instances)
        planned = await asyncio.get_running_loop().run_in_executor(
            None, classify.encode_instances, instances, self.encoder, self.art.head)
        results = await self._infer([(r.seq_len, r.feeds) for rs in planned for r in rs])
        answers, i = [], 0
        for rows in planned:
            answers.append(classify.format_instance(self.art.head, rows,
                                                    results[i:i + len(rows)], self.threshold))
            i += len(rows)
        return {"predictions": answers}

    async def _infer(self, rows) -> List[dict]:
        import ray.exceptions as ray_errors
        try:
            answer = await self.model.infer.remote(rows)
        except (ray_errors.RayActorError, ray_errors.ActorUnavailableError) as e:
            raise InputError("replica", f"lost while it held this request "
                             f"({e.__class__.__name__}); retry", status=503,
                             headers={"Retry-After": RETRY_AFTER_S}) from None
        kind = answer[0]
        if kind == "ok":
            return answer[1]
        if kind == "queue_full":
            raise InputError("queue", f"full ({answer[1]} rows waiting, --max_queue "
                             f"{answer[2]}); retry later", status=503,
                             headers={"Retry-After": RETRY_AFTER_S})
        if kind == "closed":
            raise InputError("server", "shutting down; retry on another replica", status=503,
                             headers={"Retry-After": RETRY_AFTER_S})
        raise InputError("inference", f"failed: {answer[1]}", status=500)

    def metadata(self) -> dict:
        art, opt = self.art, self.options
        shape = [art.batch_size, -1]
        return {
            "model_version_status": [{"version": "1", "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}],
            "bertc": {
                "name": self.name, "artifact": art.path, "head": art.head,
                "signature": {"name": predict.SIGNATURE_KEY,
                              "inputs": {n: {"dtype": "int32", "shape": shape}
                                         for n in art.inputs},
                              "outputs": list(art.outputs)},
                "batch_size": art.batch_size, "seq_lens": list(art.seq_lens),
                "target": art.target, "do_lower_case": art.do_lower_case,
                "paraphrase_threshold": self.threshold if art.head == "embedding" else None,
                "engine": "ray", "batching": opt.batching,
                "intra_op_threads": opt.intra_op_threads,
                "max_batch_delay_ms": opt.max_batch_delay_ms,
                "max_instances": opt.max_instances}}


# --- the application ------------------------------------------------------------------

def _serve():
    try:
        from ray import serve
    except ImportError:
        raise BertcError("`engine` ray: Ray Serve is not installed; expected "
                         "pip install 'bertc[ray]' (ray[serve])") from None
    return serve


def application(options: RayServeOptions, art: Optional[artifact_lib.Artifact] = None):
    """The Serve application: Ingress bound to num_replicas BertcModel replicas; `art`:
    options.model already loaded (and its files checked) by the caller."""
    serve = _serve()
    options.check()
    # a bad path (or a file whose sha256 differs) fails here, not in Ray
    art = art or artifact_lib.load_artifact(options.model, options.skip_checksums)
    ongoing = options.max_ongoing_requests or 2 * art.batch_size
    model = serve.deployment(ModelReplica, name="BertcModel").options(
        num_replicas=options.num_replicas, max_ongoing_requests=ongoing,
        ray_actor_options={"num_cpus": options.replica_cpus})
    ingress = serve.deployment(Ingress, name="BertcIngress").options(
        num_replicas=1, max_ongoing_requests=4096, ray_actor_options={"num_cpus": 0})
    # Serve versions a deployment by its init arguments: leaving out what only the
    # cluster needs makes a new num_replicas a scale, not a rolling restart.
    bound = dataclasses.replace(options, num_replicas=1, ray_address=None,
                                host=defaults.HOST, port=defaults.PORT)
    return ingress.bind(bound, model.bind(bound))


def build_app(args: Dict):
    """The entry point of a Serve config file: `import_path:
    bertc.serving.ray_engine:build_app` with `args` naming RayServeOptions' fields."""
    return application(RayServeOptions.from_args(dict(args)))


def deploy(options: RayServeOptions, blocking_timeout_s: Optional[float] = None,
           art: Optional[artifact_lib.Artifact] = None) -> str:
    """Runs the application on the Ray cluster this process is connected to; returns
    the base URL. Replaces a running `bertc` application (new num_replicas, ...)."""
    serve = _serve()
    app = application(options, art)
    # One proxy, on the head node: nodes sharing one host cannot all bind the port.
    serve.start(proxy_location="HeadOnly",
                http_options={"host": options.host, "port": options.port})
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    except RuntimeError:  # "Deploying application bertc failed: ..."
        error = _replica_error(serve)
        if error is None:
            raise
        raise error from None
    return f"http://{options.host}:{options.port}"


#: How a replica's BertcError reads in its deployment's status message (a traceback).
_REPLICA_ERROR = re.compile(r"bertc\.errors\.(CheckFailed|BertcError): (.+)")


def _replica_error(serve) -> Optional[BertcError]:
    """The BertcError a BertcModel replica failed to start with (a probe outside
    verify's bounds on its node, a file whose sha256 differs there), read from the
    deployment's status; None when the status holds none."""
    try:
        app = serve.status().applications.get(APP_NAME)
        message = app.deployments["BertcModel"].message if app else ""
    except Exception:  # noqa: BLE001 - the status is a courtesy; the caller re-raises
        return None
    found = _REPLICA_ERROR.findall(message or "")
    if not found:
        return None
    kind, text = found[-1]
    return (CheckFailed if kind == "CheckFailed" else BertcError)(f"replica: {text}")


def run(options: RayServeOptions) -> None:
    """`bertc serve --engine ray`: connects to (or starts) Ray, deploys, serves until
    SIGTERM or SIGINT, then deletes the application and, if it started Ray, stops it."""
    options.check()
    # checked before Ray starts, and only once in this process
    art = artifact_lib.load_artifact(options.model, options.skip_checksums)
    serve = _serve()
    import ray
    started = options.ray_address is None
    init = dict(include_dashboard=False, logging_level=logging.WARNING)
    if started:
        cpus = max(os.cpu_count() or 1, int(np.ceil(options.num_replicas
                                                    * options.replica_cpus)))
        ray.init(num_cpus=cpus, _node_ip_address="127.0.0.1", **init)  # one machine
    else:
        ray.init(address=options.ray_address, **init)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        start = time.monotonic()
        url = deploy(options, art=art)
        logger.info("serving %r on %s with Ray Serve (%d replica(s), batching %s) in "
                    "%.1f s: POST /v1/models/<name>:predict, :classify", options.model_name
                    or os.path.basename(os.path.normpath(options.model)), url,
                    options.num_replicas, options.batching, time.monotonic() - start)
        while not stop.wait(0.5):
            pass
        logger.info("shutting down the Ray Serve application")
        serve.delete(APP_NAME)
    finally:
        if started:
            serve.shutdown()
            ray.shutdown()


def replica_actor_names(app_name: str = APP_NAME, deployment: str = "BertcModel"
                        ) -> List[str]:
    """Names (namespace "serve") of a deployment's live replica actors."""
    import ray
    prefix = f"SERVE_REPLICA::{app_name}#{deployment}#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and a["name"].startswith(prefix))
