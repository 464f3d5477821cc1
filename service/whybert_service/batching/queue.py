"""The queue of rows waiting for a model, and how a batch is cut from it.

One clear token-budget loop, as text-embeddings-inference has it: rows are taken in the
scheduler's order (class, then a fair share between requests, then earliest deadline,
then arrival) while the cost of the batch stays within the budget: its padded tokens
(longest row × rows), or, for a model that runs its rows packed end to end
(`models/packing.py`), its tokens. A row longer than the budget still runs, alone.
Rows whose caller left or whose deadline passed are dropped before they are taken. Not
thread-safe: its owner (the model worker) guards it with a lock.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import itertools
import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import numpy as np

from ..context import Priority, RequestContext

log = logging.getLogger(__name__)


class DropReason(Enum):
    CANCELLED = "cancelled"
    DEADLINE = "deadline"


class Outcome(Protocol):
    """Where a submission's result or error goes: a `Future`, or a `Receiver`."""

    def done(self) -> bool: ...

    def cancelled(self) -> bool: ...

    def set_result(self, result: Any) -> None: ...

    def set_exception(self, exception: BaseException | None) -> None: ...


class Receiver:
    """A submission's outcome handed to a function, once, where it arrives (the worker
    thread, for logits): an explanation's rounds, whose next round is formed right there.
    A `Future` per round would take its lock some six times a round (made, watched, set,
    read) and build a condition nobody waits on. As a future's callbacks, the function's
    own failure is logged, never raised into whoever delivered (the worker's loop); a
    second outcome is ignored."""

    __slots__ = ("_claimed", "_fn")

    def __init__(self, fn: Callable[[RowsResult | None, BaseException | None], None]) -> None:
        self._fn = fn
        self._claimed = threading.Lock()  # taken by the one outcome that gets through

    def done(self) -> bool:
        return self._claimed.locked()

    def cancelled(self) -> bool:
        return False  # its owner stops by cancelling the request's context

    def set_result(self, result: Any) -> None:
        self._finish(result, None)

    def set_exception(self, exception: BaseException | None) -> None:
        self._finish(None, exception)

    def _finish(self, result: RowsResult | None, error: BaseException | None) -> None:
        if not self._claimed.acquire(blocking=False):
            return  # it has its outcome already
        try:
            self._fn(result, error)
        except BaseException:
            log.exception("a receiver of rows failed")


def drop_reason(future: Outcome, context: RequestContext, now: float) -> DropReason | None:
    """Why work for this caller must not reach the model, or None while it still may."""
    if future.cancelled() or context.cancelled:
        return DropReason.CANCELLED
    if context.expired(now):
        return DropReason.DEADLINE
    return None


@dataclass(frozen=True)
class RowsResult:
    """Logits of one submission's rows and how long its rows waited in the queue; for rows
    that asked for every position (a token model's Predict), each row's own logits
    (its length × labels) in `tokens`, and `logits` holds no columns."""

    logits: np.ndarray
    queue_seconds: float
    tokens: list[np.ndarray] | None = None


@dataclass(eq=False)
class Submission:
    """Rows submitted together by one caller, with the future that receives their logits."""

    rows: list[list[int]]
    context: RequestContext
    future: Future[RowsResult] | Receiver
    enqueued_at: float
    seq: int
    next_row: int = 0
    done_rows: int = 0
    taken_at: float | None = None
    logits: np.ndarray | None = None
    longest: int = 0
    tokens_total: int = 0  # of all its rows
    # Token models: the token position whose logits every row gives (None: the first)...
    position: int | None = None
    # ... or the logits of every position of each row (a token model's Predict).
    every_position: bool = False
    tokens: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        lengths = list(map(len, self.rows))
        self.longest = max(lengths, default=0)
        self.tokens_total = sum(lengths)

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
    tokens: int = 0  # the rows' own

    @property
    def padded_tokens(self) -> int:
        return self.longest * len(self.rows)

    def cost(self, padded: bool) -> int:
        """Tokens the model computes for the batch: padded, or only its own (packed)."""
        return self.padded_tokens if padded else self.tokens

    def add(self, sub: Submission, start: int, stop: int) -> None:
        self.slices.append(Slice(sub, start, stop))
        if start == 0 and stop == len(sub.rows):  # the whole submission (a SHAP round, as a rule)
            self.rows.extend(sub.rows)
            self.longest = max(self.longest, sub.longest)
            self.tokens += sub.tokens_total
            return
        for row in sub.rows[start:stop]:
            self.rows.append(row)
            self.longest = max(self.longest, len(row))
            self.tokens += len(row)


