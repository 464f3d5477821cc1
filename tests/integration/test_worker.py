"""The model worker under faults: rows of callers who left never reach the model, queues
are bounded, failed batches are split and retried, a crashed worker restarts, and nobody
is ever left waiting."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest
from _servers import FaultyClassifier
from _wait import wait_for, wait_for_async
from whybert_service.batching.worker import ModelWorker, WorkerConfig
from whybert_service.context import Priority, RequestContext
from whybert_service.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    ModelFailure,
    ResourceExhausted,
    Unavailable,
)
from whybert_service.metrics import Metrics

WorkerFactory = Callable[..., tuple[ModelWorker, FaultyClassifier]]


@pytest.fixture
def make_worker(tiny_classifier: Any) -> Iterator[WorkerFactory]:
    """Start workers over a FaultyClassifier; every one is stopped after the test."""
    started: list[ModelWorker] = []

    def make(health: list[bool] | None = None, **config: Any) -> tuple[ModelWorker, FaultyClassifier]:
        faulty = FaultyClassifier(tiny_classifier)
        cfg = WorkerConfig(**{"max_batch_delay_s": 0.001, **config})
        worker = ModelWorker(faulty, cfg, Metrics(), health.append if health is not None else None)
        worker.start()
        faulty.seen.clear()  # forget the warm-up pass
        faulty.events.clear()
        faulty.batches.clear()
        faulty.padded.clear()
        started.append(worker)
        return worker, faulty

    yield make
    for worker in started:
        worker.classifier.release()  # type: ignore[attr-defined]
        worker.stop()


def ids(classifier: FaultyClassifier, *texts: str) -> list[list[int]]:
    return classifier.encode(list(texts)).ids


def hold_worker(worker: ModelWorker, faulty: FaultyClassifier) -> Future[Any]:
    """Keep the worker busy in a forward pass until `faulty.release()`."""
    faulty.hold()
    blocker = worker.submit(ids(faulty, "the worker is busy with this row"), RequestContext())
    assert faulty.entered.wait(10), "the worker never started the blocking batch"
    return blocker


def served(worker: ModelWorker, rows: list[list[int]]) -> int:
    """Submit rows for a fresh request and return how many rows of logits came back."""
    logits = worker.submit(rows, RequestContext()).result(10).logits
    assert logits.shape[1] == 3
    return int(logits.shape[0])


def metric(worker: ModelWorker, name: str, **labels: str) -> float:
    value = worker.metrics.registry.get_sample_value(name, {"model": worker.classifier.name, **labels})
    return float(value or 0.0)


def test_rows_of_expired_and_cancelled_callers_never_reach_the_model(
    make_worker: WorkerFactory,
) -> None:
    worker, faulty = make_worker()
    blocker = hold_worker(worker, faulty)
    expiring = RequestContext.with_timeout(Priority.PREDICT, 60)
    leaving = RequestContext()
    f_expiring = worker.submit(ids(faulty, "a text whose deadline passes in the queue"), expiring)
    f_leaving = worker.submit(ids(faulty, "a text whose caller cancels in the queue"), leaving)
    f_staying = worker.submit(ids(faulty, "a text whose caller waits"), RequestContext())
    leaving.cancel()
    expiring.deadline = time.monotonic()  # the deadline passes now, while the rows are queued
    faulty.release()
    blocker.result(10)
    assert f_staying.result(10).logits.shape == (1, 3)
    with pytest.raises(DeadlineExceeded):
        f_expiring.result(10)
    with pytest.raises(Cancelled):
        f_leaving.result(10)
    assert faulty.saw_text("a text whose caller waits")
    assert not faulty.saw_text("a text whose deadline passes in the queue")
    assert not faulty.saw_text("a text whose caller cancels in the queue")
    assert metric(worker, "whybert_dropped_rows_total", reason="deadline") == 1
    assert metric(worker, "whybert_dropped_rows_total", reason="cancelled") == 1
    assert worker.queued_rows() == 0


def test_work_for_a_caller_already_gone_is_refused_at_submit(make_worker: WorkerFactory) -> None:
    worker, faulty = make_worker()
    expired = RequestContext.with_timeout(Priority.PREDICT, -1.0)
    cancelled = RequestContext()
    cancelled.cancel()
    with pytest.raises(DeadlineExceeded):
        worker.submit(ids(faulty, "too late"), expired)
    with pytest.raises(Cancelled):
        worker.submit(ids(faulty, "gone"), cancelled)
    with pytest.raises(Cancelled):
        worker.call(lambda classifier: None, cancelled)
    assert worker.queued_rows() == 0 and faulty.seen == []


def test_run_blocking_gives_up_at_the_deadline_and_its_rows_are_dropped(
    make_worker: WorkerFactory,
) -> None:
    worker, faulty = make_worker()
    blocker = hold_worker(worker, faulty)
    ctx = RequestContext.with_timeout(Priority.EXPLAIN, 0.2)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        worker.run_blocking(ids(faulty, "an explanation round that waits too long"), ctx)
    assert time.monotonic() - started < 2.0
    faulty.release()
    blocker.result(10)
    assert wait_for(lambda: worker.queued_rows() == 0)
    assert not faulty.saw_text("an explanation round that waits too long")


async def test_cancelling_an_awaited_run_cancels_the_request(make_worker: WorkerFactory) -> None:
    worker, faulty = make_worker()
    blocker = hold_worker(worker, faulty)
    ctx = RequestContext()
    task = asyncio.ensure_future(worker.run(ids(faulty, "an awaited row whose caller leaves"), ctx))
    await wait_for_async(lambda: worker.queued_rows() == 1)  # queued behind the held batch
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ctx.cancelled
    faulty.release()
    await asyncio.wrap_future(blocker)
    assert wait_for(lambda: worker.queued_rows() == 0)
    assert not faulty.saw_text("an awaited row whose caller leaves")


def test_predict_rows_are_not_starved_by_queued_explanation_rows(
    make_worker: WorkerFactory,
) -> None:
    worker, faulty = make_worker(max_batch_tokens=64)
    blocker = hold_worker(worker, faulty)
    explain = [
        worker.submit(
            ids(faulty, *[f"explanation round {i} row {j}" for j in range(8)]),
            RequestContext(priority=Priority.EXPLAIN),
        )
        for i in range(4)
    ]
    predict = worker.submit(ids(faulty, "an urgent prediction"), RequestContext(priority=Priority.PREDICT))
    faulty.release()
    for f in [blocker, predict, *explain]:
        f.result(10)
    first_after_block = faulty.seen[1]  # seen[0] is the blocking row
    assert first_after_block == tuple(ids(faulty, "an urgent prediction")[0])


def test_gradient_jobs_do_not_go_before_queued_predict_rows(make_worker: WorkerFactory) -> None:
    worker, faulty = make_worker()
    blocker = hold_worker(worker, faulty)
    job = worker.call(lambda classifier: faulty.events.append("job"), RequestContext(priority=Priority.EXPLAIN))
    predict = worker.submit(ids(faulty, "a prediction behind a job"), RequestContext())
    faulty.release()
    job.result(10)
    predict.result(10)
    blocker.result(10)
    assert faulty.events == ["forward", "forward", "job"]


def test_gradient_jobs_take_turns_with_explanation_rows_while_predicts_keep_coming(
    make_worker: WorkerFactory,
) -> None:
    """Each job brings a new Predict (as callers keep predicting while a long integrated-
    gradients request runs): the Predict runs next, but does not count as the explanation
    rows' turn, so another request's explanation rows get in after the first job."""
    worker, faulty = make_worker()
    blocker = hold_worker(worker, faulty)
    predicts: list[Future[Any]] = []

    def job(i: int) -> None:
        faulty.events.append(f"job {i}")
        predicts.append(worker.submit(ids(faulty, f"prediction {i}"), RequestContext()))

    explain = RequestContext(priority=Priority.EXPLAIN)
    jobs = [worker.call(lambda classifier, i=i: job(i), explain) for i in range(3)]
    rows = worker.submit(ids(faulty, "explanation rows of another request"), RequestContext(Priority.EXPLAIN))
    faulty.release()
    for f in [blocker, *jobs, rows]:
        f.result(10)
    for f in predicts:
        f.result(10)
    events = faulty.events
    # blocker, job 0, its Predict, then the explanation rows: not after every job
    assert events[:4] == ["forward", "job 0", "forward", "forward"], events
    assert events.index("job 1") == 4


def test_a_small_explanation_runs_its_rounds_back_to_back_beside_a_long_gradient_request(
    make_worker: WorkerFactory,
) -> None:
    """Between a job and explanation rows, the request served fewer tokens goes first: a
    small explanation (each round submitted when the last one's logits come back, as the
    Partition engine does) runs all its rounds before a long request's next step batch,
    where taking turns would make each of its rounds wait one step batch."""
    worker, faulty = make_worker()
    blocker = hold_worker(worker, faulty)
    heavy = RequestContext(priority=Priority.EXPLAIN)
    jobs = [worker.call(lambda _c, i=i: faulty.events.append(f"job {i}"), heavy, 10_000) for i in range(3)]
    small = RequestContext(priority=Priority.EXPLAIN)
    rounds: list[Future[Any]] = []

    def next_round(_done: Future[Any] | None = None) -> None:
        if len(rounds) < 3:
            rounds.append(worker.submit(ids(faulty, f"round {len(rounds)} of a small explanation"), small))
            rounds[-1].add_done_callback(next_round)

    next_round()
    faulty.release()
    for f in [blocker, *jobs]:
        f.result(10)
    for f in rounds:
        f.result(10)
    # The first job goes as before (neither request served yet), then the three rounds.
    assert faulty.events == ["forward", "job 0", "forward", "forward", "forward", "job 1", "job 2"]
    assert heavy.served == 3 * 10_000 and 0 < small.served < 100


def test_a_full_queue_refuses_at_once_and_says_what_is_full(make_worker: WorkerFactory) -> None:
    worker, faulty = make_worker(max_queued_rows=4)
    blocker = hold_worker(worker, faulty)
    accepted = worker.submit(ids(faulty, "one", "two", "three"), RequestContext())
    with pytest.raises(ResourceExhausted) as refused:
        worker.submit(ids(faulty, "four", "five"), RequestContext())
    assert "queue of model 'tiny' is full" in refused.value.message
    assert "3 of 4 rows queued" in refused.value.message
    assert worker.queued_rows() == 3
    faulty.release()
    accepted.result(10)
    blocker.result(10)
    assert served(worker, ids(faulty, "four", "five")) == 2


def test_rows_of_callers_who_left_hold_no_places_in_a_full_queue(
    make_worker: WorkerFactory,
) -> None:
    worker, faulty = make_worker(max_queued_rows=4)
    blocker = hold_worker(worker, faulty)
    gone = RequestContext()
    abandoned = worker.submit(ids(faulty, "one", "two", "three", "four"), gone)
    gone.cancel()  # the worker is busy and has not swept the queue yet
    accepted = worker.submit(ids(faulty, "five", "six"), RequestContext())
    with pytest.raises(Cancelled):
        abandoned.result(10)
    faulty.release()
    assert accepted.result(10).logits.shape == (2, 3)
    blocker.result(10)
    assert not faulty.saw_text("one")


def test_a_request_cannot_spend_more_rows_than_its_budget(make_worker: WorkerFactory) -> None:
    worker, faulty = make_worker()
    ctx = RequestContext(max_rows=5)
    worker.submit(ids(faulty, "a", "b", "c"), ctx).result(10)
    with pytest.raises(InvalidArgument) as over:
        worker.submit(ids(faulty, "d", "e", "f"), ctx)
    assert over.value.violations[0][0] == "texts"
    assert "limit of 5 model rows" in over.value.violations[0][1]
    assert ctx.rows == 3
    worker.submit(ids(faulty, "d", "e"), ctx).result(10)  # exactly at the budget is fine


def test_out_of_memory_batches_are_split_until_they_fit(make_worker: WorkerFactory, tiny_classifier: Any) -> None:
    worker, faulty = make_worker(max_batch_delay_s=0.2)
    faulty.oom_above = 2
    texts = [f"sentence number {i} about food" for i in range(8)]
    futures = [worker.submit(ids(faulty, t), RequestContext()) for t in texts]
    results = [f.result(10).logits[0] for f in futures]
    expected = tiny_classifier.forward(tiny_classifier.encode(texts).ids)
    np.testing.assert_allclose(np.stack(results), expected, rtol=1e-4, atol=1e-5)
    assert "oom" in faulty.events
    assert max(faulty.batches) <= 2
    assert metric(worker, "whybert_batch_failures_total", kind="oom") >= 1
    assert worker.healthy and worker.restarts == 0


def test_a_split_batch_cuts_a_request_in_the_middle_and_still_gives_it_all_its_rows(
    make_worker: WorkerFactory, tiny_classifier: Any
) -> None:
    """Halving a batch of three-row requests cuts requests across the middle: each gets
    its rows' logits back in its own order, put together from the halves."""
    worker, faulty = make_worker(max_batch_delay_s=0.2)
    faulty.oom_above = 2
    requests = [[f"request {i} row {j} about food" for j in range(3)] for i in range(3)]
    futures = [worker.submit(ids(faulty, *texts), RequestContext()) for texts in requests]
    for texts, future in zip(requests, futures, strict=True):
        expected = tiny_classifier.forward(tiny_classifier.encode(texts).ids)
        np.testing.assert_allclose(future.result(10).logits, expected, rtol=1e-4, atol=1e-5)
    assert max(faulty.batches) <= 2 and 1 in faulty.batches  # halves of odd sizes: rows cut apart
    assert worker.healthy and worker.restarts == 0


