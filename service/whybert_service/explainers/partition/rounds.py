"""The Partition engine's rounds compiled (numba): the per-round bookkeeping without Python.

Each round of a Partition explanation does little arithmetic but touches many nodes: pop
up to `batch_size / 2` nodes from the priority queue, credit the leaves, build two masks
and their token-id rows per expanded node, and when the rows' outputs are back, share the
node's difference between its children and push four of them with their priorities. As
Python that was ~0.2 ms a round, ~20 ms an explanation, the largest share of the server's
CPU beyond the model (and, on a GPU, what held explanations at a tenth of the forward
passes). Here a round is one call into compiled code that releases the GIL; `engine.py`
keeps what needs Python (the rows' memo, masked strings, the model's output space).

Everything lives in flat numpy arrays the engine owns, so an explanation can be dropped
between any two calls:

- an *entry* is one queued node (shap's queue item): floats (priority, tie-break, weight)
  and ints (its mask's row in the mask pool, the f00 and f11 output slots, the tree node);
  entry `i` is the `i`-th push, so its index is also shap's insertion order;
- the *heap* holds entry indices ordered as shap's `(priority, tie, …)` tuples (the same
  comparisons, the same `heapq` algorithm);
- a *mask* is a row of 64-bit words (bit `i`: piece `i` kept); a node's children add the
  bits of one side;
- the outputs of every distinct row are the rows of `F` (slots × explained targets), the
  credit of every tree node the rows of `D`.

The algorithm's arithmetic is shap's, operation for operation, in float64. The one
exception is the softmax of `store_outputs`, whose exp and sum may round differently
from numpy's in the last place (≤ 1e-15 on probabilities).

Compiled code is cached on disk where numba finds a writable place for it (beside the
package, the user's cache directory, or `NUMBA_CACHE_DIR`); where it finds none (a
read-only install without a writable home) it is compiled at every start instead.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import numba
import numpy as np


def _cacheable() -> bool:
    """Whether numba can cache this module's compiled code somewhere writable."""
    def probe() -> int:
        return 0

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            numba.njit(cache=True)(probe)
    except RuntimeError:  # "no locator available": nowhere to write
        return False
    return True


njit: Callable[..., Any] = functools.partial(numba.njit, cache=_cacheable())

# st: the engine's scalar state, one int64 vector
EVALS, HEAP_N, ENTRIES, TIE_POS, POOL_N, ROUND_J, SLOTS, MEMO_N, NEW_N, LEFT_N = range(10)
STATE_SIZE = 10
# pr: the explanation's parameters
P_M, P_BATCH, P_MAX_EVALS, P_FC, P_MID_INVARIANT, P_RISKY, P_MASK_ID, P_EDIT = range(8)
# entry fields
F_PRIORITY, F_TIE, F_WEIGHT = range(3)
I_MASK, I_00, I_11, I_NODE = range(4)
# round row flags: REUSE the previous mask's output, EDITED ids, or LEFT to Python
REUSE, EDITED, LEFT = 0, 1, 2
# step's answers
ROUND, FINISHED, NEED_ROOM = 1, 2, 3


@njit(nogil=True)
def _less(ef: np.ndarray, a: int, b: int) -> bool:
    """shap's tuple order `(priority, tie, insertion)`: the first field that differs
    decides, compared with `<` (as Python compares tuples, NaN included)."""
    pa, pb = ef[a, F_PRIORITY], ef[b, F_PRIORITY]
    if pa != pb:
        return bool(pa < pb)
    ta, tb = ef[a, F_TIE], ef[b, F_TIE]
    if ta != tb:
        return bool(ta < tb)
    return a < b


@njit(nogil=True)
def _sift_down(heap: np.ndarray, ef: np.ndarray, start: int, pos: int) -> None:
    item = heap[pos]
    while pos > start:
        parent = (pos - 1) >> 1
        if _less(ef, item, heap[parent]):
            heap[pos] = heap[parent]
            pos = parent
            continue
        break
    heap[pos] = item


@njit(nogil=True)
def _push(heap: np.ndarray, ef: np.ndarray, st: np.ndarray, entry: int) -> None:
    """heapq.heappush"""
    n = st[HEAP_N]
    heap[n] = entry
    st[HEAP_N] = n + 1
    _sift_down(heap, ef, 0, n)


@njit(nogil=True)
def _pop(heap: np.ndarray, ef: np.ndarray, st: np.ndarray) -> int:
    """heapq.heappop (its bottom-up sift: the same heap layout as Python's)."""
    n = st[HEAP_N] - 1
    st[HEAP_N] = n
    last = heap[n]
    if n == 0:
        return int(last)
    top = heap[0]
    heap[0] = last
    pos = 0
    child = 1
    while child < n:
        right = child + 1
        if right < n and not _less(ef, heap[child], heap[right]):
            child = right
        heap[pos] = heap[child]
        pos = child
        child = 2 * pos + 1
    heap[pos] = last
    _sift_down(heap, ef, 0, pos)
    return int(top)


