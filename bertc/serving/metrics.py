"""What the server measures: Prometheus metrics (GET /metrics) and a per-second log line.

Prometheus (prometheus-client, one registry per server):
  bertc_requests_total{route,status}          HTTP requests answered
  bertc_request_latency_seconds{route}        HTTP latency histogram
  bertc_inferences_total{seq_len}             real rows run (dummy padding rows not counted)
  bertc_batches_total{seq_len}                batches run
  bertc_batch_fill_ratio{seq_len}             real rows / static batch size, per batch
  bertc_batch_seconds{seq_len}                model time per batch
  bertc_queue_depth{seq_len}                  rows waiting (read at scrape time)
  bertc_nonfinite_outputs_total{output}       requests refused (500) because an output
                                              held NaN or Inf (a corrupted model)
  bertc_header_timeouts_total                 connections closed because a request's
                                              headers did not arrive within
                                              header_timeout_s (no status is sent)
The log line, once a second and only when there was traffic (buckets listed when
more than one ran):
  212.0 inferences/s in 53 batches (fill 0.98); queue 3; 106 requests, latency p50
  18.2 ms p99 41.0 ms
"""

import logging
import threading
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import prometheus_client as prom

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)


class ServerMetrics:
    """The Prometheus side; observe_* are thread-safe."""

    def __init__(self, seq_lens: Sequence[int], batch_size: int,
                 queue_depth: Callable[[int], int]):
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = prom.Counter("bertc_requests", "HTTP requests answered, by route and "
                                     "status", ["route", "status"], registry=r)
        self.latency = prom.Histogram("bertc_request_latency_seconds", "HTTP request latency",
                                      ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.inferences = prom.Counter("bertc_inferences", "Real rows run (padding not "
                                       "counted)", ["seq_len"], registry=r)
        self.batches = prom.Counter("bertc_batches", "Batches run", ["seq_len"], registry=r)
        fill_buckets = [i / batch_size for i in range(1, batch_size + 1)]
        self.fill = prom.Histogram("bertc_batch_fill_ratio", "Real rows / static batch size",
                                   ["seq_len"], buckets=fill_buckets, registry=r)
        self.batch_seconds = prom.Histogram("bertc_batch_seconds", "Model time per batch",
                                            ["seq_len"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = prom.Gauge("bertc_queue_depth", "Rows waiting for a batch",
                                      ["seq_len"], registry=r)
        self.nonfinite = prom.Counter("bertc_nonfinite_outputs", "Requests answered 500 "
                                      "because an output held NaN or Inf", ["output"],
                                      registry=r)
        self.header_timeouts = prom.Counter(
            "bertc_header_timeouts", "Connections closed because a request's headers did "
            "not arrive within header_timeout_s", registry=r)
        for seq_len in seq_lens:
            label = str(seq_len)
            self.inferences.labels(label)
            self.batches.labels(label)
            self.queue_depth.labels(label).set_function(
                lambda s=seq_len: queue_depth(s))

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, seq_len: int, real: int, batch_size: int, seconds: float) -> None:
        label = str(seq_len)
        self.inferences.labels(label).inc(real)
        self.batches.labels(label).inc()
        self.fill.labels(label).observe(real / batch_size)
        self.batch_seconds.labels(label).observe(seconds)

    def observe_nonfinite(self, output: str) -> None:
        self.nonfinite.labels(output).inc()

    def exposition(self) -> bytes:
        return prom.generate_latest(self.registry)

    content_type = prom.CONTENT_TYPE_LATEST


class TrafficWindow:
    """Counts since the last `take()`: rows, batches, slots, request latencies."""

    def __init__(self):
        self._lock = threading.Lock()
        self._reset()

    def _reset(self):
        self._rows = 0
        self._batches = 0
        self._slots = 0
        self._latencies: List[float] = []
        self._per_bucket: Dict[int, int] = {}

    def add_batch(self, seq_len: int, real: int, batch_size: int) -> None:
        with self._lock:
            self._rows += real
            self._batches += 1
            self._slots += batch_size
            self._per_bucket[seq_len] = self._per_bucket.get(seq_len, 0) + real

    def add_latency(self, seconds: float) -> None:
        with self._lock:
            self._latencies.append(seconds)

    def take(self, elapsed_s: float, queue_depth: int) -> Optional[dict]:
        """The window's summary (None when there was no traffic), and a fresh window."""
        with self._lock:
            rows, batches, slots = self._rows, self._batches, self._slots
            latencies, per_bucket = self._latencies, self._per_bucket
            self._reset()
        if not batches and not latencies:
            return None
        summary = {"inferences_per_s": rows / elapsed_s, "batches": batches,
                   "fill": rows / slots if slots else 0.0, "queue_depth": queue_depth,
                   "requests": len(latencies),
                   "per_bucket": {s: n / elapsed_s for s, n in sorted(per_bucket.items())}}
        if latencies:
            p50, p99 = np.percentile(latencies, [50, 99])
            summary.update(p50_ms=1000 * p50, p99_ms=1000 * p99)
        return summary


def format_summary(summary: dict) -> str:
    """The per-second log line."""
    buckets = ", ".join(f"seq {s}: {r:.1f}/s" for s, r in summary["per_bucket"].items())
    line = (f"{summary['inferences_per_s']:.1f} inferences/s"
            f"{' (' + buckets + ')' if len(summary['per_bucket']) > 1 else ''} "
            f"in {summary['batches']} batches (fill {summary['fill']:.2f}); "
            f"queue {summary['queue_depth']}")
    if "p50_ms" in summary:
        line += (f"; {summary['requests']} requests, latency p50 {summary['p50_ms']:.1f} ms "
                 f"p99 {summary['p99_ms']:.1f} ms")
    return line
