"""The token hierarchy (`explainers/partition/tree.py`): shap's Text-masker tree, rebuilt with
a heap. shap's own `partition_tree` and `Text.clustering` are the references, on random
token sequences chosen to hit its rules (brackets, connectors, sentence ends, `##` pieces)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import shap
from scipy.cluster.hierarchy import is_valid_linkage
from shap.maskers._text import partition_tree as shap_partition_tree
from whybert_service.explainers.partition.tree import clustering_tokens, partition_tree, text_clustering

SEGMENTS = ["the ", "food", "ing ", "(", "was ", "great", ") ", "but ", "slow", ".", " Never", "!", "[SEP]"]


def _segments(rng: random.Random) -> list[str]:
    return [rng.choice(SEGMENTS) for _ in range(rng.randint(2, 30))]


@pytest.mark.parametrize("special", [(), ("[SEP]",), ("[SEP]", "[CLS]")])
def test_the_tree_is_shaps_for_any_special_tokens(special: tuple[str, ...]) -> None:
    rng = random.Random(len(special))
    for _ in range(150):
        tokens = clustering_tokens(_segments(rng))
        np.testing.assert_array_equal(partition_tree(tokens, special), shap_partition_tree(tokens, list(special)))


def test_the_tree_is_a_valid_linkage_covering_every_token() -> None:
    tokens = clustering_tokens(["the ", "food ", "(", "was ", "great", ") ", "but ", "slow", "."])
    tree = partition_tree(tokens, ())
    assert tree.shape == (len(tokens) - 1, 4)
    assert is_valid_linkage(tree)
    assert tree[-1, 3] == len(tokens)  # the root holds every token
    merged = {int(i) for i in tree[:, :2].ravel()}
    assert merged == set(range(2 * len(tokens) - 2))  # each leaf and inner node merged once


def test_a_balanced_bracket_is_one_group() -> None:
    tokens = ["the", "(", "very", "good", ")", "food"]
    tree = partition_tree(tokens, ())
    leaves: dict[int, set[int]] = {i: {i} for i in range(len(tokens))}
    for row, (a, b, _h, _n) in enumerate(tree):
        leaves[len(tokens) + row] = leaves[int(a)] | leaves[int(b)]
    assert {1, 2, 3, 4} in leaves.values()


@pytest.mark.parametrize("tokens", [[], ["alone"]])
def test_no_pairs_no_rows(tokens: list[str]) -> None:
    assert partition_tree(tokens, ()).shape == (0, 4)
    assert text_clustering(tokens, "[SEP]").shape == (0, 4)


def test_clustering_tokens_marks_word_pieces_like_shap() -> None:
    assert clustering_tokens(["walk", "ing ", "(", "fast", ") "]) == ["walk", "##ing", "(", "fast", ")"]
    assert clustering_tokens(["a ", "b"]) == ["a", "b"]  # after a space: a new word


def test_text_clustering_is_the_maskers_clustering() -> None:
    rng = random.Random(7)
    masker = shap.maskers.Text(r"\W+")  # shap's own regex tokenizer: no model needed
    for _ in range(30):
        text = "".join(_segments(rng)).replace("[SEP]", "")
        masker._update_s_cache(text)
        segments = list(masker._segments_s)
        if len(segments) < 2:  # shap's clustering fails on a single segment
            continue
        expected = masker.clustering(text)
        sep = getattr(masker.tokenizer, "sep_token", None)
        np.testing.assert_allclose(text_clustering(segments, sep), expected)
        assert text_clustering(segments, sep)[:, 2].max() == 1.0  # heights are sizes / the largest
