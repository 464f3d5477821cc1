"""What the server does, free of any transport: predict, explain, list models.

The gRPC servicer converts messages in and out and calls these; nothing here knows about
protobuf or status codes. Nothing here blocks the event loop: tokenization runs in a
thread, forward passes on the model's worker, explanations in the explainer threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from . import offload
from .cache import ExplanationCache
from .context import RequestContext
from .entities import entity_prediction, select_entities
from .errors import InvalidArgument, ResourceExhausted, ServiceError
from .explainers import Explainer, create_explainers
from .explainers.attention import attention_shape
from .explainers.faithfulness import with_faithfulness
from .explainers.shap_partition import Progress, ShapPartitionExplainer, explain_progressively
from .explainers.targets import check_target_labels
from .metrics import Metrics
from .models.pair_classifier import PairClassifier
from .models.token_classifier import TokenClassifier
from .outputs import prediction_from_logits
from .pairs import PairWindow, joined_params, mark_separator, split_explanation
from .pairs import window as cut_pair
from .registry import ModelHandle, ModelRegistry
from .types import (
    EntityTarget,
    ExplainParams,
    ExplanationResult,
    ModelDescription,
    PredictionResult,
    PredictParams,
    TargetModeName,
)

log = logging.getLogger(__name__)

T = TypeVar("T")



async def _read_pair(handle: ModelHandle, text: str) -> PairWindow | None:
    """A pair model's joined pair cut to what the model reads (tokenized aside, as the
    explainers tokenize); None for other models."""
    if not isinstance(handle.classifier, PairClassifier):
        return None
    classifier = handle.classifier
    return await offload.prepare(lambda: cut_pair(classifier, text), (text,))


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
        params = joined_params(handle, params)  # pairs travel joined from here on
        if isinstance(classifier, TokenClassifier):
            return handle.name, await self._predict_entities(handle, params.texts, ctx)
        encoded = await offload.prepare(lambda: classifier.encode(params.texts), params.texts)
        result = await handle.worker.run(encoded.ids, ctx)
        predictions = [
            prediction_from_logits(classifier.labels, result.logits[i], encoded.truncated[i], len(ids))
            for i, ids in enumerate(encoded.ids)
        ]
        return handle.name, predictions

    async def _predict_one(self, handle: ModelHandle, text: str, ctx: RequestContext) -> PredictionResult:
        """One text's prediction (a text of a PredictStream)."""
        classifier = handle.classifier
        if isinstance(classifier, TokenClassifier):
            return (await self._predict_entities(handle, (text,), ctx))[0]
        encoded = await offload.prepare(lambda: classifier.encode((text,)), (text,))
        result = await handle.worker.run(encoded.ids, ctx)
        return prediction_from_logits(classifier.labels, result.logits[0], encoded.truncated[0], len(encoded.ids[0]))

    async def _predict_entities(
        self, handle: ModelHandle, texts: tuple[str, ...], ctx: RequestContext
    ) -> list[PredictionResult]:
        """A token model's entities of each text: every position's logits from the worker,
        grouped here."""
        classifier = handle.classifier
        assert isinstance(classifier, TokenClassifier)
        windows = await offload.prepare(lambda: [classifier.window(t) for t in texts], texts)
        logits = await handle.worker.run_tokens([w.ids for w in windows], ctx)
        return [entity_prediction(classifier, w, row) for w, row in zip(windows, logits, strict=True)]

    async def _entity_targets(
        self, handle: ModelHandle, params: ExplainParams, ctx: RequestContext, streamed: bool = False
    ) -> list[list[EntityTarget]] | None:
        """For a token model, the entities each text's explanations explain (None for a
        sequence model); INVALID_ARGUMENT when the request's `entity` does not fit the model."""
        classifier = handle.classifier
        if not isinstance(classifier, TokenClassifier):
            if params.entity is not None:
                raise InvalidArgument([("entity", f"model {handle.name!r} classifies sequences, not tokens")])
            return None
        if params.entity is None:
            raise InvalidArgument(
                [("entity", f"model {handle.name!r} finds entities: say which to explain (index, span or all)")]
            )
        if streamed and params.entity.all:
            raise InvalidArgument([("entity.all", "explains one entity per text here; use Explain for all")])
        if params.faithfulness:
            raise InvalidArgument([("faithfulness", "is not computed for entity explanations")])
        if params.target_mode is not TargetModeName.PREDICTED or params.target_labels:
            raise InvalidArgument([("target_mode", "an entity explanation explains the entity's type alone")])
        predictions = await self._predict_entities(handle, params.texts, ctx)
        return [select_entities(classifier, params.entity, p.entities, i) for i, p in enumerate(predictions)]

    async def predict_stream(
        self, params: PredictParams, ctx: RequestContext, window: int
    ) -> AsyncGenerator[tuple[int, PredictionResult], None]:
        """Each text's prediction with its index, as each is ready (see `_stream`)."""
        handle = self.registry.get(params.model)
        texts = joined_params(handle, params).texts
        stream = self._stream(
            "PredictStream", len(texts), lambda i: self._predict_one(handle, texts[i], ctx.part()), ctx, window
        )
        async with contextlib.aclosing(stream):
            async for item in stream:
                yield item

    # ---- Explain -------------------------------------------------------------------------

    async def explain(
        self,
        params: ExplainParams,
        ctx: RequestContext,
        check_entities: Callable[[list[int]], None] | None = None,
    ) -> tuple[str, list[ExplanationResult]]:
        """Each text's explanation (a token model's: one per chosen entity; once they are
        known, `check_entities` sees how many per text and may refuse before any work)."""
        handle = self.registry.get(params.model)
        check_target_labels(params, handle.classifier.labels)
        params = joined_params(handle, params)  # pairs travel joined from here on
        explainer = self._explainer_for(params, handle)
        targets = await self._entity_targets(handle, params, ctx)
        if targets is not None and check_entities is not None:
            check_entities([len(chosen) for chosen in targets])
        jobs = (
            [(text, params) for text in params.texts]
            if targets is None
            else [
                (text, dataclasses.replace(params, entity_target=t))
                for text, chosen in zip(params.texts, targets, strict=True)
                for t in chosen
            ]
        )
        self._explaining.add(ctx)
        tasks = [asyncio.ensure_future(self._explain_one(explainer, handle, text, p, ctx)) for text, p in jobs]
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

    async def explain_stream(
        self, params: ExplainParams, ctx: RequestContext, window: int
    ) -> AsyncGenerator[tuple[int, ExplanationResult], None]:
        """Each text's explanation with its index, as each is ready (see `_stream`). Each
        text is a part of the request (`RequestContext.part`): the row budget applies to it
        alone, and the cache is consulted for it as in Explain."""
        handle = self.registry.get(params.model)
        check_target_labels(params, handle.classifier.labels)
        params = joined_params(handle, params)  # pairs travel joined from here on
        explainer = self._explainer_for(params, handle)
        texts = params.texts
        targets = await self._entity_targets(handle, params, ctx, streamed=True)

        def params_of(i: int) -> ExplainParams:
            return params if targets is None else dataclasses.replace(params, entity_target=targets[i][0])

        self._explaining.add(ctx)
        try:
            stream = self._stream(
                "ExplainStream",
                len(texts),
                lambda i: self._explain_one(explainer, handle, texts[i], params_of(i), ctx.part()),
                ctx,
                window,
            )
            async with contextlib.aclosing(stream):
                async for item in stream:
                    yield item
        finally:
            self._explaining.discard(ctx)

    async def explain_progressive(
        self, params: ExplainParams, ctx: RequestContext, interval: float
    ) -> AsyncGenerator[Progress, None]:
        """One text's SHAP values as they refine (`explain_progressively`); the last message
        is the explanation, which joins the cache. Not served from the cache: the point is
        to watch the values form."""
        handle = self.registry.get(params.model)
        check_target_labels(params, handle.classifier.labels)
        params = joined_params(handle, params)  # pairs travel joined from here on
        explainer = self._explainer_for(params, handle)
        if not isinstance(explainer, ShapPartitionExplainer):
            raise InvalidArgument([("explainer", "progressive explanations are SHAP Partition's")])
        targets = await self._entity_targets(handle, params, ctx, streamed=True)
        if targets is not None:
            params = dataclasses.replace(params, entity_target=targets[0][0])
        text = params.texts[0]
        pair = await _read_pair(handle, text)
        self._explaining.add(ctx)
        try:
            explained = text if pair is None else pair.joined
            messages = explain_progressively(explainer, handle, explained, params, ctx, interval)
            async with contextlib.aclosing(messages):
                async for progress in messages:
                    if pair is not None:
                        progress = dataclasses.replace(progress, result=split_explanation(progress.result, pair))
                    if progress.final:
                        self.cache.put(self.cache.key(handle.classifier, text, params), progress.result)
                    yield progress
        finally:
            self._explaining.discard(ctx)

    async def _stream(
        self, method: str, count: int, start: Callable[[int], Awaitable[T]], ctx: RequestContext, window: int
    ) -> AsyncGenerator[tuple[int, T], None]:
        """`start(i)` for each i < count, yielded as (i, result) as each finishes.

        At most `window` texts are started and not yet taken back by the consumer: a
        finished text's place frees only when the consumer asks for the next one, i.e. once
        it has written the result, and the next text starts then, so a slow reader holds
        the work back instead of piling up results. A failed text ends the stream with its
        error; whatever way the stream ends early (an error, the consumer closing it, the
        handler cancelled), the request's context is cancelled and the texts still running
        are stopped. The metrics count the texts in flight and those taken back (sent).
        """
        in_flight = self.metrics.stream_texts_in_flight.labels(method)
        sent = self.metrics.stream_texts.labels(method)
        running: dict[asyncio.Future[T], int] = {}
        following = 0

        def fill() -> None:
            nonlocal following
            while following < count and len(running) < window:
                ctx.ensure_alive("before the stream's next text started")
                started: asyncio.Future[T] = asyncio.ensure_future(start(following))
                started.add_done_callback(_retrieve)
                running[started] = following
                following += 1
                in_flight.inc()

        complete = False
        try:
            fill()
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=running.__getitem__):
                    yield running[task], task.result()
                    # The consumer asked for the next one: this result is written.
                    del running[task]
                    in_flight.dec()
                    sent.inc()
                    fill()
            complete = True
        finally:
            if not complete:
                ctx.cancel()
                for task in running:
                    task.cancel()
                in_flight.dec(len(running))

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
            # A pair is explained as what the model reads of it (longest_first), then split.
            pair = await _read_pair(handle, text)
            explained = text if pair is None else pair.joined
            result = await explainer.explain_async(handle, explained, params, ctx, self._pool)
            if pair is not None:
                result = mark_separator(result, pair)
            if params.faithfulness:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self._pool, with_faithfulness, handle, explained, result, ctx)
            if pair is not None:
                result = split_explanation(result, pair)
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
        layers, heads = attention_shape(c)
        return ModelDescription(
            name=c.name,
            labels=list(c.labels),
            max_tokens=c.max_length,
            is_default=c.name == self.registry.default_model,
            explainers=[e.name for e in self.explainers.values() if e.supports(c)],
            weights_sha256=c.weights_sha256,
            device=str(c.device),
            dtype=str(c.dtype).removeprefix("torch."),
            kind=c.kind,
            attention_layers=layers,
            attention_heads=heads,
        )


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a stream text's error as seen: a stream that ended early leaves the texts it
    stopped unread, and asyncio would log each one's error as never retrieved."""
    if not task.cancelled():
        task.exception()