@dataclass(eq=False)
class _Flow:
    """One request's queued submissions, and the tokens it has been served (its virtual time)."""

    context: RequestContext
    # in arrival order (a stream's: by text, then arrival, behind a head already cut into):
    # they share the request's deadline
    subs: deque[Submission] = field(default_factory=deque)
    start: float = 0.0  # virtual start tag: tokens served so far, never behind the class's clock
    stamp: int = 0  # bumped on every change of its place in the ready heap
    seq: int = 0
    skipped: int = 0  # batches in a row it was left out of as served far more than their leader

    @property
    def head(self) -> Submission:
        return self.subs[0]

    def key(self) -> tuple[int, float, float, int]:
        deadline = self.context.deadline
        return (int(self.context.priority), self.start, math.inf if deadline is None else deadline, self.seq)


# How many batches of tokens more than the request leading a batch another request may
# have been served and still share that batch; and how many batches in a row it may be
# left out of so.
AHEAD_BATCHES = 2
MAX_SKIPS = 3


class RowQueue:
    """Pending submissions, consumed row by row in the scheduler's order.

    Predict rows go before explanation rows. Within a class, requests take turns by the
    tokens they have been served (start-time fair queuing: a request that joins starts at
    the class's current virtual time, so it neither waits behind a request with 200,000 rows
    nor jumps ahead of everyone for long). Tokens, not rows: a row of 256 tokens costs the
    model some twenty times one of 12, so a request of short rows beside one of long rows
    gets its round back after one long row, not after as many long rows as it had short
    ones. Among requests level in that, the earliest deadline goes first, then arrival. A
    request's own submissions (one deadline) go in arrival order, except that a stream's
    texts go in the order they started: a text's next round goes before later texts'
    rounds, so a stream's first results come early while its later texts fill the rest of
    each batch. One pick takes at most `quantum` rows of one request, so a batch mixes the
    requests that are waiting, except a request served `AHEAD_BATCHES` batches more than the
    one leading the batch (for at most `MAX_SKIPS` batches in a row): a small explanation
    beside a big one runs its rounds in short batches of their own, not in batches the big
    one fills to the time bound.
    """

    def __init__(self, quantum: int = 16, padded: bool = True) -> None:
        self.quantum = quantum
        # What a batch costs: longest row × rows, or (a model that packs rows) its tokens.
        self.padded = padded
        self._flows: dict[int, _Flow] = {}
        self._ready: list[tuple[tuple[int, float, float, int], int, _Flow]] = []
        self._clock = [0.0 for _ in Priority]
        self._seq = itertools.count()
        self.queued_rows = 0
        self._submissions = 0

    def __len__(self) -> int:
        return self._submissions

    @property
    def requests(self) -> int:
        """Requests with rows queued (the parts of one request, a stream's texts, count once)."""
        return len(self._flows)

    def push(self, sub: Submission) -> None:
        request = sub.context.flow  # the parts of one request (a stream's texts) share a flow
        key = id(request)
        flow = self._flows.get(key)
        if flow is None:
            flow = _Flow(request, seq=next(self._seq))
            flow.start = self._clock[int(request.priority)]
            self._flows[key] = flow
        if not flow.subs or sub.context.order >= flow.subs[-1].context.order:
            flow.subs.append(sub)  # arrival order, as a rule
        else:  # a stream's earlier text goes before its later ones, behind a head already cut into
            lo = 1 if flow.subs[0].next_row else 0
            flow.subs.insert(bisect.bisect_right(flow.subs, sub.context.order, lo=lo, key=_part_order), sub)
        self.queued_rows += sub.pending
        self._submissions += 1
        if len(flow.subs) == 1:
            self._schedule(flow)

    def _schedule(self, flow: _Flow) -> None:
        flow.stamp += 1
        heapq.heappush(self._ready, (flow.key(), flow.stamp, flow))

    def _next_flow(self) -> _Flow | None:
        """The flow to serve next (left in the ready heap), skipping stale entries."""
        while self._ready:
            _, stamp, flow = self._ready[0]
            if stamp == flow.stamp and flow.subs and self._flows.get(id(flow.context)) is flow:
                return flow
            heapq.heappop(self._ready)
        return None

    def head_served(self) -> int | None:
        """Tokens served so far to the request whose rows would be taken next (None when
        empty): weighed against work queued outside (the worker's jobs)."""
        flow = self._next_flow()
        return None if flow is None else flow.context.served

    def head_priority(self) -> int | None:
        """Priority class of the submission that would be taken next (None when empty)."""
        flow = self._next_flow()
        return None if flow is None else int(flow.context.priority)

    def submissions(self) -> list[Submission]:
        return [s for flow in self._flows.values() for s in flow.subs]

    def request_rows(self, context: RequestContext) -> int:
        """Rows the request `context` belongs to has waiting (all its parts)."""
        flow = self._flows.get(id(context.flow))
        return 0 if flow is None else sum(s.pending for s in flow.subs)

    def oldest_enqueued_at(self) -> float | None:
        return min((s.enqueued_at for s in self.submissions()), default=None)

    def pending_cost(self) -> int:
        """Cost of taking every queued row at once (an upper bound of the next batch's)."""
        if not self.padded:  # a partly taken submission counts all its tokens: still a bound
            return sum(s.tokens_total for s in self.submissions())
        longest = max((s.longest for s in self.submissions()), default=0)
        return longest * self.queued_rows

    def sweep(self, now: float) -> list[tuple[Submission, DropReason]]:
        """Remove submissions whose caller left or whose deadline passed."""
        dropped: list[tuple[Submission, DropReason]] = []
        for key, flow in list(self._flows.items()):
            kept: deque[Submission] = deque()
            for sub in flow.subs:
                reason = sub.drop_reason(now)
                if reason is None:
                    kept.append(sub)
                else:
                    dropped.append((sub, reason))
                    self.queued_rows -= sub.pending
                    self._submissions -= 1
            if len(kept) != len(flow.subs):
                flow.subs = kept
                if not kept:
                    del self._flows[key]
                else:
                    self._schedule(flow)
        return dropped

    def drain(self) -> list[Submission]:
        """Remove and return everything (the worker is going away)."""
        subs = self.submissions()
        self._flows.clear()
        self._ready = []
        self.queued_rows = 0
        self._submissions = 0
        return subs

    def take_batch(self, max_tokens: int, now: float) -> Batch:
        """Cut the next batch in the scheduler's order while its cost ≤ max_tokens."""
        batch = Batch()
        first_class: int | None = None
        first_served = 0
        taken: set[_Flow] = set()
        while (flow := self._next_flow()) is not None:
            # A batch holding Predict rows takes no explanation rows: Predict waits for at
            # most the batch running now, never behind a full batch of explanation work.
            priority = int(flow.context.priority)
            if first_class is None:
                first_class, first_served = priority, flow.context.served
            elif priority != first_class:
                break
            elif (
                flow.context.served - first_served > AHEAD_BATCHES * max_tokens
                and flow.skipped < MAX_SKIPS
                and flow not in taken
            ):
                # A request served batches more than the one leading this batch waits for
                # the next: a small request's round runs in a short batch of its own instead
                # of one a big request fills to the time bound, round after round. Never
                # more than MAX_SKIPS batches in a row, so that a stream of small requests
                # (each new one leads) cannot starve a big one.
                flow.skipped += 1
                break
            sub = flow.head
            start = stop = sub.next_row
            longest, count, tokens, padded = batch.longest, len(batch.rows), batch.tokens, self.padded
            limit = min(len(sub.rows), start + self.quantum)
            whole = start == 0 and limit == len(sub.rows)
            if whole and (
                max(longest, sub.longest) * (count + limit) if padded else tokens + sub.tokens_total
            ) <= max_tokens:
                stop = limit  # all of it fits: no need to weigh row by row
            while stop < limit:
                width = len(sub.rows[stop])
                widest = max(longest, width)
                if count and (widest * (count + 1) if padded else tokens + width) > max_tokens:
                    break
                longest, count, tokens, stop = widest, count + 1, tokens + width, stop + 1
            if stop == start:
                break
            heapq.heappop(self._ready)
            flow.skipped = 0
            taken.add(flow)
            batch.add(sub, start, stop)
            sub.next_row = stop
            sub.taken_at = now
            self.queued_rows -= stop - start
            self._clock[priority] = max(self._clock[priority], flow.start)
            tokens = sub.tokens_total if whole and stop == limit else sum(len(row) for row in sub.rows[start:stop])
            flow.start += tokens
            flow.context.served += tokens
            if not sub.pending:
                flow.subs.popleft()
                self._submissions -= 1
            if flow.subs:
                self._schedule(flow)
            else:
                del self._flows[id(flow.context)]
        return batch


