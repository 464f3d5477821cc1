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

import grpc


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
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


def _field_violations(trailers: object) -> list[tuple[str, str]]:
    """Decode google.rpc.BadRequest from the status details, without googleapis protos."""
    for key, value in trailers:  # type: ignore[attr-defined]
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        out = []
        for field, detail in _fields(value):
            if field != 3:  # google.rpc.Status.details (repeated Any)
                continue
            parts = dict(_fields(detail))
            if parts.get(1) != _BAD_REQUEST_TYPE.encode():
                continue
            for vfield, violation in _fields(parts.get(2, b"")):
                if vfield == 1:  # BadRequest.field_violations
                    fv = dict(_fields(violation))
                    out.append((fv.get(1, b"").decode(), fv.get(2, b"").decode()))
        return out
    return []


def _fields(data: bytes) -> list[tuple[int, bytes]]:
    """Length-delimited fields of a protobuf message (other wire types are skipped)."""
    out, pos = [], 0
    try:
        while pos < len(data):
            tag, pos = _varint(data, pos)
            number, wire = tag >> 3, tag & 7
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 2:
                size, pos = _varint(data, pos)
                out.append((number, data[pos : pos + size]))
                pos += size
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                break
    except IndexError:
        pass
    return out


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
