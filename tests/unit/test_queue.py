"""The row queue: token-budget batch cutting, priority then deadline then arrival, and
dropping rows whose caller left or whose deadline passed."""

from __future__ import annotations

import itertools
import time
from concurrent.futures import Future

import numpy as np
import pytest
from whybert_service.batching.queue import (
    DropReason,
    Receiver,
    RowQueue,
    Submission,
    deliver,
    fail,
    settle,
    split_by_length,
)
from whybert_service.context import Priority, RequestContext

_seq = itertools.count()


def submission(
    lengths: list[int],
    priority: Priority = Priority.EXPLAIN,
    deadline: float | None = None,
    tag: int = 1,
) -> Submission:
    """A submission of rows of the given lengths; every token of a row is `tag`."""
    return Submission(
        rows=[[tag] * n for n in lengths],
        context=RequestContext(priority=priority, deadline=deadline),
        future=Future(),
        enqueued_at=time.monotonic(),
        seq=next(_seq),
    )


def test_batches_stay_within_the_padded_token_budget() -> None:
    queue = RowQueue()
    queue.push(submission([10, 30, 20, 40, 5, 25, 35]))
    queue.push(submission([12, 8, 50]))
    total_rows = 10
    taken = 0
    while len(queue):
        batch = queue.take_batch(max_tokens=100, now=time.monotonic())
        assert batch.rows, "a non-empty queue must always give a non-empty batch"
        assert batch.padded_tokens <= 100
        assert batch.padded_tokens == max(len(r) for r in batch.rows) * len(batch.rows)
        taken += len(batch.rows)
    assert taken == total_rows
    assert queue.queued_rows == 0


def test_a_packing_models_batches_count_their_own_tokens() -> None:
    # Rows packed end to end cost their own tokens, not longest × rows: the same queue cuts
    # fuller batches, and never past the budget.
    lengths = [10, 40, 5, 25, 35, 12, 8, 50, 3, 30]
    padded, packed = RowQueue(), RowQueue(padded=False)
    for queue in (padded, packed):
        queue.push(submission(lengths[:6]))
        queue.push(submission(lengths[6:], tag=2))
    first = packed.take_batch(max_tokens=100, now=time.monotonic())
    assert first.tokens == sum(map(len, first.rows)) == first.cost(padded=False)
    assert len(first.rows) > len(padded.take_batch(max_tokens=100, now=time.monotonic()).rows)
    assert packed.pending_cost() >= sum(lengths) - first.tokens
    taken = list(first.rows)
    while len(packed):
        batch = packed.take_batch(max_tokens=100, now=time.monotonic())
        assert 0 < batch.tokens <= 100 and batch.tokens == sum(map(len, batch.rows))
        taken += batch.rows
    assert sorted(map(len, taken)) == sorted(lengths) and packed.queued_rows == 0


def test_a_row_longer_than_the_budget_runs_alone_instead_of_waiting_forever() -> None:
    # text-embeddings-inference#723: a budget below the longest input hung the queue.
    queue = RowQueue()
    queue.push(submission([500, 3]))
    first = queue.take_batch(max_tokens=64, now=time.monotonic())
    assert [len(r) for r in first.rows] == [500]
    second = queue.take_batch(max_tokens=64, now=time.monotonic())
    assert [len(r) for r in second.rows] == [3]
    assert len(queue) == 0


def test_predict_rows_go_before_explanation_rows_that_arrived_earlier() -> None:
    queue = RowQueue()
    explain = submission([4] * 6, Priority.EXPLAIN, tag=7)
    predict = submission([4] * 2, Priority.PREDICT, tag=3)
    queue.push(explain)
    queue.push(predict)
    assert queue.head_priority() == Priority.PREDICT
    batch = queue.take_batch(max_tokens=4 * 4, now=time.monotonic())
    # Predict rows alone: a batch with Predict rows is not filled up with explanation rows
    assert [r[0] for r in batch.rows] == [3, 3]
    assert batch.slices[0].submission is predict
    assert [r[0] for r in queue.take_batch(max_tokens=4 * 4, now=time.monotonic()).rows] == [7] * 4


def test_earliest_deadline_first_within_a_class_then_arrival() -> None:
    now = time.monotonic()
    queue = RowQueue()
    late = submission([2], deadline=now + 30, tag=1)
    none_a = submission([2], deadline=None, tag=2)
    soon = submission([2], deadline=now + 1, tag=3)
    none_b = submission([2], deadline=None, tag=4)
    for sub in (late, none_a, soon, none_b):
        queue.push(sub)
    order = []
    while len(queue):
        order += [r[0] for r in queue.take_batch(max_tokens=2, now=now).rows]
    assert order == [3, 1, 2, 4]