@njit(nogil=True)
def _credit(ef: np.ndarray, ei: np.ndarray, f: np.ndarray, d: np.ndarray, entry: int) -> None:
    """A leaf (or, when the budget is spent, any queued node) keeps f11 − f00."""
    node, i00, i11, weight = ei[entry, I_NODE], ei[entry, I_00], ei[entry, I_11], ef[entry, F_WEIGHT]
    for t in range(f.shape[1]):
        d[node, t] += (f[i11, t] - f[i00, t]) * weight


@njit(nogil=True)
def _gap(f: np.ndarray, a: int, b: int) -> float:
    """shap's `-np.max(np.abs(a - b))`."""
    worst = abs(f[a, 0] - f[b, 0])
    for t in range(1, f.shape[1]):
        x = abs(f[a, t] - f[b, t])
        if x > worst or x != x:  # np.max propagates NaN
            worst = x
    return -worst


@njit(nogil=True)
def _new_entry(
    ef: np.ndarray, ei: np.ndarray, st: np.ndarray, ties: np.ndarray,
    priority: float, mask: int, i00: int, i11: int, node: int, weight: float,
) -> int:
    e = st[ENTRIES]
    st[ENTRIES] = e + 1
    ef[e, F_PRIORITY] = priority
    ef[e, F_TIE] = ties[st[TIE_POS]]
    st[TIE_POS] += 1
    ef[e, F_WEIGHT] = weight
    ei[e, I_MASK] = mask
    ei[e, I_00] = i00
    ei[e, I_11] = i11
    ei[e, I_NODE] = node
    return int(e)


@njit(nogil=True)
def _finish_round(
    pr: np.ndarray, st: np.ndarray, ef: np.ndarray, ei: np.ndarray, heap: np.ndarray, f: np.ndarray,
    d: np.ndarray, children: np.ndarray, ties: np.ndarray, rnd: np.ndarray, rmask: np.ndarray, rslot: np.ndarray,
) -> None:
    """The round's outputs are in: each expanded node's interaction and its four children
    (two with `fixed_context`), pushed with shap's priorities and one tie-break each."""
    m, fc = pr[P_M], pr[P_FC]
    n_t = f.shape[1]
    first = st[ENTRIES]
    for j in range(st[ROUND_J]):
        e = rnd[j]
        m00, i00, i11, ind, weight = ei[e, I_MASK], ei[e, I_00], ei[e, I_11], ei[e, I_NODE], ef[e, F_WEIGHT]
        i10, i01 = rslot[2 * j], rslot[2 * j + 1]
        left, right = children[ind - m, 0], children[ind - m, 1]
        if fc >= 0:  # fixed context: the interaction stays on the node
            for t in range(n_t):
                x = (f[i11, t] - f[i10, t] - f[i01, t] + f[i00, t]) * weight
                if fc == 0:
                    d[ind, t] += x
                else:
                    d[ind, t] -= x
        w = weight / 2 if fc < 0 else weight
        if fc <= 0:
            _new_entry(ef, ei, st, ties, _gap(f, i10, i00) * w, m00, i00, i10, left, w)
            _new_entry(ef, ei, st, ties, _gap(f, i01, i00) * w, m00, i00, i01, right, w)
        if fc != 0:
            _new_entry(ef, ei, st, ties, _gap(f, i11, i01) * w, rmask[2 * j + 1], i01, i11, left, w)
            _new_entry(ef, ei, st, ties, _gap(f, i11, i10) * w, rmask[2 * j], i10, i11, right, w)
    for e in range(first, st[ENTRIES]):  # shap queues a round's children after the round
        _push(heap, ef, st, e)
    st[ROUND_J] = 0


