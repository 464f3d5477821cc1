"""Integrated gradients equal Captum's own, computed on the model's worker in shared batches."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import whybert
from _servers import ServerThread, hold_worker_thread, wait_for
from captum.attr import LayerIntegratedGradients
from conftest import tiny_settings
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from whybert_service.batching.worker import ModelWorker, WorkerConfig
from whybert_service.context import Priority, RequestContext
from whybert_service.errors import Cancelled, DeadlineExceeded, ResourceExhausted, Unavailable
from whybert_service.explainers.integrated_gradients import (
    GradientBatcher,
    GradientRequest,
    IntegratedGradientsExplainer,
)
from whybert_service.models.classifier import Classifier
from whybert_service.models.registry import ModelHandle
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


class Reference:
    """What a user writes: Captum's LayerIntegratedGradients on the word embeddings."""

    def __init__(self, tiny_model_dir: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    def explain(
        self, text: str, targets: list[int], output: str, n_steps: int
    ) -> tuple[np.ndarray, np.ndarray]:
        enc = self.tokenizer(text, return_tensors="pt", return_special_tokens_mask=True)
        ids = enc["input_ids"]
        baseline = torch.where(enc["special_tokens_mask"].bool(), ids, self.tokenizer.pad_token_id)

        def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            return logits if output == "logit" else torch.softmax(logits, dim=-1)

        lig = LayerIntegratedGradients(forward, self.model.get_input_embeddings())
        values, deltas = [], []
        for target in targets:
            attr, delta = lig.attribute(
                ids,
                baselines=baseline,
                target=target,
                additional_forward_args=(enc["attention_mask"],),
                n_steps=n_steps,
                return_convergence_delta=True,
            )
            values.append(attr.sum(-1)[0].detach().double().numpy())
            deltas.append(float(delta[0]))
        return np.stack(values, axis=1), np.array(deltas)


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> Reference:
    return Reference(tiny_model_dir)


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


@pytest.mark.parametrize("output", [OutputName.PROBABILITY, OutputName.LOGIT])
@pytest.mark.parametrize("text", TEXTS)
def test_values_equal_captum(
    worker: ModelWorker, reference: Reference, text: str, output: OutputName
) -> None:
    ours = explain(worker, text, output, n_steps=24)
    values, deltas = reference.explain(text, [0, 1, 2], output.value, n_steps=24)
    np.testing.assert_allclose(ours.values, values, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(ours.convergence_delta, deltas, atol=1e-5)
    # The delta is the additivity gap: base (the baseline's output) + sum − output.
    gap = ours.base_values + ours.values.sum(axis=0) - ours.output_values
    np.testing.assert_allclose(gap, ours.convergence_delta, atol=1e-12)
    assert ours.model_rows == 2 + 3 * (24 + 2)


def test_tokens_are_word_pieces_with_their_spans(worker: ModelWorker, reference: Reference) -> None:
    text = TEXTS[0]
    ours = explain(worker, text, OutputName.PROBABILITY, n_steps=8)
    ids = reference.tokenizer(text)["input_ids"]
    assert len(ours.tokens) == len(ids) == ours.prediction.token_count
    assert [t.special for t in ours.tokens] == [True] + [False] * (len(ids) - 2) + [True]
    assert ours.tokens[0].text == "[CLS]" and ours.tokens[-1].text == "[SEP]"
    pieces = reference.tokenizer.convert_ids_to_tokens(ids)[1:-1]
    for token, piece in zip(ours.tokens[1:-1], pieces, strict=True):
        assert text[token.start : token.end] == token.text
        assert token.text.lower() == piece.removeprefix("##")
    # [CLS] and [SEP] are the same in the baseline: no attribution at all.
    assert not ours.values[0].any() and not ours.values[-1].any()


@pytest.mark.parametrize("budget", [8192, 48])
def test_waiting_texts_share_forward_backward_batches(
    reference: Reference, tiny_classifier: Classifier, budget: int
) -> None:
    worker = start_worker(tiny_classifier, max_batch_tokens=budget)
    batcher = GradientBatcher(worker)
    requests = []
    for text in TEXTS:
        enc = reference.tokenizer(text, return_special_tokens_mask=True)
        ids = enc["input_ids"]
        baseline = [
            i if s else tiny_classifier.pad_id
            for i, s in zip(ids, enc["special_tokens_mask"], strict=True)
        ]
        requests.append(GradientRequest(ids, baseline, [0, 2], 10, OutputName.LOGIT))
    results: list[Any] = [None] * len(requests)

    def run(i: int) -> None:
        results[i] = batcher.run(requests[i], RequestContext(Priority.EXPLAIN))

    calls = EmbeddingCalls(tiny_classifier)
    release = hold_worker_thread(worker)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    try:
        for t in threads:
            t.start()
        assert wait_for(lambda: batcher.waiting == len(requests), timeout=5, step=0.005)
        release.set()
        for t in threads:
            t.join(30)
    finally:
        release.set()
        calls.remove()
        worker.stop()
    if budget == 8192:  # every step of every (text, target) pair in one forward+backward
        assert max(calls.rows) == len(requests) * 2 * 10
    else:  # several drains, every batch within the budget
        assert max(calls.tokens) <= budget and len(calls.rows) > 3
    for text, result in zip(TEXTS, results, strict=True):
        values, _ = reference.explain(text, [0, 2], "logit", n_steps=10)
        np.testing.assert_allclose(result.attributions, values, atol=1e-5, rtol=1e-4)
        assert result.rows == 2 * (10 + 2)


def test_steps_are_cut_to_the_token_budget(tiny_classifier: Classifier, reference: Reference) -> None:
    worker = start_worker(tiny_classifier, max_batch_tokens=64)
    calls = EmbeddingCalls(tiny_classifier)
    try:
        ours = explain(
            worker, TEXTS[0], OutputName.PROBABILITY, n_steps=20, mode=TargetModeName.PREDICTED
        )
    finally:
        calls.remove()
        worker.stop()
    width = ours.prediction.token_count
    assert len(calls.rows) > 3 and max(calls.rows) * width <= 64
    label = reference.labels.index(ours.labels[0])
    values, _ = reference.explain(TEXTS[0], [label], "probability", n_steps=20)
    np.testing.assert_allclose(ours.values, values, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_a_request_that_left_never_runs(
    worker: ModelWorker, tiny_classifier: Classifier, how: str
) -> None:
    batcher = GradientBatcher(worker)
    ids = tiny_classifier.encode(["the food was great"]).ids[0]
    request = GradientRequest(
        ids, [ids[0]] + [0] * (len(ids) - 2) + [ids[-1]], [0], 16, OutputName.PROBABILITY
    )
    context = RequestContext.with_timeout(Priority.EXPLAIN, 0.2 if how == "deadline" else None)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            batcher.run(request, context)
        except BaseException as exc:
            errors.append(exc)

    calls = EmbeddingCalls(tiny_classifier)
    release = hold_worker_thread(worker)
    thread = threading.Thread(target=run)
    try:
        thread.start()
        assert wait_for(lambda: batcher.waiting == 1, timeout=5, step=0.005)
        if how == "cancel":
            context.cancel()
        thread.join(5)
        assert not thread.is_alive()  # the caller got its answer while the worker was busy
    finally:
        release.set()
    # The drain ran and found nothing alive: no forward pass at all.
    worker.call(lambda _c: None, RequestContext()).result(5)
    calls.remove()
    assert calls.rows == []
    assert len(errors) == 1
    assert isinstance(errors[0], Cancelled if how == "cancel" else DeadlineExceeded)


def test_explain_over_grpc(tiny_model_dir: Path) -> None:
    text = TEXTS[0]
    with ServerThread(tiny_settings(tiny_model_dir)) as server, whybert.Client(server.target) as client:
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
    assert ours.model_rows == 2 + 2 * (16 + 2)
    np.testing.assert_allclose(
        ours.output_values, [ours.prediction.logits[label] for label in ours.labels], atol=1e-5
    )
    for token, (start, end), special in zip(ours.tokens, ours.offsets, ours.special, strict=True):
        assert special or text[start:end] == token
    # Defaults: the predicted label, in probabilities, with 50 steps.
    assert default.labels == [default.prediction.label] and default.output == "probability"
    assert default.model_rows == 2 + 50 + 2
    assert "integrated-gradients" in models[0].explainers and "lime" in models[0].explainers


def test_stopping_worker_fails_waiting_requests_as_unavailable(tiny_classifier: Classifier) -> None:
    worker = start_worker(tiny_classifier)
    batcher = GradientBatcher(worker)
    ids = tiny_classifier.encode(["the food was great"]).ids[0]
    request = GradientRequest(
        ids, [ids[0]] + [0] * (len(ids) - 2) + [ids[-1]], [0], 8, OutputName.LOGIT
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            batcher.run(request, RequestContext(Priority.EXPLAIN))
        except BaseException as exc:
            errors.append(exc)

    release = hold_worker_thread(worker)
    thread = threading.Thread(target=run)
    try:
        thread.start()
        assert wait_for(lambda: batcher.waiting == 1, timeout=5, step=0.005)
        worker.stop(timeout=0.1)
        thread.join(5)
    finally:
        release.set()
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], Unavailable)


def test_gradient_rows_share_the_bound_on_queued_rows(tiny_classifier: Classifier) -> None:
    # 1 target × (8 steps + 2) = 10 rows each: two fit under a bound of 25, a third does not.
    worker = start_worker(tiny_classifier, max_queued_rows=25)
    batcher = GradientBatcher(worker)
    ids = tiny_classifier.encode(["the food was great"]).ids[0]
    request = GradientRequest(
        ids, [ids[0]] + [0] * (len(ids) - 2) + [ids[-1]], [0], 8, OutputName.LOGIT
    )
    results: list[Any] = []
    errors: list[BaseException] = []
    leaving = RequestContext(Priority.EXPLAIN)

    def run(context: RequestContext) -> None:
        try:
            results.append(batcher.run(request, context))
        except BaseException as exc:
            errors.append(exc)

    release = hold_worker_thread(worker)
    threads = [
        threading.Thread(target=run, args=(context,))
        for context in (RequestContext(Priority.EXPLAIN), leaving)
    ]
    try:
        for thread in threads:
            thread.start()
        assert wait_for(lambda: batcher.waiting == 2, timeout=5, step=0.005)
        assert worker.queued_rows() == 20
        with pytest.raises(ResourceExhausted, match=r"queue of model 'tiny' is full \(20 of 25"):
            batcher.run(request, RequestContext(Priority.EXPLAIN))
        # Rows in the worker's own queue count against the same bound.
        with pytest.raises(ResourceExhausted):
            worker.submit([ids] * 6, RequestContext(Priority.PREDICT))
        # A caller who left gives its place back without waiting for the worker.
        leaving.cancel()
        threads[1].join(5)
        worker.submit([ids] * 5, RequestContext(Priority.PREDICT))
        assert worker.queued_rows() == 10 + 5
        release.set()
        threads[0].join(30)
        # Once the first has run, there is room again.
        run(RequestContext(Priority.EXPLAIN))
        assert worker.queued_rows() == 0
    finally:
        release.set()
        worker.stop()
    assert len(results) == 2 and len(errors) == 1 and isinstance(errors[0], Cancelled)
    np.testing.assert_allclose(results[0].attributions, results[1].attributions, atol=1e-6)
