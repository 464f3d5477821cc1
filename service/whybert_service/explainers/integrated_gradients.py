"""Layer integrated gradients on the token embeddings (Captum), batched on the model's worker.

What is attributed: Captum's `LayerIntegratedGradients` on the model's input-embedding
layer (`get_input_embeddings()`, the word-piece embeddings; position and segment
embeddings are the same for text and baseline, so they carry no attribution). A token's
value is its attribution summed over the embedding dimension.

The baseline is the text's own token sequence with every non-special token replaced by
[PAD] ([CLS] p p ... p [SEP]): same length, same special tokens, same attention mask.
Special tokens are equal in text and baseline, so their values are exactly 0.

Gradients need the model, which only its worker thread may touch. Explainer threads
therefore queue their work in the model's `GradientBatcher`, and one `ModelWorker.call`
(a drain) computes the waiting requests that fit one step batch together: every (text,
target) pair is one Captum example, and the steps of all of them share forward+backward
batches of at most `max_batch_tokens` padded tokens. What does not fit waits for the next
drain, so Predict batches get the worker in between.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..batching.worker import ModelWorker
from ..context import RequestContext
from ..errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    ModelFailure,
    ServiceError,
    Unavailable,
)
from ..models.classifier import Classifier
from ..models.registry import ModelHandle
from ..outputs import to_output_space
from ..types import ExplainerName, ExplainParams, ExplanationResult, OutputName, TokenSpan
from ..validation import resolve_targets
from .base import Explainer, prediction_from_logits

METHOD = "gausslegendre"  # Captum's default approximation


@dataclass(frozen=True)
class GradientRequest:
    """One text's integrated-gradients work: its ids, its baseline and the targets."""

    ids: list[int]
    baseline: list[int]
    targets: list[int]
    n_steps: int
    output: OutputName

    @property
    def rows(self) -> int:
        """Model rows it costs: each target's n_steps interpolation points, plus the text
        and its baseline (Captum's convergence delta)."""
        return len(self.targets) * (self.n_steps + 2)


@dataclass(frozen=True)
class GradientResult:
    """Per-token attributions (tokens × targets) and what they cost."""

    attributions: np.ndarray
    rows: int
    queue_seconds: float


@dataclass(eq=False)
class _Waiting:
    """A request in the batcher, with its future and the targets computed so far."""

    request: GradientRequest
    context: RequestContext
    future: Future[GradientResult]
    enqueued_at: float
    attributions: np.ndarray = field(init=False)
    filled: int = 0
    started_at: float | None = None

    def __post_init__(self) -> None:
        shape = (len(self.request.ids), len(self.request.targets))
        self.attributions = np.zeros(shape, dtype=np.float64)

    def dead(self, now: float) -> ServiceError | None:
        if self.future.done() or self.context.cancelled:
            return Cancelled("the caller cancelled")
        if self.context.expired(now):
            return DeadlineExceeded("the deadline passed before the gradients could run")
        return None


# One (waiting request, target column) pair: the unit Captum calls are packed from.
_Example = tuple[_Waiting, int]


