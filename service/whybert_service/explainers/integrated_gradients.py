"""Layer integrated gradients on the token embeddings, in step batches on the model's worker.

What is attributed: Captum's `LayerIntegratedGradients` on the model's input-embedding
layer (`get_input_embeddings()`, the word-piece embeddings; position and segment
embeddings are the same for text and baseline, so they carry no attribution). A token's
value is its attribution summed over the embedding dimension.

The baseline is the text's own token sequence with every non-special token replaced by
[PAD] ([CLS] p p ... p [SEP]): same length, same special tokens, same attention mask.
Special tokens are equal in text and baseline, so their values are exactly 0.

The arithmetic is Captum's with internal batching, the same operations in the same
order, so the values equal Captum's `attribute(..., internal_batch_size=<steps per
batch>)` (to the bit on a CPU): each step row is the baseline's embeddings plus alpha
times the difference; its gradient is taken through the model with that row in place of
the embedding layer's output, weighted by the step's size and summed over the slice of
steps, times (input − baseline); the slices' shares are added in step order. The layer is
a plain embedding table, so its outputs for the text and the baseline are read with a
lookup, not a forward pass.

Gradients need the model, which only its worker thread may touch. A text's (target, step)
rows are cut into step batches of at most `max_batch_tokens` tokens (rows × the text's
length, each row one forward and one backward), and each step batch is one worker job
that returns its share of the attributions; the explainer thread adds them up. So no job
holds the worker longer than one batch, Predict rows waiting in the queue run between
step batches, and a request whose caller left or whose deadline passed stops before its
next step batch (the worker drops such a request's queued job unrun).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..batching.worker import ModelWorker
from ..context import RequestContext
from ..entities import entity_output
from ..errors import InvalidArgument, ModelFailure
from ..models.classifier import Classifier
from ..outputs import to_output_space
from ..registry import ModelHandle
from ..types import ExplainerName, ExplainParams, OutputName, TokenSpan
from .base import Attribution, Explainer

METHOD = "gausslegendre"  # Captum's default approximation


@dataclass(frozen=True)
class GradientRequest:
    """One text's integrated-gradients work: its ids, its baseline and the targets."""

    ids: list[int]
    baseline: list[int]
    targets: list[int]
    n_steps: int
    output: OutputName
    # Token models: the output is p(type) (or its log-odds) at this position, summed over
    # these tag columns, and `targets` is [0].
    position: int | None = None
    columns: tuple[int, ...] = ()

    @property
    def rows(self) -> int:
        """Forward+backward rows it costs: each target's n_steps interpolation points."""
        return len(self.targets) * self.n_steps


@dataclass(frozen=True)
class StepSlice:
    """Steps [start, stop) of the integral of one target column: part of a step batch."""

    column: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class GradientResult:
    """Per-token attributions (tokens × targets) and what they cost."""

    attributions: np.ndarray
    rows: int
    queue_seconds: float
    step_batches: int


# A forward-and-backward row costs about three forward rows (the backward pass is about
# twice the forward's work): a step batch then takes about as long as one Predict batch.
GRADIENT_ROW_COST = 3