def test_a_row_that_fails_alone_fails_only_its_own_request(make_worker: WorkerFactory) -> None:
    worker, faulty = make_worker(max_batch_delay_s=0.2)
    faulty.set_poison("xylophone")
    good = [
        worker.submit(ids(faulty, f"a fine text {i}", f"another fine text {i}"), RequestContext()) for i in range(3)
    ]
    bad = worker.submit(ids(faulty, "fine words", "the xylophone breaks it"), RequestContext())
    for f in good:
        assert f.result(10).logits.shape == (2, 3)
    with pytest.raises(ModelFailure) as failed:
        bad.result(10)
    assert "the model failed on this request's input" in failed.value.message
    assert "poisoned row" in failed.value.message
    assert worker.healthy and worker.restarts == 0
    assert served(worker, ids(faulty, "life goes on")) == 1


def test_a_single_row_out_of_memory_fails_with_a_clear_message(make_worker: WorkerFactory) -> None:
    worker, faulty = make_worker()
    faulty.oom_above = 0
    with pytest.raises(ModelFailure) as failed:
        worker.submit(ids(faulty, "too big even alone"), RequestContext()).result(10)
    assert failed.value.message == ("the model ran out of device memory on this text even alone; send a shorter text")
    faulty.oom_above = None
    assert served(worker, ids(faulty, "fits again")) == 1


