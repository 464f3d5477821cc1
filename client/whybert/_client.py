"""`Client` and `AsyncClient`: the same calls, blocking or awaitable, over one core."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2

from ._core import DEFAULT_TARGET, USE_CLIENT_DEFAULT, BaseClient
from ._exceptions import WhybertError, from_rpc_error
from ._types import Explanation, ModelInfo, Prediction, Progress
from .v1 import explainer_pb2 as pb

T = TypeVar("T")
StreamRequest = pb.PredictStreamRequest | pb.ExplainStreamRequest | pb.ExplainProgressiveRequest


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
        self,
        texts: Sequence[str] | str,
        model: str | None = None,
        *,
        pairs: Sequence[str] | str | None = None,
        timeout: Any = USE_CLIENT_DEFAULT,
    ) -> list[Prediction]:
        """Class probabilities of each text (of each (text, pair) input for a text-pair model:
        `pairs` holds one second text per text)."""
        response = self._call(self._stub.Predict, self.predict_request(texts, model, pairs), timeout)
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

    def _stream(
        self, method: Any, request: StreamRequest, timeout: Any, convert: Callable[[Any], T]
    ) -> Generator[T, None, None]:
        """The call's messages, converted; closing the iterator (a `break` out of the loop
        that drops it, `close()`) cancels the call."""
        call = method(request, timeout=self.stream_timeout(timeout, request), metadata=self.metadata())
        try:
            for message in call:
                yield convert(message)
        except grpc.RpcError as exc:
            raise self.stream_error(exc, request) from exc
        finally:
            call.cancel()  # nothing once the call has ended

    def predict_stream(
        self,
        texts: Iterable[str] | str,
        model: str | None = None,
        *,
        pairs: Iterable[str] | str | None = None,
        timeout: Any = USE_CLIENT_DEFAULT,
    ) -> Generator[tuple[int, Prediction], None, None]:
        """(index, prediction) of each text as the server finishes it, in any order. All the
        texts go in one request message (see `check_request_size`); `timeout` covers the
        whole stream (left out: the client's timeout for each text). The call starts with
        the first `next()`."""
        request = self.predict_stream_request(texts, model, pairs)
        return self._stream(self._stub.PredictStream, request, timeout, self.streamed_prediction)

    def explain_stream(
        self,
        texts: Iterable[str] | str,
        model: str | None = None,
        explainer: str = "shap-partition",
        *,
        timeout: Any = USE_CLIENT_DEFAULT,
        **options: Any,
    ) -> Generator[tuple[int, Explanation], None, None]:
        """(index, explanation) of each text as the server finishes it, in any order, with
        the options of `explain`; each text has the per-request row budget to itself. All the
        texts go in one request message; `timeout` covers the whole stream (left out: the
        client's timeout for each text). The call starts with the first `next()`."""
        request = self.explain_stream_request(texts, model, explainer, options)
        return self._stream(
            self._stub.ExplainStream, request, timeout, lambda m: self.streamed_explanation(request, m)
        )

    def explain_progressive(
        self,
        text: str,
        model: str | None = None,
        *,
        interval: float | None = None,
        timeout: Any = USE_CLIENT_DEFAULT,
        **options: Any,
    ) -> Generator[Progress, None, None]:
        """One text's SHAP values as the server's budget is spent, coarse to fine: each
        `Progress` holds an additive `explanation`, the last (`final`) exactly what `explain`
        gives. `interval`: least seconds between messages (server default 0.1). Closing the
        iterator cancels the call."""
        request = self.progressive_request(text, model, interval, options)
        return self._stream(
            self._stub.ExplainProgressive, request, timeout, lambda m: self.streamed_progress(request, m)
        )

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
        self,
        texts: Sequence[str] | str,
        model: str | None = None,
        *,
        pairs: Sequence[str] | str | None = None,
        timeout: Any = USE_CLIENT_DEFAULT,
    ) -> list[Prediction]:
        """Class probabilities of each text."""
        response = await self._call(self._stub.Predict, self.predict_request(texts, model, pairs), timeout)
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

    async def _stream(
        self, method: Any, request: StreamRequest, timeout: Any, convert: Callable[[Any], T]
    ) -> AsyncGenerator[T, None]:
        """The call's messages, converted; closing the iterator (`aclose()`, or leaving
        `contextlib.aclosing`) cancels the call."""
        call = method(request, timeout=self.stream_timeout(timeout, request), metadata=self.metadata())
        try:
            async for message in call:
                yield convert(message)
        except grpc.RpcError as exc:
            raise self.stream_error(exc, request) from exc
        finally:
            call.cancel()  # nothing once the call has ended

    def predict_stream(
        self,
        texts: Iterable[str] | str,
        model: str | None = None,
        *,
        pairs: Iterable[str] | str | None = None,
        timeout: Any = USE_CLIENT_DEFAULT,
    ) -> AsyncGenerator[tuple[int, Prediction], None]:
        """(index, prediction) of each text as the server finishes it, in any order: an async
        iterator, as `Client.predict_stream`."""
        request = self.predict_stream_request(texts, model, pairs)
        return self._stream(self._stub.PredictStream, request, timeout, self.streamed_prediction)

    def explain_stream(
        self,
        texts: Iterable[str] | str,
        model: str | None = None,
        explainer: str = "shap-partition",
        *,
        timeout: Any = USE_CLIENT_DEFAULT,
        **options: Any,
    ) -> AsyncGenerator[tuple[int, Explanation], None]:
        """(index, explanation) of each text as the server finishes it, in any order: an
        async iterator, as `Client.explain_stream`."""
        request = self.explain_stream_request(texts, model, explainer, options)
        return self._stream(
            self._stub.ExplainStream, request, timeout, lambda m: self.streamed_explanation(request, m)
        )

    def explain_progressive(
        self,
        text: str,
        model: str | None = None,
        *,
        interval: float | None = None,
        timeout: Any = USE_CLIENT_DEFAULT,
        **options: Any,
    ) -> AsyncGenerator[Progress, None]:
        """One text's SHAP values as they refine: an async iterator, as
        `Client.explain_progressive`."""
        request = self.progressive_request(text, model, interval, options)
        return self._stream(
            self._stub.ExplainProgressive, request, timeout, lambda m: self.streamed_progress(request, m)
        )

    async def list_models(self, *, timeout: Any = USE_CLIENT_DEFAULT) -> list[ModelInfo]:
        """The models the server serves."""
        return self.models(await self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout))

    async def health(self, service: str = "", *, timeout: Any = USE_CLIENT_DEFAULT) -> str:
        """The server's grpc.health.v1 status: SERVING, NOT_SERVING, ..."""
        return _health_status(await self._call(self._health, _health_request(service), timeout))


__all__ = ["AsyncClient", "Client", "WhybertError"]
