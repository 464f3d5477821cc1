"""Attention rollout (Abnar and Zuidema, 2020) from one forward pass on the model's worker.

What the values are: per layer the attention weights averaged over the heads, plus the
identity (the residual connection), each row normalised to sum to 1: Â_l = (A_l + I) / 2.
The rollout multiplies them through the layers, R = Â_L ··· Â_2 Â_1, and a token's value is
R[p, token] for the position p that carries the decision: [CLS] (0) for a sequence model
(of one text or of a pair, whose pass reads both segments), the entity's first piece for a
token model. The values are non-negative and sum to 1 over
the tokens (special tokens included): how much of p's final representation, followed back
through the layers along the attention weights, comes from each input position. They are
not an attribution of the output: they ignore the values, the feed-forward layers and the
classifier head, and do not add up to the output (see docs/explainers/attention.md).

Why one forward pass and eager attention: PyTorch's SDPA kernel, which whybert loads every
model with for speed, computes attention without ever materialising the weights, so
`output_attentions=True` returns nothing under it. The job below switches the model to
transformers' eager attention for its one forward pass and back (a fraction of a
millisecond: `set_attn_implementation` only swaps the function each layer calls), on the
worker thread that owns the model, so Predict and SHAP batches before and after it still
run on SDPA. The rollout is a vector-times-matrix product from the top layer down, on the
model's device, so only one row (and the maps asked for) leave it.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..context import RequestContext
from ..entities import entity_output
from ..errors import InvalidArgument, ModelFailure
from ..models.classifier import Classifier
from ..outputs import to_output_space
from ..registry import ModelHandle
from ..types import AttentionMapsResult, ExplainerName, ExplainParams, OutputName
from .base import Attribution, Explainer
from .integrated_gradients import word_pieces

EAGER = "eager"


def attention_shape(classifier: Classifier) -> tuple[int, int]:
    """(layers, heads per layer) of the model's encoder; (0, 0) when its config hides them."""
    config = getattr(classifier.model, "config", None)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None) or 0
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None) or 0
    return int(layers), int(heads)


def rollout_row(attentions: Sequence[torch.Tensor], position: int) -> torch.Tensor:
    """Row `position` of the attention rollout, in float64, from one text's attention
    weights (one [heads, tokens, tokens] tensor per layer, bottom layer first).

    R = Â_L ··· Â_1 with Â_l = rownorm(mean_heads(A_l) + I); its row p is e_pᵀ Â_L ··· Â_1,
    computed as a vector times each layer's matrix from the top down (L·T² work, not L·T³).
    """
    first = attentions[0]
    tokens = first.shape[-1]
    row = torch.zeros(tokens, dtype=torch.float64, device=first.device)
    row[position] = 1.0
    eye = torch.eye(tokens, dtype=torch.float64, device=first.device)
    for layer in reversed(attentions):
        mixed = layer.double().mean(dim=0) + eye
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        row = row @ mixed
    return row


@dataclass(frozen=True)
class AttentionRequest:
    """One text's attention job: its ids, where the decision is read, which maps to return."""

    ids: list[int]
    position: int
    layers: tuple[int, ...] = ()  # raw maps of these layers ...
    heads: tuple[int, ...] = ()  # ... and heads (none when both are empty)


@dataclass(frozen=True)
class AttentionOutput:
    """What the worker job hands back: the model's logits on the text (every position's for
    a token model), the rollout row and the raw maps asked for."""

    logits: np.ndarray
    rollout: np.ndarray
    maps: np.ndarray | None
    queue_seconds: float


@contextlib.contextmanager
def eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """The model on eager attention for the block, then back on what it was loaded with
    (worker thread only: no other forward pass may run meanwhile)."""
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current in (None, EAGER):
        yield
        return
    switch = getattr(model, "set_attn_implementation")  # noqa: B009 - absent on non-HF modules
    switch(EAGER)
    try:
        yield
    finally:
        switch(current)


