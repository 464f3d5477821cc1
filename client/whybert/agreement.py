"""How much two explanations of one text agree, whatever their token units.

SHAP and integrated gradients attribute word pieces, LIME whole words; to compare them both
are read on the same units: the text's words (maximal runs of word characters, as LIME's
`\\W+` split finds them). A token's value goes to every word its character span overlaps
(a piece lies inside its word; a LIME token is its word), and tokens on no word
(punctuation, special tokens) are left out. On those word values:

- `spearman`: Spearman's rank correlation of the signed values (average ranks for ties,
  as `scipy.stats.spearmanr`); NaN when either side is constant;
- `top_k_overlap`: |top-k(a) ∩ top-k(b)| / k by absolute value (ferret's and LIT's
  "top-k agreement"), k capped at the number of words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ._types import Explanation

_WORD = re.compile(r"\w+", re.UNICODE)


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the text's words."""
    return [m.span() for m in _WORD.finditer(text)]


def word_values(explanation: Explanation, label: str | None = None) -> tuple[list[str], np.ndarray]:
    """The explanation's values summed onto the words of the explained text, for one of its
    labels (the first by default)."""
    j = explanation.labels.index(label) if label is not None else 0
    text = explanation.text[: explanation.explained_chars or len(explanation.text)]
    spans = word_spans(text)
    values = np.zeros(len(spans), dtype=np.float64)
    starts = np.array([s for s, _ in spans], dtype=np.int64)
    ends = np.array([e for _, e in spans], dtype=np.int64)
    for (start, end), special, value in zip(
        explanation.offsets, explanation.special, explanation.values[:, j], strict=True
    ):
        if special or end <= start:
            continue
        overlapping = (starts < end) & (ends > start)
        values[overlapping] += value
    return [text[s:e] for s, e in spans], values


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) with ties sharing the mean of their positions."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation; NaN when either side has no spread (or < 2 values)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} values against {len(b)}")
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 5) -> float:
    """Share of the k largest |values| of `a` that are among the k largest of `b`."""
    k = min(k, len(a))
    if k == 0:
        return float("nan")
    top_a = set(np.argsort(-np.abs(a), kind="mergesort")[:k].tolist())
    top_b = set(np.argsort(-np.abs(b), kind="mergesort")[:k].tolist())
    return len(top_a & top_b) / k


@dataclass(frozen=True)
class Agreement:
    """Two explanations of one text, compared on its words."""

    words: list[str]
    spearman: float
    top_k_overlap: float
    k: int


def agreement(a: Explanation, b: Explanation, label: str | None = None, k: int = 5) -> Agreement:
    """Compare two explanations of the same text for one label (by default the first label
    `a` explains, which `b` must explain too)."""
    if a.text != b.text:
        raise ValueError("the explanations are of different texts")
    label = label if label is not None else a.labels[0]
    if label not in b.labels:
        raise ValueError(f"the second explanation does not explain {label!r}")
    words_a, va = word_values(a, label)
    _, vb = word_values(b, label)
    n = min(len(va), len(vb))  # one explained a shorter prefix: compare what both cover
    return Agreement(words_a[:n], spearman(va[:n], vb[:n]), top_k_overlap(va[:n], vb[:n], k), min(k, n))
