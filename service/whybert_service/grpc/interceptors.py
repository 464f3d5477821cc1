"""Server interceptors: the standard gRPC server metrics for every call, and a cap on the
long-lived health Watch streams that anyone may open."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from grpc._cython import cygrpc

from ..metrics import Metrics


def split_method(full: str) -> tuple[str, str]:
    """'/whybert.v1.Explainer/Predict' → ('whybert.v1.Explainer', 'Predict')."""
    service, _, method = full.lstrip("/").rpartition("/")
    return service, method


def handler_factory(handler: grpc.RpcMethodHandler) -> Callable[..., grpc.RpcMethodHandler]:
    """The grpc factory that builds a handler of `handler`'s streaming shape (interceptors
    that wrap a handler must return one of the same shape)."""
    return _SHAPES[_shape(handler)][1]


# The caller's clock starts before its headers leave, so its own deadline fires first and its
# cancel can reach the server a little before the server's copy of the deadline passes.
DEADLINE_SLACK_S = 0.01


def deadline_passed(context: grpc.aio.ServicerContext, slack: float = 0.0) -> bool:
    """Whether the call's deadline is behind it (its caller already has DEADLINE_EXCEEDED),
    or within `slack` seconds of it."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= slack


# What grpc.aio raises writing to a call that has ended: its caller has gone (cancelled,
# reset: the send fails) and the handler is about to be cancelled, or the call has already
# finished.
_CALL_ENDED: tuple[type[BaseException], ...] = (
    cygrpc.ExecuteBatchError,
    cygrpc.UsageError,
    asyncio.InvalidStateError,
)


async def write(context: grpc.aio.ServicerContext, message: Any) -> None:
    """Write one message of a stream. The write waits on HTTP/2 flow control, so a slow
    reader holds its stream's next message back. grpc.aio fails the write of a call whose
    caller has gone before it cancels the handler: that ends the stream as a cancelled
    call, not as an error. Any other failure (a message that does not serialize) stays
    the error it is."""
    try:
        await context.write(message)
    except _CALL_ENDED as exc:
        raise asyncio.CancelledError("the stream's caller has gone") from exc


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """grpc_server_* counters and latency for every RPC, unary or streaming, by final status.

    An async-generator handler's responses (reflection's) are written here with `write`,
    and counted: a caller who leaves mid-stream ends the call as cancelled, where grpc,
    writing a generator's responses itself, would log the failed send as an error with its
    traceback (anyone may open a reflection stream). A handler that writes with
    `context.write()` itself (grpc.health.v1 Watch) has its sent messages uncounted.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, method = split_method(handler_call_details.method)
        kind = _SHAPES[_shape(handler)][0]
        return self._observed(handler, (kind, service, method))

    def _observed(
        self, handler: grpc.RpcMethodHandler, labels: tuple[str, str, str]
    ) -> grpc.RpcMethodHandler:
        """The same handler, counted: a coroutine (an async generator's responses written
        here, with `write`)."""
        m = self.metrics
        received, sent = m.grpc_msg_received.labels(*labels), m.grpc_msg_sent.labels(*labels)
        behavior = (
            handler.unary_unary
            or handler.unary_stream
            or handler.stream_unary
            or handler.stream_stream
        )
        streams_in, streams_out = _shape(handler)

        def inbound(request: Any) -> Any:
            if streams_in:
                return _counted(request, received)
            received.inc()
            return request

        async def observed_generator(request: Any, context: grpc.aio.ServicerContext) -> None:
            with self._handled(labels, context):
                async with contextlib.aclosing(behavior(inbound(request), context)) as responses:
                    async for response in responses:
                        await write(context, response)
                        sent.inc()

        async def observed_call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._handled(labels, context):
                response = await behavior(inbound(request), context)
                if not streams_out and (context.code() or grpc.StatusCode.OK) == grpc.StatusCode.OK:
                    sent.inc()
                return response

        observed = observed_generator if inspect.isasyncgenfunction(behavior) else observed_call
        return handler_factory(handler)(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    @contextlib.contextmanager
    def _handled(
        self, labels: tuple[str, str, str], context: grpc.aio.ServicerContext
    ) -> Iterator[None]:
        """Count the start, then the final status code and the handling time."""
        m = self.metrics
        m.grpc_started.labels(*labels).inc()
        started = time.perf_counter()
        code: Any = grpc.StatusCode.UNKNOWN
        try:
            yield
            code = context.code() or grpc.StatusCode.OK
        except asyncio.CancelledError:
            # grpc.aio cancels the handler both when the caller leaves and when the
            # deadline passes; the caller sees DEADLINE_EXCEEDED in the second case.
            late = deadline_passed(context, DEADLINE_SLACK_S)  # a cancel that beat it by a hair: the deadline
            code = grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            m.grpc_handled.labels(*labels, _code_name(code)).inc()
            m.grpc_handling_seconds.labels(*labels).observe(time.perf_counter() - started)


HEALTH_WATCH = "/grpc.health.v1.Health/Watch"


class StreamLimitInterceptor(grpc.aio.ServerInterceptor):
    """At most `limit` calls of one streaming method open at once; beyond, RESOURCE_EXHAUSTED
    at once. Health is open to callers without a token, and each Watch holds its stream for
    as long as the caller likes, so without a cap anyone could pin the server's memory and
    tasks. A stream gives its place back when it ends, however it ends. Runs on the event
    loop only, so the count needs no lock.
    """

    def __init__(self, limit: int, method: str = HEALTH_WATCH) -> None:
        self.limit = limit
        self.method = method
        self.active = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method != self.method:
            return handler
        return self._limited(handler)

    def _limited(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        behavior = (
            handler.unary_unary
            or handler.unary_stream
            or handler.stream_unary
            or handler.stream_stream
        )
        refusal = (
            f"the server is at its limit of {self.limit} open {split_method(self.method)[1]} "
            "streams; retry later or poll with Check"
        )

        @contextlib.contextmanager
        def place() -> Iterator[None]:
            self.active += 1
            try:
                yield
            finally:
                self.active -= 1

        async def limited_generator(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            if self.active >= self.limit:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            with place():
                async for response in behavior(request, context):
                    yield response

        async def limited_call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.active >= self.limit:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            with place():
                return await behavior(request, context)

        limited = limited_generator if inspect.isasyncgenfunction(behavior) else limited_call
        return handler_factory(handler)(
            limited,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


# (request streaming, response streaming) → the grpc_type label and the handler factory.
_SHAPES: dict[tuple[bool, bool], tuple[str, Callable[..., grpc.RpcMethodHandler]]] = {
    (False, False): ("unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("server_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("client_stream", grpc.stream_unary_rpc_method_handler),
    (True, True): ("bidi_stream", grpc.stream_stream_rpc_method_handler),
}


def _shape(handler: grpc.RpcMethodHandler) -> tuple[bool, bool]:
    return bool(handler.request_streaming), bool(handler.response_streaming)


async def _counted(requests: AsyncIterator[Any], counter: Any) -> AsyncIterator[Any]:
    async for request in requests:
        counter.inc()
        yield request


def _code_name(code: Any) -> str:
    return str(code.name) if isinstance(code, grpc.StatusCode) else "UNKNOWN"