@njit(nogil=True)
def _form_round(
    pr: np.ndarray, st: np.ndarray, ef: np.ndarray, ei: np.ndarray, heap: np.ndarray, f: np.ndarray,
    d: np.ndarray, children: np.ndarray, node_bits: np.ndarray, pool: np.ndarray, rnd: np.ndarray,
    rmask: np.ndarray, leaves: np.ndarray,
) -> int:
    """Pop the next round's nodes (leaves are credited, not expanded); the masks of the
    expanded nodes' two children go to the pool. The number of masks (0: none formed)."""
    m, batch, max_evals = pr[P_M], pr[P_BATCH], pr[P_MAX_EVALS]
    n_masks = 0
    n_leaves = 0
    j = 0
    while st[HEAP_N] > 0 and n_masks < batch and st[EVALS] + n_masks < max_evals:
        e = _pop(heap, ef, st)
        if ei[e, I_NODE] < m:
            leaves[n_leaves] = e
            n_leaves += 1
            continue
        rnd[j] = e
        j += 1
        n_masks += 2
    for k in range(n_leaves):
        _credit(ef, ei, f, d, leaves[k])
    if j == 0:
        return 0
    st[EVALS] += n_masks
    st[ROUND_J] = j
    words = pool.shape[1]
    for k in range(j):
        e = rnd[k]
        parent = ei[e, I_MASK]
        node = ei[e, I_NODE]
        for side in range(2):  # m10: the left child's pieces added, m01: the right's
            child = children[node - m, side]
            p = st[POOL_N]
            st[POOL_N] = p + 1
            for w in range(words):
                pool[p, w] = pool[parent, w] | node_bits[child, w]
            rmask[2 * k + side] = p
    return 2 * j


@njit(nogil=True)
def _kept(pool: np.ndarray, p: int, i: int) -> bool:
    return bool((pool[p, i >> 6] >> np.uint64(i & 63)) & np.uint64(1))


@njit(nogil=True)
def _hash(words: np.ndarray) -> int:
    h = np.uint64(0x9E3779B97F4A7C15)
    for w in range(words.shape[0]):
        h = (h ^ words[w]) * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
    return int(h >> np.uint64(1))


@njit(nogil=True)
def remember(st: np.ndarray, hkeys: np.ndarray, hslot: np.ndarray, key: np.ndarray, slot: int) -> int:
    """The slot memoised for an edited row's key (its kept pieces, with those the mask
    cannot change), or `slot` stored for it when the key is new (then -1). The table
    (open addressing, a power of two long) is kept at most half full by the caller."""
    size = hslot.shape[0]
    i = _hash(key) & (size - 1)
    words = key.shape[0]
    while hslot[i] >= 0:
        same = True
        for w in range(words):
            if hkeys[i, w] != key[w]:
                same = False
                break
        if same:
            return int(hslot[i])
        i = (i + 1) & (size - 1)
    hkeys[i] = key
    hslot[i] = slot
    st[MEMO_N] += 1
    return -1


@njit(nogil=True)
def rehash(st: np.ndarray, hkeys: np.ndarray, hslot: np.ndarray, keys: np.ndarray, slots: np.ndarray) -> None:
    """Move a memo into a larger table."""
    st[MEMO_N] = 0
    for i in range(slots.shape[0]):
        if slots[i] >= 0:
            remember(st, hkeys, hslot, keys[i], slots[i])


@njit(nogil=True)
def _round_rows(
    pr: np.ndarray, st: np.ndarray, pool: np.ndarray, rmask: np.ndarray, rslot: np.ndarray, n: int,
    ids: np.ndarray, keep: np.ndarray, continues: np.ndarray, variant: np.ndarray, fixed: np.ndarray,
    hkeys: np.ndarray, hslot: np.ndarray, flags: np.ndarray, new_rows: np.ndarray, new_slots: np.ndarray,
) -> None:
    """Each round mask's output slot and, for rows not seen before, the row: REUSE (it
    differs from the mask before only at invariant pieces, where shap's masked model
    reuses that one's output), EDITED (hidden pieces as the mask id, memoised by the
    pieces kept), or LEFT to Python (slot -1): a kept piece continues a hidden piece's
    word, so only shap's re-tokenised string gives its ids (or the text is masked as
    strings throughout)."""
    m, mask_id = pr[P_M], pr[P_MASK_ID]
    words = pool.shape[1]
    key = np.empty(words, dtype=np.uint64)
    st[NEW_N] = 0
    st[LEFT_N] = 0
    for k in range(n):
        p = rmask[k]
        if k > 0 and pr[P_MID_INVARIANT]:
            differs = False
            q = rmask[k - 1]
            for w in range(words):
                if (pool[p, w] ^ pool[q, w]) & variant[w]:
                    differs = True
                    break
            if not differs:
                flags[k] = REUSE
                rslot[k] = rslot[k - 1]
                continue
        if not pr[P_EDIT]:
            flags[k] = LEFT
            rslot[k] = -1
            st[LEFT_N] += 1
            continue
        if pr[P_RISKY]:
            risky = False
            previous = True
            for i in range(m):
                kept = keep[i] or _kept(pool, p, i)
                if kept and not previous and continues[i]:
                    risky = True
                    break
                previous = kept
            if risky:
                flags[k] = LEFT
                rslot[k] = -1
                st[LEFT_N] += 1
                continue
        flags[k] = EDITED
        for w in range(words):
            key[w] = pool[p, w] | fixed[w]
        slot = remember(st, hkeys, hslot, key, st[SLOTS])
        if slot >= 0:
            rslot[k] = slot
            continue
        slot = st[SLOTS]
        st[SLOTS] = slot + 1
        rslot[k] = slot
        j = st[NEW_N]
        st[NEW_N] = j + 1
        new_slots[j] = slot
        for i in range(m):
            new_rows[j, i] = ids[i] if keep[i] or _kept(pool, p, i) else mask_id


