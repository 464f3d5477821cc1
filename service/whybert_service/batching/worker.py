"""The model worker: the one thread that owns a model and runs every forward pass on it.

Callers on any thread `submit` rows (cheap: a lock, a heap push, a notify) and wait on a
future; asyncio callers await it without blocking the loop, explainer threads block on
it. The worker cuts batches from the shared queue under the token budget, waits at most
`max_batch_delay` for an under-full batch to fill, runs it grouped by length, and hands
each caller its own rows' logits. A batch that fails is split in halves and retried, so
a row that fails alone fails only its own request. If the worker's loop itself breaks,
it is restarted: health goes NOT_SERVING meanwhile and the queued callers get
UNAVAILABLE, which clients retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from ..context import Priority, RequestContext
from ..errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    ModelFailure,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from ..metrics import Metrics
from ..models.classifier import Classifier, Launched
from .queue import (
    Batch,
    DropReason,
    Receiver,
    RowQueue,
    RowsResult,
    Slice,
    Submission,
    deliver,
    drop_reason,
    fail,
    settle,
    split_by_length,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class WorkerCrash(BaseException):
    """Raised inside the worker when its device state can no longer be trusted."""


# The smallest token budget a time bound may cut batches to (a batch still takes one row
# whatever its length).
MIN_BATCH_TOKENS = 256
# Tokens of the timed warm-up batch that gives the time bound its first speed estimate.
CALIBRATION_TOKENS = 2048


@dataclass(frozen=True)
class WorkerConfig:
    max_batch_tokens: int = 8192
    # Cut batches to take about this long on this device, so that whoever arrives while one
    # runs (a Predict, the next round of a small explanation) waits at most about this long;
    # the token budget shrinks below `max_batch_tokens` where the device is slow (measured:
    # the built-in model on 2 CPU cores runs 8,192 tokens in ~1.4 s). None or 0: the token
    # budget alone.
    max_batch_seconds: float | None = 0.2
    max_batch_delay_s: float = 0.004
    max_queued_rows: int = 200_000
    # Rows a length group keeps at least before a longer row may start a new group; None:
    # 64 on a CPU (measured: 8, 32, 64, 128 and no split gave 2.01, 1.84, 1.70, 1.84 and
    # 1.88 s per explanation in benchmarks/explain.py), 256 on a GPU (each extra forward
    # costs a fixed ~8 ms of kernel launches on an H200, which dwarfs padding).
    min_group_rows: int | None = None
    # Cut and launch batch N+1 while batch N runs on the device; None: on a GPU only (on a
    # CPU the forward pass holds the cores, and the next rounds of batch N's explanations
    # could only come a batch later).
    pipeline: bool | None = None


class _Outputs:
    """A batch's logits in its rows' order: rows × labels, and for rows that asked for
    every position, each row's own (its length × labels) by index."""

    def __init__(self, rows: int, labels: int) -> None:
        self.logits = np.empty((rows, labels), dtype=np.float32)
        self.tokens: dict[int, np.ndarray] = {}

    def put(self, rows: list[list[int]], group: list[int], collected: np.ndarray) -> None:
        """Store one group's collected logits (rows × labels, or rows × width × labels)."""
        if collected.ndim == 2:
            self.logits[group] = collected
            return
        for j, k in enumerate(group):
            self.tokens[k] = collected[j, : len(rows[k])].copy()


@dataclass(eq=False)
class _Launched:
    """A batch whose forward passes were launched and whose logits are not collected yet."""

    batch: Batch
    work: _Work
    groups: list[list[int]]  # indices into the work's rows, one launched forward pass each
    outputs: list[Launched]
    started: float


