"""Bytes that do not decode (`grpc/decoding.py`) become INVALID_ARGUMENT with a BadRequest
naming the method, instead of grpcio's UNKNOWN; handlers and streaming shapes it must not
wrap are left alone. Called directly with a stand-in context, on the real request type."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from whybert.v1 import explainer_pb2 as pb
from whybert_service.grpc.decoding import DecodeErrorInterceptor

METHOD = "/whybert.v1.Explainer/Predict"


class Context:
    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise grpc.aio.AbortError()


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def _wrapped(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def continuation(_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return handler

    return await DecodeErrorInterceptor().intercept_service(continuation, Details(METHOD))


async def predict(request: pb.PredictRequest, _context: Any) -> pb.PredictResponse:
    return pb.PredictResponse(model=request.model)


def _handler() -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        predict,
        request_deserializer=pb.PredictRequest.FromString,
        response_serializer=pb.PredictResponse.SerializeToString,
    )


async def test_good_bytes_reach_the_handler() -> None:
    handler = await _wrapped(_handler())
    request = handler.request_deserializer(pb.PredictRequest(model="tiny", texts=["hi"]).SerializeToString())
    reply = await handler.unary_unary(request, Context())
    assert reply.model == "tiny"


async def test_invalid_utf8_is_invalid_argument_naming_the_method() -> None:
    handler = await _wrapped(_handler())
    # field 2 (texts), length-delimited, 2 bytes that are not UTF-8
    request = handler.request_deserializer(b"\x12\x02\xff\xfe")
    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        await handler.unary_unary(request, context)
    assert context.status.code == grpc.StatusCode.INVALID_ARGUMENT
    details = dict(context.status.trailing_metadata)["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    (violation,) = bad.field_violations
    assert violation.field == "request"
    assert METHOD in violation.description and "must be valid UTF-8" in violation.description


async def test_corrupt_bytes_are_invalid_argument_too() -> None:
    handler = await _wrapped(_handler())
    request = handler.request_deserializer(b"\x12\x40ab")  # a length past the end
    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        await handler.unary_unary(request, context)
    assert context.status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" not in context.status.details


async def test_what_it_cannot_wrap_is_returned_as_is() -> None:
    no_deserializer = grpc.unary_unary_rpc_method_handler(predict)
    assert await _wrapped(no_deserializer) is no_deserializer

    async def generator(_request: Any, _context: Any) -> AsyncIterator[Any]:
        yield None

    streaming = grpc.unary_stream_rpc_method_handler(generator, request_deserializer=pb.PredictRequest.FromString)
    assert await _wrapped(streaming) is streaming
