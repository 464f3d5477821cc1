"""Integrated gradients equal Captum's own, computed on the model's worker one step batch
per job: bounded jobs, Predict rows between them, and a request that left stops."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
import whybert
from _references import CaptumReference, PlainModel
from _servers import hold_worker_thread
from _wait import wait_for
from whybert_service.batching.worker import ModelWorker, WorkerConfig
from whybert_service.context import Priority, RequestContext
from whybert_service.errors import Cancelled, DeadlineExceeded, ResourceExhausted, Unavailable
from whybert_service.explainers.integrated_gradients import (
    GRADIENT_ROW_COST,
    GradientRequest,
    GradientResult,
    IntegratedGradientsExplainer,
    plan_step_batches,
    run_step_batches,
)
from whybert_service.models.classifier import Classifier
from whybert_service.registry import ModelHandle
from whybert_service.types import (
    ExplainerName,
    ExplainParams,
    IntegratedGradientsParams,
    OutputName,
    TargetModeName,
)

TEXTS = [
    "The food was great, but the service was unbelievably slow.",
    "ok",
    "Crème brûlée 🍮 über-sweet!!",
]


class EmbeddingCalls:
    """Counts the forward passes through the model's embedding layer, and their rows."""

    def __init__(self, classifier: Classifier) -> None:
        self.rows: list[int] = []
        self.tokens: list[int] = []  # padded: rows × width
        self._handle = classifier.input_embeddings().register_forward_hook(self._hook)

    def _hook(self, module: Any, inputs: Any, output: torch.Tensor) -> None:
        self.rows.append(int(output.shape[0]))
        self.tokens.append(int(output.shape[0] * output.shape[1]))

    def remove(self) -> None:
        self._handle.remove()


def start_worker(classifier: Classifier, **config: Any) -> ModelWorker:
    worker = ModelWorker(classifier, WorkerConfig(**config))
    worker.start()
    return worker


@pytest.fixture
def worker(tiny_classifier: Classifier) -> Iterator[ModelWorker]:
    w = start_worker(tiny_classifier)
    yield w
    w.stop()


def explain(
    worker: ModelWorker,
    text: str,
    output: OutputName,
    n_steps: int,
    mode: TargetModeName = TargetModeName.ALL,
) -> Any:
    params = ExplainParams(
        model="tiny",
        texts=(text,),
        explainer=ExplainerName.INTEGRATED_GRADIENTS,
        output=output,
        target_mode=mode,
        integrated_gradients=IntegratedGradientsParams(n_steps=n_steps),
    )
    handle = ModelHandle(worker.classifier, worker)
    return IntegratedGradientsExplainer().explain(
        handle, text, params, RequestContext(Priority.EXPLAIN)
    )


class Jobs:
    """Wraps a worker's `call` to count the jobs submitted and run, to see the queued rows
    after each, and to run a hook on the worker thread as the n-th job starts (1-based)."""

    def __init__(self, worker: ModelWorker, monkeypatch: pytest.MonkeyPatch) -> None:
        self.submitted = 0
        self.ran = 0
        self.queued_after: list[int] = []  # the worker's queued rows once each job ran
        self.on_start: dict[int, Callable[[], None]] = {}
        self.costs: list[int] = []  # the tokens each job was charged to its request
        original = worker.call

        def call(fn: Callable[[Classifier], Any], context: RequestContext, cost: int = 0) -> Any:
            self.submitted += 1
            self.costs.append(cost)

            def run(classifier: Classifier) -> Any:
                self.ran += 1
                hook = self.on_start.get(self.ran)
                if hook is not None:
                    hook()
                try:
                    return fn(classifier)
                finally:
                    self.queued_after.append(worker.queued_rows())

            return original(run, context, cost)

        monkeypatch.setattr(worker, "call", call)


def gradient_request(
    classifier: Classifier, text: str, targets: list[int], n_steps: int
) -> GradientRequest:
    ids = classifier.encode([text]).ids[0]
    baseline = [ids[0]] + [classifier.pad_id] * (len(ids) - 2) + [ids[-1]]
    return GradientRequest(ids, baseline, targets, n_steps, OutputName.PROBABILITY)