def plan_step_batches(n_targets: int, n_steps: int, width: int, max_batch_tokens: int) -> list[list[StepSlice]]:
    """Step batches that cost at most `max_batch_tokens` tokens of forward work (rows ×
    width × `GRADIENT_ROW_COST`; one row always fits). Each target's steps are cut where
    Captum's internal batching cuts them for that budget, so its values are Captum's to the
    bit; slices of several targets share a batch when they fit together (short texts:
    several whole integrals per batch)."""
    per_batch = max(1, max_batch_tokens // (GRADIENT_ROW_COST * max(1, width)))
    batches: list[list[StepSlice]] = []
    current: list[StepSlice] = []
    rows = 0
    for column in range(n_targets):
        for start in range(0, n_steps, per_batch):
            piece = StepSlice(column, start, min(n_steps, start + per_batch))
            if current and rows + piece.rows > per_batch:
                batches.append(current)
                current, rows = [], 0
            current.append(piece)
            rows += piece.rows
    if current:
        batches.append(current)
    return batches


class _HeldRows:
    """A request's rows under the worker's `max_queued_rows` bound: all reserved at once
    (RESOURCE_EXHAUSTED when they do not fit), given back as step batches are taken and,
    for the rest, when the request ends or its caller leaves."""

    def __init__(self, worker: ModelWorker, rows: int) -> None:
        worker.reserve(rows)
        self.worker = worker
        self._held = rows
        self._lock = threading.Lock()

    def release(self, rows: int | None = None) -> None:
        """Give back `rows` places (None: every one still held); never more than held."""
        with self._lock:
            rows = self._held if rows is None else min(rows, self._held)
            self._held -= rows
        self.worker.release(rows)


def run_step_batches(worker: ModelWorker, request: GradientRequest, context: RequestContext) -> GradientResult:
    """Compute one text's attributions, one worker job per step batch, adding up each
    batch's share here (explainer threads); stops before the next batch once the caller
    left or the deadline passed."""
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
    batches = plan_step_batches(len(request.targets), request.n_steps, len(request.ids), worker.token_budget())
    integration_points(request.n_steps)  # here, not on the worker
    held = _HeldRows(worker, rows)
    sums: list[np.ndarray | None] = [None] * len(request.targets)
    queued = 0.0
    try:
        for batch in batches:
            context.ensure_alive("before the next step batch of the gradients")
            job = functools.partial(_run_step_batch, request, batch, context, held, time.monotonic())
            cost = sum(piece.rows for piece in batch) * len(request.ids) * GRADIENT_ROW_COST
            shares, waited = context.wait(worker.call(job, context, cost), "the gradients")
            queued += waited
            for piece, share in zip(batch, shares, strict=True):
                total = sums[piece.column]
                sums[piece.column] = share if total is None else total + share
    finally:
        held.release()
    # As Captum's attributions (targets × tokens × dims, float32) summed over the dims.
    stacked = torch.from_numpy(np.stack([s for s in sums if s is not None]))
    per_token = stacked.sum(dim=-1).double().numpy().T
    return GradientResult(np.ascontiguousarray(per_token), rows, queued, len(batches))


_POINTS_LOCK = threading.Lock()


@functools.cache  # at most --max-ig-steps entries, of a few kB each
def _points(n_steps: int) -> tuple[list[float], list[float]]:
    from captum.attr._utils.approximation_methods import approximation_parameters
    from threadpoolctl import threadpool_limits

    step_sizes_of, alphas_of = approximation_parameters(METHOD)
    # One BLAS thread: the eigen-solve behind 512 Gauss–Legendre points takes 0.05 s alone
    # and seconds when numpy's BLAS threads fight torch's for the cores.
    with threadpool_limits(limits=1, user_api="blas"):
        return step_sizes_of(n_steps), alphas_of(n_steps)


def integration_points(n_steps: int) -> tuple[list[float], list[float]]:
    """Captum's step sizes and alphas for `n_steps` (its own lists, unchanged), computed
    once per step count (a lock: concurrent texts do not all compute the same points)."""
    with _POINTS_LOCK:
        return _points(n_steps)


# ---- on the worker thread ------------------------------------------------------------


def _run_step_batch(
    request: GradientRequest,
    batch: list[StepSlice],
    context: RequestContext,
    held: _HeldRows,
    submitted: float,
    classifier: Classifier,
) -> tuple[list[np.ndarray], float]:
    """One worker job: its rows leave the queue bound, then their gradients run unless
    the caller left meanwhile. Returns each slice's share and the time the job waited."""
    started = time.monotonic()
    held.release(sum(piece.rows for piece in batch))
    context.ensure_alive("before the gradients could run")
    try:
        return step_batch_attributions(classifier, request, batch), started - submitted
    except Exception as exc:
        if classifier.device.type == "cuda":
            torch.cuda.empty_cache()
        raise ModelFailure(f"integrated gradients failed on this text: {exc}") from exc


def step_batch_attributions(
    classifier: Classifier, request: GradientRequest, batch: Sequence[StepSlice]
) -> list[np.ndarray]:
    """Each slice's share of the attributions (tokens × embedding dims, float32), in one
    forward+backward pass over all the batch's rows (worker thread only).

    Per slice this is Captum's `IntegratedGradients._attribute` with those steps' sizes
    and alphas, so that the shares of a target's slices add up to its attributions.
    """
    step_sizes, alphas = integration_points(request.n_steps)
    layer = classifier.input_embeddings()
    device = classifier.device
    ids = torch.tensor([request.ids], dtype=torch.long, device=device)
    with _gradients_on(classifier.model):
        with torch.no_grad():
            inputs = layer(ids)
            baselines = layer(torch.tensor([request.baseline], dtype=torch.long, device=device))
        scaled = torch.cat(
            [baselines + alpha * (inputs - baselines) for piece in batch for alpha in alphas[piece.start : piece.stop]],
            dim=0,
        ).requires_grad_()
        rows = scaled.shape[0]
        targets = [request.targets[piece.column] for piece in batch for _ in range(piece.rows)]
        hook = layer.register_forward_hook(lambda _module, _args, _output: scaled)
        try:
            repeated = ids.repeat(rows, 1)
            outputs = output_function(classifier.model, request.output, request.position, request.columns)(
                repeated, torch.ones_like(ids).repeat(rows, 1), **classifier.extra_inputs(repeated)  # a pair's segments
            )
        finally:
            hook.remove()
        chosen = outputs.gather(1, torch.tensor(targets, device=outputs.device).view(rows, 1))
        (grads,) = torch.autograd.grad(torch.unbind(chosen), scaled)
    shares = []
    offset = 0
    for piece in batch:
        n = piece.rows
        grad = grads[offset : offset + n]
        offset += n
        sizes = torch.tensor(step_sizes[piece.start : piece.stop]).float().view(n, 1)
        weighted = grad.contiguous().view(n, -1) * sizes.to(grad.device)
        total = torch.sum(weighted.reshape((n, 1, *grad.shape[1:])), dim=0)
        share = (total * (inputs - baselines))[0]
        shares.append(share.detach().float().cpu().numpy())
    return shares


def output_function(
    model: torch.nn.Module, output: OutputName, position: int | None = None, columns: Sequence[int] = ()
) -> Any:
    """The function differentiated: float32 probabilities or logits of every label; for a
    token model's entity (`position`), p(B-X) + p(I-X) at that position, or its log-odds."""

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits.float()
        if position is not None:
            p = torch.softmax(logits[:, position], dim=-1)[:, list(columns)].sum(dim=-1, keepdim=True)
            if output is OutputName.PROBABILITY:
                return p
            p = p.clamp(1e-12, 1 - 1e-12)
            return torch.log(p) - torch.log1p(-p)
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


class IntegratedGradientsExplainer(Explainer):
    name = ExplainerName.INTEGRATED_GRADIENTS

    def supports(self, classifier: Classifier) -> bool:
        """Models whose input embeddings are a plain embedding table."""
        try:
            return isinstance(classifier.input_embeddings(), torch.nn.Embedding)
        except (AttributeError, NotImplementedError):
            return False

    def warm_up(self) -> None:
        """Captum's import takes a moment: pay it at start-up, and the default n_steps' points."""
        import captum.attr  # noqa: F401

        integration_points(50)

    def attribute(self, handle: ModelHandle, text: str, params: ExplainParams, context: RequestContext) -> Attribution:
        classifier = handle.classifier
        tokens, ids, truncated = word_pieces(classifier, text)
        sep = getattr(classifier, "sep_id", None)  # a pair's separator stays in the baseline
        baseline = [
            row_id if token.special or row_id == sep else classifier.pad_id
            for row_id, token in zip(ids, tokens, strict=True)
        ]
        entity = params.entity_target
        position = None if entity is None else entity.entity.position
        ends = handle.worker.run_blocking([ids, baseline], context, position)
        if entity is None:
            targets = self.targets(params, classifier, ends.logits[0])
            outputs = to_output_space(ends.logits, params.output)[:, targets]
            columns: tuple[int, ...] = ()
        else:
            targets, columns = [0], entity.columns
            outputs = entity_output(ends.logits, columns, params.output is OutputName.LOGIT)
        request = GradientRequest(
            ids, baseline, targets, params.integrated_gradients.n_steps, params.output, position, columns
        )
        result = run_step_batches(handle.worker, request, context)
        values = result.attributions
        return Attribution(
            tokens=tokens,
            targets=targets,
            values=values,
            base_values=outputs[1],
            output_values=outputs[0],
            logits=ends.logits[0],
            token_count=len(ids),
            truncated=truncated,
            explained_chars=max((t.end for t in tokens), default=0) if truncated else len(text),
            rows=2 + result.rows,
            queue_seconds=ends.queue_seconds + result.queue_seconds,
            convergence_delta=values.sum(axis=0) - (outputs[0] - outputs[1]),
        )


def word_pieces(classifier: Classifier, text: str) -> tuple[list[TokenSpan], list[int], bool]:
    """The model's tokens of `text` (cut as `Classifier.encode` cuts them, so only the
    prefix the model reads is explained) with their spans.

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
        tokens.append(TokenSpan(text=name if special else text[start:end], start=start, end=end, special=special))
    return tokens, ids, encoded.truncated[0]


def _strip_trailing(special_mask: Sequence[int]) -> list[int]:
    out = list(special_mask)
    while out and out[-1]:
        out.pop()
    return out
