"""The Explainer service's handlers (`grpc/servicer.py`), called directly with a stand-in
data plane and context: bad requests are refused before the data plane sees them, the data
plane's errors become their statuses (a bug INTERNAL, an error after the deadline a quiet
cancellation), the deadline and row budget reach the request context, and a stream ends
cancelled, its results closed, when its caller is gone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from grpc._cython import cygrpc
from whybert.v1 import explainer_pb2 as pb
from whybert_service.context import Priority, RequestContext
from whybert_service.errors import NotFound, ServiceError
from whybert_service.grpc.servicer import ExplainerServicer
from whybert_service.grpc.validation import Limits
from whybert_service.types import ExplainerName, ModelDescription, PredictionResult, PredictParams

LIMITS = Limits(max_texts=4, max_chars=100, max_evals=500, max_lime_samples=5000, max_ig_steps=50, max_rows=777)


def _prediction(text: str) -> PredictionResult:
    return PredictionResult(labels=["neg", "pos"], probabilities=np.array([0.3, 0.7]), logits=np.array([0.0, 0.8]),
                            truncated=False, token_count=len(text))  # fmt: skip


class Plane:
    """The parts of DataPlane the handlers use, recording what they were given."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[tuple[str, Any]] = []
        self.contexts: list[RequestContext] = []
        self.stream_closed = False

    @contextlib.contextmanager
    def admitted(self, method: str) -> Iterator[None]:
        self.calls.append(("admitted", method))
        yield

    def describe(self, name: str) -> ModelDescription:
        if isinstance(self.error, NotFound):
            raise self.error
        return ModelDescription(
            name=name or "tiny", labels=["neg", "pos"], max_tokens=128, is_default=True,
            explainers=[ExplainerName.LIME], weights_sha256="ab", device="cpu", dtype="float32",
        )  # fmt: skip

    async def predict(self, params: PredictParams, ctx: RequestContext) -> tuple[str, list[PredictionResult]]:
        self.calls.append(("predict", params))
        self.contexts.append(ctx)
        if self.error is not None:
            raise self.error
        return "tiny", [_prediction(t) for t in params.texts]

    async def predict_stream(
        self, params: PredictParams, ctx: RequestContext, window: int
    ) -> AsyncIterator[tuple[int, PredictionResult]]:
        self.calls.append(("predict_stream", window))
        try:
            for i, text in enumerate(params.texts):
                yield i, _prediction(text)
        finally:
            self.stream_closed = True

    def list_models(self) -> tuple[list[ModelDescription], str]:
        return [self.describe("tiny")], "tiny"


class Context:
    """What the handlers use of grpc.aio.ServicerContext."""

    def __init__(self, remaining: float | None = 30.0, broken_writes: bool = False) -> None:
        self.remaining = remaining
        self.broken_writes = broken_writes
        self.written: list[Any] = []
        self.status: grpc.Status | None = None
        self.code: grpc.StatusCode | None = None

    def time_remaining(self) -> float | None:
        return self.remaining

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise grpc.aio.AbortError()

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise grpc.aio.AbortError()

    async def write(self, message: Any) -> None:
        if self.broken_writes:  # as grpc.aio fails a write to a caller who has gone
            raise cygrpc.ExecuteBatchError('Failed "execute_batch"')
        self.written.append(message)


async def test_predict_validates_calls_the_plane_and_converts() -> None:
    plane = Plane()
    context = Context(remaining=30.0)
    reply = await ExplainerServicer(plane, LIMITS).Predict(pb.PredictRequest(texts=["good", "bad"]), context)  # type: ignore[arg-type]
    assert reply.model == "tiny" and [p.label for p in reply.predictions] == ["pos", "pos"]
    assert plane.calls[0] == ("admitted", "Predict")
    (ctx,) = plane.contexts
    assert ctx.priority is Priority.PREDICT and ctx.max_rows == 777
    remaining = ctx.remaining()
    assert remaining is not None and 0 < remaining <= 30.0


async def test_a_bad_request_never_reaches_the_plane() -> None:
    plane = Plane()
    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        await ExplainerServicer(plane, LIMITS).Predict(pb.PredictRequest(texts=["x"] * 5), context)  # type: ignore[arg-type]
    assert context.status is not None and context.status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "texts" in context.status.details
    assert plane.calls == []


@pytest.mark.parametrize(
    ("error", "code"),
    [(NotFound("no model 'x'"), grpc.StatusCode.NOT_FOUND), (RuntimeError("a bug"), grpc.StatusCode.INTERNAL)],
)
async def test_errors_become_statuses(error: Exception, code: grpc.StatusCode) -> None:
    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        await ExplainerServicer(Plane(error), LIMITS).Predict(pb.PredictRequest(texts=["x"]), context)  # type: ignore[arg-type]
    got = context.status.code if context.status is not None else context.code
    assert got == code
    if code == grpc.StatusCode.INTERNAL:
        assert "a bug" not in context.details  # no internals to the caller


async def test_an_error_after_the_deadline_ends_quietly() -> None:
    context = Context(remaining=-0.5)
    with pytest.raises(asyncio.CancelledError):
        await ExplainerServicer(Plane(ServiceError("late")), LIMITS).Predict(pb.PredictRequest(texts=["x"]), context)  # type: ignore[arg-type]
    assert context.status is None


async def test_a_stream_writes_each_text_and_stops_when_its_caller_is_gone() -> None:
    plane = Plane()
    context = Context()
    servicer = ExplainerServicer(plane, LIMITS)
    await servicer.PredictStream(pb.PredictStreamRequest(texts=["a", "bb", "ccc"]), context)  # type: ignore[arg-type]
    assert [(m.index, m.prediction.token_count) for m in context.written] == [(0, 1), (1, 2), (2, 3)]
    assert ("predict_stream", LIMITS.stream_window) in plane.calls and plane.stream_closed
    gone = Plane()
    with pytest.raises(asyncio.CancelledError):
        await servicer.__class__(gone, LIMITS).PredictStream(
            pb.PredictStreamRequest(texts=["a", "b"]), Context(broken_writes=True)
        )  # type: ignore[arg-type]
    assert gone.stream_closed


async def test_explain_for_an_unknown_model_is_not_found_before_any_work() -> None:
    plane = Plane(NotFound("no model 'nope'"))
    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        await ExplainerServicer(plane, LIMITS).Explain(pb.ExplainRequest(model="nope", texts=["x"]), context)  # type: ignore[arg-type]
    assert context.status is not None and context.status.code == grpc.StatusCode.NOT_FOUND
    assert not any(name == "admitted" for name, _ in plane.calls)


async def test_list_models() -> None:
    reply = await ExplainerServicer(Plane(), LIMITS).ListModels(pb.ListModelsRequest(), Context())  # type: ignore[arg-type]
    assert reply.default_model == "tiny" and [m.name for m in reply.models] == ["tiny"]