@dataclass(eq=False)
class _Work:
    """Rows to run: the slices they come from, in order, and the rows themselves (flat).
    Per slice, not per row: a batch of SHAP rounds is some sixteen slices of five rows."""

    parts: list[Slice]
    rows: list[list[int]]

    @classmethod
    def of(cls, parts: list[Slice]) -> _Work:
        return cls(parts, [row for p in parts for row in p.submission.rows[p.start : p.stop]])

    @functools.cached_property
    def kind(self) -> tuple[bool, int | None] | None:
        """(every position, position) when all its rows ask for the same logits (as a rule)."""
        kinds = {(p.submission.every_position, p.submission.position) for p in self.parts}
        return next(iter(kinds)) if len(kinds) == 1 else None

    @functools.cached_property
    def row_kinds(self) -> list[tuple[bool, int | None]]:
        """(every position, position) of each row."""
        return [(p.submission.every_position, p.submission.position)
                for p in self.parts for _ in range(p.start, p.stop)]

    def halves(self) -> tuple[_Work, _Work]:
        """The rows cut in two (a slice across the middle cut with them)."""
        half, first, second, seen = len(self.rows) // 2, [], [], 0
        for p in self.parts:
            n = p.stop - p.start
            if seen + n <= half:
                first.append(p)
            elif seen >= half:
                second.append(p)
            else:
                cut = p.start + half - seen
                first.append(Slice(p.submission, p.start, cut))
                second.append(Slice(p.submission, cut, p.stop))
            seen += n
        return _Work(first, self.rows[:half]), _Work(second, self.rows[half:])


@dataclass(eq=False)
class _Job:
    """A function to run on the worker thread with exclusive use of the model."""

    fn: Callable[[Classifier], Any]
    context: RequestContext
    future: Future[Any]
    cost: int = 0  # tokens of forward work it stands for (its request's share is charged them)