def test_a_crashed_worker_restarts_and_nobody_is_left_waiting(make_worker: WorkerFactory) -> None:
    health: list[bool] = []
    worker, faulty = make_worker(health=health)
    blocker = hold_worker(worker, faulty)
    queued = [worker.submit(ids(faulty, f"queued behind the crash {i}"), RequestContext()) for i in range(5)]
    faulty.crashes = 2  # the running batch, then the first warm-up after the restart
    faulty.release()
    for f in [blocker, *queued]:
        with pytest.raises(Unavailable) as unavailable:
            f.result(10)
        assert "restarted; retry" in unavailable.value.message
    assert wait_for(lambda: worker.healthy, timeout=10)
    assert worker.restarts == 1
    assert health[0] is True and False in health and health[-1] is True
    assert metric(worker, "whybert_worker_restarts_total") == 1
    assert served(worker, ids(faulty, "after the restart")) == 1
    assert worker.queued_rows() == 0


def test_while_restarting_new_work_is_refused_as_unavailable(make_worker: WorkerFactory) -> None:
    worker, faulty = make_worker()
    faulty.crashes = 1000  # every warm-up fails: the worker stays down, retrying
    with pytest.raises(Unavailable):
        worker.submit(ids(faulty, "this crashes the worker"), RequestContext()).result(10)
    assert wait_for(lambda: not worker.healthy)
    with pytest.raises(Unavailable, match=r"not serving right now \(loading or restarting\); retry"):
        worker.submit(ids(faulty, "refused meanwhile"), RequestContext())
    with faulty._lock:
        faulty.crashes = 0
    assert wait_for(lambda: worker.healthy, timeout=15)
    assert served(worker, ids(faulty, "served again")) == 1


