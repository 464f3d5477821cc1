"""The server's errors, each bound to the gRPC status a caller receives.

    ServiceError                 (INTERNAL unless a subclass says otherwise)
    ├── InvalidArgument          INVALID_ARGUMENT, with BadRequest field violations
    ├── NotFound                 NOT_FOUND       (unknown model)
    ├── ResourceExhausted        RESOURCE_EXHAUSTED (a queue or a limit is full)
    ├── Unavailable              UNAVAILABLE     (loading, draining, worker restarting)
    ├── DeadlineExceeded         DEADLINE_EXCEEDED (the caller's deadline passed in queue)
    ├── Cancelled                CANCELLED       (the caller went away)
    └── ModelFailure             INTERNAL        (the model failed on this request's rows)

Code below the transport raises these; only `whybert_service.grpc` turns them into
statuses, in one place.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Base of every error the service reports to a caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """A request field is wrong; `violations` lists (field path, what is wrong)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{f}: {d}" for f, d in violations))


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ServiceError):
    code = grpc.StatusCode.CANCELLED


class ModelFailure(ServiceError):
    code = grpc.StatusCode.INTERNAL
