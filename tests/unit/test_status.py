"""Service errors as gRPC statuses (grpc/status.py): every ErrorKind has the status code of
its name, and an InvalidArgument carries its field violations as google.rpc.BadRequest."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from whybert_service.errors import (
    Cancelled,
    DeadlineExceeded,
    ErrorKind,
    InvalidArgument,
    ModelFailure,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from whybert_service.grpc.status import STATUS_CODES, status_code, to_status

ERRORS: list[tuple[ServiceError, grpc.StatusCode]] = [
    (InvalidArgument([("texts", "empty")]), grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound("model 'x' is not served here"), grpc.StatusCode.NOT_FOUND),
    (ResourceExhausted("the queue is full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable("restarting; retry"), grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded("the deadline passed"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (Cancelled("the caller cancelled"), grpc.StatusCode.CANCELLED),
    (ModelFailure("the model failed"), grpc.StatusCode.INTERNAL),
    (ServiceError("something else"), grpc.StatusCode.INTERNAL),
]


def test_every_kind_has_the_status_code_of_its_name() -> None:
    assert set(STATUS_CODES) == set(ErrorKind)
    for kind in ErrorKind:
        assert STATUS_CODES[kind] is grpc.StatusCode[kind.name]
    assert {code for _, code in ERRORS} == set(STATUS_CODES.values())  # every kind is raised below


@pytest.mark.parametrize(("error", "code"), ERRORS, ids=[type(e).__name__ for e, _ in ERRORS])
def test_each_error_becomes_its_status_with_its_message(error: ServiceError, code: grpc.StatusCode) -> None:
    assert status_code(error) is code
    status = to_status(error)
    assert status.code is code and status.details == error.message
    (key, value), *_ = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    rich = status_pb2.Status.FromString(value)
    assert rich.code == getattr(code_pb2, code.name) and rich.message == error.message
    if isinstance(error, InvalidArgument):
        (detail,) = rich.details
        bad = error_details_pb2.BadRequest()
        assert detail.Unpack(bad)
        assert [(v.field, v.description) for v in bad.field_violations] == error.violations
    else:
        assert not rich.details


def test_violations_keep_their_order_and_only_the_first_eight_travel() -> None:
    error = InvalidArgument([(f"texts[{i}]", "contains the control character U+0000") for i in range(10)])
    rich = status_pb2.Status.FromString(dict(to_status(error).trailing_metadata)["grpc-status-details-bin"])
    bad = error_details_pb2.BadRequest()
    rich.details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == [f"texts[{i}]" for i in range(8)]
    assert rich.message.endswith("; and 2 more violations")