def test_sweep_drops_cancelled_and_expired_submissions_and_their_rows() -> None:
    now = time.monotonic()
    queue = RowQueue()
    alive = submission([3, 3], deadline=now + 60)
    expired = submission([3, 3, 3], deadline=now - 0.001)
    cancelled = submission([3])
    cancelled.context.cancel()
    left = submission([3, 3])
    left.future.cancel()  # the caller stopped waiting
    for sub in (alive, expired, cancelled, left):
        queue.push(sub)
    assert queue.queued_rows == 8
    dropped = dict((id(s), reason) for s, reason in queue.sweep(now))
    assert dropped == {
        id(expired): DropReason.DEADLINE,
        id(cancelled): DropReason.CANCELLED,
        id(left): DropReason.CANCELLED,
    }
    assert len(queue) == 1 and queue.queued_rows == 2
    batch = queue.take_batch(max_tokens=1000, now=now)
    assert batch.slices[0].submission is alive


def test_a_submission_cut_across_batches_keeps_its_row_order_and_yields_its_turn() -> None:
    queue = RowQueue()
    big = submission([5] * 5, tag=1)
    queue.push(big)
    queue.push(submission([5], tag=2))
    first = queue.take_batch(max_tokens=15, now=time.monotonic())
    assert [(s.submission is big, s.start, s.stop) for s in first.slices] == [(True, 0, 3)]
    assert big.next_row == 3 and queue.queued_rows == 3
    # big has been served three rows, the other request none: the other goes first
    second = queue.take_batch(max_tokens=15, now=time.monotonic())
    assert [(s.submission is big, s.start, s.stop) for s in second.slices] == [
        (False, 0, 1),
        (True, 3, 5),
    ]


def test_a_small_request_does_not_wait_behind_a_huge_one() -> None:
    queue = RowQueue(quantum=16)
    huge = submission([4] * 2000, tag=1)
    queue.push(huge)
    queue.take_batch(max_tokens=4 * 64, now=time.monotonic())  # the huge one is being served
    small = submission([4] * 50, tag=2)
    queue.push(small)
    shares = []
    while small.pending:
        rows = [r[0] for r in queue.take_batch(max_tokens=4 * 64, now=time.monotonic()).rows]
        shares.append(rows.count(2))
    # half of every batch while it waits (a fair share), not the 1,969 rows ahead of it
    assert shares == [32, 18]


def test_a_request_served_batches_more_does_not_fill_the_batch_of_a_small_one() -> None:
    """A big request has been served alone for a while when a small one joins: each of the
    small one's rounds runs in a short batch of its own, not stretched to the budget by the
    big one's rows; requests served alike still share batches."""
    queue = RowQueue(quantum=16)
    big = submission([100] * 400, tag=1)
    queue.push(big)
    for _ in range(3):
        assert len(queue.take_batch(max_tokens=800, now=time.monotonic()).rows) == 8
    context = RequestContext(priority=Priority.EXPLAIN)
    for _ in range(3):  # three rounds of the small request, one after another
        round_ = Submission(rows=[[2]] * 6, context=context, future=Future(), enqueued_at=time.monotonic(),
                            seq=next(_seq))
        queue.push(round_)
        assert [r[0] for r in queue.take_batch(max_tokens=800, now=time.monotonic()).rows] == [2] * 6
    assert [r[0] for r in queue.take_batch(max_tokens=800, now=time.monotonic()).rows] == [1] * 8
    # a stream of small requests, each new one leading a batch, leaves the big one out of at
    # most MAX_SKIPS batches in a row: it still fills every fourth
    filled = []
    for _ in range(12):
        queue.push(submission([10] * 6, tag=5))
        rows = [r[0] for r in queue.take_batch(max_tokens=800, now=time.monotonic()).rows]
        filled.append(rows.count(1))
    assert filled == [0, 0, 0, 2] * 3  # (100-token rows padded beside the six short ones)
    # served alike (within two batches): one batch
    a, b = submission([10] * 6, tag=3), submission([10] * 6, tag=4)
    a.context.served, b.context.served = 5000, 5000 + 1500
    level = RowQueue(quantum=16)
    level.push(a)
    level.push(b)
    assert sorted({r[0] for r in level.take_batch(max_tokens=800, now=time.monotonic()).rows}) == [3, 4]


