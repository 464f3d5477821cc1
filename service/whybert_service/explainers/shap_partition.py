"""SHAP Partition explanations by whybert's own engine, scheduled with every other request.

The values are those of `shap.PartitionExplainer(f, shap.maskers.Text(tokenizer))` on the
prefix of the text that the model reads (see `partition/`): the same token hierarchy, the
same masked rows, the same rounds and budget. When a request explains fewer outputs than
the model has, they are the values shap gives for a model with only those outputs. The
library itself is not on this path: each round's rows go to the model's worker as token
ids, where they share forward batches with the rounds of every other explanation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncGenerator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from .. import offload
from ..context import RequestContext
from ..entities import entity_output
from ..models.classifier import Classifier
from ..registry import ModelHandle
from ..types import ExplainerName, ExplainParams, ExplanationResult, OutputName, TokenSpan
from .base import Attribution, Explainer
from .partition import MaskingSpec, PartitionEngine, PartitionResult, PreparedText, prepare_text
from .partition.engine import compile_rounds
from .partition.task import PartitionTask


class ShapPartitionExplainer(Explainer):
    name = ExplainerName.SHAP_PARTITION

    def __init__(self) -> None:
        self._specs: dict[tuple[str, str], MaskingSpec] = {}
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """The engine's rounds are compiled code: compile (or load) them now."""
        compile_rounds()

    def spec(self, classifier: Classifier) -> MaskingSpec:
        """How the model's tokenizer masks (worked out once per model)."""
        key = (classifier.name, classifier.weights_sha256)
        with self._lock:
            spec = self._specs.get(key)
        if spec is None:
            spec = MaskingSpec.for_tokenizer(classifier.tokenizer)
            if classifier.kind == "token":  # shap's token_ids rows: the entity keeps its place
                spec = dataclasses.replace(spec, in_place=True)
            with self._lock:
                self._specs[key] = spec
        return spec

    def prepare(self, handle: ModelHandle, text: str) -> PreparedText:
        classifier = handle.classifier
        return prepare_text(
            classifier.tokenizer, self.spec(classifier), text, classifier.max_length, _encoder(classifier)
        )

    def engine(self, handle: ModelHandle, prepared: PreparedText, params: ExplainParams) -> PartitionEngine:
        classifier = handle.classifier
        entity = params.entity_target
        if entity is not None:  # one output: the entity type's probability at its first piece
            columns, logit = entity.columns, params.output is OutputName.LOGIT
            return PartitionEngine(
                prepared,
                self.spec(classifier),
                _encoder(classifier),
                output=params.output,
                targets=lambda logits: [0],
                max_evals=params.shap.max_evals,
                fixed_context=params.shap.fixed_context,
                batch_size=params.shap.batch_size,
                transform=lambda logits: entity_output(logits, columns, logit),
            )
        return PartitionEngine(
            prepared,
            self.spec(classifier),
            _encoder(classifier),
            output=params.output,
            targets=lambda logits: self.targets(params, classifier, logits),
            max_evals=params.shap.max_evals,
            fixed_context=params.shap.fixed_context,
            batch_size=params.shap.batch_size,
        )

    async def attribute_async(
        self, handle: ModelHandle, text: str, params: ExplainParams, context: RequestContext, executor: Executor
    ) -> Attribution:
        """No thread: tokenizing runs aside, then every round is scheduled on the worker."""
        prepared = await offload.prepare(lambda: self.prepare(handle, text), (text,))
        context.ensure_alive("before the explanation started")
        task = PartitionTask(handle.worker, self.engine(handle, prepared, params), context, position=_position(params))
        future = task.start()
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            context.cancel()
            future.cancel()
            raise
        return _attribution(prepared, task, result)

    def attribute(
        self, handle: ModelHandle, text: str, params: ExplainParams, context: RequestContext
    ) -> Attribution:
        prepared = self.prepare(handle, text)
        task = PartitionTask(handle.worker, self.engine(handle, prepared, params), context, position=_position(params))
        return _attribution(prepared, task, context.wait(task.start(), "the explanation"))


