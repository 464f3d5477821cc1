"""The server's interceptors (`grpc/interceptors.py`) on handlers called directly, with a
stand-in for grpc.aio's context: the metrics count each call once under its final status
and shape, and the Watch cap refuses beyond its limit and gives a place back however a
stream ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc._cython import cygrpc
from whybert_service.grpc.interceptors import (
    DEADLINE_SLACK_S,
    HEALTH_WATCH,
    MetricsInterceptor,
    StreamLimitInterceptor,
    deadline_passed,
    split_method,
)
from whybert_service.metrics import Metrics

METHOD = "/whybert.v1.Explainer/Predict"


class Context:
    """What the interceptors read of grpc.aio.ServicerContext."""

    def __init__(self, remaining: float | None = None, gone_after: int | None = None) -> None:
        self._code: grpc.StatusCode | None = None
        self.remaining = remaining
        self.written: list[Any] = []
        self.gone_after = gone_after  # the caller leaves after this many messages

    async def write(self, message: Any) -> None:
        if not isinstance(message, int):
            raise TypeError(f"cannot serialize {message!r}")  # as a wrong response type fails
        if self.gone_after is not None and len(self.written) >= self.gone_after:
            raise cygrpc.ExecuteBatchError('Failed "execute_batch"')  # as grpc.aio fails it
        self.written.append(message)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def time_remaining(self) -> float | None:
        return self.remaining

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self.details = code, details
        raise grpc.aio.AbortError()


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def _intercept(
    interceptor: grpc.aio.ServerInterceptor, handler: grpc.RpcMethodHandler, method: str = METHOD
) -> grpc.RpcMethodHandler:
    async def continuation(_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return handler

    return await interceptor.intercept_service(continuation, Details(method))


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


LABELS = {"grpc_type": "unary", "grpc_service": "whybert.v1.Explainer", "grpc_method": "Predict"}


def test_split_method_and_deadline() -> None:
    assert split_method(METHOD) == ("whybert.v1.Explainer", "Predict")
    assert split_method("/grpc.health.v1.Health/Watch") == ("grpc.health.v1.Health", "Watch")
    assert deadline_passed(Context(remaining=0.0)) and deadline_passed(Context(remaining=-1.0))  # type: ignore[arg-type]
    assert not deadline_passed(Context(remaining=2.0)) and not deadline_passed(Context())  # type: ignore[arg-type]
    # a caller's cancel that beats the server's copy of its deadline by a few ms is that deadline
    assert deadline_passed(Context(remaining=0.004), DEADLINE_SLACK_S)  # type: ignore[arg-type]
    assert not deadline_passed(Context(remaining=0.004))  # type: ignore[arg-type]
    assert not deadline_passed(Context(remaining=0.2), DEADLINE_SLACK_S)  # type: ignore[arg-type]


async def test_unary_calls_are_counted_by_final_code() -> None:
    metrics = Metrics()

    async def predict(request: str, context: Any) -> str:
        if request == "bad":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "texts: empty")
        return request.upper()

    handler = await _intercept(MetricsInterceptor(metrics), grpc.unary_unary_rpc_method_handler(predict))
    assert handler.unary_unary is not None and not handler.response_streaming
    assert await handler.unary_unary("ok", Context()) == "OK"
    with pytest.raises(grpc.aio.AbortError):
        await handler.unary_unary("bad", Context())
    assert _value(metrics, "grpc_server_started_total", **LABELS) == 2
    assert _value(metrics, "grpc_server_handled_total", **LABELS, grpc_code="OK") == 1
    assert _value(metrics, "grpc_server_handled_total", **LABELS, grpc_code="INVALID_ARGUMENT") == 1
    assert _value(metrics, "grpc_server_msg_received_total", **LABELS) == 2
    assert _value(metrics, "grpc_server_msg_sent_total", **LABELS) == 1  # no reply on the refused call
    assert _value(metrics, "grpc_server_handling_seconds_count", **LABELS) == 2


async def test_cancellation_is_cancelled_or_deadline_exceeded() -> None:
    metrics = Metrics()

    async def slow(_request: str, _context: Any) -> str:
        raise asyncio.CancelledError

    handler = await _intercept(MetricsInterceptor(metrics), grpc.unary_unary_rpc_method_handler(slow))
    with pytest.raises(asyncio.CancelledError):
        await handler.unary_unary("x", Context(remaining=5.0))
    with pytest.raises(asyncio.CancelledError):
        await handler.unary_unary("x", Context(remaining=0.0))
    assert _value(metrics, "grpc_server_handled_total", **LABELS, grpc_code="CANCELLED") == 1
    assert _value(metrics, "grpc_server_handled_total", **LABELS, grpc_code="DEADLINE_EXCEEDED") == 1


async def test_a_bug_in_a_handler_counts_as_unknown() -> None:
    metrics = Metrics()

    async def broken(_request: str, _context: Any) -> str:
        raise RuntimeError("bug")

    handler = await _intercept(MetricsInterceptor(metrics), grpc.unary_unary_rpc_method_handler(broken))
    with pytest.raises(RuntimeError):
        await handler.unary_unary("x", Context())
    assert _value(metrics, "grpc_server_handled_total", **LABELS, grpc_code="UNKNOWN") == 1


async def test_streams_keep_their_shape_and_count_each_message() -> None:
    metrics = Metrics()

    async def stream(requests: AsyncIterator[int], _context: Any) -> AsyncIterator[int]:
        async for r in requests:
            yield r * 10
            yield r * 10 + 1

    async def requests() -> AsyncIterator[int]:
        for r in (1, 2, 3):
            yield r

    handler = await _intercept(MetricsInterceptor(metrics), grpc.stream_stream_rpc_method_handler(stream))
    assert handler.stream_stream is not None and handler.request_streaming and handler.response_streaming
    context = Context()
    assert await handler.stream_stream(requests(), context) is None  # the responses are written
    assert context.written == [10, 11, 20, 21, 30, 31]
    labels = {**LABELS, "grpc_type": "bidi_stream"}
    assert _value(metrics, "grpc_server_msg_received_total", **labels) == 3
    assert _value(metrics, "grpc_server_msg_sent_total", **labels) == 6
    assert _value(metrics, "grpc_server_handled_total", **labels, grpc_code="OK") == 1


async def test_a_generators_stream_whose_caller_left_ends_cancelled_and_closes_the_generator() -> None:
    metrics = Metrics()
    closed = asyncio.Event()

    async def stream(request: int, _context: Any) -> AsyncIterator[int]:
        try:
            for i in range(1000):
                yield request + i
        finally:
            closed.set()

    handler = await _intercept(MetricsInterceptor(metrics), grpc.unary_stream_rpc_method_handler(stream))
    assert handler.unary_stream is not None
    context = Context(gone_after=3)
    with pytest.raises(asyncio.CancelledError):
        await handler.unary_stream(5, context)
    assert context.written == [5, 6, 7] and closed.is_set()
    labels = {**LABELS, "grpc_type": "server_stream"}
    assert _value(metrics, "grpc_server_msg_sent_total", **labels) == 3
    assert _value(metrics, "grpc_server_handled_total", **labels, grpc_code="CANCELLED") == 1


async def test_a_generators_response_that_cannot_be_sent_stays_an_error() -> None:
    # Not a caller who left: a handler yielding what does not serialize fails as it is.
    metrics = Metrics()

    async def stream(request: int, _context: Any) -> AsyncIterator[Any]:
        yield request
        yield "not a message"

    handler = await _intercept(MetricsInterceptor(metrics), grpc.unary_stream_rpc_method_handler(stream))
    assert handler.unary_stream is not None
    with pytest.raises(TypeError, match="cannot serialize"):
        await handler.unary_stream(5, Context())
    labels = {**LABELS, "grpc_type": "server_stream"}
    assert not _value(metrics, "grpc_server_handled_total", **labels, grpc_code="CANCELLED")
    assert _value(metrics, "grpc_server_handled_total", **labels, grpc_code="UNKNOWN") == 1


async def test_watch_streams_are_capped_and_give_their_place_back() -> None:
    limit = StreamLimitInterceptor(limit=2)
    release = asyncio.Event()

    async def watch(_request: str, _context: Any) -> AsyncIterator[str]:
        yield "SERVING"
        await release.wait()

    handler = await _intercept(limit, grpc.unary_stream_rpc_method_handler(watch), HEALTH_WATCH)
    assert handler.unary_stream is not None
    open_streams = [handler.unary_stream("", Context()) for _ in range(2)]
    assert [await anext(s) for s in open_streams] == ["SERVING", "SERVING"]
    assert limit.active == 2
    refused = Context()
    with pytest.raises(grpc.aio.AbortError):
        await anext(handler.unary_stream("", refused))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 2" in refused.details
    await open_streams[0].aclose()  # the caller left
    release.set()
    assert [r async for r in open_streams[1]] == []  # it ended
    assert limit.active == 0
    again = handler.unary_stream("", Context())
    assert await anext(again) == "SERVING"
    await again.aclose()


async def test_other_methods_are_not_capped() -> None:
    limit = StreamLimitInterceptor(limit=0)

    async def predict(request: str, _context: Any) -> str:
        return request

    original = grpc.unary_unary_rpc_method_handler(predict)
    assert await _intercept(limit, original, METHOD) is original
    capped = await _intercept(limit, original, HEALTH_WATCH)
    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        await capped.unary_unary("x", context)
    assert context.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
