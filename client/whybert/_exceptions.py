"""Errors the client raises; every failed call becomes one of these.

    WhybertError                 (any failed call; .code, .message)
    ├── InvalidArgumentError     INVALID_ARGUMENT (.field_violations: [(field, description)])
    ├── NotFoundError            NOT_FOUND (unknown model)
    ├── UnauthenticatedError     UNAUTHENTICATED
    ├── PermissionDeniedError    PERMISSION_DENIED
    ├── ResourceExhaustedError   RESOURCE_EXHAUSTED (server busy or message too large)
    ├── UnavailableError         UNAVAILABLE (already retried with backoff)
    ├── DeadlineExceededError    DEADLINE_EXCEEDED (the call's timeout passed)
    ├── CancelledError           CANCELLED
    └── InternalError            INTERNAL, UNKNOWN and the rest

gRPC errors are translated in one place, `from_rpc_error`, and re-raised `from` the
original so its traceback stays available.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2


class WhybertError(Exception):
    """A call to the whybert server failed."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field_violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field_violations = field_violations or []


class InvalidArgumentError(WhybertError):
    """The request was malformed; `field_violations` names the fields."""


class NotFoundError(WhybertError):
    """The named model is not served."""


class UnauthenticatedError(WhybertError):
    """The server wants a valid bearer token."""


class PermissionDeniedError(WhybertError):
    """The credentials are not allowed to make this call."""


class ResourceExhaustedError(WhybertError):
    """The server's queue or a size limit is full."""


class UnavailableError(WhybertError):
    """The server could not be reached or is not serving (after retries)."""


class DeadlineExceededError(WhybertError):
    """The call's timeout passed before the server answered."""


class CancelledError(WhybertError):
    """The call was cancelled."""


class InternalError(WhybertError):
    """The server failed; the message says how."""


_BY_CODE: dict[grpc.StatusCode, type[WhybertError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
}


def from_rpc_error(error: grpc.RpcError) -> WhybertError:
    """The WhybertError subclass for a gRPC error, with BadRequest details decoded."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    message = (error.details() if callable(getattr(error, "details", None)) else None) or str(error)
    trailers = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None
    violations = _field_violations(trailers or ())
    cls = _BY_CODE.get(code, InternalError)
    return cls(code, message, violations)


_STATUS_DETAILS_KEY = "grpc-status-details-bin"


def _field_violations(trailers: Iterable[tuple[str, str | bytes]]) -> list[tuple[str, str]]:
    """The google.rpc.BadRequest field violations in the status details, or none.

    Broken details must not hide the error itself: a Status that does not parse gives
    no violations, and a detail that does not parse is skipped, rather than raising.
    """
    for key, value in trailers:
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            details = status_pb2.Status.FromString(value).details
        except DecodeError:
            return []
        out: list[tuple[str, str]] = []
        for detail in details:
            bad_request = error_details_pb2.BadRequest()
            try:
                if not detail.Unpack(bad_request):  # another detail type
                    continue
            except DecodeError:
                continue
            out.extend((v.field, v.description) for v in bad_request.field_violations)
        return out
    return []