class ModelWorker:
    """Owns one `Classifier`; every forward pass on it goes through here."""

    def __init__(
        self,
        classifier: Classifier,
        config: WorkerConfig | None = None,
        metrics: Metrics | None = None,
        on_health: Callable[[bool], None] | None = None,
    ) -> None:
        self.classifier = classifier
        self.config = config or WorkerConfig()
        self.metrics = metrics or Metrics()
        self._on_health = on_health
        self._queue = RowQueue(padded=classifier.packer is None)
        self._jobs: list[_Job] = []
        self._job_ran_last = False
        self._in_flight: _Launched | None = None
        # Seconds per token (as the queue counts them) of the batches run so far (an
        # exponential average over batches near the budget), what the time bound turns into
        # a token budget.
        self._seconds_per_token: float | None = None
        # Rows of work queued outside the row queue (integrated gradients waiting for a
        # drain): they hold places under the same `max_queued_rows` bound.
        self._reserved_rows = 0
        # Rounds formed by the receivers of the batch being delivered (on the worker
        # thread), queued together when the delivery ends; None outside a delivery.
        self._held: list[Submission] | None = None
        self._held_by = 0
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._healthy = False
        self.restarts = 0
        # The queue's depth is read when Prometheus scrapes, not written on every submit.
        name = classifier.name
        self.metrics.queue_rows.labels(name).set_function(lambda: self._queue.queued_rows + self._reserved_rows)
        self.metrics.queue_submissions.labels(name).set_function(lambda: len(self._queue))
        self.metrics.queue_requests.labels(name).set_function(lambda: self._queue.requests)
        # observed on every batch: the labelled children looked up once
        self._queue_wait = self.metrics.queue_wait_seconds.labels(name)
        self._batch_rows = self.metrics.batch_rows.labels(name)
        self._batch_tokens = self.metrics.batch_tokens.labels(name)
        self._forward_seconds = self.metrics.forward_seconds.labels(name)
        self._rows_total = self.metrics.rows_total.labels(name)
        self._padding = self.metrics.padding_fraction.labels(name)
        self._budget_gauge = self.metrics.batch_token_budget.labels(classifier.name)
        self._budget_gauge.set(self.token_budget())

    def token_budget(self) -> int:
        """Tokens (as the queue counts them) the next batch may hold: `max_batch_tokens`, or less
        where batches that large would run longer than `max_batch_seconds` on this device.

        The estimate comes from batches that filled at least half the budget, so a stream
        of one-row batches (whose fixed cost per forward dominates) never shrinks it; with
        a fixed cost `a` per forward and `b` per token it settles where a + b × budget is
        the time bound."""
        cap, target, rate = self.config.max_batch_tokens, self.config.max_batch_seconds, self._seconds_per_token
        if not target or rate is None:
            return cap
        return max(min(cap, MIN_BATCH_TOKENS), min(cap, int(target / rate)))

    def _learn_speed(self, tokens: int, seconds: float) -> None:
        """Fold a finished batch's time into the seconds-per-token estimate (tokens as the
        budget counts them: padded, or the rows' own where the model packs them)."""
        if tokens <= 0 or tokens < self.token_budget() // 2:
            return
        # Quick to shrink, slow to grow: a batch slower than the estimate is taken at its
        # word at once (the next batch must not run long too), a faster one moves it 30 %.
        rate = seconds / tokens
        previous = self._seconds_per_token
        self._seconds_per_token = rate if previous is None or rate > previous else previous + 0.3 * (rate - previous)
        self._budget_gauge.set(self.token_budget())

    # ---- the callers' side -------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._healthy and not self._stopping

    def submit(
        self,
        rows: Sequence[Sequence[int]],
        context: RequestContext,
        position: int | None = None,
        *,
        every_position: bool = False,
    ) -> Future[RowsResult]:
        """Queue encoded rows; the future receives their logits (on a token model, those of
        token `position` of each row, or with `every_position` those of all its tokens, in
        `RowsResult.tokens`). Never blocks on the model.

        A request whose caller left or whose deadline passed is refused here, and one
        that would go over its row budget (`RequestContext.max_rows`) too.
        """
        future: Future[RowsResult] = Future()
        self._enqueue([r if isinstance(r, list) else list(r) for r in rows], context, future, position, every_position)
        return future

    def submit_to(
        self,
        rows: list[list[int]],
        context: RequestContext,
        receiver: Callable[[RowsResult | None, BaseException | None], None],
        position: int | None = None,
    ) -> None:
        """`submit`, with the logits (or the error) handed to `receiver` where they arrive,
        on the worker thread, instead of a future: an explanation's rounds, whose callback
        forms and submits the next round there. It must be quick and never block. `rows`
        become the worker's (not copied): the caller leaves them alone. Errors known at once
        (a caller gone, the row budget spent, the queue full) are raised, as by `submit`;
        from a receiver while its batch is delivered, the queue's refusal reaches the new
        receiver instead (those rounds are queued together once the delivery ends)."""
        self._enqueue(rows, context, Receiver(receiver), position, False)

    def _enqueue(
        self,
        rows: list[list[int]],
        context: RequestContext,
        outcome: Future[RowsResult] | Receiver,
        position: int | None,
        every_position: bool,
    ) -> None:
        if not rows:
            settle(outcome, result=RowsResult(np.zeros((0, self.classifier.num_labels), np.float32), 0.0))
            return
        context.ensure_alive("before the model could run")
        if not context.charge(len(rows)):
            raise InvalidArgument([("texts", _over_budget(context, len(rows)))])
        sub = Submission(
            rows=rows,
            context=context,
            future=outcome,
            enqueued_at=time.monotonic(),
            seq=next(self._seq),
            position=position,
            every_position=every_position,
        )
        if self._held is not None and isinstance(outcome, Receiver) and threading.get_ident() == self._held_by:
            self._held.append(sub)  # a round formed while a batch is delivered: queued with the others
            return
        with self._cond:
            self._admit(len(sub.rows))
            self._queue.push(sub)
            self._cond.notify()

    def _queue_held(self, held: list[Submission]) -> None:
        """Queue the rounds the receivers of a batch formed, under one lock; one that does
        not fit gets the error `submit` would have raised."""
        refused: list[tuple[Submission, ServiceError]] = []
        with self._cond:
            for sub in held:
                try:
                    self._admit(len(sub.rows))
                    self._queue.push(sub)
                except ServiceError as exc:
                    refused.append((sub, exc))
                except Exception:  # a bug: this round fails, never silently waits forever
                    log.exception("queueing a round of model %s failed", self.classifier.name)
                    refused.append((sub, Unavailable("the round could not be queued; retry")))
            self._cond.notify()
        for sub, error in refused:
            fail(sub, error)

    def run_blocking(
        self, rows: Sequence[Sequence[int]], context: RequestContext, position: int | None = None
    ) -> RowsResult:
        """Submit and wait, from a thread that is not the event loop (explainers)."""
        future = self.submit(rows, context, position)
        try:
            return context.wait(future, "the model")
        except (Cancelled, DeadlineExceeded):
            with self._cond:
                self._cond.notify()  # the worker drops the rows at once
            raise

    async def run(self, rows: Sequence[Sequence[int]], context: RequestContext) -> RowsResult:
        """Submit and await, from the event loop; cancelling the await drops the rows."""
        return await self.run_rows(self.submit(rows, context), context)

    @staticmethod
    async def run_rows(future: Future[RowsResult], context: RequestContext) -> RowsResult:
        """Await submitted rows from the event loop; cancelling the await drops them."""
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            context.cancel()
            future.cancel()
            raise

    async def run_tokens(self, rows: Sequence[Sequence[int]], context: RequestContext) -> list[np.ndarray]:
        """Every position's logits of each row (a token model's Predict): queued like any
        rows, so they share batches with other callers' Predict rows and go before
        explanation rows."""
        if not rows:
            return []
        result = await self.run_rows(self.submit(rows, context, every_position=True), context)
        assert result.tokens is not None
        return result.tokens

    def call(self, fn: Callable[[Classifier], T], context: RequestContext, cost: int = 0) -> Future[T]:
        """Run `fn(classifier)` on the worker thread between batches (gradient work), which
        stands for `cost` tokens of forward work in its request's fair share."""
        future: Future[T] = Future()
        context.ensure_alive("before the model could run")
        with self._cond:
            if not self.healthy:
                raise Unavailable(_not_serving(self.classifier.name))
            self._jobs.append(_Job(fn=fn, context=context, future=future, cost=cost))
            self._cond.notify()
        return future

    def reserve(self, n_rows: int) -> None:
        """Hold places under the queue bound for rows queued elsewhere (gradient work);
        RESOURCE_EXHAUSTED as for `submit` when they do not fit."""
        with self._cond:
            self._admit(n_rows)
            self._reserved_rows += n_rows

    def release(self, n_rows: int) -> None:
        """Give back places taken by `reserve`, once those rows have left their queue."""
        if n_rows:
            with self._cond:
                self._reserved_rows = max(0, self._reserved_rows - n_rows)

    def request_rows(self, context: RequestContext) -> int:
        """Rows of the request `context` belongs to (all its texts) waiting in the queue
        (rounds formed during a delivery count once the delivery ends)."""
        with self._cond:
            return self._queue.request_rows(context)

    def queued_rows(self) -> int:
        """Rows waiting for the model: the row queue's and those reserved by gradient work
        (rounds formed during a delivery count once the delivery ends)."""
        with self._cond:
            return self._queue.queued_rows + self._reserved_rows

    def _admit(self, n_rows: int) -> None:
        if not self.healthy:
            self.metrics.dropped_rows.labels(self.classifier.name, "rejected").inc(n_rows)
            raise Unavailable(_not_serving(self.classifier.name))
        limit = self.config.max_queued_rows
        if self._queue.queued_rows + self._reserved_rows + n_rows > limit:
            # Rows of callers who left hold no places, even while a long batch runs.
            self._drop_dead(time.monotonic())
        queued = self._queue.queued_rows + self._reserved_rows
        if queued + n_rows > limit:
            self.metrics.dropped_rows.labels(self.classifier.name, "rejected").inc(n_rows)
            raise ResourceExhausted(
                f"the queue of model {self.classifier.name!r} is full "
                f"({queued} of {limit} rows queued, {n_rows} more asked); retry later"
            )

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Warm the model up, then start the worker thread."""
        self._warm_up()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name=f"whybert-worker-{self.classifier.name}", daemon=True)
        self._thread.start()
        self._set_health(True)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking work; what is still queued gets UNAVAILABLE at once, the batch that
        is running gets up to `timeout` seconds to finish."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._fail_everything(Unavailable("the server is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)
        self._set_health(False)

    def _warm_up(self) -> None:
        """One forward pass at start-up, so the first request does not pay for lazy init;
        with a time bound, a second one of rows as long as the model reads (up to 2,048
        tokens) gives the first estimate of the device's speed, so the first heavy batch
        does not run long either."""
        ids = self.classifier.encode(["warm up the model"]).ids
        self.classifier.forward(ids * 2)
        if self.config.max_batch_seconds:
            width = max(1, min(self.classifier.max_length, CALIBRATION_TOKENS))
            row = (ids[0] * width)[:width]
            rows = [row] * max(1, min(self.config.max_batch_tokens, CALIBRATION_TOKENS) // width)
            started = time.perf_counter()
            self.classifier.forward(rows)
            self._seconds_per_token = (time.perf_counter() - started) / (len(rows) * width)
            self._budget_gauge.set(self.token_budget())
        self._publish_device()

    def _set_health(self, ok: bool) -> None:
        if ok == self._healthy:
            return  # no change: nothing to tell (health watchers would see it twice)
        self._healthy = ok
        self.metrics.model_loaded.labels(self.classifier.name).set(1 if ok else 0)
        if self._on_health is not None:
            self._on_health(ok)

    # ---- the worker's side -------------------------------------------------------------

    def _main(self) -> None:
        while not self._stopping:
            try:
                self._loop()
            except BaseException as exc:  # the loop broke: restart it, never hang callers
                if self._stopping:
                    break
                log.error("worker for model %s died: %r; restarting", self.classifier.name, exc)
                self._set_health(False)
                self._fail_everything(Unavailable(f"the worker of model {self.classifier.name!r} restarted; retry"))
                self.metrics.worker_restarts.labels(self.classifier.name).inc()
                self.restarts += 1
                self._recover()

    def _recover(self) -> None:
        """Bring the device back to a known state, then serve again; until the model
        answers a warm-up pass, retry with backoff (health stays NOT_SERVING meanwhile)."""
        delay, name = 0.25, self.classifier.name
        while not self._stopping:
            if self.classifier.device.type == "cuda":
                torch.cuda.empty_cache()
            try:
                self._warm_up()
            except (Exception, WorkerCrash) as exc:
                log.error("model %s failed its warm-up after a restart: %r", name, exc)
                with self._cond:
                    self._cond.wait(delay)  # stop() wakes this at once
                delay = min(delay * 2, 10.0)
                continue
            self._set_health(True)
            return

    def _loop(self) -> None:
        pipeline = self.config.pipeline
        if pipeline is None:
            pipeline = self.classifier.device.type == "cuda"
        while not self._stopping:
            job, batch = self._next_work(wait=self._in_flight is None)
            if job is not None:
                self._settle_in_flight()
                self._run_job(job)
            elif batch is not None and batch.rows:
                if not pipeline:
                    self._run_batch(batch)
                    continue
                launched = self._launch(batch)  # the device takes it while N is collected
                self._settle_in_flight()
                self._in_flight = launched
            else:
                self._settle_in_flight()
        self._settle_in_flight()  # stopping: its callers get their logits, not silence

    def _next_work(self, wait: bool = True) -> tuple[_Job | None, Batch | None]:
        """Wait until a job or a worthwhile batch is ready, then take it; without `wait`,
        return (None, None) at once when none is ready yet."""
        cfg = self.config
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                self._drop_dead(now)
                # Jobs are explanation work (one gradient step batch each): Predict rows
                # waiting in the queue go first; between a job and explanation rows, the
                # request served fewer tokens goes first (see `_jobs_turn`).
                head = self._queue.head_priority()
                if self._jobs and head != Priority.PREDICT and self._jobs_turn():
                    self._job_ran_last = True
                    return self._pick_job(), None
                if len(self._queue):
                    oldest = self._queue.oldest_enqueued_at() or now
                    delay = oldest + cfg.max_batch_delay_s - now
                    budget = self.token_budget()
                    if delay <= 0 or self._queue.pending_cost() >= budget:
                        explanation_rows = head != Priority.PREDICT
                        batch = self._queue.take_batch(budget, now)
                        if explanation_rows:  # a Predict batch is not the jobs' turn taken
                            self._job_ran_last = False
                        return None, batch
                    if not wait:
                        return None, None
                    self._cond.wait(delay)
                elif not wait:
                    return None, None
                else:
                    self._cond.wait(0.5)
        return None, None

    def _jobs_turn(self) -> bool:
        """Whether a job goes before the next batch of explanation rows: the request that
        has been served fewer tokens goes first, so a small explanation beside a long
        integrated-gradients request runs its rounds back to back instead of waiting one
        step batch for each; level, they take turns, so neither kind starves the other."""
        head = self._queue.head_served()
        if head is None:
            return True
        jobs = min(j.context.flow.served for j in self._jobs)
        return jobs < head if jobs != head else not self._job_ran_last

    def _pick_job(self) -> _Job:
        """The job of the request served the fewest tokens (then the oldest), charged its
        cost as it is taken."""
        best = min(range(len(self._jobs)), key=lambda i: (self._jobs[i].context.flow.served, i))
        job = self._jobs.pop(best)
        job.context.flow.served += job.cost
        return job

    def _drop_dead(self, now: float) -> None:
        swept = self._queue.sweep(now)
        for sub, reason in swept:
            self.metrics.dropped_rows.labels(self.classifier.name, reason.value).inc(sub.pending)
            fail(sub, _dropped_error(reason))
        live: list[_Job] = []
        for job in self._jobs:
            why = drop_reason(job.future, job.context, now)
            if why is None:
                live.append(job)
            else:
                fail_job(job, _dropped_error(why))
        self._jobs = live

    def _run_job(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            settle(job.future, result=job.fn(self.classifier))
        except WorkerCrash:
            settle(job.future, exception=Unavailable("the model worker restarted; retry"))
            raise
        except ServiceError as exc:
            settle(job.future, exception=exc)
        except Exception as exc:
            log.warning("job on model %s failed: %r", self.classifier.name, exc)
            settle(job.future, exception=ModelFailure(f"the model failed on this request: {exc}"))

    def _observe_batch(self, batch: Batch) -> _Work:
        now = time.monotonic()
        for piece in batch.slices:
            if piece.start == 0:
                self._queue_wait.observe(now - piece.submission.enqueued_at)
        self._batch_rows.observe(len(batch.rows))
        self._batch_tokens.observe(batch.cost(self._queue.padded))
        return _Work(batch.slices, batch.rows)

    def _run_batch(self, batch: Batch) -> None:
        work = self._observe_batch(batch)
        started = time.perf_counter()
        with self._failing_on_restart(batch):
            self._run_work(work)
        self._batch_done(batch, len(work.rows), started)

    def _batch_done(self, batch: Batch, rows: int, started: float) -> None:
        seconds = time.perf_counter() - started
        self._forward_seconds.observe(seconds)
        self._rows_total.inc(rows)
        self._learn_speed(batch.cost(self._queue.padded), seconds)
        self._publish_device()

    @contextlib.contextmanager
    def _failing_on_restart(self, batch: Batch) -> Iterator[None]:
        """If the loop breaks, nobody whose rows were in this batch may be left waiting; the
        worker refuses new work first, so a caller told of the restart who retries at once
        is refused as not serving, not admitted and then failed by the restart."""
        try:
            yield
        except BaseException:
            self._set_health(False)
            restarted = Unavailable(f"the worker of model {self.classifier.name!r} restarted; retry")
            for piece in batch.slices:
                fail(piece.submission, restarted)
            raise

    def _launch(self, batch: Batch) -> _Launched | None:
        """Launch a batch's forward passes, one per length group; a failure to launch runs
        it at once through the split-and-retry path instead (None: nothing in flight)."""
        work = self._observe_batch(batch)
        started = time.perf_counter()
        with self._failing_on_restart(batch):
            work = self._live(work)
            if not work.rows:
                return None
            groups = self._groups(work)
            try:
                outputs = [self._launch_group(work, g) for g in groups]
            except WorkerCrash:
                raise
            except Exception:
                self._run_work(work)
                self._batch_done(batch, len(work.rows), started)
                return None
        return _Launched(batch, work, groups, outputs, started)

    def _settle_in_flight(self) -> None:
        """Collect the batch in flight and hand each caller its logits (their callbacks
        queue the next rounds); a failure reruns it through split-and-retry."""
        launched, self._in_flight = self._in_flight, None
        if launched is None:
            return
        work = launched.work
        with self._failing_on_restart(launched.batch):
            try:
                out = _Outputs(len(work.rows), self.classifier.num_labels)
                for group, output in zip(launched.groups, launched.outputs, strict=True):
                    out.put(work.rows, group, self.classifier.collect(output))
            except WorkerCrash:
                raise
            except Exception:
                self._run_work(work)
            else:
                self._deliver(work, out)
        self._batch_done(launched.batch, len(work.rows), launched.started)

    def _publish_device(self) -> None:
        """Device memory in use, on a GPU only, and the batch shapes replayed from graphs,
        where the model has them (the series stay absent otherwise)."""
        if self.classifier.device.type == "cuda":
            self.metrics.device_memory_bytes.labels(str(self.classifier.device)).set(
                torch.cuda.memory_allocated(self.classifier.device)
            )
        graphs = self.classifier.graphs
        if graphs is not None:
            self.metrics.cuda_graphs.labels(self.classifier.name).set(graphs.captured if graphs.enabled else 0)

    def _live(self, work: _Work) -> _Work:
        """The work still wanted: the submissions whose caller left or whose deadline
        passed are failed here (each submission checked once, not once per row)."""
        now = time.monotonic()
        gone: set[Submission] = set()
        for sub in dict.fromkeys(p.submission for p in work.parts):
            if sub.future.done():
                gone.add(sub)
                continue
            reason = sub.drop_reason(now)
            if reason is not None:
                rows = sum(p.stop - p.start for p in work.parts if p.submission is sub)
                self.metrics.dropped_rows.labels(self.classifier.name, reason.value).inc(rows)
                fail(sub, _dropped_error(reason))
                gone.add(sub)
        return _Work.of([p for p in work.parts if p.submission not in gone]) if gone else work

    def _run_work(self, work: _Work) -> None:
        """Forward the work's rows; on failure split in halves down to single rows."""
        work = self._live(work)  # a retry comes later: check the callers again
        if not work.rows:
            return
        try:
            out = self._forward_grouped(work)
        except WorkerCrash:
            raise
        except Exception as exc:
            kind = "oom" if _is_oom(exc) else "error"
            self.metrics.batch_failures.labels(self.classifier.name, kind).inc()
            if kind == "oom" and self.classifier.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(work.rows) == 1:
                log.warning("model %s failed on a single row: %r", self.classifier.name, exc)
                self.metrics.dropped_rows.labels(self.classifier.name, "failed").inc()
                fail(work.parts[0].submission, ModelFailure(_failure_message(kind, exc)))
                return
            first, second = work.halves()
            self._run_work(first)
            self._run_work(second)
            return
        self._deliver(work, out)

    def _deliver(self, work: _Work, out: _Outputs) -> None:
        """Each slice's logits to its submission (rows × labels, or one array per row).
        The next rounds their receivers form are held and queued together at the end: the
        explanations of a batch advance together, one lock for all their rounds."""
        now = time.monotonic()
        offset = 0
        self._held, self._held_by = [], threading.get_ident()
        try:
            for p in work.parts:
                end = offset + p.stop - p.start
                if p.submission.every_position:
                    deliver(p.submission, p.start, [out.tokens[k] for k in range(offset, end)], now)
                else:
                    deliver(p.submission, p.start, out.logits[offset:end], now)
                offset = end
        finally:
            held, self._held = self._held, None
            if held:
                self._queue_held(held)

    def _groups(self, work: _Work) -> list[list[int]]:
        """Indices into the work's rows, one forward pass each: rows that want every
        position apart from the others, and within each kind, rows of similar length
        together (all of them at once where the model packs rows); padding observed."""
        if work.kind is not None or not any(p.submission.every_position for p in work.parts):  # the rule
            kinds = [list(range(len(work.rows)))]
        else:
            wants = [every for every, _ in work.row_kinds]
            kinds = [g for g in ([k for k, w in enumerate(wants) if w == want] for want in (True, False)) if g]
        if self.classifier.packer is not None:  # no padding to save
            self._padding.observe(0.0)
            return kinds
        min_rows = self.config.min_group_rows or (64 if self.classifier.device.type == "cpu" else 256)
        lengths = list(map(len, work.rows))
        groups = [
            [kind[j] for j in g] for kind in kinds for g in split_by_length([lengths[k] for k in kind], min_rows)
        ]
        padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
        self._padding.observe(1 - sum(lengths) / max(padded, 1))
        return groups

    def _launch_group(self, work: _Work, group: list[int]) -> Launched:
        """Launch one group's forward pass: the logits each row asked for."""
        whole = len(group) == len(work.rows) and group == list(range(len(group)))
        rows = work.rows if whole else [work.rows[k] for k in group]
        if work.kind is not None:  # one kind for the whole work (as a rule)
            every, position = work.kind
            if every:
                return self.classifier.launch_tokens(rows)
            return self.classifier.launch(rows, None if position is None else [position] * len(rows))
        kinds = work.row_kinds
        if kinds[group[0]][0]:
            return self.classifier.launch_tokens(rows)
        return self.classifier.launch(rows, [kinds[k][1] for k in group])

    def _forward_grouped(self, work: _Work) -> _Outputs:
        """One forward per group of similar lengths; logits back in the work's row order."""
        out = _Outputs(len(work.rows), self.classifier.num_labels)
        for group in self._groups(work):
            out.put(work.rows, group, self.classifier.collect(self._launch_group(work, group)))
        return out

    def _fail_everything(self, error: ServiceError) -> None:
        launched, self._in_flight = self._in_flight, None
        if launched is not None:
            for piece in launched.batch.slices:
                fail(piece.submission, error)
        with self._cond:
            subs = self._queue.drain()
            jobs, self._jobs = self._jobs, []
        for sub in subs:
            if not sub.future.done():
                dropped = self.metrics.dropped_rows.labels(self.classifier.name, "unavailable")
                dropped.inc(sub.pending)
            fail(sub, error)
        for job in jobs:
            fail_job(job, error)


def _not_serving(name: str) -> str:
    """The registry's words: a caller sees one message whichever check refused it first."""
    return f"model {name!r} is not serving right now (loading or restarting); retry"


def fail_job(job: _Job, error: BaseException) -> None:
    settle(job.future, exception=error)


def _dropped_error(reason: DropReason) -> ServiceError:
    if reason is DropReason.DEADLINE:
        return DeadlineExceeded("the deadline passed before the model could run")
    return Cancelled("the caller cancelled")


def _over_budget(context: RequestContext, rows: int) -> str:
    return (
        f"the request needed more than its limit of {context.max_rows} model rows "
        f"({context.rows} used, {rows} more asked); ask for a smaller budget "
        "(max_evals, num_samples, n_steps), fewer targets or fewer texts"
    )


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _failure_message(kind: str, exc: BaseException) -> str:
    if kind == "oom":
        return "the model ran out of device memory on this text even alone; send a shorter text"
    return f"the model failed on this request's input: {type(exc).__name__}: {exc}"
