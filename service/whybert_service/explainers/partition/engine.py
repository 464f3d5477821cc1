"""shap's Partition (Owen value) algorithm as a state machine that never calls a model.

`PartitionEngine` walks the same priority queue as `PartitionExplainer.owen` (shap/
explainers/_partition.py): the same tree, the same masks, the same rounds of at most
`batch_size` rows, the same budget accounting, even the same random tie-breaks (one
`randn` per queued node, from a `RandomState` seeded per explanation, where shap draws
from numpy's global one). Instead of calling a model it hands out each round's rows
(`rows`) and waits for their logits (`feed`); whoever drives it decides when and with
whose rows they run, and may drop it between any two rounds. Identical rows of one text
are evaluated once.

A round's bookkeeping (the queue, the masks, the edited rows, priorities and credits) is
one call into compiled code (`rounds.py`), with each value computed by the same float64
operations in the same order as shap's (the probabilities' softmax aside, which may round
differently from numpy's in the last place). What stays here needs Python: the memo of rows
already evaluated, the rows only shap's re-tokenised strings give, the output space.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ...outputs import to_output_space
from ...types import OutputName
from . import rounds
from .masking import ContinuedRows, Encode, MaskingSpec, PreparedText, build_rows, string_rows
from .tree import text_clustering

Targets = Callable[[np.ndarray], Sequence[int]]
_NO_LOGITS = np.zeros((0, 1), dtype=np.float32)  # a step with no outputs to store


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
        batch = batch_size or 5  # the Text masker's default_batch_size
        self._seed = seed
        m = text.size
        self._m = m
        # an invariant piece inside the text (a literal separator id): rows that differ
        # only there differ as strings, and shap still reuses the previous row's output
        mid_invariant = int(text.invariant.sum()) > spec.keep_prefix + spec.keep_suffix
        edit = spec.in_place or text.edit_ids
        risky = not spec.in_place and text.edit_ids and bool(text.continues.any())
        self._params = np.array(
            # shap's owen() gets the budget less the base and full rows
            [m, batch, max_evals - 2, -1 if fixed_context is None else fixed_context,
             int(mid_invariant), int(risky), spec.mask_id, int(edit)],
            dtype=np.int64,
        )
        self._state = np.zeros(rounds.STATE_SIZE, dtype=np.int64)
        words = (m + 63) // 64
        self._children = np.ascontiguousarray(text.clustering[:, :2], dtype=np.int64)
        self._node_bits = _node_bits(text.clustering, m, words)
        self._variant = _pack(~text.invariant, words)
        # pieces an edited row shows whatever the mask (kept, or the mask id itself): an
        # edited row is memoised by its kept pieces with these added
        self._fixed = _pack(text.keep | (text.ids == spec.mask_id), words)
        self._keep = np.ascontiguousarray(text.keep, dtype=np.bool_)
        self._continues = np.ascontiguousarray(text.continues, dtype=np.bool_)
        self._ids = np.ascontiguousarray(text.ids, dtype=np.int64)
        # one round: at most ceil(batch / 2) expanded nodes, two masks each, four children
        self._round_nodes = (batch + 1) // 2
        self._rnd = np.zeros(self._round_nodes, dtype=np.int64)
        self._rmask = np.zeros(2 * self._round_nodes, dtype=np.int64)
        self._rslot = np.zeros(2 * self._round_nodes, dtype=np.int64)
        self._flags = np.zeros(2 * self._round_nodes, dtype=np.int8)
        self._new_rows = np.zeros((2 * self._round_nodes, m), dtype=np.int64)
        self._new_slots = np.zeros(2 * self._round_nodes, dtype=np.int64)
        # room for the whole budget (within reason) at once: entries are ~2 per eval,
        # masks and distinct rows ~1; beyond, the arrays grow by doubling
        budget_room = min(max(max_evals, 0), 2048)
        # distinct rows (output slots) the first rounds and the budget need
        self._slot_room = 64 + 4 * self._round_nodes + budget_room
        capacity = 64 + 8 * self._round_nodes + 2 * budget_room
        self._ef = np.zeros((capacity, 3), dtype=np.float64)
        self._ei = np.zeros((capacity, 4), dtype=np.int64)
        self._heap = np.zeros(capacity, dtype=np.int64)
        self._leaves = np.zeros(capacity, dtype=np.int64)
        self._pool = np.zeros((capacity, words), dtype=np.uint64)  # row 0: nothing kept
        self._ties = tie_breaks(seed, capacity)
        # the edited rows' memo: a power of two, at most half full with every row of the budget
        table = 1 << (2 * self._slot_room - 1).bit_length()
        self._hkeys = np.zeros((table, words), dtype=np.uint64)
        self._hslot = np.full(table, -1, dtype=np.int64)
        self._f = np.zeros((0, 0), dtype=np.float64)  # per distinct row (slot): the targets' outputs
        self._d = np.zeros((0, 0), dtype=np.float64)  # per tree node: its credit
        self._targets = np.zeros(0, dtype=np.int64)
        self._memo: dict[bytes, int] = {}  # rows built as shap's strings, by their ids
        self._continued = ContinuedRows(text, spec, encode)
        self._raw: list[np.ndarray] = []  # raw logits of the first rows
        # rows handed out, waiting for logits: the round's edited rows (one array), then
        # the rows built as strings; their slots in that order
        self._pending_block: np.ndarray = np.zeros((0, m), dtype=np.int64)
        self._pending_rows: list[np.ndarray] = []
        self._pending_slots: list[int] = []
        self._result: PartitionResult | None = None
        # shap evaluates the base and unmasked rows in two calls of one row: no reuse between
        nothing, everything = np.zeros((1, m), dtype=bool), np.ones((1, m), dtype=bool)
        self._root = (self._first_slot(nothing), self._first_slot(everything))

    # ---- the driver's side -------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def result(self) -> PartitionResult:
        if self._result is None:
            raise RuntimeError("the explanation has not finished")
        return self._result

    @property
    def evals(self) -> int:
        """Rows shap's budget has counted so far (less the base and unmasked rows)."""
        return int(self._state[rounds.EVALS])

    def rows(self) -> list[np.ndarray]:
        """Token-id rows the engine needs evaluated before it can go on (empty when done)."""
        return [*self._pending_block, *self._pending_rows]

    def row_lists(self) -> list[list[int]]:
        """`rows()` as lists of ints, as the model's worker takes them."""
        block: list[list[int]] = self._pending_block.tolist()
        return block + [r.tolist() for r in self._pending_rows] if self._pending_rows else block

    @property
    def _pending(self) -> int:
        return len(self._pending_block) + len(self._pending_rows)

    @property
    def started(self) -> bool:
        """Whether the base and unmasked rows are in (the explained targets are known)."""
        return bool(self.targets)

    def snapshot(self) -> PartitionResult:
        """The explanation as it would end if the budget ran out now: what the finished
        nodes earned, plus f11 − f00 of every node still queued or being expanded, shared
        down to the pieces (as the end does when the budget is spent). Additive at every
        round (base + sum = output), coarser than the end and equal to it once done."""
        if self._result is not None:
            return self._result
        if not self.targets:
            raise RuntimeError("no snapshot before the base and unmasked rows are in")
        st = self._state
        queued = np.concatenate([self._heap[: st[rounds.HEAP_N]], self._rnd[: st[rounds.ROUND_J]]])
        ei, f = self._ei[queued], self._f
        d = self._d.copy()
        gains = (f[ei[:, rounds.I_11]] - f[ei[:, rounds.I_00]]) * self._ef[queued, rounds.F_WEIGHT][:, None]
        np.add.at(d, ei[:, rounds.I_NODE], gains)
        return self._result_of(d)

    def feed(self, logits: np.ndarray) -> None:
        """The raw logits of the rows `rows()` returned, in that order; advances to the
        next round that needs the model (or to the end)."""
        if len(logits) != self._pending:
            raise ValueError(f"expected logits for {self._pending} rows, got {len(logits)}")
        slots = np.asarray(self._pending_slots, dtype=np.int64)
        self._pending_block, self._pending_rows, self._pending_slots = self._pending_block[:0], [], []
        if not self.targets:  # the base and unmasked rows: resolve the explained outputs
            self._raw = [np.asarray(row, dtype=np.float32) for row in logits]
            self.targets = [int(t) for t in self._resolve_targets(self._raw[self._root[1]])]
            self._targets = np.array(self.targets, dtype=np.int64)
            outputs = self._outputs(np.stack(self._raw))
            self._f = np.zeros((self._slot_room, len(self.targets)), dtype=np.float64)
            self._f[: len(outputs)] = outputs
            self._d = np.zeros((2 * self._m - 1, len(self.targets)), dtype=np.float64)
            self._begin_owen()
            self._advance(_NO_LOGITS, slots)
        elif self._transform is None:  # the compiled step stores them itself
            self._advance(np.ascontiguousarray(logits), slots)
        else:
            self._f[slots] = self._outputs(np.asarray(logits))
            self._advance(_NO_LOGITS, slots)

    def _outputs(self, logits: np.ndarray) -> np.ndarray:
        """The explained targets' outputs of raw logits (rows × targets)."""
        if self._transform is not None:
            return self._transform(logits)[:, self.targets]
        return to_output_space(logits, self.output)[:, self.targets]

    # ---- the algorithm (the rounds themselves are compiled: `rounds.py`) -----------------

    def _first_slot(self, mask: np.ndarray) -> int:
        """The slot of the base or the unmasked row (built here, once)."""
        row = build_rows(self.text, self.spec, mask, self._encode)[0]
        if not self._params[rounds.P_EDIT]:
            return self._string_slot(row)
        slot = int(self._state[rounds.SLOTS])
        key = _pack(mask[0], len(self._fixed)) | self._fixed
        known = rounds.remember(self._state, self._hkeys, self._hslot, key, slot)
        if known >= 0:
            return known
        self._state[rounds.SLOTS] = slot + 1
        self._pending_rows.append(row)
        self._pending_slots.append(slot)
        return slot

    def _string_slot(self, row: np.ndarray) -> int:
        """The slot of a row built as shap's string: memoised by its ids."""
        key = row.tobytes()
        slot = self._memo.get(key)
        if slot is None:
            slot = int(self._state[rounds.SLOTS])
            self._state[rounds.SLOTS] = slot + 1
            self._memo[key] = slot
            self._pending_rows.append(row)
            self._pending_slots.append(slot)
        return slot

    def _begin_owen(self) -> None:
        f00, f11 = self._root
        # the root: priority 0, tie-break 0, every piece hidden (pool row 0), weight 1
        self._ef[0] = (0.0, 0.0, 1.0)
        self._ei[0] = (0, f00, f11, 2 * self._m - 2)
        self._heap[0] = 0
        st = self._state
        st[rounds.ENTRIES], st[rounds.HEAP_N], st[rounds.POOL_N] = 1, 1, 1

    def _advance(self, logits: np.ndarray, slots: np.ndarray) -> None:
        """Store the outputs of the last rows (`logits`, raw, into `slots`: none when
        already stored), then run rounds until one needs rows the engine has not
        evaluated, or the end."""
        st = self._state
        probability = self.output is OutputName.PROBABILITY
        while True:
            answer = rounds.step(
                self._params, st, self._ef, self._ei, self._heap, self._f, self._d, self._children,
                self._node_bits, self._pool, self._ties, self._rnd, self._rmask, self._rslot, self._leaves,
                self._ids, self._keep, self._continues, self._variant, self._fixed, self._hkeys, self._hslot,
                self._flags, self._new_rows, self._new_slots, logits, slots, self._targets, probability,
            )
            logits = _NO_LOGITS
            if answer == rounds.NEED_ROOM:
                self._make_room()
                continue
            if answer == rounds.FINISHED:
                self._result = self._result_of(self._d)
                return
            new = int(st[rounds.NEW_N])
            if new:
                self._pending_block = self._new_rows[:new].copy()
                self._pending_slots = self._new_slots[:new].tolist()
            if st[rounds.LEFT_N]:
                self._string_slots(2 * int(st[rounds.ROUND_J]))
            if self._pending:
                return

    def _string_slots(self, n: int) -> None:
        """Slots of the round's masks the compiled step left to Python: rows where a kept
        piece continues a hidden piece's word (or, where the text is masked as strings
        throughout, every row), with the ids shap's re-tokenised strings give."""
        flags, slots = self._flags, self._rslot
        left = [k for k in range(n) if slots[k] < 0 and flags[k] == rounds.LEFT]
        masks = np.unpackbits(self._pool[self._rmask[left]].view(np.uint8), axis=1, bitorder="little")
        kept = masks[:, : self._m].astype(bool)
        rows: dict[int, np.ndarray] = {}
        if self._params[rounds.P_EDIT]:
            for k, mask in zip(left, kept, strict=True):
                row = self._continued.row(mask)
                if row is not None:
                    rows[k] = row
        strings = [i for i, k in enumerate(left) if k not in rows]
        if strings:
            encoded = string_rows(self.text, self.spec, kept[strings], self._encode)
            rows.update(zip([left[i] for i in strings], encoded, strict=True))
        for k in range(n):
            if slots[k] < 0:
                slots[k] = slots[k - 1] if flags[k] == rounds.REUSE else self._string_slot(rows[k])

    def _make_room(self) -> None:
        """Room for one more round: its entries, tie-breaks, masks, slots and memo keys."""
        st, need = self._state, 4 * self._round_nodes
        if st[rounds.ENTRIES] + need > len(self._ei):
            size = 2 * len(self._ei)
            self._ef = _grown(self._ef, size)
            self._ei = _grown(self._ei, size)
            self._heap = _grown(self._heap, size)
            self._leaves = _grown(self._leaves, size)
        if st[rounds.TIE_POS] + need > len(self._ties):
            self._ties = tie_breaks(self._seed, 2 * len(self._ties))
        if st[rounds.POOL_N] + need > len(self._pool):
            self._pool = _grown(self._pool, 2 * len(self._pool))
        if st[rounds.SLOTS] + need > len(self._f):
            self._f = _grown(self._f, 2 * len(self._f))
        if 2 * (st[rounds.MEMO_N] + need) > len(self._hslot):
            keys, slots = self._hkeys, self._hslot
            self._hkeys = np.zeros((2 * len(slots), keys.shape[1]), dtype=np.uint64)
            self._hslot = np.full(2 * len(slots), -1, dtype=np.int64)
            rounds.rehash(st, self._hkeys, self._hslot, keys, slots)

    def _result_of(self, credits: np.ndarray) -> PartitionResult:
        values = rounds.lower_credit(credits, self.text.clustering, self._m)
        f00, f11 = self._root
        return PartitionResult(
            values=values[: self._m].copy(),
            base_values=self._f[f00].copy(),
            output_values=self._f[f11].copy(),
            unmasked_logits=self._raw[f11],
            targets=self.targets,
            rows=int(self._state[rounds.SLOTS]),
            evals=self.evals + 2,
        )


