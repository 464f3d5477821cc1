"""What every explainer shares: the model as a function of strings, fed through the worker.

`ModelFunction` is the one door from an explainer to the model. Every call submits its
rows to the model's shared batching worker, so the rounds of all concurrent explanations
(and Predict rows) share forward batches. It evaluates each distinct string once per
explanation and counts the rows and queue time it cost.
"""

from __future__ import annotations

import abc
import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np

from ..context import RequestContext
from ..models.classifier import Classifier
from ..models.registry import ModelHandle
from ..outputs import softmax, to_output_space
from ..types import ExplainerName, ExplainParams, ExplanationResult, OutputName, PredictionResult


def prediction_from_logits(
    labels: list[str], logits: np.ndarray, truncated: bool, token_count: int
) -> PredictionResult:
    return PredictionResult(
        labels=list(labels),
        probabilities=softmax(logits[None, :])[0],
        logits=logits.astype(np.float64),
        truncated=truncated,
        token_count=token_count,
    )


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


class Explainer(abc.ABC):
    """An explanation method; `explain` runs on an explainer thread and may block."""

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
        """Explain from the event loop; by default `explain` on one of the executor's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self.explain, handle, text, params, context)

    @abc.abstractmethod
    def explain(
        self, handle: ModelHandle, text: str, params: ExplainParams, context: RequestContext
    ) -> ExplanationResult:
        """Explain the model's output on one text."""
