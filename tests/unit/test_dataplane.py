"""The server's operations without a transport (`dataplane.py`), on the tiny model's real
worker (a thread, no server) and a stand-in explainer whose behaviour each test chooses:
request slots, predictions equal to the model's, explanations cached per text and options,
one failed text stopping the others, streams bounded by their window and stopped when their
consumer leaves, and the model descriptions ListModels shows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Executor

import numpy as np
import pytest
import torch
from _wait import wait_for_async
from whybert_service.batching.worker import ModelWorker
from whybert_service.context import Priority, RequestContext
from whybert_service.dataplane import DataPlane
from whybert_service.errors import Cancelled, InvalidArgument, ModelFailure, ResourceExhausted
from whybert_service.explainers.base import Attribution, Explainer
from whybert_service.metrics import Metrics
from whybert_service.models.classifier import Classifier
from whybert_service.registry import ModelHandle, ModelRegistry
from whybert_service.types import (
    EntityChoice,
    ExplainerName,
    ExplainParams,
    ExplanationResult,
    OutputName,
    PredictParams,
    ShapParams,
)


class Stub(Explainer):
    """Answers at once, fails on "boom", and never finishes "hang" (until cancelled)."""

    name = ExplainerName.SHAP_PARTITION

    def __init__(self, supported: bool = True) -> None:
        self.calls: list[str] = []
        self.cancelled: list[str] = []
        self.supported = supported
        self.closed = False

    def supports(self, classifier: Classifier) -> bool:
        return self.supported

    def close(self) -> None:
        self.closed = True

    def attribute(self, *_args: object) -> Attribution:
        raise NotImplementedError

    async def explain_async(
        self, handle: ModelHandle, text: str, params: ExplainParams, context: RequestContext, executor: Executor
    ) -> ExplanationResult:
        self.calls.append(text)
        if text == "boom":
            raise ModelFailure("boom")
        if text == "hang":
            try:
                await asyncio.Future()
            except asyncio.CancelledError:
                self.cancelled.append(text)
                raise
        logits = np.array([0.0, 1.0, float(len(text))])
        return ExplanationResult(
            tokens=[], labels=["positive"], values=np.zeros((0, 1)), base_values=np.zeros(1), output_values=np.zeros(1),
            prediction=self._prediction(handle, logits), explainer=self.name, output=params.output,
        )  # fmt: skip

    @staticmethod
    def _prediction(handle: ModelHandle, logits: np.ndarray) -> object:
        from whybert_service.outputs import prediction_from_logits

        return prediction_from_logits(handle.classifier.labels, logits, False, 3)


@pytest.fixture(scope="module")
def registry(tiny_classifier: Classifier) -> Iterator[ModelRegistry]:
    worker = ModelWorker(tiny_classifier)
    worker.start()
    registry = ModelRegistry()
    registry.add(ModelHandle(tiny_classifier, worker))
    registry.open("tiny")
    yield registry
    worker.stop()


@pytest.fixture
def stub() -> Stub:
    return Stub()


@pytest.fixture
def plane(registry: ModelRegistry, stub: Stub) -> Iterator[DataPlane]:
    dp = DataPlane(
        registry, Metrics(), explain_threads=2, max_concurrent_requests=2, explainers={"shap-partition": stub}
    )
    yield dp
    dp.close()


def _ctx() -> RequestContext:
    return RequestContext(Priority.EXPLAIN)


def _explain(*texts: str, **options: object) -> ExplainParams:
    return ExplainParams(model="", texts=texts, **options)  # type: ignore[arg-type]


def _count(plane: DataPlane, name: str, **labels: str) -> float:
    return plane.metrics.registry.get_sample_value(name, labels) or 0.0


def test_request_slots_are_bounded_and_given_back(plane: DataPlane) -> None:
    with plane.admitted("Explain"), plane.admitted("Explain"):
        assert _count(plane, "whybert_requests_in_flight", method="Explain") == 2
        with pytest.raises(ResourceExhausted, match="limit of 2 requests"), plane.admitted("Predict"):
            pass
    with pytest.raises(RuntimeError), plane.admitted("Predict"):
        raise RuntimeError("the handler failed")
    with plane.admitted("Predict"), plane.admitted("Predict"):
        pass  # both slots free again
    assert _count(plane, "whybert_requests_in_flight", method="Explain") == 0


async def test_predict_gives_the_models_probabilities(plane: DataPlane, tiny_classifier: Classifier) -> None:
    texts = ("good food", "bad service")
    name, predictions = await plane.predict(PredictParams(model="", texts=texts), RequestContext())
    logits = tiny_classifier.forward(tiny_classifier.encode(list(texts)).ids)
    expected = torch.softmax(torch.tensor(logits, dtype=torch.float64), dim=1).numpy()
    assert name == "tiny"
    for p, row in zip(predictions, expected, strict=True):
        np.testing.assert_allclose(p.probabilities, row, rtol=1e-5)
    assert [p.token_count for p in predictions] == [len(r) for r in tiny_classifier.encode(list(texts)).ids]


async def test_explanations_are_cached_per_text_and_options(plane: DataPlane, stub: Stub) -> None:
    _, first = await plane.explain(_explain("a", "bb"), _ctx())
    _, again = await plane.explain(_explain("bb"), _ctx())
    assert stub.calls == ["a", "bb"]
    assert again[0].cached and not first[1].cached
    assert again[0].prediction.token_count == first[1].prediction.token_count
    await plane.explain(_explain("bb", shap=ShapParams(max_evals=100)), _ctx())
    await plane.explain(_explain("bb", output=OutputName.LOGIT), _ctx())
    assert stub.calls == ["a", "bb", "bb", "bb"]  # other options, other values
    labels = {"model": "tiny", "explainer": "shap-partition"}
    assert _count(plane, "whybert_explanations_total", **labels, outcome="cached") == 1
    assert _count(plane, "whybert_explanations_total", **labels, outcome="ok") == 4


async def test_one_failed_text_stops_the_others(plane: DataPlane, stub: Stub) -> None:
    ctx = _ctx()
    with pytest.raises(ModelFailure):
        await plane.explain(_explain("hang", "boom"), ctx)
    assert ctx.cancelled
    await wait_for_async(lambda: stub.cancelled == ["hang"], message="the other text was not cancelled")
    assert (
        _count(plane, "whybert_explanations_total", model="tiny", explainer="shap-partition", outcome="cancelled") == 1
    )
    _, results = await plane.explain(_explain("fine"), _ctx())  # the plane serves on
    assert len(results) == 1


async def test_close_stops_running_explanations(plane: DataPlane, stub: Stub) -> None:
    ctx = _ctx()
    running = asyncio.ensure_future(plane.explain(_explain("hang"), ctx))
    await wait_for_async(lambda: stub.calls, message="the explanation did not start")
    plane.close()
    assert ctx.cancelled and stub.closed
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_the_explainer_must_exist_and_fit_the_model(registry: ModelRegistry) -> None:
    empty = DataPlane(registry, Metrics(), explainers={})
    with pytest.raises(InvalidArgument, match="not available here"):
        await empty.explain(_explain("a"), _ctx())
    unfit = DataPlane(registry, Metrics(), explainers={"shap-partition": Stub(supported=False)})
    with pytest.raises(InvalidArgument, match="cannot explain model 'tiny'"):
        await unfit.explain(_explain("a"), _ctx())
    assert unfit.describe("").explainers == []
    empty.close()
    unfit.close()


async def test_an_entity_choice_needs_a_token_model(plane: DataPlane) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await plane.explain(_explain("a", entity=EntityChoice(index=0)), _ctx())
    assert refused.value.violations[0][0] == "entity"


async def _collect(stream: AsyncIterator[tuple[int, object]]) -> list[int]:
    return [i async for i, _ in stream]


async def test_a_stream_keeps_at_most_its_window_running(plane: DataPlane) -> None:
    started: list[int] = []
    gates = [asyncio.Event() for _ in range(5)]
    running_most = 0

    async def start(i: int) -> int:
        nonlocal running_most
        started.append(i)
        running_most = max(running_most, len(started) - done)
        await gates[i].wait()
        return i * 10

    done = 0
    stream = plane._stream("ExplainStream", 5, start, _ctx(), window=2)
    for g in (1, 0, 2, 3, 4):
        gates[g].set()
    got = []
    async for i, value in stream:
        got.append((i, value))
        done += 1
    assert sorted(got) == [(i, i * 10) for i in range(5)]
    assert running_most <= 2
    assert _count(plane, "whybert_stream_texts_total", method="ExplainStream") == 5
    assert _count(plane, "whybert_stream_texts_in_flight", method="ExplainStream") == 0


async def test_a_stream_whose_consumer_leaves_stops_its_texts(plane: DataPlane, stub: Stub) -> None:
    ctx = _ctx()
    stream = plane.explain_stream(_explain("a", "hang", "hang"), ctx, window=3)
    first = await anext(stream)
    assert first[0] == 0
    await stream.aclose()
    assert ctx.cancelled
    await wait_for_async(lambda: len(stub.cancelled) == 2, message="the running texts were not cancelled")
    assert _count(plane, "whybert_stream_texts_in_flight", method="ExplainStream") == 0


async def test_a_cancelled_request_starts_no_stream_text(plane: DataPlane, stub: Stub) -> None:
    ctx = _ctx()
    ctx.cancel()
    with pytest.raises(Cancelled):
        await _collect(plane.explain_stream(_explain("a", "b"), ctx, window=1))
    assert stub.calls == []


def test_models_are_described_as_list_models_shows_them(plane: DataPlane, tiny_classifier: Classifier) -> None:
    models, default = plane.list_models()
    assert default == "tiny"
    (tiny,) = models
    assert tiny == plane.describe("tiny") == plane.describe("")
    assert tiny.labels == tiny_classifier.labels and tiny.max_tokens == tiny_classifier.max_length
    assert tiny.is_default and tiny.explainers == [ExplainerName.SHAP_PARTITION]
    assert (tiny.device, tiny.dtype, tiny.kind) == ("cpu", "float32", "sequence")