def test_stopping_fails_queued_work_and_refuses_new(make_worker: WorkerFactory) -> None:
    worker, faulty = make_worker()
    blocker = hold_worker(worker, faulty)
    queued = worker.submit(ids(faulty, "queued at shutdown"), RequestContext())
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    with pytest.raises(Unavailable, match="shutting down"):
        queued.result(10)
    faulty.release()
    stopper.join(10)
    assert blocker.result(10).logits.shape == (1, 3)  # the batch already running finished
    with pytest.raises(Unavailable):
        worker.submit(ids(faulty, "after stop"), RequestContext())
    assert not worker.healthy


@pytest.mark.parametrize("pipeline", [False, True])
def test_pipelined_and_plain_workers_give_every_caller_its_own_logits(
    make_worker: WorkerFactory, tiny_classifier: Any, pipeline: bool
) -> None:
    """With batch N+1 launched before batch N is collected (the GPU path, run here on the
    CPU), every caller still gets exactly its rows' logits, a poisoned row fails only its
    own request and an out-of-memory batch is split."""
    worker, faulty = make_worker(max_batch_delay_s=0.0, max_batch_tokens=64, pipeline=pipeline)
    faulty.set_poison("xylophone")
    faulty.oom_above = 6
    texts = [f"review {i}: " + "very " * (i % 7) + "good food" for i in range(40)]
    futures = [worker.submit(ids(faulty, t), RequestContext()) for t in texts]
    bad = worker.submit(ids(faulty, "the xylophone breaks it"), RequestContext())
    results = np.stack([f.result(10).logits[0] for f in futures])
    expected = tiny_classifier.forward(tiny_classifier.encode(texts).ids)
    np.testing.assert_allclose(results, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ModelFailure):
        bad.result(10)
    assert len(faulty.batches) > 1 and max(faulty.batches) <= 6
    assert worker.healthy and worker.restarts == 0


