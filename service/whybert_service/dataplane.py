"""What the server does, free of any transport: predict, explain, list models.

The gRPC servicer converts messages in and out and calls these; nothing here knows about
protobuf or status codes. Nothing here blocks the event loop: tokenization runs in a
thread, forward passes on the model's worker, explanations in the explainer threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from .cache import ExplanationCache
from .context import RequestContext
from .errors import InvalidArgument, ResourceExhausted, ServiceError
from .explainers import Explainer, create_explainers
from .explainers.faithfulness import with_faithfulness
from .explainers.targets import check_target_labels
from .metrics import Metrics
from .outputs import prediction_from_logits
from .registry import ModelHandle, ModelRegistry
from .types import (
    ExplainParams,
    ExplanationResult,
    ModelDescription,
    PredictionResult,
    PredictParams,
)

log = logging.getLogger(__name__)


class DataPlane:
    """The server's operations over its models."""

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics,
        *,
        explain_threads: int = 32,
        max_concurrent_requests: int = 512,
        cache_entries: int = 4096,
        cache_bytes: int = 256 * 1024 * 1024,
        explainers: dict[str, Explainer] | None = None,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.explainers = explainers if explainers is not None else create_explainers()
        self.cache = ExplanationCache(cache_entries, metrics, max_bytes=cache_bytes)
        self._pool = ThreadPoolExecutor(explain_threads, thread_name_prefix="whybert-explain")
        self._max_requests = max_concurrent_requests
        self._in_flight = 0
        self._explaining: set[RequestContext] = set()  # requests whose explanations run

    def close(self) -> None:
        """Stop the explanations still running and release the explainer threads.

        Their contexts are cancelled, so that explainer threads stop at their next check
        (between chunks, rounds or step batches) rather than work on for nobody; at exit
        concurrent.futures would otherwise join them however long that takes.
        """
        for ctx in list(self._explaining):
            ctx.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for explainer in self.explainers.values():
            explainer.close()

    @contextlib.contextmanager
    def admitted(self, method: str) -> Iterator[None]:
        """Hold one of the server's request slots; refuse at once when none is free."""
        if self._in_flight >= self._max_requests:
            raise ResourceExhausted(
                f"the server is at its limit of {self._max_requests} requests in progress; retry later"
            )
        self._in_flight += 1
        gauge = self.metrics.requests_in_flight.labels(method)
        gauge.inc()
        try:
            yield
        finally:
            self._in_flight -= 1
            gauge.dec()

    # ---- Predict -------------------------------------------------------------------------

    async def predict(self, params: PredictParams, ctx: RequestContext) -> tuple[str, list[PredictionResult]]:
        handle = self.registry.get(params.model)
        classifier = handle.classifier
        encoded = await asyncio.to_thread(classifier.encode, params.texts)
        result = await handle.worker.run(encoded.ids, ctx)
        predictions = [
            prediction_from_logits(classifier.labels, result.logits[i], encoded.truncated[i], len(ids))
            for i, ids in enumerate(encoded.ids)
        ]
        return handle.name, predictions

    # ---- Explain -------------------------------------------------------------------------

    async def explain(self, params: ExplainParams, ctx: RequestContext) -> tuple[str, list[ExplanationResult]]:
        handle = self.registry.get(params.model)
        check_target_labels(params, handle.classifier.labels)
        explainer = self._explainer_for(params, handle)
        self._explaining.add(ctx)
        tasks = [
            asyncio.ensure_future(self._explain_one(explainer, handle, text, params, ctx)) for text in params.texts
        ]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            # The caller left, its deadline passed or one text failed: stop the others.
            ctx.cancel()
            for task in tasks:
                task.cancel()
            raise
        finally:
            self._explaining.discard(ctx)
        return handle.name, list(results)

    def _explainer_for(self, params: ExplainParams, handle: ModelHandle) -> Explainer:
        """The requested explainer, if this server has it and it can explain this model."""
        name = params.explainer.value
        explainer = self.explainers.get(name)
        if explainer is None:
            available = ", ".join(sorted(self.explainers)) or "none"
            reason = f"{name} is not available here (available: {available})"
            raise InvalidArgument([("explainer", reason)])
        if not explainer.supports(handle.classifier):
            raise InvalidArgument([("explainer", f"{name} cannot explain model {handle.name!r}")])
        return explainer

    async def _explain_one(
        self, explainer: Explainer, handle: ModelHandle, text: str, params: ExplainParams, ctx: RequestContext
    ) -> ExplanationResult:
        """One text's explanation: from the cache on the event loop (a hit never waits
        behind other requests' work), else by its explainer."""
        ctx.ensure_alive("before the explanation started")
        name = params.explainer.value
        key = self.cache.key(handle.classifier, text, params)
        cached = self.cache.get(key)
        if cached is not None:
            self.metrics.explanations.labels(handle.name, name, "cached").inc()
            return cached
        started = time.perf_counter()
        try:
            result = await explainer.explain_async(handle, text, params, ctx, self._pool)
            if params.faithfulness:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self._pool, with_faithfulness, handle, text, result, ctx)
        except ServiceError as exc:
            self.metrics.explanations.labels(handle.name, name, exc.kind.value).inc()
            raise
        except asyncio.CancelledError:
            self.metrics.explanations.labels(handle.name, name, "cancelled").inc()
            raise
        except Exception:
            self.metrics.explanations.labels(handle.name, name, "internal").inc()
            raise
        self.metrics.explanations.labels(handle.name, name, "ok").inc()
        self.metrics.explanation_seconds.labels(handle.name, name).observe(time.perf_counter() - started)
        self.metrics.rows_per_explanation.labels(handle.name, name).observe(result.model_rows)
        self.cache.put(key, result)
        return result

    # ---- ListModels ----------------------------------------------------------------------

    def describe(self, name: str) -> ModelDescription:
        """One served model (the default for an empty name), as ListModels shows it."""
        return self._description(self.registry.get(name))

    def list_models(self) -> tuple[list[ModelDescription], str]:
        if not self.registry.is_open:
            self.registry.get("")  # UNAVAILABLE, with the registry's reason
        return [self._description(h) for h in self.registry], self.registry.default_model

    def _description(self, handle: ModelHandle) -> ModelDescription:
        c = handle.classifier
        return ModelDescription(
            name=c.name,
            labels=list(c.labels),
            max_tokens=c.max_length,
            is_default=c.name == self.registry.default_model,
            explainers=[e.name for e in self.explainers.values() if e.supports(c)],
            weights_sha256=c.weights_sha256,
            device=str(c.device),
            dtype=str(c.dtype).removeprefix("torch."),
        )