def _part_order(sub: Submission) -> int:
    return sub.context.order


def split_by_length(lengths: list[int], min_rows: int, max_ratio: float = 1.5) -> list[list[int]]:
    """Group row indices into runs of similar length, so short rows are not padded to the longest.

    Rows are sorted by length; a new group starts when the next row is more than
    `max_ratio` times as long as the group's shortest and the group already holds
    `min_rows` rows (small groups waste more in overhead than padding costs).
    """
    if min(lengths, default=0) == max(lengths, default=0):  # one length (a batch of SHAP rounds, as a rule)
        return [list(range(len(lengths)))] if lengths else []
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


def settle(future: Outcome, *, result: Any = None, exception: BaseException | None = None) -> None:
    """Complete a future unless it is done already (its caller may cancel at any moment)."""
    if future.done():
        return
    with contextlib.suppress(InvalidStateError):  # cancelled between the check and the set
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)


def deliver(sub: Submission, start: int, logits: np.ndarray | list[np.ndarray], now: float) -> None:
    """Store logits of rows [start, start+len) (one array of rows × labels; for a
    submission of every position, one array per row) and complete the future when all
    are in."""
    if sub.every_position:
        if sub.tokens is None:
            sub.tokens = [np.empty((0, 0), np.float32)] * len(sub.rows)
        sub.tokens[start : start + len(logits)] = list(logits)
    elif len(logits) == len(sub.rows):  # all of its rows in one piece (a SHAP round, as a rule)
        sub.logits = np.asarray(logits)
    else:
        if sub.logits is None:
            sub.logits = np.empty((len(sub.rows), logits[0].shape[-1]), dtype=np.float32)
        sub.logits[start : start + len(logits)] = logits
    sub.done_rows += len(logits)
    if sub.done_rows == len(sub.rows):
        waited = (sub.taken_at or now) - sub.enqueued_at
        if sub.tokens is not None:
            result = RowsResult(np.empty((len(sub.rows), 0), np.float32), waited, tokens=sub.tokens)
        else:
            result = RowsResult(logits=sub.logits, queue_seconds=waited)  # type: ignore[arg-type]
        settle(sub.future, result=result)
