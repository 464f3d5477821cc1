"""Requests whose bytes do not decode end INVALID_ARGUMENT, not UNKNOWN.

grpcio's server turns a deserializer's exception into UNKNOWN with the parser's text,
and invalid UTF-8 in a `string` field is exactly such a case (protobuf refuses it). This
interceptor wraps the deserializer of each handler that takes one request (unary, and
server-streaming handlers that write with `context.write`) so that a failure becomes a
marker object, which the wrapped handler answers with INVALID_ARGUMENT and a BadRequest
naming the message type, the same shape as every other bad-input answer.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ..errors import InvalidArgument
from .status import to_status


class Undecodable:
    """Stands in for a request whose bytes could not be decoded."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class DecodeErrorInterceptor(grpc.aio.ServerInterceptor):
    """INVALID_ARGUMENT with the parser's reason for unary requests that do not decode."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        behavior = handler.unary_unary or handler.unary_stream
        # Only whybert's own handlers are checked here, and none is an async generator.
        if behavior is None or inspect.isasyncgenfunction(behavior):
            return handler
        factory = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.unary_stream_rpc_method_handler
        method = handler_call_details.method

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Undecodable):
                error = InvalidArgument([("request", _reason(method, request.error))])
                await context.abort_with_status(to_status(error))
            return await behavior(request, context)

        return factory(
            checked,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # any parser failure is the caller's bad bytes
            return Undecodable(exc)

    return parse


def _reason(method: str, error: Exception) -> str:
    detail = str(error) or type(error).__name__
    if "utf-8" in detail.lower():
        detail += " (every string field, texts included, must be valid UTF-8)"
    return f"the request bytes are not a valid message for {method}: {detail}"