class GradientBatcher:
    """A model's integrated-gradients work waiting for its worker; one call drains it."""

    def __init__(self, worker: ModelWorker) -> None:
        self.worker = worker
        self._lock = threading.Lock()
        self._waiting: list[_Waiting] = []
        self._scheduled = False
        # The drain serves many requests, so no single caller's deadline may cancel it.
        self._drain_context = RequestContext()

    @property
    def waiting(self) -> int:
        """Requests queued for the next drain."""
        with self._lock:
            return len(self._waiting)

    def run(self, request: GradientRequest, context: RequestContext) -> GradientResult:
        """Queue one text's work and wait for it (explainer threads); honours cancel/deadline."""
        rows = request.rows
        if not context.charge(rows):
            raise InvalidArgument(
                [
                    (
                        "texts",
                        f"integrated gradients needs {rows} more model rows than the "
                        f"request's limit of {context.max_rows} allows; ask for fewer n_steps, "
                        "targets or texts",
                    )
                ]
            )
        self._prune()
        self.worker.reserve(rows)  # RESOURCE_EXHAUSTED when the model's queue is full
        waiting = _Waiting(request, context, Future(), time.monotonic())
        with self._lock:
            self._waiting.append(waiting)
            schedule, self._scheduled = not self._scheduled, True
        if schedule:
            self._schedule()
        try:
            return context.wait(waiting.future, "the gradients")
        except (Cancelled, DeadlineExceeded):
            self._prune()  # its place under the queue bound goes back at once
            raise

    def _schedule(self) -> None:
        """Ask the worker for one drain (the caller has set `_scheduled`)."""
        try:
            job = self.worker.call(self._drain, self._drain_context)
        except ServiceError as exc:
            self._fail_waiting(exc)
            return
        job.add_done_callback(self._after_drain)

    def _after_drain(self, job: Future[None]) -> None:
        """A drain that never ran (worker stopping or restarting) fails what it would have taken."""
        if job.cancelled() or job.exception() is not None:
            self._fail_waiting(
                Unavailable("the model worker stopped before the gradients ran; retry")
            )

    def _fail_waiting(self, error: ServiceError) -> None:
        with self._lock:
            waiting, self._waiting, self._scheduled = self._waiting, [], False
        self.worker.release(sum(w.request.rows for w in waiting))
        for w in waiting:
            _fail(w, error)

    def _prune(self) -> None:
        """Requests whose callers left give their places back before the next drain."""
        now = time.monotonic()
        with self._lock:
            dead = [(w, e) for w in self._waiting if (e := w.dead(now)) is not None]
            if dead:
                gone = {id(w) for w, _ in dead}
                self._waiting = [w for w in self._waiting if id(w) not in gone]
        self.worker.release(sum(w.request.rows for w, _ in dead))
        for w, error in dead:
            _fail(w, error)

    # ---- on the worker thread --------------------------------------------------------

    def _drain(self, classifier: Classifier) -> None:
        """Compute one step batch's worth of the waiting work; leave the rest to the next
        drain, so that Predict batches can run in between."""
        budget = self.worker.config.max_batch_tokens
        now = time.monotonic()
        with self._lock:
            for w in self._waiting:
                error = w.dead(now)
                if error is not None:
                    _fail(w, error)
            live = [w for w in self._waiting if not w.future.done()]
            taken = take_one_batch(live, budget)
            kept = [w for w in live if w not in taken]
            freed = sum(w.request.rows for w in self._waiting) - sum(w.request.rows for w in kept)
            self._waiting = kept
            self._scheduled = more = bool(self._waiting)
        self.worker.release(freed)
        if more:
            self._schedule()
        try:
            with _gradients_on(classifier.model):
                for call in plan_calls(taken, budget):
                    self._run_call(classifier, call)
        finally:
            for w in taken:
                _fail(w, Unavailable("the model worker stopped before the gradients ran; retry"))

    def _run_call(self, classifier: Classifier, call: list[_Example]) -> None:
        now = time.monotonic()
        for w, _ in call:
            error = w.dead(now)
            if error is not None:
                _fail(w, error)
        live = [(w, col) for w, col in call if not w.future.done()]
        if not live:
            return
        for w, _ in live:
            w.started_at = w.started_at or now
        try:
            attributions = integrate(
                classifier,
                [w.request.ids for w, _ in live],
                [w.request.baseline for w, _ in live],
                [w.request.targets[col] for w, col in live],
                n_steps=live[0][0].request.n_steps,
                output=live[0][0].request.output,
                max_batch_tokens=self.worker.config.max_batch_tokens,
            )
        except Exception as exc:
            self._recover(classifier, live, exc)
            return
        for (w, col), values in zip(live, attributions, strict=True):
            w.attributions[:, col] = values
            w.filled += 1
            if w.filled == len(w.request.targets):
                queued = (w.started_at or now) - w.enqueued_at
                rows = w.request.rows
                with contextlib.suppress(InvalidStateError):  # its caller left meanwhile
                    w.future.set_result(GradientResult(w.attributions, rows, queued))

    def _recover(self, classifier: Classifier, live: list[_Example], exc: Exception) -> None:
        """A failed call is retried one request at a time, so a bad text fails only its own."""
        if classifier.device.type == "cuda":
            torch.cuda.empty_cache()
        requests = list(dict.fromkeys(w for w, _ in live))
        if len(requests) == 1:
            _fail(requests[0], ModelFailure(f"integrated gradients failed on this text: {exc}"))
            return
        for w in requests:
            self._run_call(classifier, [(x, col) for x, col in live if x is w])


