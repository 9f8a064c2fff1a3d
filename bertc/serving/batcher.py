"""Dynamic batching: one shared queue per sequence bucket, cut into static batches.

    handlers --submit(rows)--> [seq 64 queue] [seq 128 queue] <--next_batch()-- replicas
             <--- futures ---                                  --deliver/fail-->

As in TorchServe (`batch_size`, `max_batch_delay`) and TF Serving
(`max_batch_size`, `batch_timeout_micros`, `max_enqueued_batches`):
- each row is one model input ([S] per input name) and gets its own Future;
- a batch is cut from a bucket when it holds a full batch, or when its oldest row
  has waited `max_delay_s`; replicas block on a condition (no polling) and wake on
  a submit or at the oldest row's deadline;
- a batch is always the artifact's static batch size: short batches are padded
  with all-zero dummy rows whose outputs are dropped; results go back by index;
  an exception reaches every future of its batch;
- the queue is bounded (`max_queue` rows waiting, all buckets together): a submit
  that does not fit is refused whole with QueueFull;
- a row whose future was cancelled before a replica took it (its client went
  away) is dropped, never run; once taken, it runs with its batch;
- drain() cuts batches without waiting for the delay and still takes rows (of
  requests read before a shutdown); close() refuses new rows; replicas drain what
  is queued, then next_batch() returns None.
Every timeout uses the monotonic clock.
"""

import collections
import concurrent.futures
import dataclasses
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


class QueueFull(Exception):
    """The bounded queue has no room for a request's rows (HTTP 503)."""

    def __init__(self, depth: int, limit: int, wanted: int):
        super().__init__(f"queue full: {depth} rows waiting, limit {limit}, request needs "
                         f"{wanted}")
        self.depth, self.limit, self.wanted = depth, limit, wanted


class BatcherClosed(Exception):
    """The server is shutting down and takes no new work (HTTP 503)."""


@dataclasses.dataclass
class Row:
    """One model input waiting for a batch."""

    seq_len: int
    feeds: Tuple[np.ndarray, ...]       # one int32 [S] array per model input
    future: concurrent.futures.Future   # -> {output name: array for this row}
    enqueued: float                     # monotonic seconds


class Batch:
    """Rows of one bucket, padded to the static batch size when run."""

    def __init__(self, seq_len: int, rows: List[Row], batch_size: int):
        self.seq_len = seq_len
        self.rows = rows
        self.batch_size = batch_size

    @property
    def real(self) -> int:
        return len(self.rows)

    @property
    def fill(self) -> float:
        return len(self.rows) / self.batch_size

    def inputs(self) -> List[np.ndarray]:
        """One int32 [B, S] array per model input; rows past the real ones are zeros."""
        count = len(self.rows[0].feeds)
        arrays = [np.zeros((self.batch_size, self.seq_len), np.int32) for _ in range(count)]
        for i, row in enumerate(self.rows):
            for array, feed in zip(arrays, row.feeds):
                array[i] = feed
        return arrays

    def deliver(self, outputs: Dict[str, np.ndarray]) -> None:
        """Hands row i the i-th slice of every output; dummy rows are dropped."""
        try:
            for name, value in outputs.items():
                if value.shape[0] != self.batch_size:
                    raise ValueError(f"output {name} has batch {value.shape[0]}; expected "
                                     f"{self.batch_size}")
            results = [{name: value[i] for name, value in outputs.items()}
                       for i in range(len(self.rows))]
        except Exception as e:  # noqa: BLE001 - a malformed output fails the batch
            self.fail(e)
            return
        for row, result in zip(self.rows, results):
            row.future.set_result(result)

    def fail(self, exc: BaseException) -> None:
        for row in self.rows:
            if not row.future.done():
                row.future.set_exception(exc)


class Batcher:
    """Per-bucket queues shared by all replicas; see the module docstring."""

    def __init__(self, seq_lens: Sequence[int], batch_size: int, max_delay_s: float,
                 max_queue: int, clock=time.monotonic):
        if batch_size < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("Batcher: expected batch_size >= 1, max_queue >= 1, "
                             "max_delay_s >= 0")
        self.batch_size = batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._clock = clock
        self._cond = threading.Condition()
        self._queues: Dict[int, collections.deque] = {s: collections.deque()
                                                      for s in sorted(seq_lens)}
        self._depth = 0
        self._closed = False
        self._draining = False

    @property
    def closed(self) -> bool:
        return self._closed

    def depth(self, seq_len: Optional[int] = None) -> int:
        """Rows waiting (in one bucket, or in all)."""
        if seq_len is None:
            return self._depth
        return len(self._queues[seq_len])

    def submit(self, rows: Sequence[Tuple[int, Sequence[np.ndarray]]]
               ) -> List[concurrent.futures.Future]:
        """Queues (seq_len, feeds) rows; all or none. One future per row, in order.

        Raises QueueFull or BatcherClosed without queueing anything.
        """
        futures = [concurrent.futures.Future() for _ in rows]
        with self._cond:
            if self._closed:
                raise BatcherClosed("server is shutting down")
            if self._depth + len(rows) > self.max_queue:
                raise QueueFull(self._depth, self.max_queue, len(rows))
            now = self._clock()
            for (seq_len, feeds), future in zip(rows, futures):
                self._queues[seq_len].append(Row(seq_len, tuple(feeds), future, now))
            self._depth += len(rows)
            self._cond.notify_all()
        return futures

    def next_batch(self) -> Optional[Batch]:
        """Blocks until a batch is due and returns it; None once closed and drained."""
        with self._cond:
            while True:
                now = self._clock()
                seq_len = self._due(now)
                if seq_len is not None:
                    rows = self._take(seq_len)
                    if self._depth:
                        self._cond.notify()  # more may be due for another replica
                    if rows:
                        return Batch(seq_len, rows, self.batch_size)
                    continue  # every taken row had been cancelled
                if self._closed and not self._depth:
                    return None
                self._cond.wait(self._wait_s(now))

    def drain(self) -> None:
        """Queued and new rows run without waiting for the delay; rows still accepted."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()

    def close(self) -> None:
        """Refuses new rows; queued rows are still handed out (drain)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _due(self, now: float) -> Optional[int]:
        """The bucket to cut now: among full buckets and those whose oldest row is
        late (any non-empty one when closing), the one with the oldest row, so a
        busy bucket cannot starve a quiet one. None: nothing is due."""
        ready = []
        for seq_len, queue in self._queues.items():
            if queue and (len(queue) >= self.batch_size or self._closed or self._draining
                          or now - queue[0].enqueued >= self.max_delay_s):
                ready.append((queue[0].enqueued, seq_len))
        return min(ready)[1] if ready else None

    def _wait_s(self, now: float) -> Optional[float]:
        """Seconds until the oldest row's deadline; None (until notified) if empty."""
        heads = [q[0].enqueued for q in self._queues.values() if q]
        if not heads:
            return None
        return max(0.0, min(heads) + self.max_delay_s - now)

    def _take(self, seq_len: int) -> List[Row]:
        """Up to a batch of live rows from one bucket; cancelled rows are dropped."""
        queue = self._queues[seq_len]
        rows = []
        while queue and len(rows) < self.batch_size:
            row = queue.popleft()
            self._depth -= 1
            if row.future.set_running_or_notify_cancel():
                rows.append(row)
        return rows
