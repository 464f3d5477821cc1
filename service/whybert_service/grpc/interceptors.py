"""Server interceptors: the standard gRPC metrics for every unary call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ..metrics import Metrics


def split_method(full: str) -> tuple[str, str]:
    """'/whybert.v1.Explainer/Predict' → ('whybert.v1.Explainer', 'Predict')."""
    service, _, method = full.lstrip("/").rpartition("/")
    return service, method


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """grpc_server_* counters and latency for every unary RPC, by final status code."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        service, method = split_method(handler_call_details.method)
        labels = ("unary", service, method)
        behavior = handler.unary_unary
        m = self.metrics

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            m.grpc_started.labels(*labels).inc()
            m.grpc_msg_received.labels(*labels).inc()
            started = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                response = await behavior(request, context)
                code = context.code() or grpc.StatusCode.OK
                if code == grpc.StatusCode.OK:
                    m.grpc_msg_sent.labels(*labels).inc()
                return response
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                m.grpc_handled.labels(*labels, _code_name(code)).inc()
                m.grpc_handling_seconds.labels(*labels).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _code_name(code: Any) -> str:
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    return "UNKNOWN"
