"""Service errors as gRPC statuses: the one place an error's kind meets a status code."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..errors import ErrorKind, InvalidArgument, ServiceError

STATUS_CODES: dict[ErrorKind, grpc.StatusCode] = {kind: grpc.StatusCode[kind.name] for kind in ErrorKind}


def status_code(error: ServiceError) -> grpc.StatusCode:
    return STATUS_CODES[error.kind]


def to_status(error: ServiceError) -> grpc.Status:
    """A service error as a rich gRPC status (BadRequest details for bad fields)."""
    code = status_code(error)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message)
    if isinstance(error, InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in error.violations
                ]
            )
        )
        status.details.append(detail)
    converted: grpc.Status = rpc_status.to_status(status)
    return converted
