"""The Partition engine's compiled parts (explainers/partition/rounds.py), each against the
plain Python or numpy it stands for: shap's queue order (heapq on its tuples), its credit
shared down the tree, the output space, and the memo of edited rows. The engine as a whole
is held to shap's values in test_partition_engine.py and the corpus sweeps."""

from __future__ import annotations

import heapq
import random

import numpy as np
from whybert_service.explainers.partition import rounds
from whybert_service.explainers.partition.tree import text_clustering
from whybert_service.outputs import to_output_space
from whybert_service.types import OutputName


def test_the_queue_pops_in_shaps_tuple_order_ties_and_equal_priorities_included() -> None:
    rng = random.Random(4)
    n = 500
    ef = np.zeros((n, 3))
    st = np.zeros(rounds.STATE_SIZE, dtype=np.int64)
    heap = np.zeros(n, dtype=np.int64)
    reference: list[tuple[float, float, int]] = []
    popped: list[int] = []
    expected: list[int] = []
    for e in range(n):
        priority = rng.choice([0.0, -0.0, -0.5, -1.0, rng.uniform(-1, 0)])  # many exact ties
        tie = rng.choice([0.25, rng.gauss(0, 1)])
        ef[e, rounds.F_PRIORITY], ef[e, rounds.F_TIE] = priority, tie
        rounds._push(heap, ef, st, e)
        heapq.heappush(reference, (priority, tie, e))
        if rng.random() < 0.3:
            popped.append(rounds._pop(heap, ef, st))
            expected.append(heapq.heappop(reference)[2])
    while st[rounds.HEAP_N]:
        popped.append(rounds._pop(heap, ef, st))
        expected.append(heapq.heappop(reference)[2])
    assert popped == expected and len(popped) == n


def _lower_credit_reference(dvalues: np.ndarray, clustering: np.ndarray, m: int) -> np.ndarray:
    values = dvalues.copy()
    incoming = np.zeros_like(values)
    for i in range(len(values) - 1, m - 1, -1):
        values[i] += incoming[i]
        li, ri, size = int(clustering[i - m, 0]), int(clustering[i - m, 1]), int(clustering[i - m, 3])
        lsize = int(clustering[li - m, 3]) if li >= m else 1
        rsize = int(clustering[ri - m, 3]) if ri >= m else 1
        incoming[li] = values[i] * lsize / size
        incoming[ri] = values[i] * rsize / size
    values[:m] += incoming[:m]
    return values


def test_credit_is_shared_down_the_tree_as_shaps_lower_credit_does() -> None:
    rng = np.random.default_rng(1)
    for words in (["[CLS]", "a ", "[SEP]"], ["[CLS]"] + [f"w{i} " for i in range(40)] + ["[SEP]"]):
        clustering = text_clustering(words, "[SEP]")
        m = len(words)
        d = rng.normal(size=(2 * m - 1, 3))
        got = rounds.lower_credit(d, clustering, m)
        np.testing.assert_array_equal(got, _lower_credit_reference(d, clustering, m))


def test_outputs_land_in_their_slots_in_the_requested_space() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=5, size=(7, 4)).astype(np.float32)
    slots = np.array([3, 0, 6, 1, 2, 5, 4])
    targets = np.array([2, 0], dtype=np.int64)
    for output in (OutputName.PROBABILITY, OutputName.LOGIT):
        f = np.zeros((7, 2))
        rounds.store_outputs(logits, slots, targets, output is OutputName.PROBABILITY, f)
        np.testing.assert_allclose(f[slots], to_output_space(logits, output)[:, targets], rtol=0, atol=1e-15)


def test_the_memo_finds_every_key_it_was_given_and_only_those_through_a_rehash() -> None:
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 2**63, size=(300, 2), dtype=np.int64).astype(np.uint64)
    keys[150:] = keys[:150]  # each key given twice
    st = np.zeros(rounds.STATE_SIZE, dtype=np.int64)
    table, slots = np.zeros((512, 2), dtype=np.uint64), np.full(512, -1, dtype=np.int64)
    answers = [rounds.remember(st, table, slots, keys[i], i) for i in range(150)]
    assert answers == [-1] * 150 and st[rounds.MEMO_N] == 150
    bigger, bigger_slots = np.zeros((1024, 2), dtype=np.uint64), np.full(1024, -1, dtype=np.int64)
    rounds.rehash(st, bigger, bigger_slots, table, slots)
    assert st[rounds.MEMO_N] == 150
    assert [rounds.remember(st, bigger, bigger_slots, keys[i], -7) for i in range(150, 300)] == list(range(150))
    fresh = rng.integers(0, 2**63, size=2, dtype=np.int64).astype(np.uint64)
    assert rounds.remember(st, bigger, bigger_slots, fresh, 999) == -1
