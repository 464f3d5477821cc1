"""What every explainer shares: one shell around each method, and the model as a function.

`Explainer` owns what is the same for every method, as shap's `Explainer.__call__` owns its
loop and a subclass writes `explain_row`: the timing, the prediction read off the model's
logits, which outputs are explained (`targets`) and the result. A method writes only
`attribute`: one text's attributions (`Attribution`).

`ModelFunction` is the door from a method that wants f(strings) to the model. Every call
submits its rows to the model's shared batching worker, so the rounds of all concurrent
explanations (and Predict rows) share forward batches. It evaluates each distinct string
once per explanation and counts the rows and queue time it cost.
"""

from __future__ import annotations

import abc
import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..context import RequestContext
from ..models.classifier import Classifier
from ..outputs import prediction_from_logits, to_output_space
from ..registry import ModelHandle
from ..types import (
    AttentionMapsResult,
    ExplainerName,
    ExplainParams,
    ExplanationResult,
    OutputName,
    PredictionResult,
    TokenSpan,
)
from .targets import resolve_targets


class ModelFunction:
    """f(strings) → the model's outputs for `targets` in `output` space, via the worker.

    Called from one explainer thread at a time (the lock only guards the counters when a
    library calls it from helper threads).
    """

    def __init__(
        self,
        handle: ModelHandle,
        context: RequestContext,
        output: OutputName = OutputName.PROBABILITY,
        targets: Sequence[int] | None = None,
    ) -> None:
        self.handle = handle
        self.context = context
        self.output = output
        self.targets = list(targets) if targets is not None else None
        self.rows = 0
        self.queue_seconds = 0.0
        self._memo: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def classifier(self) -> Classifier:
        return self.handle.classifier

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Raw logits of each string; each distinct string is evaluated once."""
        texts = [str(t) for t in texts]
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            self._evaluate(missing, self.classifier.encode(missing).ids)
        if not texts:
            return np.zeros((0, self.classifier.num_labels), dtype=np.float32)
        return np.stack([self._memo[t] for t in texts])

    def prediction(self, text: str) -> tuple[np.ndarray, PredictionResult]:
        """The model's raw logits and prediction on the text itself, tokenized once (the
        explanation evaluates the text anyway: its row joins the memo)."""
        encoded = self.classifier.encode([text])
        if text not in self._memo:
            self._evaluate([text], encoded.ids)
        raw = self._memo[text]
        labels = self.classifier.labels
        return raw, prediction_from_logits(labels, raw, encoded.truncated[0], len(encoded.ids[0]))

    def _evaluate(self, texts: list[str], ids: list[list[int]]) -> None:
        result = self.handle.worker.run_blocking(ids, self.context)
        with self._lock:
            self.rows += len(texts)
            self.queue_seconds += result.queue_seconds
            for text, row in zip(texts, result.logits, strict=True):
                self._memo[text] = row

    def __call__(self, texts: Any) -> np.ndarray:
        """The function explainers see: strings in, chosen outputs (rows × targets) out."""
        out = to_output_space(self.logits(list(np.asarray(texts).reshape(-1))), self.output)
        return out if self.targets is None else out[:, self.targets]


@dataclass(frozen=True)
class Attribution:
    """What a method computes for one text; the shell builds the result around it."""

    tokens: list[TokenSpan]
    targets: list[int]  # the model's outputs explained, by index
    values: np.ndarray  # tokens × targets, in the requested output space
    base_values: np.ndarray
    output_values: np.ndarray
    logits: np.ndarray  # the model's raw logits on the explained text
    token_count: int  # the model's tokens of the explained text
    truncated: bool  # the text went on past what the model reads ...
    explained_chars: int  # ... and the explanation covers text[:explained_chars]
    rows: int  # model rows the method cost
    queue_seconds: float
    convergence_delta: np.ndarray | None = None
    attention_position: int | None = None  # attention: the rollout row's position
    attention_maps: AttentionMapsResult | None = None  # attention: raw maps, on request


class Explainer(abc.ABC):
    """An explanation method in the shell all methods share.

    `attribute` may block (it runs on an explainer thread); a method whose work is all
    scheduled on the model's worker overrides `attribute_async` to need no thread.
    """

    name: ExplainerName

    def supports(self, classifier: Classifier) -> bool:
        """Whether this method can explain the given model."""
        return True

    def warm_up(self) -> None:  # noqa: B027 - optional hook
        """Pay one-off costs (JIT compilation, imports) at start-up, not in the first request."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what `warm_up` started (processes, threads)."""

    async def explain_async(
        self, handle: ModelHandle, text: str, params: ExplainParams, context: RequestContext, executor: Executor
    ) -> ExplanationResult:
        """Explain one text from the event loop."""
        started = time.perf_counter()
        attribution = await self.attribute_async(handle, text, params, context, executor)
        return self.result(handle, params, attribution, started)

    def explain(
        self, handle: ModelHandle, text: str, params: ExplainParams, context: RequestContext
    ) -> ExplanationResult:
        """Explain one text, blocking the calling thread."""
        started = time.perf_counter()
        return self.result(handle, params, self.attribute(handle, text, params, context), started)

    async def attribute_async(
        self, handle: ModelHandle, text: str, params: ExplainParams, context: RequestContext, executor: Executor
    ) -> Attribution:
        """By default `attribute` on one of the executor's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self.attribute, handle, text, params, context)

    @abc.abstractmethod
    def attribute(
        self, handle: ModelHandle, text: str, params: ExplainParams, context: RequestContext
    ) -> Attribution:
        """The method itself: one text's attributions for the outputs `targets` picks."""

    @staticmethod
    def targets(params: ExplainParams, classifier: Classifier, logits: np.ndarray) -> list[int]:
        """The outputs to explain, once the model's logits on the text are known."""
        return resolve_targets(params, classifier.labels, int(np.argmax(logits)))

    def result(
        self, handle: ModelHandle, params: ExplainParams, a: Attribution, started: float
    ) -> ExplanationResult:
        labels = handle.classifier.labels
        entity = params.entity_target
        return ExplanationResult(
            tokens=a.tokens,
            labels=[labels[t] for t in a.targets] if entity is None else [entity.entity.label],
            values=a.values,
            base_values=a.base_values,
            output_values=a.output_values,
            prediction=prediction_from_logits(labels, a.logits, a.truncated, a.token_count),
            explainer=self.name,
            output=params.output,
            model_rows=a.rows,
            queue_seconds=a.queue_seconds,
            compute_seconds=time.perf_counter() - started,
            convergence_delta=a.convergence_delta,
            truncated=a.truncated,
            explained_chars=a.explained_chars,
            entity=entity,
            attention_position=a.attention_position,
            attention_maps=a.attention_maps,
        )
