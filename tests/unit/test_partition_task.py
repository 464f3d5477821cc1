"""One explanation's rounds through the model's worker (`explainers/partition/task.py`), on
the tiny model and a real `ModelWorker` (a thread, no server): the same values as the engine
driven by hand, a stop at the first round after the caller left, a bug failing the request
but never the worker, and progress that a failing listener cannot stop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future

import numpy as np
import pytest
from whybert_service.batching.queue import RowsResult
from whybert_service.batching.worker import ModelWorker
from whybert_service.context import Priority, RequestContext
from whybert_service.errors import Cancelled, InvalidArgument, ModelFailure
from whybert_service.explainers.partition import (
    MaskingSpec,
    PartitionEngine,
    PartitionResult,
    explain_text,
    prepare_text,
)
from whybert_service.explainers.partition.task import PartitionTask
from whybert_service.models.classifier import Classifier
from whybert_service.types import OutputName

TEXT = "the food was great but the service was painfully slow and the room was cold"
TIMEOUT = 60.0  # a bound on a hang, never reached by a passing test


@pytest.fixture(scope="module")
def worker(tiny_classifier: Classifier) -> Iterator[ModelWorker]:
    w = ModelWorker(tiny_classifier)
    w.start()
    yield w
    w.stop()


def _engine(classifier: Classifier, max_evals: int = 80) -> PartitionEngine:
    spec = MaskingSpec.for_tokenizer(classifier.tokenizer)

    def encode(strings: object) -> list[list[int]]:
        return classifier.encode(list(strings)).ids  # type: ignore[call-overload]

    prepared = prepare_text(classifier.tokenizer, spec, TEXT, classifier.max_length, encode)
    return PartitionEngine(
        prepared, spec, encode, output=OutputName.PROBABILITY, targets=lambda _l: [0, 2], max_evals=max_evals
    )


def _context(**kwargs: object) -> RequestContext:
    return RequestContext(Priority.EXPLAIN, **kwargs)  # type: ignore[arg-type]


def test_the_task_gives_the_engines_own_result(tiny_classifier: Classifier, worker: ModelWorker) -> None:
    task = PartitionTask(worker, _engine(tiny_classifier), _context())
    result = task.start().result(TIMEOUT)
    by_hand = explain_text(_engine(tiny_classifier), lambda rows: tiny_classifier.forward([r.tolist() for r in rows]))
    np.testing.assert_allclose(result.values, by_hand.values, atol=1e-6)
    np.testing.assert_allclose(result.base_values, by_hand.base_values, atol=1e-6)
    assert result.targets == [0, 2] and task.rows == by_hand.rows
    assert task.queue_seconds >= 0.0


def test_a_caller_who_left_stops_it_at_the_next_round(tiny_classifier: Classifier, worker: ModelWorker) -> None:
    context = _context()
    engine = _engine(tiny_classifier, max_evals=400)
    rounds: list[int] = []
    feed = engine.feed

    def feed_then_leave(logits: np.ndarray) -> None:
        rounds.append(len(logits))
        feed(logits)
        if len(rounds) == 2:
            context.cancel()

    engine.feed = feed_then_leave  # type: ignore[method-assign]
    future = PartitionTask(worker, engine, context).start()
    with pytest.raises(Cancelled):
        future.result(TIMEOUT)
    assert len(rounds) == 2 and not engine.done


Receive = Callable[[RowsResult | None, BaseException | None], None]


class LeavingWorker:
    """The real worker, but the caller leaves as each submission's logits arrive, before the
    task sees them."""

    def __init__(self, worker: ModelWorker) -> None:
        self.worker = worker

    def submit_to(
        self, rows: list[list[int]], context: RequestContext, receiver: Receive, position: int | None = None
    ) -> None:
        def leaving(result: RowsResult | None, error: BaseException | None) -> None:
            context.cancel()  # before the task's own receiver sees the logits
            receiver(result, error)

        self.worker.submit_to(rows, context, leaving, position)


def test_logits_that_arrive_after_the_caller_left_are_not_used(
    tiny_classifier: Classifier, worker: ModelWorker
) -> None:
    engine = _engine(tiny_classifier)
    fed: list[int] = []
    feed = engine.feed
    engine.feed = lambda logits: (fed.append(len(logits)), feed(logits))[-1]  # type: ignore[method-assign]
    task = PartitionTask(LeavingWorker(worker), engine, _context())  # type: ignore[arg-type]
    with pytest.raises(Cancelled):
        task.start().result(TIMEOUT)
    assert fed == []  # the round is dropped, not fed to the engine


def test_a_bug_fails_the_request_and_the_worker_serves_on(tiny_classifier: Classifier, worker: ModelWorker) -> None:
    engine = _engine(tiny_classifier)

    def broken(_logits: np.ndarray) -> None:
        raise IndexError("a bug in the engine")

    engine.feed = broken  # type: ignore[method-assign]
    with pytest.raises(ModelFailure, match="IndexError: a bug in the engine"):
        PartitionTask(worker, engine, _context()).start().result(TIMEOUT)
    assert worker.healthy
    assert PartitionTask(worker, _engine(tiny_classifier), _context()).start().result(TIMEOUT).values.size


def test_a_refused_submission_settles_the_future(tiny_classifier: Classifier, worker: ModelWorker) -> None:
    with pytest.raises(InvalidArgument):  # the request's row budget is smaller than one round
        PartitionTask(worker, _engine(tiny_classifier), _context(max_rows=1)).start().result(TIMEOUT)
    gone = _context()
    gone.cancel()
    with pytest.raises(Cancelled):
        PartitionTask(worker, _engine(tiny_classifier), gone).start().result(TIMEOUT)


def test_progress_is_handed_on_and_a_failing_listener_cannot_stop_it(
    tiny_classifier: Classifier, worker: ModelWorker
) -> None:
    snapshots: list[PartitionResult] = []

    def listener(snapshot: PartitionResult) -> None:
        snapshots.append(snapshot)
        raise RuntimeError("a listener's bug")

    future: Future[PartitionResult] = PartitionTask(
        worker, _engine(tiny_classifier, max_evals=200), _context(), on_progress=listener, progress_interval=0.0
    ).start()
    result = future.result(TIMEOUT)
    assert len(snapshots) >= 2
    for snapshot in snapshots:  # each additive, as the engine promises
        np.testing.assert_allclose(
            snapshot.base_values + snapshot.values.sum(axis=0), snapshot.output_values, atol=1e-6
        )
    np.testing.assert_allclose(result.output_values, snapshots[-1].output_values, atol=1e-6)
