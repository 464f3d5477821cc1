"""The token hierarchy of shap's Text masker, built in O(M log M) instead of O(M²).

shap's `partition_tree` (shap/maskers/_text.py) merges, M − 1 times, the adjacent pair of
token groups with the best `merge_score`, rescoring every pair after each merge. A score
depends only on the first and last token of each group, their lengths and the
"balanced" flag of brackets, so a merge changes the scores of its two neighbouring pairs
only. Here the pairs live in a heap (best score first, leftmost first on ties, as
`np.argmax` picks) with lazy invalidation, and each merge rescores two pairs. The result
is the same clustering matrix, row for row.
"""

from __future__ import annotations

import heapq
import itertools
import math
import re

import numpy as np

_OPENERS = {"(": ")"}
_CLOSERS = {")": "("}
_CONNECTORS = ("but", "and", "or")
_ENDERS = (".", "?", "!")
_SPACE_END = re.compile(r"^.*\W$")
_LETTER_START = re.compile(r"^[A-Za-z]")


class _Token:
    """A token's string and whether it is a bracket still waiting for its partner."""

    __slots__ = ("balanced", "s")

    def __init__(self, s: str) -> None:
        self.s = s
        self.balanced = not (s in _OPENERS or s in _CLOSERS)


class _Group:
    """A run of adjacent tokens: what merge scores read, and its neighbours."""

    __slots__ = ("alive", "first", "index", "key", "last", "left", "right", "size", "stamp")

    def __init__(self, token: _Token, position: int) -> None:
        self.first = token
        self.last = token
        self.size = 1
        self.index = position  # row of the clustering matrix (leaves: their position)
        self.key = position  # position of its first token: orders groups left to right
        self.left: _Group | None = None
        self.right: _Group | None = None
        self.alive = True
        self.stamp = 0  # bumped whenever the score of the pair (self, self.right) changes


def merge_score(g1: _Group, g2: _Group, special_tokens: tuple[str, ...]) -> float:
    """shap's `merge_score`, from the groups' end tokens and sizes (same quirks kept)."""
    f1, l1, f2, l2 = g1.first.s, g1.last.s, g2.first.s, g2.last.s
    score: float = 0
    if special_tokens and l1 in special_tokens and f2 in special_tokens:
        score -= math.inf
    if f2.startswith("##"):
        score += 20
    # shap reads group2[1] for a group of two: its last token.
    if f2 == "'" and (g2.size == 1 or (g2.size == 2 and l2 in ("t", "s"))):
        score += 15
    if l1 == "'" and f2 in ("t", "s"):
        score += 15
    start_ctrl = f1.startswith("[") and f1.endswith("]")
    end_ctrl = l2.startswith("[") and l2.endswith("]")
    if start_ctrl != end_ctrl:
        score -= 1000
    if f2 in _OPENERS and not g2.first.balanced:
        score -= 100
    if l1 in _CLOSERS and not g1.last.balanced:
        score -= 100
    if f1 in _OPENERS:  # shap's second condition compares a Token with strings: always true
        score -= 2
    if l1 in _CONNECTORS or f2 in _CONNECTORS:
        score -= 2
    if l1 == ",":
        score -= 10
    if f2 == ",":
        score -= 10 if g2.size > 1 else 1
    if l1 in _ENDERS:
        score -= 20
    if f2 in _ENDERS:
        score -= 20 if g2.size > 1 else 1
    score -= g1.size + g2.size
    return score


def partition_tree(tokens: list[str], special_tokens: tuple[str, ...]) -> np.ndarray:
    """shap's `partition_tree(tokens, special_tokens)`: an (M−1) × 4 scipy-style linkage."""
    m = len(tokens)
    clust = np.zeros((max(m - 1, 0), 4))
    groups = [_Group(_Token(t), i) for i, t in enumerate(tokens)]
    for a, b in itertools.pairwise(groups):
        a.right, b.left = b, a
    heap: list[tuple[float, int, int]] = []

    def push(left: _Group) -> None:
        right = left.right
        left.stamp += 1
        if right is not None:
            heapq.heappush(heap, (-merge_score(left, right, special_tokens), left.key, left.stamp))

    for g in groups[:-1]:
        push(g)
    by_key = {g.key: g for g in groups}
    for row in range(m - 1):
        while True:
            neg_score, key, stamp = heapq.heappop(heap)
            left = by_key[key]
            if left.alive and left.stamp == stamp and left.right is not None:
                break
        right = left.right
        clust[row, 0] = left.index
        clust[row, 1] = right.index
        clust[row, 2] = neg_score
        clust[row, 3] = left.size + right.size
        # the merged group keeps the left group's identity (and key); the right one dies
        left.last = right.last
        left.size += right.size
        left.index = m + row
        left.right = right.right
        if right.right is not None:
            right.right.left = left
        right.alive = False
        if left.first.s in _OPENERS and right.last.s == _OPENERS[left.first.s]:
            left.first.balanced = True
            right.last.balanced = True
        push(left)
        if left.left is not None:
            push(left.left)
    clust[:, 2] += 10
    return clust


def clustering_tokens(segments: list[str]) -> list[str]:
    """The strings shap's `Text.clustering` feeds its tree: segments stripped, with `##`
    before a segment that starts with a letter right after a word character."""
    tokens: list[str] = []
    for i, v in enumerate(segments):
        if (
            i > 0
            and _SPACE_END.match(segments[i - 1]) is None
            and _LETTER_START.match(v) is not None
            and tokens[i - 1] != ""
        ):
            tokens.append("##" + v.strip())
        else:
            tokens.append(v.strip())
    return tokens


def text_clustering(segments: list[str], sep_token: str | None) -> np.ndarray:
    """shap's `Text.clustering(s)`: the tree, with heights rescaled to the cluster sizes."""
    special = () if sep_token is None else (sep_token,)
    pt = partition_tree(clustering_tokens(segments), special)
    if len(pt):
        pt[:, 2] = pt[:, 3]
        pt[:, 2] /= pt[:, 2].max()
    return pt
