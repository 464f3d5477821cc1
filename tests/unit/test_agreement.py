"""client/whybert/agreement.py: explanations of different token units compared on words."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from whybert import Explanation, Prediction
from whybert.agreement import agreement, spearman, top_k_overlap, word_values


def _explanation(
    text: str, pieces: list[tuple[int, int]], values: list[float], special: list[bool] | None = None
) -> Explanation:
    return Explanation(
        text=text,
        tokens=[text[s:e] for s, e in pieces],
        offsets=pieces,
        special=special or [False] * len(pieces),
        values=np.array(values, dtype=np.float64)[:, None],
        base_values=np.zeros(1),
        output_values=np.array([sum(values)]),
        labels=["positive"],
        prediction=Prediction(label="positive", scores={"positive": 1.0}),
        explainer="shap-partition",
        output="probability",
        explained_chars=len(text),
    )


def test_pieces_are_summed_onto_their_words_and_punctuation_is_left_out() -> None:
    text = "unbelievable food, bad!"
    # [CLS] un ##believ ##able food , bad ! [SEP]
    pieces = [(0, 0), (0, 2), (2, 8), (8, 12), (13, 17), (17, 18), (19, 22), (22, 23), (0, 0)]
    e = _explanation(text, pieces, [9, 0.5, 0.25, 0.125, 1, 7, -2, 5, 9], [True] + [False] * 7 + [True])
    words, values = word_values(e)
    assert words == ["unbelievable", "food", "bad"]
    np.testing.assert_allclose(values, [0.875, 1.0, -2.0])


@pytest.mark.parametrize("seed", range(20))
def test_spearman_equals_scipy_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, size=12).astype(float)  # many ties
    b = a + rng.normal(size=12)
    assert spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-12)


def test_constant_values_have_no_rank_correlation() -> None:
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))
    assert np.isnan(spearman(np.ones(1), np.ones(1)))


def test_top_k_overlap_counts_shared_words_by_magnitude() -> None:
    a = np.array([5.0, -4.0, 0.1, 0.2, 3.0])
    b = np.array([-6.0, 0.0, 0.0, 4.0, 3.5])
    assert top_k_overlap(a, b, k=3) == pytest.approx(2 / 3)  # {0,1,4} vs {0,3,4}
    assert top_k_overlap(a, b, k=10) == 1.0  # k capped at the number of words


def test_a_word_level_and_a_piece_level_explanation_agree_when_they_say_the_same() -> None:
    text = "good service terrible food"
    lime = _explanation(text, [(0, 4), (5, 12), (13, 21), (22, 26)], [2.0, 1.0, -3.0, 0.5])
    shap = _explanation(text, [(0, 4), (5, 9), (9, 12), (13, 21), (22, 26)], [2.0, 0.4, 0.6, -3.0, 0.5])
    same = agreement(lime, shap, k=2)
    assert same.words == ["good", "service", "terrible", "food"]
    assert same.spearman == pytest.approx(1.0) and same.top_k_overlap == 1.0
    flipped = _explanation(text, [(0, 4), (5, 12), (13, 21), (22, 26)], [-2.0, -1.0, 3.0, -0.5])
    assert agreement(lime, flipped).spearman == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="different texts"):
        agreement(lime, _explanation("other", [(0, 5)], [1.0]))