def take_one_batch(waiting: Sequence[_Waiting], max_batch_tokens: int) -> list[_Waiting]:
    """The oldest request, and the later ones with the same n_steps and output space while
    all their (text, target) pairs still fit one step batch of `max_batch_tokens`."""
    if not waiting:
        return []
    first = waiting[0]
    key = (first.request.n_steps, first.request.output)
    taken = [first]
    examples, width = len(first.request.targets), len(first.request.ids)
    for w in waiting[1:]:
        more = examples + len(w.request.targets)
        wider = max(width, len(w.request.ids))
        if (w.request.n_steps, w.request.output) == key and more * wider <= max_batch_tokens:
            taken.append(w)
            examples, width = more, wider
    return taken


def plan_calls(waiting: Sequence[_Waiting], max_batch_tokens: int) -> list[list[_Example]]:
    """Pack every (request, target) pair into Captum calls of one n_steps and output each,
    with at most `max_batch_tokens` padded tokens per step (one example always fits)."""
    groups: dict[tuple[int, OutputName], list[_Example]] = {}
    for w in waiting:
        key = (w.request.n_steps, w.request.output)
        groups.setdefault(key, []).extend((w, col) for col in range(len(w.request.targets)))
    calls: list[list[_Example]] = []
    for examples in groups.values():
        current: list[_Example] = []
        width = 0
        for example in examples:
            wider = max(width, len(example[0].request.ids))
            if current and (len(current) + 1) * wider > max_batch_tokens:
                calls.append(current)
                current, wider = [], len(example[0].request.ids)
            current.append(example)
            width = wider
        if current:
            calls.append(current)
    return calls


