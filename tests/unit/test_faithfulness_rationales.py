"""Faithfulness (explainers/faithfulness.py), without a model: ferret's rationales and the
texts with each rationale removed or kept alone. (The figures, with rows through a worker
and over gRPC: integration/test_faithfulness.py.)"""

from __future__ import annotations

import itertools

import numpy as np
from whybert_service.explainers.faithfulness import perturbed_texts, rationales
from whybert_service.types import TokenSpan


def test_rationales_are_fractions_of_positive_tokens_best_first() -> None:
    # 4 tokens: k = int(f·4), f = 0.1..1.0, gives 0,0,1,1,2,2,2,3,3,4 (0.3·4 is 1.2000000000000002).
    # k = 0 is skipped, repeats are dropped and only positive scores count (k=4 repeats k=3).
    assert rationales([0.5, -1.0, 2.0, 0.1]) == [[2], [2, 0], [2, 0, 3]]
    # Nothing positive: one empty rationale (ferret still evaluates it once).
    assert rationales([-1.0, -2.0]) == [[]]
    rng = np.random.default_rng(0)
    for n in (1, 7, 23, 60):
        scores = rng.normal(size=n)
        found = rationales(scores)
        assert 1 <= len(found) <= 10
        for earlier, later in itertools.pairwise(found):
            assert set(earlier) < set(later)  # nested, growing
        for r in found:
            assert all(scores[i] > 0 for i in r)
            assert list(r) == sorted(r, key=lambda i: -scores[i])


def test_removal_deletes_each_tokens_characters_and_nothing_else() -> None:
    text = "alpha beta, gamma delta"
    tokens = [
        TokenSpan("[CLS]", 0, 0, special=True),
        TokenSpan("alpha", 0, 5),
        TokenSpan("beta", 6, 10),
        TokenSpan(",", 10, 11),
        TokenSpan("gamma", 12, 17),
        TokenSpan("delta", 18, 23),
        TokenSpan("[SEP]", 0, 0, special=True),
    ]
    # n = 5 features: k = 0,1,1,2,2,3,3,4,4,5 → top 1, 2, 3, 4 (the 5th is negative).
    scores = [9.0, 3.0, -1.0, 0.5, 2.0, 1.0, 9.0]
    without, only = perturbed_texts(text, tokens, scores)
    assert without == [
        " beta, gamma delta",
        " beta,  delta",
        " beta,  ",
        " beta  ",
    ]
    assert only == [
        "alpha   ",
        "alpha  gamma ",
        "alpha  gamma delta",
        "alpha , gamma delta",
    ]