def test_a_crash_with_a_batch_in_flight_leaves_nobody_waiting(make_worker: WorkerFactory) -> None:
    worker, faulty = make_worker(max_batch_delay_s=0.0, max_batch_tokens=16, pipeline=True)
    blocker = hold_worker(worker, faulty)
    queued = [worker.submit(ids(faulty, f"text number {i}"), RequestContext()) for i in range(12)]
    faulty.crash_after = 1  # the held batch launches and is in flight when the next one crashes
    faulty.release()
    outcomes = []
    for f in [blocker, *queued]:
        try:
            outcomes.append(f.result(10).logits.shape == (1, 3))
        except Unavailable as exc:
            outcomes.append("restarted; retry" in exc.message)
    assert all(outcomes)
    assert "crash" in faulty.events
    assert wait_for(lambda: worker.healthy, timeout=10) and worker.restarts == 1
    assert served(worker, ids(faulty, "after the restart")) == 1


def test_on_a_slow_device_batches_are_cut_to_the_time_bound(make_worker: WorkerFactory) -> None:
    """A batch of the full token budget took 0.5 s against a bound of 0.05 s: the budget
    shrinks to what runs in about 0.05 s (~400 tokens), so the next batches are small, and
    the gauge says so. Without the bound the same rows go in one batch."""
    row = ids(make_worker()[1], "the quick brown fox jumps over the lazy dog once more")[0]
    worker, faulty = make_worker(max_batch_tokens=4096, max_batch_seconds=0.05)
    per_row = 4096 // len(row)
    faulty.seconds_per_token = 0.5 / (per_row * len(row))
    served(worker, [row] * per_row)  # one full batch: ~0.5 s
    budget = worker.token_budget()
    assert 256 < budget <= 4096 // 6, budget
    assert metric(worker, "whybert_batch_token_budget") == budget
    faulty.padded.clear()
    served(worker, [row] * per_row)
    assert len(faulty.padded) >= 6 and max(faulty.padded) <= 4096 // 4, faulty.padded

    plain, slow = make_worker(max_batch_tokens=4096, max_batch_seconds=None)
    slow.seconds_per_token = faulty.seconds_per_token
    served(plain, [row] * per_row)
    slow.padded.clear()
    served(plain, [row] * per_row)
    assert plain.token_budget() == 4096 and slow.padded == [per_row * len(row)]


