"""The Explainer service: protobuf in, data plane, protobuf out, errors to statuses."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from whybert.v1 import explainer_pb2 as pb
from whybert.v1 import explainer_pb2_grpc as pb_grpc

from ..context import Priority, RequestContext
from ..dataplane import DataPlane
from ..errors import ServiceError
from . import convert, validation
from .interceptors import deadline_passed, write
from .status import to_status

log = logging.getLogger(__name__)

Response = TypeVar("Response")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]]


def handles_errors(method: Handler[Response]) -> Handler[Response]:
    """Turn `ServiceError`s into their statuses; anything else is INTERNAL, logged once."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Response:
        try:
            return await method(self, request, context)
        except ServiceError as exc:
            if deadline_passed(context):
                # The caller already has DEADLINE_EXCEEDED and no status can be sent any
                # more: end quietly, as a cancelled call does.
                raise asyncio.CancelledError from exc
            await context.abort_with_status(to_status(exc))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server's log")
        raise AssertionError("unreachable")  # abort always raises

    return wrapper


def request_context(
    context: grpc.aio.ServicerContext, priority: Priority, max_rows: int | None
) -> RequestContext:
    """The RPC's deadline (and the request's row budget) as a RequestContext that the worker
    checks before running rows. grpc.aio cancels the handler when the deadline passes or
    the caller leaves; `ModelWorker.run` and `DataPlane.explain` turn that cancellation
    into `RequestContext.cancel()`, which explainer threads and the queue see."""
    remaining = context.time_remaining()
    return RequestContext.with_timeout(priority, remaining, max_rows)


class ExplainerServicer(pb_grpc.ExplainerServicer):
    """Thin: validate, call the data plane, convert."""

    def __init__(self, dataplane: DataPlane, limits: validation.Limits) -> None:
        self.dataplane = dataplane
        self.limits = limits

    @handles_errors
    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> pb.PredictResponse:
        params = validation.predict_params(request, self.limits)
        plane = self.dataplane
        with plane.admitted("Predict"):
            ctx = request_context(context, Priority.PREDICT, self.limits.max_rows)
            model, predictions = await plane.predict(params, ctx)
        response = convert.predict_response(model, predictions)
        validation.check_reply_sent(response.ByteSize(), self.limits)
        return response

    @handles_errors
    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext) -> pb.ExplainResponse:
        params = validation.explain_params(request, self.limits)
        plane = self.dataplane
        # The reply's bound needs the model's labels and window: refused before any work.
        model = plane.describe(params.model)
        params = validation.resolve_attention(params, model.attention_layers, model.attention_heads, self.limits)
        validation.check_reply_size(params, model.labels, model.max_tokens, self.limits)

        def check_entities(counts: list[int]) -> None:  # entity.all: one explanation per entity
            validation.check_reply_size(params, model.labels, model.max_tokens, self.limits, counts)

        with plane.admitted("Explain"):
            ctx = request_context(context, Priority.EXPLAIN, self.limits.max_rows)
            name, results = await plane.explain(params, ctx, check_entities)
        response = convert.explain_response(name, results)
        validation.check_reply_sent(response.ByteSize(), self.limits)
        return response

    @handles_errors
    async def PredictStream(self, request: pb.PredictStreamRequest, context: grpc.aio.ServicerContext) -> None:
        params = validation.predict_params(request, self.limits)
        plane = self.dataplane
        model = plane.describe(params.model).name
        with plane.admitted("PredictStream"):  # one stream, one request slot
            ctx = request_context(context, Priority.PREDICT, self.limits.max_rows)
            results = plane.predict_stream(params, ctx, self.limits.stream_window)
            async with contextlib.aclosing(results):
                async for index, prediction in results:
                    message = convert.predict_stream_response(model, index, prediction)
                    validation.check_reply_sent(message.ByteSize(), self.limits)
                    await write(context, message)

    @handles_errors
    async def ExplainStream(self, request: pb.ExplainStreamRequest, context: grpc.aio.ServicerContext) -> None:
        params = validation.explain_params(request, self.limits)
        plane = self.dataplane
        # Each text's message is bounded before any work, as an Explain reply is.
        model = plane.describe(params.model)
        params = validation.resolve_attention(params, model.attention_layers, model.attention_heads, self.limits)
        largest = validation.check_stream_reply_sizes(params, model.labels, model.max_tokens, self.limits)
        with plane.admitted("ExplainStream"):  # one stream, one request slot
            ctx = request_context(context, Priority.EXPLAIN, self.limits.max_rows)
            results = plane.explain_stream(params, ctx, validation.stream_window(largest, self.limits))
            async with contextlib.aclosing(results):
                async for index, result in results:
                    message = convert.explain_stream_response(model.name, index, result)
                    validation.check_reply_sent(message.ByteSize(), self.limits)
                    await write(context, message)

    @handles_errors
    async def ExplainProgressive(
        self, request: pb.ExplainProgressiveRequest, context: grpc.aio.ServicerContext
    ) -> None:
        params, interval = validation.progressive_params(request, self.limits)
        plane = self.dataplane
        model = plane.describe(params.model)
        validation.check_reply_size(params, model.labels, model.max_tokens, self.limits)
        with plane.admitted("ExplainProgressive"):
            ctx = request_context(context, Priority.EXPLAIN, self.limits.max_rows)
            messages = plane.explain_progressive(params, ctx, interval)
            async with contextlib.aclosing(messages):
                async for progress in messages:
                    message = convert.progressive_response(model.name, progress.result, progress.evals, progress.final)
                    validation.check_reply_sent(message.ByteSize(), self.limits)
                    await write(context, message)

    @handles_errors
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        models, default = self.dataplane.list_models()
        return convert.list_models_response(models, default)
