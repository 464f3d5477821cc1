"""What every piece of work knows about the request it serves: its deadline and whether
its caller is still there."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TypeVar

from .errors import Cancelled, DeadlineExceeded

T = TypeVar("T")
_POLL_S = 0.05  # how often a blocked waiter looks whether its caller left


class Priority(IntEnum):
    """Scheduling class of a row; a lower value runs first."""

    PREDICT = 0
    EXPLAIN = 1


@dataclass(eq=False)
class RequestContext:
    """Deadline (monotonic seconds) and cancellation of one request, shared by all its rows.

    Thread-safe: the transport sets `cancel()` when the caller leaves, the worker reads
    `cancelled` and `expired()` before each batch.
    """

    priority: Priority = Priority.PREDICT
    deadline: float | None = None
    # Model rows the whole request may cost, over all its texts and rounds; None: no limit.
    max_rows: int | None = None
    # The request this is one part of (one text of a stream), made by `part()`, and which
    # part it is (1, 2, ... in the order they were made; 0: the request itself).
    parent: RequestContext | None = None
    order: int = 0
    # Tokens of model work served to this request so far (on its `flow`; the model's worker
    # alone writes it): whether its next work or another request's goes first.
    served: int = 0
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _rows: int = 0
    _rows_lock: threading.Lock = field(default_factory=threading.Lock)
    _parts: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def with_timeout(cls, priority: Priority, seconds: float | None, max_rows: int | None = None) -> RequestContext:
        deadline = None if seconds is None else time.monotonic() + seconds
        return cls(priority=priority, deadline=deadline, max_rows=max_rows)

    def part(self) -> RequestContext:
        """One part of this request (one text of a stream): the same priority and deadline,
        a row budget of its own of the same size, cancelled with this request, and scheduled
        as this request (`flow`), so a stream gets one fair share, not one per text; within
        it the parts made first go first (`order`)."""
        return RequestContext(self.priority, self.deadline, self.max_rows, parent=self, order=next(self.flow._parts))

    @property
    def flow(self) -> RequestContext:
        """The whole request this context belongs to: what the scheduler shares fairly."""
        return self if self.parent is None else self.parent.flow

    def charge(self, rows: int) -> bool:
        """Count rows against the request's budget; False, counting nothing, when they
        would exceed it (an explanation whose rounds cost more than validation foresaw)."""
        with self._rows_lock:
            if self.max_rows is not None and self._rows + rows > self.max_rows:
                return False
            self._rows += rows
            return True

    @property
    def rows(self) -> int:
        """Rows charged so far."""
        return self._rows

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set() or (self.parent is not None and self.parent.cancelled)

    def expired(self, now: float | None = None) -> bool:
        if self.deadline is None:
            return False
        return (time.monotonic() if now is None else now) >= self.deadline

    def remaining(self) -> float | None:
        """Seconds left before the deadline, or None without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def ensure_alive(self, when: str) -> None:
        """Raise when the caller left or the deadline passed; `when` ends the deadline's
        message ("before the model could run")."""
        if self.cancelled:
            raise Cancelled("the caller cancelled")
        if self.expired():
            raise DeadlineExceeded(f"the deadline passed {when}")

    def wait(self, future: Future[T], waiting_for: str) -> T:
        """Block on `future` (threads, not the event loop) until it is done, or until the
        caller leaves or the deadline passes: then cancel it and raise."""
        while True:
            remaining = self.remaining()
            with contextlib.suppress(TimeoutError):
                return future.result(_POLL_S if remaining is None else max(0.0, min(remaining, _POLL_S)))
            if self.cancelled or self.expired():
                future.cancel()
                self.ensure_alive(f"while waiting for {waiting_for}")