@dataclass(frozen=True)
class Progress:
    """One message of a progressive explanation: the values so far (additive), how much of
    the budget they cost, and whether they are the final ones."""

    result: ExplanationResult
    evals: int
    final: bool


class _Latest:
    """The newest snapshot, handed from the worker thread to the event loop. A reader slower
    than the rounds sees fewer snapshots, never a growing backlog: older ones are replaced."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.value: PartitionResult | None = None
        self.ready = asyncio.Event()

    def offer(self, snapshot: PartitionResult) -> None:  # on the worker thread
        self._loop.call_soon_threadsafe(self._set, snapshot)

    def _set(self, snapshot: PartitionResult) -> None:
        self.value = snapshot
        self.ready.set()

    def take(self) -> PartitionResult | None:
        value, self.value = self.value, None
        self.ready.clear()
        return value


async def explain_progressively(
    explainer: ShapPartitionExplainer,
    handle: ModelHandle,
    text: str,
    params: ExplainParams,
    context: RequestContext,
    interval: float = 0.1,
) -> AsyncGenerator[Progress, None]:
    """One text's Owen values as the budget is spent, coarse to fine, at most one message per
    `interval` seconds, ending with exactly the values `explain` gives. The rounds are the
    same scheduled work as any explanation's; the caller leaving stops them."""
    started = time.perf_counter()
    prepared = await offload.prepare(lambda: explainer.prepare(handle, text), (text,))
    context.ensure_alive("before the explanation started")
    tokens = token_spans(prepared)  # the same for every message
    latest = _Latest(asyncio.get_running_loop())
    engine = explainer.engine(handle, prepared, params)
    task = PartitionTask(
        handle.worker, engine, context, on_progress=latest.offer, progress_interval=interval, position=_position(params)
    )
    done = asyncio.wrap_future(task.start())
    try:
        while not done.done():
            waiter = asyncio.ensure_future(latest.ready.wait())
            either: list[asyncio.Future[Any]] = [done, waiter]
            try:
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            snapshot = latest.take()
            if snapshot is not None and not done.done():
                values = _attribution(prepared, task, snapshot, tokens)
                yield Progress(explainer.result(handle, params, values, started), snapshot.evals, final=False)
        final = done.result()
    except BaseException:
        context.cancel()
        done.cancel()
        raise
    values = _attribution(prepared, task, final, tokens)
    yield Progress(explainer.result(handle, params, values, started), final.evals, final=True)


def _attribution(
    prepared: PreparedText, task: PartitionTask, result: PartitionResult, tokens: list[TokenSpan] | None = None
) -> Attribution:
    """`tokens`: the text's spans when the caller already has them (a progressive
    explanation builds one result per message from the same text)."""
    return Attribution(
        tokens=tokens if tokens is not None else token_spans(prepared),
        targets=list(result.targets),
        values=result.values,
        base_values=result.base_values,
        output_values=result.output_values,
        logits=result.unmasked_logits,
        token_count=prepared.size,
        truncated=prepared.truncated,
        explained_chars=len(prepared.text),
        rows=task.rows,
        queue_seconds=task.queue_seconds,
    )


def _position(params: ExplainParams) -> int | None:
    """The token position whose logits an entity explanation's rows give (None: a sequence model)."""
    return None if params.entity_target is None else params.entity_target.entity.position


def _encoder(classifier: Classifier):  # type: ignore[no-untyped-def]
    return lambda strings: classifier.encode(list(strings)).ids


def token_spans(prepared: PreparedText) -> list[TokenSpan]:
    """Each of shap's segments with the character span of its token in the text."""
    return [
        TokenSpan(text=seg, start=start, end=end, special=special)
        for seg, (start, end), special in zip(prepared.segments, prepared.offsets, prepared.special, strict=True)
    ]
