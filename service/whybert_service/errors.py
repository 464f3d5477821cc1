"""The server's errors: plain exceptions, each of a kind a caller can tell apart.

    ServiceError                 kind INTERNAL unless a subclass says otherwise
    ├── InvalidArgument          INVALID_ARGUMENT, with field violations
    ├── NotFound                 NOT_FOUND           (unknown model)
    ├── ResourceExhausted        RESOURCE_EXHAUSTED  (a queue or a limit is full)
    ├── Unavailable              UNAVAILABLE         (loading, draining, worker restarting)
    ├── DeadlineExceeded         DEADLINE_EXCEEDED   (the caller's deadline passed in queue)
    ├── Cancelled                CANCELLED           (the caller went away)
    └── ModelFailure             INTERNAL            (the model failed on this request's rows)

Code below the transport raises these and knows nothing of the transport;
`whybert_service.grpc.status` maps each kind to its status code, in one place.

A status travels in HTTP/2 trailers, which clients refuse beyond 8 KiB (grpc-message is
percent-encoded, the BadRequest detail base64-encoded), so every message is bounded here,
whatever the input it quotes: echoed values are cut with `clip`/`quote`, at most
`MAX_VIOLATIONS` field violations are kept, and the message is cut to `MAX_MESSAGE_BYTES`.
Worst case (all non-ASCII): 3 × 800 + 4/3 × (800 + 8 × (64 + 256 + 8)) ≈ 7.0 KB of trailers.
"""

from __future__ import annotations

from enum import StrEnum

ELLIPSIS = "…"
MAX_ECHO_BYTES = 64  # of one value quoted back to the caller (a label, a name), UTF-8
MAX_VIOLATIONS = 8
MAX_FIELD_BYTES = 64
MAX_DESCRIPTION_BYTES = 256
MAX_MESSAGE_BYTES = 800


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _prefix(text: str, max_bytes: int) -> str:
    """`text`'s longest prefix whose UTF-8 form fits in `max_bytes`."""
    return text.encode("utf-8", "surrogatepass")[: max(0, max_bytes)].decode("utf-8", "ignore")


def clip(text: str, max_bytes: int) -> str:
    """`text` cut so that its UTF-8 form fits in `max_bytes`, ending in an ellipsis if cut."""
    if _utf8_size(text) <= max_bytes:
        return text
    return _prefix(text, max_bytes - _utf8_size(ELLIPSIS)) + ELLIPSIS


def quote(value: str, max_bytes: int = MAX_ECHO_BYTES) -> str:
    """A caller's value as it may appear in a message: repr'd, its first `max_bytes` bytes
    (64 ASCII characters) at most, then an ellipsis."""
    if _utf8_size(value) <= max_bytes:
        return repr(value)
    return repr(_prefix(value, max_bytes)) + ELLIPSIS


def quote_some(values: list[str], shown: int = 3) -> str:
    """At most `shown` values, quoted, and how many more there were."""
    listed = ", ".join(quote(v) for v in values[:shown])
    rest = len(values) - shown
    return f"{listed} and {rest} more" if rest > 0 else listed


class ErrorKind(StrEnum):
    """What went wrong, as a caller must tell it apart (named as gRPC's codes are)."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


class ServiceError(Exception):
    """Base of every error the service reports to a caller."""

    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str) -> None:
        message = clip(message, MAX_MESSAGE_BYTES)
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """A request field is wrong; `violations` lists (field path, what is wrong): the first
    `MAX_VIOLATIONS`, each cut to size, and `omitted` says how many more there were."""

    kind = ErrorKind.INVALID_ARGUMENT

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        self.violations = [
            (clip(f, MAX_FIELD_BYTES), clip(d, MAX_DESCRIPTION_BYTES))
            for f, d in violations[:MAX_VIOLATIONS]
        ]
        self.omitted = max(0, len(violations) - MAX_VIOLATIONS)
        message = "; ".join(f"{f}: {d}" for f, d in self.violations)
        if self.omitted:
            more = f"; and {self.omitted} more violations"
            message = clip(message, MAX_MESSAGE_BYTES - len(more)) + more
        super().__init__(message)


class NotFound(ServiceError):
    kind = ErrorKind.NOT_FOUND


class ResourceExhausted(ServiceError):
    kind = ErrorKind.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    kind = ErrorKind.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    kind = ErrorKind.DEADLINE_EXCEEDED


class Cancelled(ServiceError):
    kind = ErrorKind.CANCELLED


class ModelFailure(ServiceError):
    kind = ErrorKind.INTERNAL