def test_short_rows_beside_long_rows_get_their_share_in_tokens_not_rows() -> None:
    """A request of 200-token rows is being served when one of twenty 10-token rows joins:
    its 200 tokens cost less than one long row, so the whole of it goes in the next batch
    (by rows served it would get 16 rows, then wait for 8 long ones)."""
    queue = RowQueue(quantum=16)
    long_rows = submission([200] * 100, tag=1)
    queue.push(long_rows)
    assert len(queue.take_batch(max_tokens=400, now=time.monotonic()).rows) == 2
    short = submission([10] * 20, tag=2)
    queue.push(short)
    second = [r[0] for r in queue.take_batch(max_tokens=400, now=time.monotonic()).rows]
    assert second == [2] * 20 and not short.pending


def test_requests_of_one_class_take_turns_by_tokens_served() -> None:
    queue = RowQueue(quantum=4)
    a, b = submission([1] * 12, tag=1), submission([1] * 12, tag=2)
    queue.push(a)
    queue.push(b)
    order = [r[0] for r in queue.take_batch(max_tokens=24, now=time.monotonic()).rows]
    assert order == [1] * 4 + [2] * 4 + [1] * 4 + [2] * 4 + [1] * 4 + [2] * 4


def test_a_requests_many_submissions_share_one_turn() -> None:
    """64 texts of one request in flight count as one request, not 64."""
    queue = RowQueue(quantum=6)
    context = RequestContext(priority=Priority.EXPLAIN)
    many = [
        Submission(rows=[[1]] * 6, context=context, future=Future(), enqueued_at=time.monotonic(), seq=next(_seq))
        for _ in range(64)
    ]
    for sub in many:
        queue.push(sub)
    single = submission([1] * 6, tag=2)
    queue.push(single)
    first = queue.take_batch(max_tokens=12, now=time.monotonic())
    assert [r[0] for r in first.rows] == [1] * 6 + [2] * 6


def test_the_future_completes_once_every_row_is_delivered_in_row_order() -> None:
    sub = submission([2, 2, 2])
    deliver(sub, 2, np.array([[2.0, 2.5]], dtype=np.float32), time.monotonic())
    assert not sub.future.done()
    deliver(sub, 0, np.array([[0.0, 0.5], [1.0, 1.5]], dtype=np.float32), time.monotonic())
    result = sub.future.result(timeout=0)
    np.testing.assert_array_equal(result.logits[:, 0], [0.0, 1.0, 2.0])
    assert result.queue_seconds >= 0


def test_replying_to_a_caller_who_left_is_not_an_error() -> None:
    sub = submission([2])
    sub.future.cancel()
    fail(sub, RuntimeError("too late"))  # must not raise
    deliver(sub, 0, np.zeros((1, 2), dtype=np.float32), time.monotonic())  # nor this
    assert sub.future.cancelled()


def test_drain_empties_the_queue() -> None:
    queue = RowQueue()
    subs = [submission([4, 4]), submission([4])]
    for sub in subs:
        queue.push(sub)
    assert queue.drain() == subs
    assert len(queue) == 0 and queue.queued_rows == 0 and queue.head_priority() is None


@pytest.mark.parametrize(
    ("lengths", "min_rows", "groups"),
    [
        ([10, 10, 10], 1, [[0, 1, 2]]),
        ([10, 100, 11, 110], 1, [[0, 2], [1, 3]]),
        ([10, 100, 11, 110], 3, [[0, 2, 1], [3]]),
    ],
)
def test_rows_are_grouped_by_similar_length(
    lengths: list[int], min_rows: int, groups: list[list[int]]
) -> None:
    assert split_by_length(lengths, min_rows) == groups


def test_a_receiver_gets_one_outcome_whatever_comes_after() -> None:
    """An explanation's rounds get their logits through a `Receiver`: the first outcome is
    handed on, a late failure (the caller left, shutdown) after it is not."""
    got: list[tuple[object, object]] = []
    receiver = Receiver(lambda result, error: got.append((result, error)))
    sub = submission([3, 3])
    sub.future = receiver
    assert not receiver.done() and not receiver.cancelled()
    deliver(sub, 0, np.ones((2, 4), np.float32), time.monotonic())
    fail(sub, RuntimeError("too late"))
    assert receiver.done() and len(got) == 1
    result, error = got[0]
    assert error is None and result.logits.shape == (2, 4)  # type: ignore[attr-defined]
    failing = Receiver(lambda result, error: got.append((result, error)))
    settle(failing, exception=ValueError("first"))
    settle(failing, result="second")
    assert isinstance(got[1][1], ValueError) and len(got) == 2