_TIES: dict[int, np.ndarray] = {}
_TIES_LOCK = threading.Lock()


def tie_breaks(seed: int, n: int) -> np.ndarray:
    """The first `n` (at least) of `RandomState(seed).randn()`'s draws, read-only: the same
    for every explanation of a seed, so drawn once (seeding a generator costs more than a
    round) and shared."""
    ties = _TIES.get(seed)
    if ties is None or len(ties) < n:
        with _TIES_LOCK:
            ties = _TIES.get(seed)
            if ties is None or len(ties) < n:
                ties = np.random.RandomState(seed).randn(max(n, 4096))
                ties.flags.writeable = False
                _TIES[seed] = ties
    return ties


def _grown(a: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((size, *a.shape[1:]), dtype=a.dtype)
    out[: len(a)] = a
    return out


def _pack(flags: np.ndarray, words: int) -> np.ndarray:
    """Boolean flags (…, pieces) as little-endian 64-bit words (…, words)."""
    flags = np.asarray(flags, dtype=bool)
    padded = np.zeros((*flags.shape[:-1], 64 * words), dtype=bool)
    padded[..., : flags.shape[-1]] = flags
    return np.packbits(padded, axis=-1, bitorder="little").view(np.uint64)


def _node_bits(clustering: np.ndarray, m: int, words: int) -> np.ndarray:
    """The pieces of every tree node (each a contiguous run) as mask words."""
    lo, hi = _node_ranges(clustering, m)
    pieces = np.arange(m)
    inside = (pieces >= np.array(lo)[:, None]) & (pieces < np.array(hi)[:, None])
    return np.ascontiguousarray(_pack(inside, words))


def _node_ranges(clustering: np.ndarray, m: int) -> tuple[list[int], list[int]]:
    """First and one-past-last piece of every tree node (each node is a contiguous run)."""
    lo, hi = list(range(m)), list(range(1, m + 1))
    for row in clustering:
        lo.append(lo[int(row[0])])
        hi.append(hi[int(row[1])])
    return lo, hi


def compile_rounds() -> None:
    """Compile the rounds (numba, cached on disk where it finds a writable place: see
    `rounds.py`) on a made-up text of six pieces, so the first request does not wait for it: a server
    calls this while its models load."""
    segments = ["[CLS]", "a ", "b", "c ", "d", "[SEP]"]
    m = len(segments)
    keep = np.array([True] + [False] * (m - 2) + [True])
    text = PreparedText(
        text="a bc d", truncated=False, segments=segments, offsets=[(0, 0)] * m, special=list(keep),
        ids=np.arange(100, 100 + m, dtype=np.int64), keep=keep,
        continues=np.array([False, False, False, True, False, False]), invariant=keep,
        clustering=text_clustering(segments, "[SEP]"), edit_ids=True,
    )
    spec = MaskingSpec(mask_token="[MASK]", mask_id=1, collapse=False, keep_prefix=1, keep_suffix=1,
                       sep_token="[SEP]", sentencepiece=False, edit_ids=True)

    def encode(strings: Sequence[str]) -> list[list[int]]:
        return [[100] + [1] * (m - 2) + [105] for _ in strings]

    for output, fixed_context in ((OutputName.PROBABILITY, None), (OutputName.LOGIT, 1)):
        engine = PartitionEngine(text, spec, encode, output=output, targets=lambda _: [0, 1],
                                 fixed_context=fixed_context, batch_size=2)
        while not engine.done:
            rows = engine.rows()
            engine.feed(np.array([[float(r.sum() % 7), 1.0] for r in rows], dtype=np.float32))
            if engine.started:
                engine.snapshot()
    st = np.zeros(rounds.STATE_SIZE, dtype=np.int64)
    keys, slots = np.zeros((2, 1), dtype=np.uint64), np.array([0, -1], dtype=np.int64)
    rounds.rehash(st, np.zeros((4, 1), dtype=np.uint64), np.full(4, -1, dtype=np.int64), keys, slots)


def explain_text(engine: PartitionEngine, logits: Callable[[list[np.ndarray]], np.ndarray]) -> PartitionResult:
    """Drive one engine to its end with a blocking model function (tests, scripts)."""
    while not engine.done:
        engine.feed(logits(engine.rows()))
    return engine.result

