"""Unit tests for bertc.serving.batcher: cutting, padding, delivery, bounds, drain."""

import threading
import time

import numpy as np
import pytest

from bertc.serving.batcher import Batcher, BatcherClosed, QueueFull


def _row(seq_len, value):
    return seq_len, [np.full(seq_len, value, np.int32)] * 3


def test_full_batch_is_cut_at_once_without_waiting_for_the_delay():
    b = Batcher([8], batch_size=4, max_delay_s=60, max_queue=100)
    b.submit([_row(8, v) for v in range(1, 6)])
    start = time.monotonic()
    batch = b.next_batch()
    assert time.monotonic() - start < 1
    assert (batch.seq_len, batch.real, batch.fill) == (8, 4, 1.0)
    assert [int(r.feeds[0][0]) for r in batch.rows] == [1, 2, 3, 4]  # FIFO
    assert b.depth() == 1


def test_partial_batch_waits_for_the_oldest_rows_delay():
    b = Batcher([8], batch_size=4, max_delay_s=0.05, max_queue=100)
    start = time.monotonic()
    b.submit([_row(8, 1)])
    batch = b.next_batch()
    waited = time.monotonic() - start
    assert batch.real == 1 and 0.045 <= waited < 1


def test_replica_wakes_on_submit_without_polling():
    b = Batcher([8], batch_size=2, max_delay_s=60, max_queue=100)
    got = []
    worker = threading.Thread(target=lambda: got.append(b.next_batch()))
    worker.start()
    time.sleep(0.05)
    assert not got
    b.submit([_row(8, 1), _row(8, 2)])
    worker.join(2)
    assert got and got[0].real == 2


def test_padding_rows_are_zeros_and_results_go_back_by_index():
    b = Batcher([4], batch_size=4, max_delay_s=0, max_queue=100)
    futures = b.submit([_row(4, 7), _row(4, 9)])
    batch = b.next_batch()
    ids, mask, seg = batch.inputs()
    assert ids.shape == (4, 4) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids[:, 0], [7, 9, 0, 0])
    assert not mask[2:].any() and not seg[2:].any()
    batch.deliver({"out": np.arange(4)[:, None] * 10})
    assert [f.result(1)["out"].tolist() for f in futures] == [[0], [10]]


def test_failure_reaches_every_future_of_its_batch_only():
    b = Batcher([4], batch_size=2, max_delay_s=60, max_queue=100)
    first = b.submit([_row(4, 1), _row(4, 2)])
    second = b.submit([_row(4, 3)])
    b.next_batch().fail(RuntimeError("device lost"))
    for f in first:
        with pytest.raises(RuntimeError, match="device lost"):
            f.result(1)
    assert not second[0].done()


def test_wrong_output_batch_fails_the_batch():
    b = Batcher([4], batch_size=2, max_delay_s=0, max_queue=100)
    futures = b.submit([_row(4, 1)])
    b.next_batch().deliver({"out": np.zeros((3, 1))})
    with pytest.raises(ValueError, match="batch 3; expected 2"):
        futures[0].result(1)


def test_buckets_are_batched_apart_and_the_oldest_due_goes_first():
    b = Batcher([4, 8], batch_size=2, max_delay_s=60, max_queue=100)
    b.submit([_row(8, 1)])
    b.submit([_row(4, 2), _row(8, 3), _row(4, 4)])
    first, second = b.next_batch(), b.next_batch()
    assert (first.seq_len, second.seq_len) == (8, 4)  # bucket 8's head is older
    assert [int(r.feeds[0][0]) for r in second.rows] == [2, 4]


def test_queue_bound_refuses_a_whole_request():
    b = Batcher([4], batch_size=4, max_delay_s=60, max_queue=3)
    b.submit([_row(4, 1), _row(4, 2)])
    with pytest.raises(QueueFull) as e:
        b.submit([_row(4, 3), _row(4, 4)])
    assert (e.value.depth, e.value.limit, e.value.wanted) == (2, 3, 2)
    assert b.depth() == 2
    b.submit([_row(4, 5)])


def test_cancelled_rows_are_dropped_before_running():
    b = Batcher([4], batch_size=4, max_delay_s=0, max_queue=100)
    gone, stays = b.submit([_row(4, 1), _row(4, 2)])
    assert gone.cancel()
    batch = b.next_batch()
    assert [int(r.feeds[0][0]) for r in batch.rows] == [2]
    assert not stays.cancel()  # taken: it runs with its batch
    batch.deliver({"out": np.zeros((4, 1))})
    assert stays.result(1)["out"].shape == (1,)


def test_close_refuses_new_rows_and_drains_without_the_delay():
    b = Batcher([4, 8], batch_size=4, max_delay_s=60, max_queue=100)
    b.submit([_row(4, 1), _row(8, 2)])
    b.close()
    with pytest.raises(BatcherClosed):
        b.submit([_row(4, 3)])
    start = time.monotonic()
    drained = [b.next_batch(), b.next_batch()]
    assert time.monotonic() - start < 1
    assert sorted(x.seq_len for x in drained) == [4, 8]
    assert b.next_batch() is None


def test_close_wakes_idle_replicas():
    b = Batcher([4], batch_size=4, max_delay_s=60, max_queue=100)
    got = []
    workers = [threading.Thread(target=lambda: got.append(b.next_batch())) for _ in range(2)]
    for w in workers:
        w.start()
    b.close()
    for w in workers:
        w.join(2)
    assert got == [None, None]