def test_the_warm_up_times_a_batch_so_the_first_heavy_batch_is_already_cut(
    make_worker: WorkerFactory, tiny_classifier: Any
) -> None:
    """A device slow from the start: the timed warm-up batch sets the budget before any
    request arrives, so the very first batch of a heavy request is already small."""
    slow = FaultyClassifier(tiny_classifier)
    slow.seconds_per_token = 0.5 / 2048  # 2,048 tokens (the warm-up batch) take 0.5 s
    worker = ModelWorker(slow, WorkerConfig(max_batch_tokens=8192, max_batch_seconds=0.05), Metrics())
    worker.start()
    try:
        budget = worker.token_budget()
        assert 256 <= budget <= 8192 // 8, budget
        slow.padded.clear()
        row = ids(slow, "the quick brown fox jumps over the lazy dog once more")[0]
        served(worker, [row] * 100)
        assert slow.padded[0] <= 8192 // 8, slow.padded
    finally:
        worker.stop()


def test_slow_single_rows_do_not_shrink_the_budget(make_worker: WorkerFactory) -> None:
    """One-row batches cost mostly their fixed overhead: they say nothing about how long a
    full batch takes, and a stream of them leaves the budget alone."""
    worker, faulty = make_worker(max_batch_tokens=1024, max_batch_seconds=0.2)
    assert worker.token_budget() == 1024  # the tiny model runs 1,024 tokens well within 0.2 s
    faulty.delay = 0.25  # each forward pass, however small, takes longer than the bound
    for i in range(3):
        served(worker, ids(faulty, f"one short prediction {i}"))
    assert worker.token_budget() == 1024