def run_in_thread(
    worker: ModelWorker, request: GradientRequest, context: RequestContext
) -> tuple[threading.Thread, list[GradientResult], list[BaseException]]:
    results: list[GradientResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(run_step_batches(worker, request, context))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, results, errors


@pytest.mark.parametrize("output", [OutputName.PROBABILITY, OutputName.LOGIT])
@pytest.mark.parametrize("text", TEXTS)
def test_values_equal_captum(
    worker: ModelWorker, captum_reference: CaptumReference, text: str, output: OutputName
) -> None:
    ours = explain(worker, text, output, n_steps=24)
    values, deltas = captum_reference.explain(text, [0, 1, 2], output.value, n_steps=24)
    np.testing.assert_allclose(ours.values, values, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(ours.convergence_delta, deltas, atol=1e-5)
    # The delta is the additivity gap: base (the baseline's output) + sum − output.
    gap = ours.base_values + ours.values.sum(axis=0) - ours.output_values
    np.testing.assert_allclose(gap, ours.convergence_delta, atol=1e-12)
    # Text and baseline once, then one forward+backward row per step and target.
    assert ours.model_rows == 2 + 3 * 24


@pytest.mark.parametrize("budget", [8192, 200, 48])
def test_step_batches_add_up_to_captums_internal_batching(
    tiny_classifier: Classifier, budget: int
) -> None:
    """Cut into jobs, the values are still Captum's: the same steps per batch, the same
    arithmetic, the shares added in step order."""
    worker = start_worker(tiny_classifier, max_batch_tokens=budget, max_batch_seconds=None)  # exactly `budget`
    text, targets, n_steps = TEXTS[0], [0, 2], 20
    request = gradient_request(tiny_classifier, text, targets, n_steps)
    try:
        ours = run_step_batches(worker, request, RequestContext(Priority.EXPLAIN))
    finally:
        worker.stop()
    # Captum on the very model the worker runs, cut into batches of the steps a job holds.
    reference = CaptumReference(PlainModel.from_classifier(tiny_classifier))
    width = len(request.ids)
    values, _ = reference.explain(
        text, targets, OutputName.PROBABILITY, n_steps,
        internal_batch_size=max(1, budget // (GRADIENT_ROW_COST * width)),
    )  # fmt: skip
    np.testing.assert_allclose(ours.attributions, values, rtol=0, atol=1e-8)
    assert ours.rows == len(targets) * n_steps
    assert ours.step_batches == len(plan_step_batches(len(targets), n_steps, width, budget))


def test_tokens_are_word_pieces_with_their_spans(worker: ModelWorker, captum_reference: CaptumReference) -> None:
    text = TEXTS[0]
    ours = explain(worker, text, OutputName.PROBABILITY, n_steps=8)
    ids = captum_reference.model.tokenizer(text)["input_ids"]
    assert len(ours.tokens) == len(ids) == ours.prediction.token_count
    assert [t.special for t in ours.tokens] == [True] + [False] * (len(ids) - 2) + [True]
    assert ours.tokens[0].text == "[CLS]" and ours.tokens[-1].text == "[SEP]"
    pieces = captum_reference.model.tokenizer.convert_ids_to_tokens(ids)[1:-1]
    for token, piece in zip(ours.tokens[1:-1], pieces, strict=True):
        assert text[token.start : token.end] == token.text
        assert token.text.lower() == piece.removeprefix("##")
    # [CLS] and [SEP] are the same in the baseline: no attribution at all.
    assert not ours.values[0].any() and not ours.values[-1].any()


def test_a_long_text_is_explained_on_the_prefix_the_model_reads(
    worker: ModelWorker, tiny_classifier: Classifier
) -> None:
    text = " ".join(["the soup was cold but the staff were friendly"] * 40)  # ~360 pieces
    ours = explain(worker, text, OutputName.LOGIT, n_steps=4, mode=TargetModeName.PREDICTED)
    window = tiny_classifier.max_length
    assert ours.prediction.truncated and ours.prediction.token_count == window
    assert len(ours.tokens) == window and ours.values.shape == (window, 1)
    assert ours.tokens[-1].text == "[SEP]" and ours.tokens[-2].end < len(text) // 2
    assert ours.model_rows == 2 + 4


def test_every_job_is_one_step_batch_under_the_token_budget(
    tiny_classifier: Classifier, captum_reference: CaptumReference, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = 64 * GRADIENT_ROW_COST
    worker = start_worker(tiny_classifier, max_batch_tokens=budget)
    jobs = Jobs(worker, monkeypatch)
    calls = EmbeddingCalls(tiny_classifier)
    try:
        ours = explain(
            worker, TEXTS[0], OutputName.PROBABILITY, n_steps=20, mode=TargetModeName.PREDICTED
        )
    finally:
        calls.remove()
        worker.stop()
    width = ours.prediction.token_count
    per_batch = budget // (GRADIENT_ROW_COST * width)
    # One job per step batch, each one forward+backward costing at most the budget.
    assert jobs.ran == jobs.submitted == -(-20 // per_batch)
    assert max(calls.rows) == per_batch and max(calls.tokens) * GRADIENT_ROW_COST <= budget
    # Each job is charged to its request's fair share as the forward work it stands for.
    assert sum(jobs.costs) == 20 * width * GRADIENT_ROW_COST and max(jobs.costs) <= budget
    label = captum_reference.labels.index(ours.labels[0])
    values, _ = captum_reference.explain(TEXTS[0], [label], "probability", n_steps=20)
    np.testing.assert_allclose(ours.values, values, atol=1e-5, rtol=1e-4)


def test_concurrent_texts_each_get_their_own_values(
    captum_reference: CaptumReference, tiny_classifier: Classifier
) -> None:
    worker = start_worker(tiny_classifier, max_batch_tokens=48)
    requests = [gradient_request(tiny_classifier, text, [0, 2], 10) for text in TEXTS]
    release = hold_worker_thread(worker)  # every request's first job queues behind this
    try:
        running = [run_in_thread(worker, r, RequestContext(Priority.EXPLAIN)) for r in requests]
        release.set()
        for thread, _, _ in running:
            thread.join(60)
    finally:
        release.set()
        worker.stop()
    for text, (_, results, errors) in zip(TEXTS, running, strict=True):
        assert not errors and len(results) == 1
        values, _ = captum_reference.explain(text, [0, 2], "probability", n_steps=10)
        np.testing.assert_allclose(results[0].attributions, values, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_a_request_that_left_submits_no_more_step_batches(
    tiny_classifier: Classifier, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # 20 steps × 3 targets at 4 rows a batch: 15 step batches, of which 3 run.
    request = gradient_request(tiny_classifier, "the food was great, really", [0, 1, 2], 20)
    worker = start_worker(tiny_classifier, max_batch_tokens=4 * GRADIENT_ROW_COST * len(request.ids))
    jobs = Jobs(worker, monkeypatch)
    context = RequestContext(Priority.EXPLAIN)

    def leave() -> None:  # while the third step batch runs, on the worker thread
        if how == "cancel":
            context.cancel()
        else:
            context.deadline = time.monotonic()  # the deadline passes now

    jobs.on_start[3] = leave
    try:
        with pytest.raises(Cancelled if how == "cancel" else DeadlineExceeded):
            run_step_batches(worker, request, context)
        # The job that was running finishes; nothing after it was submitted or run.
        worker.call(lambda _c: None, RequestContext()).result(10)
    finally:
        worker.stop()
    assert jobs.submitted == 3 + 1 and jobs.ran == 3 + 1  # + the barrier job above
    assert worker.queued_rows() == 0  # every place under the queue bound is back


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_a_request_that_left_while_queued_never_runs(
    worker: ModelWorker, tiny_classifier: Classifier, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    release = hold_worker_thread(worker)
    jobs = Jobs(worker, monkeypatch)
    request = gradient_request(tiny_classifier, "the food was great", [0], 16)
    context = RequestContext.with_timeout(Priority.EXPLAIN, 0.2 if how == "deadline" else None)
    calls = EmbeddingCalls(tiny_classifier)
    try:
        thread, results, errors = run_in_thread(worker, request, context)
        assert wait_for(lambda: jobs.submitted == 1, timeout=5, step=0.005)
        if how == "cancel":
            context.cancel()
        thread.join(5)
        assert not thread.is_alive()  # the caller got its answer while the worker was busy
        assert worker.queued_rows() == 0  # and its places back at once
    finally:
        release.set()
    worker.call(lambda _c: None, RequestContext()).result(5)
    calls.remove()
    assert calls.rows == [] and jobs.ran == 1  # only the barrier: no gradient ran
    assert not results and len(errors) == 1
    assert isinstance(errors[0], Cancelled if how == "cancel" else DeadlineExceeded)


def test_predict_rows_run_between_step_batches(
    tiny_classifier: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Predict sent while a long IG request runs is answered before the request's next
    step batch, and so long before the request ends."""
    request = gradient_request(tiny_classifier, "the food was great, really", [0, 1, 2], 20)
    worker = start_worker(tiny_classifier, max_batch_tokens=4 * GRADIENT_ROW_COST * len(request.ids))
    jobs = Jobs(worker, monkeypatch)
    events: list[str] = []
    predicted: list[Any] = []

    def send_predict() -> None:  # on the worker thread, while step batch 2 runs
        events.append("step batch 2")
        rows = tiny_classifier.encode(["the service was slow"]).ids
        future = worker.submit(rows, RequestContext(Priority.PREDICT))
        future.add_done_callback(lambda _f: events.append("predict answered"))
        predicted.append(future)

    jobs.on_start[2] = send_predict
    jobs.on_start[3] = lambda: events.append("step batch 3")
    try:
        result = run_step_batches(worker, request, RequestContext(Priority.EXPLAIN))
        events.append("gradients done")
    finally:
        worker.stop()
    assert events == ["step batch 2", "predict answered", "step batch 3", "gradients done"]
    assert predicted[0].result(0).logits.shape == (1, 3)
    assert result.step_batches == jobs.ran == 15


def test_explain_over_grpc(target: str) -> None:
    text = TEXTS[0]
    with whybert.Client(target) as client:
        (ours,) = client.explain(
            [text],
            explainer="integrated-gradients",
            n_steps=16,
            targets=["positive", "negative"],
            output="logit",
        )
        (default,) = client.explain([text], explainer="ig")
        models = client.list_models()
    assert ours.explainer == "integrated-gradients" and ours.output == "logit"
    assert ours.labels == ["positive", "negative"]
    assert ours.values.shape == (len(ours.tokens), 2)
    assert ours.convergence_delta is not None and ours.convergence_delta.shape == (2,)
    assert ours.additivity_error == pytest.approx(
        float(np.max(np.abs(ours.convergence_delta))), abs=1e-9
    )
    assert ours.model_rows == 2 + 2 * 16
    np.testing.assert_allclose(
        ours.output_values, [ours.prediction.logits[label] for label in ours.labels], atol=1e-5
    )
    for token, (start, end), special in zip(ours.tokens, ours.offsets, ours.special, strict=True):
        assert special or text[start:end] == token
    # Defaults: the predicted label, in probabilities, with 50 steps.
    assert default.labels == [default.prediction.label] and default.output == "probability"
    assert default.model_rows == 2 + 50
    assert "integrated-gradients" in models[0].explainers and "lime" in models[0].explainers


def test_stopping_worker_fails_waiting_requests_as_unavailable(tiny_classifier: Classifier) -> None:
    worker = start_worker(tiny_classifier)
    request = gradient_request(tiny_classifier, "the food was great", [0], 8)
    release = hold_worker_thread(worker)
    try:
        thread, _, errors = run_in_thread(worker, request, RequestContext(Priority.EXPLAIN))
        assert wait_for(lambda: worker.queued_rows() == 8, timeout=5, step=0.005)
        worker.stop(timeout=0.1)
        thread.join(5)
    finally:
        release.set()
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], Unavailable)


def test_gradient_rows_hold_places_until_their_step_batch_is_taken(
    tiny_classifier: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1 target × 8 steps = 8 rows each: two fit under a bound of 20, a third does not.
    worker = start_worker(tiny_classifier, max_queued_rows=20)
    request = gradient_request(tiny_classifier, "the food was great", [0], 8)
    leaving = RequestContext(Priority.EXPLAIN)
    ids = request.ids
    release = hold_worker_thread(worker)
    try:
        staying = run_in_thread(worker, request, RequestContext(Priority.EXPLAIN))
        left = run_in_thread(worker, request, leaving)
        assert wait_for(lambda: worker.queued_rows() == 16, timeout=5, step=0.005)
        with pytest.raises(ResourceExhausted, match=r"queue of model 'tiny' is full \(16 of 20"):
            run_step_batches(worker, request, RequestContext(Priority.EXPLAIN))
        # Rows in the worker's own queue count against the same bound.
        with pytest.raises(ResourceExhausted):
            worker.submit([ids] * 5, RequestContext(Priority.PREDICT))
        # A caller who left gives its places back without waiting for the worker.
        leaving.cancel()
        left[0].join(5)
        worker.submit([ids] * 4, RequestContext(Priority.PREDICT))
        assert worker.queued_rows() == 8 + 4
        release.set()
        staying[0].join(30)
        assert worker.queued_rows() == 0
    finally:
        release.set()
    # With 3 rows a step batch, the places go back batch by batch as each is taken.
    small = start_worker(tiny_classifier, max_batch_tokens=3 * GRADIENT_ROW_COST * len(ids))
    jobs = Jobs(small, monkeypatch)
    try:
        run_step_batches(small, request, RequestContext(Priority.EXPLAIN))
    finally:
        small.stop()
        worker.stop()
    assert jobs.queued_after == [5, 2, 0]
    assert len(staying[1]) == 1 and not staying[2]
    assert not left[1] and len(left[2]) == 1 and isinstance(left[2][0], Cancelled)