def run_attention(
    classifier: Classifier, request: AttentionRequest
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One forward pass with the attention weights (worker thread only): the logits, the
    rollout row at `request.position`, and the chosen raw maps as float32
    [layer, head, query, key]."""
    ids = torch.tensor([request.ids], dtype=torch.long, device=classifier.device)
    extra = classifier.extra_inputs(ids)  # a pair: its two segments
    with torch.inference_mode(), eager_attention(classifier.model):
        out = classifier.model(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True, **extra)
    attentions = [a[0] for a in (out.attentions or ())]
    if not attentions:
        raise ModelFailure("the model returned no attention weights")
    row = rollout_row(attentions, request.position)
    maps = None
    if request.layers and request.heads:
        heads = torch.tensor(request.heads, device=classifier.device)
        chosen = torch.stack([attentions[layer].index_select(0, heads) for layer in request.layers])
        maps = chosen.float().cpu().numpy()
    return out.logits[0].float().cpu().numpy(), row.cpu().numpy(), maps


def _job(
    request: AttentionRequest, context: RequestContext, submitted: float, classifier: Classifier
) -> AttentionOutput:
    started = time.monotonic()
    context.ensure_alive("before the attention pass could run")
    try:
        logits, row, maps = run_attention(classifier, request)
    except ModelFailure:
        raise
    except Exception as exc:
        if classifier.device.type == "cuda":
            torch.cuda.empty_cache()
        raise ModelFailure(f"the attention pass failed on this text: {exc}") from exc
    return AttentionOutput(logits, row, maps, started - submitted)


def attention_pass(handle: ModelHandle, request: AttentionRequest, context: RequestContext) -> AttentionOutput:
    """Run the text's one forward pass as a job on the model's worker (scheduled with the
    explanation work of every other request; dropped unrun if the caller leaves first)."""
    if not context.charge(1):
        beyond = f"the attention pass needs a model row beyond the request's limit of {context.max_rows}"
        raise InvalidArgument([("texts", beyond)])
    job = functools.partial(_job, request, context, time.monotonic())
    future = handle.worker.call(job, context, cost=len(request.ids))  # one forward pass of the text
    return context.wait(future, "the attention pass")


class AttentionExplainer(Explainer):
    """Attention rollout at the decision's position, and raw maps on request."""

    name = ExplainerName.ATTENTION

    def supports(self, classifier: Classifier) -> bool:
        """Hugging Face models whose attention can be switched to eager, with known shape."""
        model = classifier.model
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        switchable = impl == EAGER or callable(getattr(model, "set_attn_implementation", None))
        return switchable and all(attention_shape(classifier)) and classifier.kind in ("sequence", "token", "pair")

    def attribute(self, handle: ModelHandle, text: str, params: ExplainParams, context: RequestContext) -> Attribution:
        classifier = handle.classifier
        tokens, ids, truncated = word_pieces(classifier, text)
        entity = params.entity_target
        position = 0 if entity is None else entity.entity.position
        opts = params.attention
        layers, heads = (opts.layers, opts.heads) if opts.raw else ((), ())
        cells = len(layers) * len(heads) * len(ids) ** 2
        if cells > opts.max_cells:
            raise InvalidArgument(
                [
                    (
                        "attention",
                        f"{len(layers)} layers × {len(heads)} heads × {len(ids)}² tokens = {cells} raw "
                        f"attention weights, more than the server's limit of {opts.max_cells} per text "
                        "(--max-attention-cells); choose fewer attention.layers or attention.heads",
                    )
                ]
            )
        out = attention_pass(handle, AttentionRequest(ids, position, layers, heads), context)
        if entity is None:
            logits = out.logits
            targets = self.targets(params, classifier, logits)
            outputs = to_output_space(logits[None, :], params.output)[0, targets]
        else:
            logits = out.logits[position]
            targets = [0]
            outputs = entity_output(logits[None, :], entity.columns, params.output is OutputName.LOGIT)[0]
        values = np.repeat(out.rollout[:, None], len(targets), axis=1)
        return Attribution(
            tokens=tokens,
            targets=targets,
            values=values,
            base_values=np.zeros(len(targets)),
            output_values=np.asarray(outputs, dtype=np.float64),
            logits=logits,
            token_count=len(ids),
            truncated=truncated,
            explained_chars=max((t.end for t in tokens), default=0) if truncated else len(text),
            rows=1,
            queue_seconds=out.queue_seconds,
            attention_position=position,
            attention_maps=None if out.maps is None else AttentionMapsResult(layers, heads, out.maps),
        )
