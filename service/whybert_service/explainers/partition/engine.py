"""shap's Partition (Owen value) algorithm as a state machine that never calls a model.

`PartitionEngine` walks the same priority queue as `PartitionExplainer.owen` (shap/
explainers/_partition.py): the same tree, the same masks, the same rounds of at most
`batch_size` rows, the same budget accounting, even the same random tie-breaks (one
`randn` per queued node, from a `RandomState` seeded per explanation, where shap draws
from numpy's global one). Instead of calling a model it hands out each round's rows
(`rows`) and waits for their logits (`feed`); whoever drives it decides when and with
whose rows they run, and may drop it between any two rounds. Identical rows of one text
are evaluated once.

Per round the bookkeeping is vectorised: the round's masks are built as one boolean
matrix, the priorities of all new nodes in one numpy expression, and leaf credits are
added with `np.add.at` in shap's order.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...outputs import to_output_space
from ...types import OutputName
from .masking import Encode, MaskingSpec, PreparedText, build_rows

# (priority, tie-break, sequence, mask of kept pieces, f00 row, f11 row, tree node, weight)
_Node = tuple[float, float, int, np.ndarray, int, int, int, float]
# The children an expansion queues, per fixed_context, in shap's order. Columns of a round's
# (f00, f11, f10, f01) table: each child's (f00, f11) pair; which child (0 left, 1 right).
_CHILDREN: dict[int | None, tuple[list[list[int]], list[int]]] = {
    None: ([[0, 2], [0, 3], [3, 1], [2, 1]], [0, 1, 0, 1]),
    0: ([[0, 2], [0, 3]], [0, 1]),
    1: ([[3, 1], [2, 1]], [0, 1]),
}
# The mask each child keeps: -1 the parent's m00, 0 its m10 (left added), 1 its m01.
_KEPT: dict[int | None, tuple[int, ...]] = {None: (-1, -1, 1, 0), 0: (-1, -1), 1: (1, 0)}
Targets = Callable[[np.ndarray], Sequence[int]]


@dataclass(frozen=True)
class PartitionResult:
    values: np.ndarray  # pieces × targets
    base_values: np.ndarray  # targets: the output with every piece masked
    output_values: np.ndarray  # targets: the output with nothing masked (additivity holds here)
    unmasked_logits: np.ndarray  # raw logits of the unmasked row (the prediction)
    targets: list[int]
    rows: int  # distinct rows evaluated
    evals: int  # rows shap's budget counted


class PartitionEngine:
    """One text's Partition explanation: `rows()` → run them → `feed(logits)` → … → `result`."""

    def __init__(
        self,
        text: PreparedText,
        spec: MaskingSpec,
        encode: Encode,
        *,
        output: OutputName,
        targets: Targets,
        max_evals: int = 500,
        fixed_context: int | None = None,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        self.text, self.spec, self._encode = text, spec, encode
        self.output = output
        self._resolve_targets = targets
        self.targets: list[int] = []
        self.max_evals = max_evals - 2  # shap's owen() gets the budget less base and full rows
        self.fixed_context = fixed_context
        self.batch_size = batch_size or 5  # the Text masker's default_batch_size
        self._random = np.random.RandomState(seed)
        m = text.size
        self._m = m
        self._lo, self._hi = _node_ranges(text.clustering, m)
        self._left = text.clustering[:, 0].astype(np.int64)
        self._right = text.clustering[:, 1].astype(np.int64)
        self._sizes = np.concatenate([np.ones(m), text.clustering[:, 3]])
        self._memo: dict[bytes, int] = {}
        # an invariant piece inside the text (a literal separator id): rows that differ
        # only there differ as strings, and shap still reuses the previous row's output
        self._mid_invariant = int(text.invariant.sum()) > spec.keep_prefix + spec.keep_suffix
        self._f = np.empty((0, 0))  # per distinct row (slot): the outputs for the targets
        self._raw: list[np.ndarray] = []  # raw logits of the first two rows
        self._heap: list[_Node] = []
        self._seq = itertools.count()
        self._dvalues: np.ndarray | None = None
        self.evals = 0
        self._pending_rows: list[np.ndarray] = []  # rows handed out, waiting for logits
        self._pending_slots: list[int] = []
        self._round: tuple[list[_Node], np.ndarray, np.ndarray] | None = None  # expansions, masks, slots
        self._root: tuple[int, int] = (0, 1)
        self._result: PartitionResult | None = None
        base = np.zeros((1, m), dtype=bool)
        self._start(np.concatenate([base, ~base]))

    # ---- the driver's side -------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def result(self) -> PartitionResult:
        if self._result is None:
            raise RuntimeError("the explanation has not finished")
        return self._result

    def rows(self) -> list[np.ndarray]:
        """Token-id rows the engine needs evaluated before it can go on (empty when done)."""
        return self._pending_rows

    def feed(self, logits: np.ndarray) -> None:
        """The raw logits of the rows `rows()` returned, in that order; advances to the
        next round that needs the model (or to the end)."""
        if len(logits) != len(self._pending_rows):
            raise ValueError(f"expected logits for {len(self._pending_rows)} rows, got {len(logits)}")
        if not self.targets:  # the base and unmasked rows: resolve the explained outputs
            self._raw = [np.asarray(row, dtype=np.float32) for row in logits]
            self.targets = [int(t) for t in self._resolve_targets(self._raw[self._root[1]])]
            capacity = max(self.max_evals, 0) + 8
            self._f = np.empty((capacity, len(self.targets)))
            self._f[: len(self._raw)] = to_output_space(np.stack(self._raw), self.output)[:, self.targets]
            self._pending_rows, self._pending_slots = [], []
            self._begin_owen()
        else:
            self._f[self._pending_slots] = to_output_space(np.asarray(logits), self.output)[:, self.targets]
            self._pending_rows, self._pending_slots = [], []
            self._finish_round()
        self._advance()

    # ---- the algorithm -----------------------------------------------------------------

    def _start(self, masks: np.ndarray) -> None:
        # shap evaluates these in two calls of one row each: no reuse between them
        slots = [int(self._slots(masks[i : i + 1])[0]) for i in range(2)]
        self._root = (slots[0], slots[1])

    def _slots(self, masks: np.ndarray) -> np.ndarray:
        """Output slot of each mask's row; rows not seen before join the pending rows.

        As shap's `MaskedModel` does within one call, a mask that differs from the one
        before it only at invariant pieces reuses that one's output (which matters when a
        text holds a literal separator: its string differs, shap still reuses)."""
        reuse = np.zeros(len(masks), dtype=bool)
        if self._mid_invariant:  # elsewhere a difference at an invariant piece is no difference
            reuse[1:] = ~np.any((masks[1:] ^ masks[:-1]) & ~self.text.invariant, axis=1)
        fresh = np.flatnonzero(~reuse)
        rows = build_rows(self.text, self.spec, masks[fresh], self._encode)
        slots = np.empty(len(masks), dtype=np.int64)
        for i, row in zip(fresh, rows, strict=True):
            key = row.tobytes()
            slot = self._memo.get(key)
            if slot is None:
                slot = len(self._memo)
                self._memo[key] = slot
                if slot >= len(self._f) and self.targets:
                    self._f = np.concatenate([self._f, np.empty_like(self._f)])
                self._pending_rows.append(row)
                self._pending_slots.append(slot)
            slots[i] = slot
        for i in np.flatnonzero(reuse):
            slots[i] = slots[i - 1]
        return slots

    def _begin_owen(self) -> None:
        m = self._m
        self._dvalues = np.zeros((2 * m - 1, len(self.targets)))
        f00, f11 = self._root
        root = 2 * m - 2
        heapq.heappush(self._heap, (0.0, 0.0, next(self._seq), np.zeros(m, dtype=bool), f00, f11, root, 1.0))

    def _advance(self) -> None:
        """Form rounds until one needs rows the engine has not evaluated, or the end."""
        while not self._pending_rows and self._result is None:
            if not self._heap:
                self._finish()
            elif self.evals >= self.max_evals:
                self._drain()
                self._finish()
            else:
                self._form_round()
                if self._round is not None and not self._pending_rows:
                    self._finish_round()  # every row of the round was known already

    def _form_round(self) -> None:
        m, heap = self._m, self._heap
        expansions: list[_Node] = []
        leaves: list[_Node] = []
        n_masks = 0
        while heap and n_masks < self.batch_size and self.evals + n_masks < self.max_evals:
            node = heapq.heappop(heap)
            if node[6] < m:
                leaves.append(node)
                continue
            expansions.append(node)
            n_masks += 2
        if leaves:
            self._credit(leaves)
        if not expansions:
            return
        self.evals += n_masks
        k = len(expansions)
        inds = np.array([n[6] for n in expansions]) - m
        masks = np.repeat(np.stack([n[3] for n in expansions]), 2, axis=0)  # m10, m01, m10, …
        children = np.empty(2 * k, dtype=np.int64)
        children[0::2], children[1::2] = self._left[inds], self._right[inds]
        for r, child in enumerate(children):
            masks[r, self._lo[child] : self._hi[child]] = True
        self._round = (expansions, masks, self._slots(masks))

    def _finish_round(self) -> None:
        assert self._round is not None and self._dvalues is not None
        expansions, masks, slots = self._round
        self._round = None
        m, fc = self._m, self.fixed_context
        # per expansion: its f00, f11, f10, f01 rows, gathered in one fancy index
        columns = np.empty((len(expansions), 4), dtype=np.int64)
        columns[:, :2] = [(n[4], n[5]) for n in expansions]
        columns[:, 2], columns[:, 3] = slots[0::2], slots[1::2]
        weight = np.array([n[7] for n in expansions])
        inds = np.array([n[6] for n in expansions])
        if fc is not None:
            g = self._f[columns]
            interaction = (g[:, 1] - g[:, 2] - g[:, 3] + g[:, 0]) * weight[:, None]
            np.add.at(self._dvalues, inds, interaction if fc == 0 else -interaction)
        # the children shap queues, in its order, as (lo, hi) columns: the child's f00, f11
        lo_hi, sides = _CHILDREN[fc]
        pairs = columns[:, lo_hi]  # k × children × 2
        node = np.stack([self._left[inds - m], self._right[inds - m]], axis=1)[:, sides].ravel()
        g = self._f[pairs]
        w = np.repeat(weight / 2 if fc is None else weight, len(sides))
        priority = -np.max(np.abs(g[:, :, 1] - g[:, :, 0]), axis=2).ravel() * w
        ties = self._random.randn(len(w))
        # the mask each child keeps: m00 for context 0, m01 / m10 for context 1
        kept = []
        for j, n in enumerate(expansions):
            for source in _KEPT[fc]:
                kept.append(n[3] if source < 0 else masks[2 * j + source])
        lo, hi = pairs[:, :, 0].ravel().tolist(), pairs[:, :, 1].ravel().tolist()
        push, seq, heap = heapq.heappush, self._seq, self._heap
        for item in zip(priority.tolist(), ties.tolist(), kept, lo, hi, node.tolist(), w.tolist(), strict=True):
            push(heap, (item[0], item[1], next(seq), *item[2:]))

    def _credit(self, nodes: list[_Node]) -> None:
        """Leaves (and, at the end of the budget, every queued node) keep f11 − f00."""
        assert self._dvalues is not None
        f = self._f
        delta = f[[n[5] for n in nodes]] - f[[n[4] for n in nodes]]
        np.add.at(self._dvalues, [n[6] for n in nodes], delta * np.array([n[7] for n in nodes])[:, None])

    def _drain(self) -> None:
        nodes = [heapq.heappop(self._heap) for _ in range(len(self._heap))]
        if nodes:
            self._credit(nodes)

    def _finish(self) -> None:
        assert self._dvalues is not None
        values = lower_credit(self._dvalues, self.text.clustering, self._m)
        f00, f11 = self._root
        self._result = PartitionResult(
            values=values[: self._m].copy(),
            base_values=self._f[f00].copy(),
            output_values=self._f[f11].copy(),
            unmasked_logits=self._raw[f11],
            targets=self.targets,
            rows=len(self._memo),
            evals=self.evals + 2,
        )
        self._heap = []


def _node_ranges(clustering: np.ndarray, m: int) -> tuple[list[int], list[int]]:
    """First and one-past-last piece of every tree node (each node is a contiguous run)."""
    lo, hi = list(range(m)), list(range(1, m + 1))
    for row in clustering:
        lo.append(lo[int(row[0])])
        hi.append(hi[int(row[1])])
    return lo, hi


def lower_credit(dvalues: np.ndarray, clustering: np.ndarray, m: int) -> np.ndarray:
    """shap's `lower_credit`: each group's value shared down to its pieces by their sizes."""
    values = dvalues.copy()
    incoming = np.zeros_like(values)
    for i in range(len(values) - 1, m - 1, -1):
        values[i] += incoming[i]
        row = clustering[i - m]
        li, ri, size = int(row[0]), int(row[1]), int(row[3])
        lsize = int(clustering[li - m, 3]) if li >= m else 1
        rsize = int(clustering[ri - m, 3]) if ri >= m else 1
        incoming[li] = values[i] * lsize / size
        incoming[ri] = values[i] * rsize / size
    values[:m] += incoming[:m]
    return values


def explain_text(engine: PartitionEngine, logits: Callable[[list[np.ndarray]], np.ndarray]) -> PartitionResult:
    """Drive one engine to its end with a blocking model function (tests, scripts)."""
    while not engine.done:
        engine.feed(logits(engine.rows()))
    return engine.result


__all__: list[Any] = ["PartitionEngine", "PartitionResult", "explain_text", "lower_credit"]
