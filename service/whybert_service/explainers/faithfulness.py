"""Faithfulness of attributions: ERASER's AOPC comprehensiveness and sufficiency, as ferret
computes them by default.

For the first explained target, with the attributions as scores over the explanation's
non-special tokens (word pieces for SHAP and integrated gradients, word occurrences for
LIME), and for each k in 10%, 20%, ..., 100%:

- the rationale is the int(k·n) highest-scoring tokens, keeping only those with a positive
  score (ferret's `only_pos`); a rationale equal to the previous one is skipped;
- comprehensiveness drop = p(text) − p(text without the rationale);
- sufficiency drop = p(text) − p(text with only the rationale);

each figure is the mean of its drops, p being the target's softmax probability whatever
the explanation's output space. Removing a token deletes its characters from the original
text (what stays between tokens, such as white space or, for LIME, punctuation, stays),
and the model reads the resulting string. ferret instead decodes the remaining ids, which
glues a `##piece` onto the word before it; deleting spans leaves the text as a user would
have written it. Each text costs at most 20 rows, evaluated once each, through the worker.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from ..context import RequestContext
from ..registry import ModelHandle
from ..types import ExplanationResult, Faithfulness, OutputName, TokenSpan
from .base import ModelFunction

# ferret's default thresholds: np.arange(0.1, 1.1, 0.1), float error included.
THRESHOLDS: tuple[float, ...] = tuple(float(v) for v in np.arange(0.1, 1.1, 0.1))


def rationales(scores: Sequence[float] | np.ndarray) -> list[list[int]]:
    """ferret's discrete rationales of a score vector: the positive top-k% per threshold,
    best first, each different from the one before."""
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    out: list[list[int]] = []
    last: set[int] | None = None
    for fraction in THRESHOLDS:
        k = int(fraction * n)
        if not 0 < k <= n:
            continue
        top = [int(i) for i in s.argsort()[-k:][::-1] if s[i] > 0]
        if last is not None and set(top) == last:
            continue
        last = set(top)
        out.append(top)
    return out


def remove_spans(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """`text` with the characters of the given spans deleted."""
    keep = np.ones(len(text), dtype=bool)
    for start, end in spans:
        keep[start:end] = False
    return "".join(c for c, k in zip(text, keep, strict=True) if k)


def perturbed_texts(
    text: str, tokens: Sequence[TokenSpan], scores: Sequence[float] | np.ndarray
) -> tuple[list[str], list[str]]:
    """The strings comprehensiveness and sufficiency evaluate: without each rationale, and
    with only it (special tokens are never removed nor scored)."""
    features = [i for i, t in enumerate(tokens) if not t.special]
    spans = [(tokens[i].start, tokens[i].end) for i in features]
    feature_scores = [float(scores[i]) for i in features]
    without, only = [], []
    for rationale in rationales(feature_scores):
        chosen = set(rationale)
        without.append(remove_spans(text, [spans[i] for i in rationale]))
        only.append(remove_spans(text, [s for i, s in enumerate(spans) if i not in chosen]))
    return without, only


def faithfulness(
    handle: ModelHandle, text: str, result: ExplanationResult, context: RequestContext
) -> tuple[Faithfulness, ModelFunction]:
    """AOPC figures of `result` for its first target, and the function that paid the rows."""
    classifier = handle.classifier
    target = classifier.labels.index(result.labels[0])
    f = ModelFunction(handle, context, OutputName.PROBABILITY, targets=[target])
    without, only = perturbed_texts(text, result.tokens, result.values[:, 0])
    if not without:  # no token to remove (ferret's answer for that case)
        return Faithfulness(comprehensiveness=0.0, sufficiency=1.0), f
    p_text = float(result.prediction.probabilities[target])
    probabilities = f(without + only)[:, 0]
    return (
        Faithfulness(
            comprehensiveness=float(np.mean(p_text - probabilities[: len(without)])),
            sufficiency=float(np.mean(p_text - probabilities[len(without) :])),
        ),
        f,
    )


def with_faithfulness(
    handle: ModelHandle, text: str, result: ExplanationResult, context: RequestContext
) -> ExplanationResult:
    """`result` with its faithfulness figures; their rows and time count in its cost."""
    started = time.perf_counter()
    figures, f = faithfulness(handle, text, result, context)
    return dataclasses.replace(
        result,
        faithfulness=figures,
        model_rows=result.model_rows + f.rows,
        queue_seconds=result.queue_seconds + f.queue_seconds,
        compute_seconds=result.compute_seconds + time.perf_counter() - started,
    )
