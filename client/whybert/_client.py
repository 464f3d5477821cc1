"""`Client` and `AsyncClient`: the same calls, blocking or awaitable, over one core."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from ._core import DEFAULT_TARGET, USE_CLIENT_DEFAULT, BaseClient
from ._exceptions import WhybertError, from_rpc_error
from ._types import Explanation, ModelInfo, Prediction
from .v1 import explainer_pb2 as pb


def _health_request(service: str) -> health_pb2.HealthCheckRequest:
    return health_pb2.HealthCheckRequest(service=service)


def _health_status(response: health_pb2.HealthCheckResponse) -> str:
    """The status's name; proto3 enums are open, so a value newer than these stubs reads as UNKNOWN."""
    try:
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
    except ValueError:
        return "UNKNOWN"


class Client(BaseClient):
    """A blocking client. Use as a context manager, or call `close()`.

    >>> with whybert.Client("localhost:50051") as client:
    ...     client.predict(["the food was great"])[0].label
    """

    def __init__(self, target: str | Sequence[str] = DEFAULT_TARGET, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._open(grpc.secure_channel, grpc.insecure_channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any, timeout: Any) -> Any:
        try:
            return method(request, timeout=self.call_timeout(timeout), metadata=self.metadata())
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    def predict(
        self, texts: Sequence[str] | str, model: str | None = None, *, timeout: Any = USE_CLIENT_DEFAULT
    ) -> list[Prediction]:
        """Class probabilities of each text."""
        response = self._call(self._stub.Predict, self.predict_request(texts, model), timeout)
        return self.predictions(response)

    def explain(
        self,
        texts: Sequence[str] | str,
        model: str | None = None,
        explainer: str = "shap-partition",
        *,
        timeout: Any = USE_CLIENT_DEFAULT,
        **options: Any,
    ) -> list[Explanation]:
        """Per-token attributions of each text (options: see `whybert.EXPLAIN_OPTIONS`)."""
        request = self.explain_request(texts, model, explainer, options)
        return self.explanations(request, self._call(self._stub.Explain, request, timeout))

    def list_models(self, *, timeout: Any = USE_CLIENT_DEFAULT) -> list[ModelInfo]:
        """The models the server serves."""
        return self.models(self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout))

    def health(self, service: str = "", *, timeout: Any = USE_CLIENT_DEFAULT) -> str:
        """The server's grpc.health.v1 status: SERVING, NOT_SERVING, ..."""
        return _health_status(self._call(self._health, _health_request(service), timeout))


class AsyncClient(BaseClient):
    """An asyncio client, with the same calls as `Client`, awaited.

    >>> async with whybert.AsyncClient("localhost:50051") as client:
    ...     (await client.predict(["the food was great"]))[0].label
    """

    def __init__(self, target: str | Sequence[str] = DEFAULT_TARGET, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._open(grpc.aio.secure_channel, grpc.aio.insecure_channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: Any, request: Any, timeout: Any) -> Any:
        try:
            return await method(request, timeout=self.call_timeout(timeout), metadata=self.metadata())
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    async def predict(
        self, texts: Sequence[str] | str, model: str | None = None, *, timeout: Any = USE_CLIENT_DEFAULT
    ) -> list[Prediction]:
        """Class probabilities of each text."""
        response = await self._call(self._stub.Predict, self.predict_request(texts, model), timeout)
        return self.predictions(response)

    async def explain(
        self,
        texts: Sequence[str] | str,
        model: str | None = None,
        explainer: str = "shap-partition",
        *,
        timeout: Any = USE_CLIENT_DEFAULT,
        **options: Any,
    ) -> list[Explanation]:
        """Per-token attributions of each text (options: see `whybert.EXPLAIN_OPTIONS`)."""
        request = self.explain_request(texts, model, explainer, options)
        return self.explanations(request, await self._call(self._stub.Explain, request, timeout))

    async def list_models(self, *, timeout: Any = USE_CLIENT_DEFAULT) -> list[ModelInfo]:
        """The models the server serves."""
        return self.models(await self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout))

    async def health(self, service: str = "", *, timeout: Any = USE_CLIENT_DEFAULT) -> str:
        """The server's grpc.health.v1 status: SERVING, NOT_SERVING, ..."""
        return _health_status(await self._call(self._health, _health_request(service), timeout))


__all__ = ["AsyncClient", "Client", "WhybertError"]