def test_rows_submitted_to_a_receiver_get_one_outcome_each_on_the_worker_thread(
    make_worker: WorkerFactory, tiny_classifier: Any
) -> None:
    """`submit_to` (an explanation's rounds): the receiver gets the same logits a future
    would, on the worker thread; rows of a caller who left reach it as Cancelled and never
    the model; what is queued at shutdown as UNAVAILABLE; each receiver exactly once."""
    worker, faulty = make_worker()
    outcomes: dict[str, list[tuple[Any, Any, str]]] = {}

    def receiver(name: str) -> Any:
        outcomes[name] = []
        return lambda result, error: outcomes[name].append((result, error, threading.current_thread().name))

    texts = ["a text for the receiver", "and another one"]
    blocker = hold_worker(worker, faulty)
    leaving, stopped = RequestContext(), RequestContext()
    worker.submit_to(ids(faulty, *texts), RequestContext(), receiver("served"))
    worker.submit_to(ids(faulty, "a text whose caller leaves"), leaving, receiver("left"))
    leaving.cancel()
    faulty.release()
    blocker.result(10)
    wait_for(lambda: len(outcomes["served"]) + len(outcomes["left"]) == 2, timeout=10, message="no outcome")
    ((result, error, thread),) = outcomes["served"]
    assert error is None and thread.startswith("whybert-worker")
    np.testing.assert_allclose(result.logits, tiny_classifier.forward(tiny_classifier.encode(texts).ids),
                               rtol=1e-4, atol=1e-5)
    ((_, left, _),) = outcomes["left"]
    assert isinstance(left, Cancelled) and not faulty.saw_text("a text whose caller leaves")

    blocker = hold_worker(worker, faulty)
    worker.submit_to(ids(faulty, "queued at shutdown"), stopped, receiver("stopped"))
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    wait_for(lambda: outcomes["stopped"], timeout=10, message="the queued rows got no outcome at shutdown")
    faulty.release()
    stopper.join(10)
    ((_, error, _),) = outcomes["stopped"]
    assert isinstance(error, Unavailable)
    assert [len(v) for v in outcomes.values()] == [1, 1, 1]


