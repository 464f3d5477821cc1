"""Optional bearer-token authentication, checked before any handler runs.

Accepted tokens come from `--auth-tokens-file` (one a line; blank lines and `#` comments
skipped) and `--auth-tokens` / `WHYBERT_AUTH_TOKENS` (comma-separated); with none, the
server is open. A call must carry `authorization: Bearer <token>` metadata, or it ends
UNAUTHENTICATED before its message is even decoded. Health checks and reflection stay
open, so load balancers, orchestrators and grpcurl need no secret. Tokens are compared
as SHA-256 digests with `hmac.compare_digest`, against every accepted token, so the time
a check takes tells nothing about how much of a token was right, nor which one matched.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from ..settings import ServerSettings
from .interceptors import handler_factory, split_method

# Services anyone may call: health (probes) and reflection (service discovery, no data).
OPEN_SERVICES = frozenset(
    {health.SERVICE_NAME, reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection"}
)
REFUSAL = "a valid bearer token is required: send the metadata 'authorization: Bearer <token>'"


def load_tokens(settings: ServerSettings) -> frozenset[str]:
    """The accepted tokens from the settings and the tokens file; ValueError when unusable."""
    tokens = [t.strip() for t in settings.auth_tokens.get_secret_value().split(",") if t.strip()]
    if settings.auth_tokens_file:
        path = Path(settings.auth_tokens_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--auth-tokens-file {path}: cannot read it ({exc})") from exc
        from_file = [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]
        if not from_file:
            # An empty file must not silently leave the server open.
            raise ValueError(f"--auth-tokens-file {path} holds no token")
        tokens += from_file
    for token in tokens:
        if not token.isascii() or not token.isprintable() or " " in token:
            raise ValueError("an auth token may hold only printable ASCII without spaces")
    return frozenset(tokens)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with a valid bearer token, except to the open services."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [_digest(t) for t in tokens]
        if not self._digests:
            raise ValueError("TokenAuthInterceptor needs at least one token")

    def authorized(self, metadata: Sequence[tuple[str, Any]] | None) -> bool:
        """Whether the call metadata carries one of the accepted tokens."""
        values = [v for k, v in metadata or () if k == "authorization" and isinstance(v, str)]
        if len(values) != 1:
            return False
        scheme, _, token = values[0].strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        given = _digest(token.strip())
        matched = False
        for digest in self._digests:  # no early exit: every token costs the same
            matched |= hmac.compare_digest(digest, given)
        return matched

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        service, _ = split_method(handler_call_details.method)
        if handler is None or service in OPEN_SERVICES:
            return handler
        if self.authorized(handler_call_details.invocation_metadata):
            return handler
        return _refusal(handler)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


async def _refuse(request: Any, context: grpc.aio.ServicerContext) -> NoReturn:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)
    raise AssertionError("unreachable")  # abort always raises


async def _refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    await _refuse(request, context)
    yield  # an async generator, like the streaming handler it stands in for


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape that answers UNAUTHENTICATED; the request bytes are
    never decoded (no deserializer), so an unauthenticated caller reaches no parser."""
    behavior = _refuse_stream if handler.response_streaming else _refuse
    return handler_factory(handler)(
        behavior, request_deserializer=None, response_serializer=handler.response_serializer
    )
