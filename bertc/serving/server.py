"""The server: artifact + batcher + replicas + HTTP, and its life cycle.

  start:    load the artifact, N replicas (each warms every bucket), run the build's
            probe of every bucket (probe.py: refuses to serve outside verify's bounds),
            bind the port
            (and --grpc_port: TF Serving gRPC + KServe v2 gRPC, protocols/grpc_server.py)
  serve:    handlers -> Batcher -> replicas; a per-second traffic log line
  shutdown: (SIGTERM/SIGINT) stop listening; requests read from then on get 503 +
            Connection: close (gRPC: UNAVAILABLE); everything queued runs without
            waiting for the delay; every in-flight request gets its answer
            (Connection: close); keep-alive connections stay open `drain_idle_s` for
            a request in flight to be read and answered, then get a lingering close
            (protocol.py); join the replicas, exit 0

`run(config)` is `bertc serve`; `BackgroundServer` runs the same server on a
thread of its own (tests, notebooks, benchmarks).
"""

import asyncio
import concurrent.futures
import dataclasses
import errno
import logging
import os
import signal
import socket
import threading
import time
from typing import Callable, List, Optional, Sequence

from aiohttp import web

from bertc.runtime import tf_settings as tf_runtime
from bertc.errors import BertcError
from bertc.serving import app as app_lib
from bertc.serving import artifact as artifact_lib
from bertc.serving import defaults
from bertc.serving import metrics as metrics_lib
from bertc.serving import probe
from bertc.serving import protocol
from bertc.serving import replica as replica_lib
from bertc.serving.batcher import Batch, Batcher
from bertc.serving.classify import TextEncoder

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ServerConfig:
    """Everything `bertc serve` takes (flags of the same names)."""

    model: str
    model_name: Optional[str] = None
    host: str = defaults.HOST
    port: int = defaults.PORT
    grpc_port: Optional[int] = None  # TF Serving gRPC + KServe v2 gRPC; None: off
    parallel: int = defaults.PARALLEL
    intra_op_threads: Optional[int] = None  # per replica; default cores // parallel
    inter_op_threads: int = 1               # per replica's Session (TensorFlow)
    max_batch_delay_ms: float = defaults.MAX_BATCH_DELAY_MS
    max_queue: int = defaults.MAX_QUEUE
    max_instances: int = defaults.MAX_INSTANCES
    max_body_bytes: int = defaults.MAX_BODY_BYTES
    body_timeout_s: float = defaults.BODY_TIMEOUT_S
    keepalive_timeout_s: float = defaults.KEEPALIVE_TIMEOUT_S
    header_timeout_s: float = defaults.HEADER_TIMEOUT_S
    skip_checksums: bool = False  # serve without checking the files' recorded sha256
    skip_probe: bool = False      # serve without running the build's probe (probe.py)
    paraphrase_threshold: Optional[float] = None
    shutdown_timeout_s: float = 60.0
    drain_idle_s: float = defaults.DRAIN_IDLE_S  # idle connections open after the stop
    log_interval_s: float = 1.0

    def check(self) -> None:
        positive = {"parallel": self.parallel, "max_queue": self.max_queue,
                    "inter_op_threads": self.inter_op_threads,
                    "max_instances": self.max_instances,
                    "max_body_bytes": self.max_body_bytes}
        for flag, value in positive.items():
            if value < 1:
                raise BertcError(f"`{flag}` {value}: expected a positive integer")
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise BertcError(f"`intra_op_threads` {self.intra_op_threads}: expected a "
                             "positive integer")
        if self.max_batch_delay_ms < 0:
            raise BertcError(f"`max_batch_delay_ms` {self.max_batch_delay_ms}: expected "
                             ">= 0")
        for flag in ("body_timeout_s", "keepalive_timeout_s", "header_timeout_s"):
            if not getattr(self, flag) > 0:
                raise BertcError(f"`{flag}` {getattr(self, flag)}: expected seconds > 0")
        if not 0 <= self.port <= 65535:
            raise BertcError(f"`port` {self.port}: expected 0..65535 (0: any free port)")
        if self.grpc_port is not None and not 0 <= self.grpc_port <= 65535:
            raise BertcError(f"`grpc_port` {self.grpc_port}: expected 0..65535 (0: any free "
                             "port)")
        if self.grpc_port and self.grpc_port == self.port:
            raise BertcError(f"`grpc_port` {self.grpc_port}: the same as `port`; expected "
                             "another port")

    def threads_per_replica(self) -> int:
        if self.intra_op_threads:
            return self.intra_op_threads
        return tf_runtime.default_intra_op_threads(self.parallel)