@njit(nogil=True)
def step(
    pr: np.ndarray, st: np.ndarray, ef: np.ndarray, ei: np.ndarray, heap: np.ndarray, f: np.ndarray,
    d: np.ndarray, children: np.ndarray, node_bits: np.ndarray, pool: np.ndarray, ties: np.ndarray,
    rnd: np.ndarray, rmask: np.ndarray, rslot: np.ndarray, leaves: np.ndarray, ids: np.ndarray,
    keep: np.ndarray, continues: np.ndarray, variant: np.ndarray, fixed: np.ndarray, hkeys: np.ndarray,
    hslot: np.ndarray, flags: np.ndarray, new_rows: np.ndarray, new_slots: np.ndarray,
    logits: np.ndarray, slots: np.ndarray, targets: np.ndarray, probability: bool,
) -> int:
    """Store the outputs of `logits` (the rows of the last round, into `slots`; none may be
    given), finish the round whose slots are in (if one is), then form rounds until one
    has masks: ROUND (its slots, new rows and flags are out) or FINISHED (every node
    credited). NEED_ROOM, with nothing but the outputs stored, when the arrays have no
    room for one more round's entries, masks, tie-breaks, slots or memo keys: the caller
    grows them and calls again."""
    if logits.shape[0] > 0:
        store_outputs(logits, slots, targets, probability, f)
    need = 4 * rnd.shape[0]
    if (
        st[ENTRIES] + need > ei.shape[0]
        or st[TIE_POS] + need > ties.shape[0]
        or st[POOL_N] + need > pool.shape[0]
        or st[SLOTS] + need > f.shape[0]
        or 2 * (st[MEMO_N] + need) > hslot.shape[0]
    ):
        return NEED_ROOM
    if st[ROUND_J] > 0:
        _finish_round(pr, st, ef, ei, heap, f, d, children, ties, rnd, rmask, rslot)
    while True:
        if st[HEAP_N] == 0:
            return FINISHED
        if st[EVALS] >= pr[P_MAX_EVALS]:  # the budget is spent: queued nodes keep f11 − f00
            while st[HEAP_N] > 0:
                _credit(ef, ei, f, d, _pop(heap, ef, st))
            return FINISHED
        n = _form_round(pr, st, ef, ei, heap, f, d, children, node_bits, pool, rnd, rmask, leaves)
        if n > 0:
            _round_rows(pr, st, pool, rmask, rslot, n, ids, keep, continues, variant, fixed, hkeys, hslot, flags,
                        new_rows, new_slots)
            return ROUND


@njit(nogil=True)
def lower_credit(dvalues: np.ndarray, clustering: np.ndarray, m: int) -> np.ndarray:
    """shap's `lower_credit`: each group's value shared down to its pieces by their sizes."""
    values = dvalues.copy()
    incoming = np.zeros_like(values)
    for i in range(values.shape[0] - 1, m - 1, -1):
        li, ri = int(clustering[i - m, 0]), int(clustering[i - m, 1])
        size = clustering[i - m, 3]
        lsize = clustering[li - m, 3] if li >= m else 1.0
        rsize = clustering[ri - m, 3] if ri >= m else 1.0
        for t in range(values.shape[1]):
            values[i, t] += incoming[i, t]
            incoming[li, t] = values[i, t] * lsize / size
            incoming[ri, t] = values[i, t] * rsize / size
    for i in range(m):
        for t in range(values.shape[1]):
            values[i, t] += incoming[i, t]
    return values


@njit(nogil=True)
def store_outputs(logits: np.ndarray, slots: np.ndarray, targets: np.ndarray, probability: bool, f: np.ndarray) -> None:
    """The explained targets' outputs of raw logits (rows × labels) into their slots of
    `F`: probabilities (a float64 softmax, as `outputs.softmax`) or the logits."""
    labels = logits.shape[1]
    z = np.empty(labels, dtype=np.float64)
    for r in range(logits.shape[0]):
        for c in range(labels):
            z[c] = np.float64(logits[r, c])
        if probability:
            top = z[0]
            for c in range(1, labels):
                if z[c] > top:
                    top = z[c]
            total = 0.0
            for c in range(labels):
                z[c] = np.exp(z[c] - top)
                total += z[c]
            for c in range(labels):
                z[c] = z[c] / total
        for t in range(targets.shape[0]):
            f[slots[r], t] = z[targets[t]]
