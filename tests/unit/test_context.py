"""What every piece of work knows of its request (context.py): the row budget, cancellation,
the deadline (read against an injected clock where it can be), and a bounded wait that gives
up when the caller leaves."""

from __future__ import annotations

import time
from concurrent.futures import Future

import pytest
from whybert_service.context import Priority, RequestContext
from whybert_service.errors import Cancelled, DeadlineExceeded


def test_the_row_budget_counts_rows_and_refuses_what_would_exceed_it() -> None:
    ctx = RequestContext(max_rows=5)
    assert ctx.charge(3) and ctx.rows == 3
    assert not ctx.charge(3) and ctx.rows == 3  # refused, nothing counted
    assert ctx.charge(2) and ctx.rows == 5
    unlimited = RequestContext()
    assert unlimited.charge(10**9)


def test_the_deadline_is_read_against_the_clock_given() -> None:
    ctx = RequestContext(Priority.EXPLAIN, deadline=100.0)
    assert not ctx.expired(now=99.999) and ctx.expired(now=100.0)
    assert not RequestContext().expired(now=1e12)
    assert RequestContext().remaining() is None
    soon = RequestContext.with_timeout(Priority.PREDICT, 30.0, max_rows=7)
    assert soon.priority is Priority.PREDICT and soon.max_rows == 7
    remaining = soon.remaining()
    assert remaining is not None and 29.0 < remaining <= 30.0


def test_ensure_alive_says_why_the_work_must_stop() -> None:
    RequestContext().ensure_alive("before the model could run")
    gone = RequestContext()
    gone.cancel()
    assert gone.cancelled
    with pytest.raises(Cancelled, match="the caller cancelled"):
        gone.ensure_alive("before the model could run")
    late = RequestContext(deadline=time.monotonic() - 1)
    with pytest.raises(DeadlineExceeded, match="the deadline passed before the model could run"):
        late.ensure_alive("before the model could run")


def test_wait_returns_the_result_or_gives_up_and_cancels_the_future() -> None:
    done: Future[int] = Future()
    done.set_result(7)
    assert RequestContext().wait(done, "the model") == 7

    gone = RequestContext()
    gone.cancel()
    pending: Future[int] = Future()
    with pytest.raises(Cancelled, match="the caller cancelled"):
        gone.wait(pending, "the model")
    assert pending.cancelled()

    expiring = RequestContext.with_timeout(Priority.EXPLAIN, 0.01)
    pending = Future()
    with pytest.raises(DeadlineExceeded, match="while waiting for the model"):
        expiring.wait(pending, "the model")
    assert pending.cancelled()
