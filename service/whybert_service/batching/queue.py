"""The queue of rows waiting for a model, and how a batch is cut from it.

One clear token-budget loop, as text-embeddings-inference has it: rows are taken in
priority order (class, then earliest deadline, then arrival) while the padded cost of
the batch (longest row × rows) stays within the budget. A row longer than the budget
still runs, alone. Rows whose caller left or whose deadline passed are dropped before
they are taken. Not thread-safe: its owner (the model worker) guards it with a lock.
"""

from __future__ import annotations

import contextlib
import heapq
import math
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from ..context import RequestContext


class DropReason(Enum):
    CANCELLED = "cancelled"
    DEADLINE = "deadline"


def drop_reason(future: Future[Any], context: RequestContext, now: float) -> DropReason | None:
    """Why work for this caller must not reach the model, or None while it still may."""
    if future.cancelled() or context.cancelled:
        return DropReason.CANCELLED
    if context.expired(now):
        return DropReason.DEADLINE
    return None


@dataclass(frozen=True)
class RowsResult:
    """Logits of one submission's rows and how long its rows waited in the queue."""

    logits: np.ndarray
    queue_seconds: float


@dataclass(eq=False)
class Submission:
    """Rows submitted together by one caller, with the future that receives their logits."""

    rows: list[list[int]]
    context: RequestContext
    future: Future[RowsResult]
    enqueued_at: float
    seq: int
    next_row: int = 0
    done_rows: int = 0
    taken_at: float | None = None
    logits: np.ndarray | None = None

    @property
    def key(self) -> tuple[int, float, int]:
        deadline = self.context.deadline
        return (int(self.context.priority), math.inf if deadline is None else deadline, self.seq)

    @property
    def pending(self) -> int:
        return len(self.rows) - self.next_row

    def drop_reason(self, now: float) -> DropReason | None:
        return drop_reason(self.future, self.context, now)


@dataclass(frozen=True)
class Slice:
    """Rows [start, stop) of one submission, taken into a batch."""

    submission: Submission
    start: int
    stop: int


@dataclass
class Batch:
    """Rows cut from the queue for one forward pass (maybe split by length when run)."""

    slices: list[Slice] = field(default_factory=list)
    rows: list[list[int]] = field(default_factory=list)
    longest: int = 0

    @property
    def padded_tokens(self) -> int:
        return self.longest * len(self.rows)

    @property
    def real_tokens(self) -> int:
        return sum(len(r) for r in self.rows)

    def add(self, sub: Submission, start: int, stop: int) -> None:
        self.slices.append(Slice(sub, start, stop))
        for row in sub.rows[start:stop]:
            self.rows.append(row)
            self.longest = max(self.longest, len(row))


class RowQueue:
    """Pending submissions in priority order, consumed row by row."""

    def __init__(self) -> None:
        self._heap: list[tuple[tuple[int, float, int], Submission]] = []
        self.queued_rows = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, sub: Submission) -> None:
        heapq.heappush(self._heap, (sub.key, sub))
        self.queued_rows += sub.pending

    def head_priority(self) -> int | None:
        """Priority class of the submission that would be taken next (None when empty)."""
        return self._heap[0][0][0] if self._heap else None

    def oldest_enqueued_at(self) -> float | None:
        return min((s.enqueued_at for _, s in self._heap), default=None)

    def pending_cost(self) -> int:
        """Padded cost of taking every queued row at once (an upper bound of the next batch)."""
        longest = max((len(r) for _, s in self._heap for r in s.rows[s.next_row :]), default=0)
        return longest * self.queued_rows

    def sweep(self, now: float) -> list[tuple[Submission, DropReason]]:
        """Remove submissions whose caller left or whose deadline passed."""
        dropped = []
        kept = []
        for item in self._heap:
            reason = item[1].drop_reason(now)
            if reason is None:
                kept.append(item)
            else:
                dropped.append((item[1], reason))
                self.queued_rows -= item[1].pending
        if dropped:
            heapq.heapify(kept)
            self._heap = kept
        return dropped

    def drain(self) -> list[Submission]:
        """Remove and return everything (the worker is going away)."""
        subs = [s for _, s in self._heap]
        self._heap = []
        self.queued_rows = 0
        return subs

    def take_batch(self, max_tokens: int, now: float) -> Batch:
        """Cut the next batch: rows in priority order while longest × rows ≤ max_tokens."""
        batch = Batch()
        while self._heap:
            sub = self._heap[0][1]
            start = stop = sub.next_row
            longest, count = batch.longest, len(batch.rows)
            while stop < len(sub.rows):
                widest = max(longest, len(sub.rows[stop]))
                if count and widest * (count + 1) > max_tokens:
                    break
                longest, count, stop = widest, count + 1, stop + 1
            if stop == start:
                break
            heapq.heappop(self._heap)
            batch.add(sub, start, stop)
            sub.next_row = stop
            sub.taken_at = now
            self.queued_rows -= stop - start
            if sub.pending:
                heapq.heappush(self._heap, (sub.key, sub))
                break
        return batch


def split_by_length(lengths: list[int], min_rows: int, max_ratio: float = 1.5) -> list[list[int]]:
    """Group row indices into runs of similar length, so short rows are not padded to the longest.

    Rows are sorted by length; a new group starts when the next row is more than
    `max_ratio` times as long as the group's shortest and the group already holds
    `min_rows` rows (small groups waste more in overhead than padding costs).
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) < min_rows or lengths[i] <= max_ratio * lengths[groups[-1][0]]):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def fail(sub: Submission, error: BaseException) -> None:
    """Fail a submission's future unless its caller already left."""
    settle(sub.future, exception=error)


def settle(future: Future[Any], *, result: Any = None, exception: BaseException | None = None) -> None:
    """Complete a future unless it is done already (its caller may cancel at any moment)."""
    if future.done():
        return
    with contextlib.suppress(InvalidStateError):  # cancelled between the check and the set
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)


def deliver(sub: Submission, start: int, logits: np.ndarray, now: float) -> None:
    """Store logits of rows [start, start+len) and complete the future when all are in."""
    if sub.logits is None:
        sub.logits = np.empty((len(sub.rows), logits.shape[1]), dtype=np.float32)
    sub.logits[start : start + len(logits)] = logits
    sub.done_rows += len(logits)
    if sub.done_rows == len(sub.rows):
        waited = (sub.taken_at or now) - sub.enqueued_at
        settle(sub.future, result=RowsResult(logits=sub.logits, queue_seconds=waited))