def test_a_receiver_that_raises_fails_nobody_else_and_the_worker_serves_on(
    make_worker: WorkerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in a receiver (it runs on the worker thread) is logged, as a future's callback
    would be; it neither restarts the worker nor reaches the other callers of its batch."""
    worker, faulty = make_worker(max_batch_delay_s=0.2)

    def broken(result: Any, error: Any) -> None:
        raise RuntimeError("a bug in a receiver")

    worker.submit_to(ids(faulty, "a text whose receiver breaks"), RequestContext(), broken)
    beside = worker.submit(ids(faulty, "a text in the same batch"), RequestContext())
    assert beside.result(10).logits.shape == (1, 3)
    assert served(worker, ids(faulty, "and the next batch")) == 1
    assert worker.healthy and worker.restarts == 0
    assert "a receiver of rows failed" in caplog.text


def test_rounds_formed_while_a_batch_is_delivered_are_queued_together_after_it(make_worker: WorkerFactory) -> None:
    """Receivers that form their next round during a delivery (an explanation's rounds):
    each round is queued once the delivery ends and runs in a later batch, all the chains
    finish; a round that does not fit the queue gets RESOURCE_EXHAUSTED through its
    receiver, as `submit` would have raised it."""
    worker, faulty = make_worker(max_batch_delay_s=0.05, max_queued_rows=12)
    finished: list[int] = []
    refused: list[BaseException] = []

    def chain(k: int, context: RequestContext, rounds_left: int) -> Any:
        def receive(result: Any, error: Any) -> None:
            assert error is None and result.logits.shape == (2, 3)
            if rounds_left == 0:
                finished.append(k)
                return
            rows = ids(faulty, f"chain {k} round {rounds_left}", "and its pair")
            worker.submit_to(rows, context, chain(k, context, rounds_left - 1))

        return receive

    for k in range(4):
        context = RequestContext()
        worker.submit_to(ids(faulty, f"chain {k} starts", "and its pair"), context, chain(k, context, 3))
    wait_for(lambda: len(finished) == 4, timeout=10, message="the chains of rounds did not finish")
    assert sorted(finished) == [0, 1, 2, 3] and worker.queued_rows() == 0

    def too_big(result: Any, error: Any) -> None:
        rows = ids(faulty, *["a round larger than the queue"] * 13)
        worker.submit_to(rows, RequestContext(), lambda _result, e: refused.append(e))

    worker.submit_to(ids(faulty, "a round whose next one does not fit"), RequestContext(), too_big)
    wait_for(lambda: refused, timeout=10, message="the refused round got no outcome")
    assert isinstance(refused[0], ResourceExhausted)
    assert worker.healthy and worker.restarts == 0


@pytest.mark.parametrize("packs", [True, False], ids=["packed", "padded"])
def test_a_batch_of_many_lengths_runs_as_one_packed_forward_on_the_cpu(tiny_classifier: Any, packs: bool) -> None:
    # Packed, a batch's rows need no grouping by length: one forward pass, each row's own
    # logits. Padded, the same batch runs in groups of similar length.
    faulty = FaultyClassifier(tiny_classifier)
    assert faulty.packer is not None
    if not packs:
        faulty.packer = None
    worker = ModelWorker(faulty, WorkerConfig(max_batch_delay_s=0.001, max_batch_seconds=None, min_group_rows=1))
    worker.start()
    faulty.batches.clear()  # forget the warm-up pass
    try:
        text = "the staff were friendly but the room was cold and the breakfast was late again"
        rows = ids(faulty, *(" ".join(text.split()[: 1 + 3 * i]) for i in range(6)))
        assert len({len(r) for r in rows}) == 6
        blocker = hold_worker(worker, faulty)
        futures = [worker.submit([row], RequestContext()) for row in rows]  # six callers, queued together
        faulty.release()
        blocker.result(10)
        got = np.stack([f.result(10).logits[0] for f in futures])
        assert faulty.batches[0] == 1  # the blocker's row
        after = faulty.batches[1:]
        assert (after == [len(rows)]) if packs else (len(after) > 1 and sum(after) == len(rows))
        alone = np.stack([tiny_classifier.forward([row])[0] for row in rows])
        np.testing.assert_allclose(got, alone, rtol=1e-4, atol=1e-5)
    finally:
        faulty.release()
        worker.stop()


def test_callers_batched_through_graphs_get_their_own_logits(tiny_model_dir: Any, tiny_classifier: Any) -> None:
    # The GPU path's graphs, run uncaptured here: batches of recurring shapes from many
    # callers (the worker launching one while the last runs) give each row its own logits.
    from whybert_service.models.loading import load_directory

    graphed = load_directory("graphed", tiny_model_dir, tiny_classifier.device, tiny_classifier.dtype)
    graphed.packer = None
    graphed.model.set_attn_implementation("sdpa")
    assert graphed.use_graphs(capture=False) and graphed.graphs is not None
    metrics = Metrics()
    config = WorkerConfig(max_batch_delay_s=0.002, max_batch_seconds=None, pipeline=True)  # as on a GPU
    worker = ModelWorker(graphed, config, metrics)
    worker.start()
    text = "the staff were friendly but the room was cold and breakfast came late again"
    words = text.split()
    rng = np.random.default_rng(11)
    texts = [" ".join(rng.choice(words, int(rng.integers(3, 14)))) for _ in range(40)]
    rows = graphed.encode(texts).ids
    alone = [tiny_classifier.forward([row])[0] for row in rows]
    failures: list[str] = []

    def caller(k: int) -> None:
        for r in range(12):
            mine = [(k * 7 + r * 3 + j) % len(rows) for j in range(1 + (k + r) % 5)]
            got = worker.submit([rows[i] for i in mine], RequestContext()).result(30).logits
            want = np.stack([alone[i] for i in mine])
            if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
                failures.append(f"caller {k} round {r}: {np.abs(got - want).max()}")

    try:
        threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures, failures[:3]
        assert graphed.graphs.enabled and graphed.graphs.captured >= 1  # shapes recurred and replayed
        wait_for(
            lambda: metrics.registry.get_sample_value("whybert_cuda_graphs", {"model": "graphed"})
            == graphed.graphs.captured,  # type: ignore[union-attr]
            timeout=10, message="the graphs gauge does not follow the captured graphs",
        )  # fmt: skip
    finally:
        worker.stop()
