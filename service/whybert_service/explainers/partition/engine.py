"""shap's Partition (Owen value) algorithm as a state machine that never calls a model.

`PartitionEngine` walks the same priority queue as `PartitionExplainer.owen` (shap/
explainers/_partition.py): the same tree, the same masks, the same rounds of at most
`batch_size` rows, the same budget accounting, even the same random tie-breaks (one
`randn` per queued node, from a `RandomState` seeded per explanation, where shap draws
from numpy's global one). Instead of calling a model it hands out each round's rows
(`rows`) and waits for their logits (`feed`); whoever drives it decides when and with
whose rows they run, and may drop it between any two rounds. Identical rows of one text
are evaluated once.

The bookkeeping is cheap per round: masks are Python ints (one bit a piece; a tree node is
a contiguous run of pieces), a round's rows are unpacked from them in one numpy call, and
the outputs of the explained targets are Python floats, so priorities and credits cost
no numpy call per node. Python floats are IEEE doubles like numpy's float64, so each
value is computed with the same operations in the same order as shap's.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ...outputs import to_output_space
from ...types import OutputName
from .masking import Encode, MaskingSpec, PreparedText, build_rows

# (priority, tie-break, sequence, mask of kept pieces, f00 slot, f11 slot, tree node, weight)
_Node = tuple[float, float, int, int, int, int, int, float]
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
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.text, self.spec, self._encode = text, spec, encode
        self.output = output
        # raw logits (rows × labels) → the explained outputs (rows × outputs), when they are
        # not the labels in `output` space (an entity's type probability)
        self._transform = transform
        self._resolve_targets = targets
        self.targets: list[int] = []
        self.max_evals = max_evals - 2  # shap's owen() gets the budget less base and full rows
        self.fixed_context = fixed_context
        self.batch_size = batch_size or 5  # the Text masker's default_batch_size
        self._random = np.random.RandomState(seed)
        m = text.size
        self._m = m
        self._bytes = (m + 7) // 8
        lo, hi = _node_ranges(text.clustering, m)
        self._bits = [((1 << h) - 1) ^ ((1 << lo_) - 1) for lo_, h in zip(lo, hi, strict=True)]
        self._children = [(int(r[0]), int(r[1])) for r in text.clustering]
        # an invariant piece inside the text (a literal separator id): rows that differ
        # only there differ as strings, and shap still reuses the previous row's output
        self._mid_invariant = int(text.invariant.sum()) > spec.keep_prefix + spec.keep_suffix
        self._variant = _bits_of(~text.invariant)
        self._memo: dict[bytes, int] = {}
        self._f: list[list[float]] = []  # per distinct row (slot): the outputs for the targets
        self._raw: list[np.ndarray] = []  # raw logits of the first rows
        self._heap: list[_Node] = []
        self._seq = itertools.count()
        self._dvalues: list[list[float]] = []
        self.evals = 0
        self._pending_rows: list[np.ndarray] = []  # rows handed out, waiting for logits
        self._pending_slots: list[int] = []
        self._round: tuple[list[_Node], list[int], list[int]] | None = None  # expansions, masks, slots
        self._result: PartitionResult | None = None
        # shap evaluates the base and unmasked rows in two calls of one row: no reuse between
        self._root: tuple[int, int] = (self._slots([0])[0], self._slots([(1 << m) - 1])[0])

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

    @property
    def started(self) -> bool:
        """Whether the base and unmasked rows are in (the explained targets are known)."""
        return bool(self.targets)

    def snapshot(self) -> PartitionResult:
        """The explanation as it would end if the budget ran out now: what the finished
        nodes earned, plus f11 − f00 of every node still queued or being expanded, shared
        down to the pieces (as `_finish` does when the budget is spent). Additive at every
        round (base + sum = output), coarser than the end and equal to it once done."""
        if self._result is not None:
            return self._result
        if not self.targets:
            raise RuntimeError("no snapshot before the base and unmasked rows are in")
        d = [row[:] for row in self._dvalues]
        queued = list(self._heap) + (list(self._round[0]) if self._round is not None else [])
        f = self._f
        for _, _, _, _, i00, i11, ind, weight in queued:
            row = d[ind]
            for t, (a, b) in enumerate(zip(f[i11], f[i00], strict=True)):
                row[t] += (a - b) * weight
        return self._result_of(d)

    def feed(self, logits: np.ndarray) -> None:
        """The raw logits of the rows `rows()` returned, in that order; advances to the
        next round that needs the model (or to the end)."""
        if len(logits) != len(self._pending_rows):
            raise ValueError(f"expected logits for {len(self._pending_rows)} rows, got {len(logits)}")
        if not self.targets:  # the base and unmasked rows: resolve the explained outputs
            self._raw = [np.asarray(row, dtype=np.float32) for row in logits]
            self.targets = [int(t) for t in self._resolve_targets(self._raw[self._root[1]])]
            self._f = self._outputs(np.stack(self._raw)).tolist()
            self._pending_rows, self._pending_slots = [], []
            self._begin_owen()
        else:
            outputs = self._outputs(np.asarray(logits)).tolist()
            f = self._f
            for slot, row in zip(self._pending_slots, outputs, strict=True):
                f[slot] = row
            self._pending_rows, self._pending_slots = [], []
            self._finish_round()
        self._advance()

    def _outputs(self, logits: np.ndarray) -> np.ndarray:
        """The explained targets' outputs of raw logits (rows × targets)."""
        if self._transform is not None:
            return self._transform(logits)[:, self.targets]
        return to_output_space(logits, self.output)[:, self.targets]

    # ---- the algorithm -----------------------------------------------------------------

    def _slots(self, masks: list[int]) -> list[int]:
        """Output slot of each mask's row; rows not seen before join the pending rows.

        As shap's `MaskedModel` does within one call, a mask that differs from the one
        before it only at invariant pieces reuses that one's output (which matters when a
        text holds a literal separator: its string differs, shap still reuses)."""
        fresh = list(range(len(masks)))
        if self._mid_invariant:  # elsewhere a difference at an invariant piece is no difference
            variant = self._variant
            fresh = [0] + [i for i in range(1, len(masks)) if (masks[i] ^ masks[i - 1]) & variant]
        packed = b"".join(masks[i].to_bytes(self._bytes, "little") for i in fresh)
        kept = np.unpackbits(
            np.frombuffer(packed, dtype=np.uint8).reshape(len(fresh), self._bytes), axis=1, bitorder="little"
        )[:, : self._m].astype(bool)
        rows = build_rows(self.text, self.spec, kept, self._encode)
        slots = [0] * len(masks)
        row_of = dict(zip(fresh, rows, strict=True))
        for i in range(len(masks)):
            row = row_of.get(i)
            if row is None:  # reused: the previous mask's output
                slots[i] = slots[i - 1]
                continue
            key = row.tobytes()
            slot = self._memo.get(key)
            if slot is None:
                slot = len(self._memo)
                self._memo[key] = slot
                self._f.append([])
                self._pending_rows.append(row)
                self._pending_slots.append(slot)
            slots[i] = slot
        return slots

    def _begin_owen(self) -> None:
        m = self._m
        self._dvalues = [[0.0] * len(self.targets) for _ in range(2 * m - 1)]
        f00, f11 = self._root
        heapq.heappush(self._heap, (0.0, 0.0, next(self._seq), 0, f00, f11, 2 * m - 2, 1.0))

    def _advance(self) -> None:
        """Form rounds until one needs rows the engine has not evaluated, or the end."""
        while not self._pending_rows and self._result is None:
            if not self._heap:
                self._finish()
            elif self.evals >= self.max_evals:
                self._credit([heapq.heappop(self._heap) for _ in range(len(self._heap))])
                self._finish()
            else:
                self._form_round()
                if self._round is not None and not self._pending_rows:
                    self._finish_round()  # every row of the round was known already

    def _form_round(self) -> None:
        m, heap, pop = self._m, self._heap, heapq.heappop
        expansions: list[_Node] = []
        leaves: list[_Node] = []
        n_masks = 0
        while heap and n_masks < self.batch_size and self.evals + n_masks < self.max_evals:
            node = pop(heap)
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
        masks: list[int] = []
        bits, children = self._bits, self._children
        for node in expansions:
            left, right = children[node[6] - m]
            masks.append(node[3] | bits[left])  # m10
            masks.append(node[3] | bits[right])  # m01
        self._round = (expansions, masks, self._slots(masks))

    def _finish_round(self) -> None:
        assert self._round is not None
        expansions, masks, slots = self._round
        self._round = None
        m, fc, f, dvalues, children = self._m, self.fixed_context, self._f, self._dvalues, self._children
        pushes: list[tuple[float, int, int, int, int, float]] = []  # priority, mask, f00, f11, node, weight
        for j, (_, _, _, m00, i00, i11, ind, weight) in enumerate(expansions):
            i10, i01 = slots[2 * j], slots[2 * j + 1]
            f00, f11, f10, f01 = f[i00], f[i11], f[i10], f[i01]
            left, right = children[ind - m]
            if fc is not None:  # the interaction stays on the node
                d = dvalues[ind]
                for t, (a, b, c, e) in enumerate(zip(f11, f10, f01, f00, strict=True)):
                    if fc == 0:
                        d[t] += (a - b - c + e) * weight
                    else:
                        d[t] -= (a - b - c + e) * weight
            w = weight / 2 if fc is None else weight
            if fc is None or fc == 0:
                pushes.append((_gap(f10, f00) * w, m00, i00, i10, left, w))
                pushes.append((_gap(f01, f00) * w, m00, i00, i01, right, w))
            if fc is None or fc == 1:
                pushes.append((_gap(f11, f01) * w, masks[2 * j + 1], i01, i11, left, w))
                pushes.append((_gap(f11, f10) * w, masks[2 * j], i10, i11, right, w))
        ties = self._random.randn(len(pushes)).tolist()
        push, seq, heap = heapq.heappush, self._seq, self._heap
        for (priority, mask, a, b, node, w), tie in zip(pushes, ties, strict=True):
            push(heap, (priority, tie, next(seq), mask, a, b, node, w))

    def _credit(self, nodes: list[_Node]) -> None:
        """Leaves (and, at the end of the budget, every queued node) keep f11 − f00."""
        f, dvalues = self._f, self._dvalues
        for _, _, _, _, i00, i11, ind, weight in nodes:
            d = dvalues[ind]
            for t, (a, b) in enumerate(zip(f[i11], f[i00], strict=True)):
                d[t] += (a - b) * weight

    def _finish(self) -> None:
        self._result = self._result_of(self._dvalues)
        self._heap = []

    def _result_of(self, credits: list[list[float]]) -> PartitionResult:
        dvalues = np.array(credits, dtype=np.float64).reshape(2 * self._m - 1, len(self.targets))
        values = lower_credit(dvalues, self.text.clustering, self._m)
        f00, f11 = self._root
        return PartitionResult(
            values=values[: self._m].copy(),
            base_values=np.array(self._f[f00], dtype=np.float64),
            output_values=np.array(self._f[f11], dtype=np.float64),
            unmasked_logits=self._raw[f11],
            targets=self.targets,
            rows=len(self._memo),
            evals=self.evals + 2,
        )


def _gap(a: list[float], b: list[float]) -> float:
    """shap's `-np.max(np.abs(a - b))`: the priority before its weight (more negative first)."""
    return -max(abs(x - y) for x, y in zip(a, b, strict=True))


def _bits_of(flags: np.ndarray) -> int:
    return int.from_bytes(np.packbits(flags, bitorder="little").tobytes(), "little")


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