def integrate(
    classifier: Classifier,
    ids: Sequence[Sequence[int]],
    baselines: Sequence[Sequence[int]],
    targets: Sequence[int],
    *,
    n_steps: int,
    output: OutputName,
    max_batch_tokens: int,
) -> list[np.ndarray]:
    """Captum's layer integrated gradients of several examples at once (worker thread only).

    Rows are right-padded to the longest with [PAD] in both input and baseline (attention
    mask 0), so padding gets exactly zero attribution and is cut off again.
    """
    from captum.attr import LayerIntegratedGradients

    input_ids, mask = classifier.pad(ids)
    baseline_ids, _ = classifier.pad(baselines)
    width = input_ids.shape[1]
    steps_per_batch = max(1, max_batch_tokens // (len(ids) * width))
    lig = LayerIntegratedGradients(
        output_function(classifier.model, output), classifier.input_embeddings()
    )
    attributions = lig.attribute(
        inputs=input_ids,
        baselines=baseline_ids,
        target=list(targets),
        additional_forward_args=(mask,),
        n_steps=n_steps,
        method=METHOD,
        internal_batch_size=steps_per_batch * len(ids),
    )
    per_token = attributions.sum(dim=-1).detach().double().cpu().numpy()
    return [per_token[i, : len(row)] for i, row in enumerate(ids)]


def output_function(model: torch.nn.Module, output: OutputName) -> Any:
    """The function Captum differentiates: float32 probabilities or logits of every label."""

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        return torch.softmax(logits, dim=-1) if output is OutputName.PROBABILITY else logits

    return forward


@contextlib.contextmanager
def _gradients_on(model: torch.nn.Module) -> Iterator[None]:
    """Grad mode for the inputs only: the weights' own gradients would be wasted work."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _fail(w: _Waiting, error: ServiceError) -> None:
    if not w.future.done():
        with contextlib.suppress(InvalidStateError):  # its caller left meanwhile
            w.future.set_exception(error)


class IntegratedGradientsExplainer(Explainer):
    name = ExplainerName.INTEGRATED_GRADIENTS

    def __init__(self) -> None:
        self._batchers: weakref.WeakKeyDictionary[ModelWorker, GradientBatcher] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def supports(self, classifier: Classifier) -> bool:
        """Models whose input embeddings are a plain embedding table."""
        try:
            return isinstance(classifier.input_embeddings(), torch.nn.Embedding)
        except (AttributeError, NotImplementedError):
            return False

    def warm_up(self) -> None:
        """Captum's import takes a moment: pay it at start-up."""
        import captum.attr  # noqa: F401

    def batcher(self, worker: ModelWorker) -> GradientBatcher:
        with self._lock:
            batcher = self._batchers.get(worker)
            if batcher is None:
                batcher = self._batchers[worker] = GradientBatcher(worker)
            return batcher

    def explain(
        self, handle: ModelHandle, text: str, params: ExplainParams, context: RequestContext
    ) -> ExplanationResult:
        started = time.perf_counter()
        classifier = handle.classifier
        tokens, ids, truncated = word_pieces(classifier, text)
        baseline = [
            row_id if token.special else classifier.pad_id
            for row_id, token in zip(ids, tokens, strict=True)
        ]
        ends = handle.worker.run_blocking([ids, baseline], context)
        prediction = prediction_from_logits(classifier.labels, ends.logits[0], truncated, len(ids))
        targets = resolve_targets(params, classifier.labels, int(np.argmax(ends.logits[0])))
        outputs = to_output_space(ends.logits, params.output)[:, targets]
        request = GradientRequest(
            ids, baseline, targets, params.integrated_gradients.n_steps, params.output
        )
        result = self.batcher(handle.worker).run(request, context)
        values = result.attributions
        return ExplanationResult(
            tokens=tokens,
            labels=[classifier.labels[t] for t in targets],
            values=values,
            base_values=outputs[1],
            output_values=outputs[0],
            prediction=prediction,
            explainer=self.name,
            output=params.output,
            model_rows=2 + result.rows,
            queue_seconds=ends.queue_seconds + result.queue_seconds,
            compute_seconds=time.perf_counter() - started,
            convergence_delta=values.sum(axis=0) - (outputs[0] - outputs[1]),
        )


def word_pieces(classifier: Classifier, text: str) -> tuple[list[TokenSpan], list[int], bool]:
    """The model's tokens of `text` (cut as `Classifier.encode` cuts them) with their spans.

    A token's text is the slice of the original text it covers; special tokens keep their
    own name ([CLS]) and an empty span at 0.
    """
    encoded = classifier.encode([text])
    ids = encoded.ids[0]
    enc = classifier.tokenizer(
        text, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True
    )
    full_ids: list[int] = enc["input_ids"]
    keep = list(range(len(full_ids)))
    if len(full_ids) > len(ids):
        tail = len(full_ids) - len(_strip_trailing(enc["special_tokens_mask"]))
        keep = keep[: len(ids) - tail] + keep[len(full_ids) - tail :]
    if [full_ids[i] for i in keep] != ids:
        raise RuntimeError("the tokenizer's offsets do not line up with the model's tokens")
    names = classifier.tokenizer.convert_ids_to_tokens(ids)
    tokens = []
    for i, name in zip(keep, names, strict=True):
        start, end = (int(v) for v in enc["offset_mapping"][i])
        special = bool(enc["special_tokens_mask"][i])
        tokens.append(
            TokenSpan(
                text=name if special else text[start:end], start=start, end=end, special=special
            )
        )
    return tokens, ids, encoded.truncated[0]


def _strip_trailing(special_mask: Sequence[int]) -> list[int]:
    out = list(special_mask)
    while out and out[-1]:
        out.pop()
    return out