def check_listen(host: str, port: int, port_option: str = "port") -> None:
    """Binds host:port once and lets go, so a bad host or a taken port is reported
    before the model loads (seconds), in the words of the flag at fault."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise BertcError(f"`host` {host}: not an address or host name ({e}); expected an "
                         "address of this machine such as 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
        try:
            probe.bind(address)
        except OSError as e:
            raise _listen_error(host, port, e, port_option) from None


def _listen_error(host: str, port: int, e: OSError, port_option: str = "port") -> BertcError:
    if e.errno == errno.EADDRNOTAVAIL:
        return BertcError(f"`host` {host}: not an address of this machine ({e.strerror}); "
                          "expected one of its addresses such as 127.0.0.1")
    return BertcError(f"`host` {host} `{port_option}` {port}: cannot listen ({e.strerror}); "
                      "expected a free port")


def engine(art: artifact_lib.Artifact) -> str:
    """The engine that runs the artifact, for the start-up log line."""
    if art.target == "openvino":
        from bertc.runtime import openvino_settings
        return f"OpenVINO {openvino_settings.version()}"
    return f"TensorFlow {tf_runtime.describe()}"


ModelFactory = Callable[[artifact_lib.Artifact, int], object]


class Server:
    """One served artifact. Construct (loads models), then `await start()`,
    then `await shutdown()`; both on the event loop that serves it."""

    def __init__(self, config: ServerConfig, model_factory: Optional[ModelFactory] = None):
        config.check()
        check_listen(config.host, config.port)
        if config.grpc_port:
            check_listen(config.host, config.grpc_port, "grpc_port")
        self.config = config
        self.artifact = artifact_lib.load_artifact(config.model, config.skip_checksums)
        self.name = config.model_name or self.artifact.default_name
        largest = self.max_request_rows()
        if config.max_queue < largest:
            pairs = " x 2 for pairs on an embedding head" if largest > config.max_instances else ""
            raise BertcError(f"`max_queue` {config.max_queue}: smaller than the largest "
                             f"request ({largest} rows: `max_instances` {config.max_instances}"
                             f"{pairs}), which could never be queued; expected at least "
                             f"{largest}")
        self.threshold, self.threshold_source = artifact_lib.paraphrase_threshold(
            self.artifact, config.paraphrase_threshold)
        self.batcher = Batcher(self.artifact.seq_lens, self.artifact.batch_size,
                               config.max_batch_delay_ms / 1000.0, config.max_queue)
        self.metrics = metrics_lib.ServerMetrics(self.artifact.seq_lens,
                                                 self.artifact.batch_size, self.batcher.depth)
        self.window = metrics_lib.TrafficWindow()
        self.encoder = TextEncoder(self.artifact)
        # tokenizing (:classify, :answer) runs here, off the event loop: one thread per
        # replica, as many texts in work as batches the replicas can run
        self.text_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.parallel, thread_name_prefix="bertc-text")
        self.draining = False
        factory = model_factory or replica_lib.model_factory(self.artifact, config.parallel,
                                                             config.inter_op_threads)
        threads = config.threads_per_replica()
        start = time.monotonic()
        models = [factory(self.artifact, threads) for _ in range(config.parallel)]
        logger.info("loaded %s: head %s, batch %d, seq %s; %d replica(s) x %d intra-op "
                    "thread(s) in %.1f s%s", self.artifact.path, self.artifact.head,
                    self.artifact.batch_size, ",".join(map(str, self.artifact.seq_lens)),
                    config.parallel, threads, time.monotonic() - start,
                    "" if model_factory else f"; {engine(self.artifact)}")
        # the replicas share one artifact, runtime and CPU: one of them proves it here
        try:
            self.probe = probe.check(models[0], self.artifact, config.skip_probe)
        except BaseException:
            for model in models:  # nothing serves them: free their memory now
                getattr(model, "close", lambda: None)()
            raise
        self.replicas = replica_lib.start_replicas(models, self.batcher, self._on_batch)
        self._runner: Optional[web.AppRunner] = None
        self._grpc = None  # grpc.aio.Server when config.grpc_port is set
        self.grpc_port: Optional[int] = None
        self._log_task: Optional[asyncio.Task] = None
        self.port: Optional[int] = None
        self._last_log = time.monotonic()

    def max_request_rows(self) -> int:
        """Rows of the largest request: one per instance, two for a :classify pair on an
        embedding head (each sentence embedded alone)."""
        per_instance = 2 if self.artifact.head == "embedding" else 1
        return self.config.max_instances * per_instance

    def _on_batch(self, batch: Batch, seconds: float) -> None:
        self.metrics.observe_batch(batch.seq_len, batch.real, batch.batch_size, seconds)
        self.window.add_batch(batch.seq_len, batch.real, batch.batch_size)

    async def infer(self, rows: Sequence) -> List[dict]:
        """Queues (seq_len, feeds) rows and waits for their outputs (in order).

        Raises QueueFull / BatcherClosed at once, or the batch's exception.
        """
        futures = self.batcher.submit(rows)
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    async def start(self) -> int:
        """Binds config.host:config.port and serves; returns the bound port."""
        cfg = self.config
        application = app_lib.make_app(self)
        # handler_cancellation: a client that hangs up cancels its handler, so its rows
        # are dropped before they reach a batch (the batcher skips cancelled futures).
        self._runner = protocol.JsonErrorRunner(
            application, handle_signals=False, access_log=None,
            shutdown_timeout=cfg.shutdown_timeout_s, handler_cancellation=True,
            keepalive_timeout=cfg.keepalive_timeout_s, header_timeout_s=cfg.header_timeout_s,
            on_header_timeout=self.metrics.header_timeouts.inc)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.host, cfg.port, backlog=1024)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise _listen_error(cfg.host, cfg.port, e) from None
        self.port = self._runner.addresses[0][1]
        if cfg.grpc_port is not None:
            from bertc.serving.protocols import grpc_server
            try:
                self._grpc, self.grpc_port = await grpc_server.start(
                    self, cfg.host, cfg.grpc_port, app_lib.infer_or_refuse)
            except BaseException:
                await self._runner.cleanup()
                raise
        self._last_log = time.monotonic()
        self._log_task = asyncio.get_running_loop().create_task(self._log_traffic())
        where = "all interfaces" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
        if where == "all interfaces":
            logger.warning("--host %s: listening on every network interface; bertc serve "
                           "has no authentication or TLS, so put it behind a proxy or a "
                           "firewall", cfg.host)
        logger.info("serving %r on http://%s:%d (%s): POST /v1/models/%s:predict, "
                    ":classify; GET /v1/models/%s, /ping, /metrics", self.name, cfg.host,
                    self.port, where, self.name, self.name)
        return self.port

    async def shutdown(self) -> None:
        """Stops listening, drains queued rows, answers in-flight requests (and 503s
        those read after the stop), closes the connections, joins replicas."""
        if self.draining:
            return
        self.draining = True  # from now on: 503 for new requests, Connection: close
        queued = self.batcher.depth()
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()  # no new connections
        self.batcher.drain()  # queued rows run without the delay
        # gRPC: new calls refused at once, calls in flight answered (within the timeout)
        grpc_stopped = (asyncio.ensure_future(self._grpc.stop(self.config.shutdown_timeout_s))
                        if self._grpc is not None else None)
        logger.info("shutting down: not accepting; draining %d queued row(s)", queued)
        if self._runner is not None:
            left = await protocol.drain_connections(self._runner.server,
                                                    self.config.drain_idle_s,
                                                    self.config.shutdown_timeout_s)
            if left:
                logger.warning("shutting down: %d connection(s) still open after %g s; "
                               "closing them", left, self.config.shutdown_timeout_s)
        if grpc_stopped is not None:
            await grpc_stopped
        self.batcher.close()
        if self._runner is not None:
            await self._runner.cleanup()  # what is left
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.join_replicas)
        if self._log_task is not None:
            self._log_task.cancel()
        self._flush_log(time.monotonic() - self._last_log)
        logger.info("drained; stopped")

    def join_replicas(self) -> None:
        self.batcher.close()
        self.text_pool.shutdown(wait=True)
        for replica in self.replicas:
            replica.join()
            close = getattr(replica.model, "close", None)
            if close:
                close()

    async def _log_traffic(self) -> None:
        while True:
            await asyncio.sleep(self.config.log_interval_s)
            now = time.monotonic()
            self._flush_log(now - self._last_log)
            self._last_log = now

    def _flush_log(self, elapsed_s: float) -> None:
        summary = self.window.take(max(elapsed_s, 1e-6), self.batcher.depth())
        if summary:
            logger.info("%s", metrics_lib.format_summary(summary))


def run(config: ServerConfig, model_factory: Optional[ModelFactory] = None) -> None:
    """`bertc serve`: serves until SIGTERM or SIGINT, then drains and returns."""
    server = Server(config, model_factory)

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await server.start()
        except BaseException:
            server.join_replicas()
            raise
        await stop.wait()
        await server.shutdown()

    asyncio.run(main())


class BackgroundServer:
    """A Server on its own event-loop thread: `with BackgroundServer(cfg) as s: s.url`."""

    def __init__(self, config: ServerConfig, model_factory: Optional[ModelFactory] = None):
        self.server = Server(config, model_factory)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="bertc-server-loop", daemon=True)
        self.url: Optional[str] = None
        self.grpc_target: Optional[str] = None  # host:port when config.grpc_port is set

    def __enter__(self) -> "BackgroundServer":
        self._thread.start()
        try:
            port = self._call(self.server.start())
        except BaseException:
            self._stop_loop()
            self.server.join_replicas()
            raise
        self.url = f"http://{self.server.config.host}:{port}"
        if self.server.grpc_port is not None:
            self.grpc_target = f"{self.server.config.host}:{self.server.grpc_port}"
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        if self._thread.is_alive():
            self._call(self.server.shutdown())
            self._stop_loop()

    def _call(self, coroutine, timeout: Optional[float] = None):
        future: concurrent.futures.Future = asyncio.run_coroutine_threadsafe(coroutine,
                                                                             self._loop)
        return future.result(timeout)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
