"""Forward passes of recurring batch shapes replayed from CUDA graphs.

On a GPU a batch of up to a few hundred short rows is bound by the Python that launches its
kernels, not by the device (BERT-base on an H200: ~4.5 ms of launch for 128 rows of 26
tokens that a captured graph runs in 2.4 ms; benchmarks/RESULTS.md), and that Python holds
the interpreter lock the explanations' rounds need on the same thread. A graph replays the
same kernels in one call. So a batch is padded to a bucket (rows in steps of about 1.5×,
width to a multiple of 8), a bucket is captured the second time it is seen (one-off shapes
stay eager), and its graph reads the batch from static input tensors that each launch
fills with one copy. The attention mask enters the model as a ready 4-D additive mask built
inside the graph: the model then asks the device nothing (a 2-D mask makes transformers
check on the host whether it holds padding, a wait a graph cannot contain).

Only architectures whose pass on a ready mask asks the host nothing are captured
(`GRAPH_MODEL_TYPES`, held to that in the tests): one host decision inside a capture
would be baked into the graph, or break it. One capture runs at a time in the process
(PyTorch's rule; each model has its own worker thread). Each graph's first batch is
checked against the model's plain pass; a model whose capture fails or whose graph
disagrees runs eagerly from then on (logged once). Batches over `GRAPH_TOKENS` padded
tokens stay eager: there the device, not the launch, is the bound.
On a CPU the same buckets and static tensors run without capture (`capture=False`): that
is how the tests hold this path to the plain one.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

# Architectures (`config.model_type`) captured: their pass on ids and a 4-D mask has no
# host synchronisation and no branch on the data (tests/unit/test_graphs.py checks both).
GRAPH_MODEL_TYPES = frozenset({"bert", "distilbert", "electra", "roberta", "xlm-roberta"})
# Padded tokens (rows × width) of the largest batch replayed from a graph: at 512 rows of 32
# tokens BERT-base's eager pass already costs what its graph does on an H200.
GRAPH_TOKENS = 8192
# Graphs one model keeps at most (each holds its static tensors; activations share one pool).
MAX_GRAPHS = 64
# Bucket row counts: a batch is padded up to the next, so at most about a third is padding.
ROW_STEPS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
WIDTH_STEP = 8
# Largest difference from the plain pass a graph's first batch may show, relative to the
# logits' scale: float32 agrees to rounding; half types differ with the attention kernel.
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
HALF_TOLERANCE = 5e-2

# Only one capture may be under way in a process; each model's worker captures its own.
_CAPTURING = threading.Lock()

# The model's pass on static inputs: (ids, 4-D additive mask) -> logits, rows first.
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# The model's plain pass on a batch's rows, for the check of a graph's first batch.
Plain = Callable[[Sequence[Sequence[int]]], torch.Tensor]


@dataclass
class _Graph:
    """One bucket's static inputs, its output and how to run it again."""

    ids: torch.Tensor  # rows × width, int64
    keep: torch.Tensor  # rows × width, 1 for a real token
    out: torch.Tensor  # the pass's output for all rows of the bucket
    replay: Callable[[], object]
    checked: bool = False


class GraphedForward:
    """The forward passes of one model's recurring batch shapes, from captured graphs.

    Used only by the model's worker thread (as every forward pass is)."""

    def __init__(
        self,
        forward: Forward,
        plain: Plain,
        *,
        device: torch.device,
        dtype: torch.dtype,
        pad_id: int,
        max_width: int,
        capture: bool = True,
        max_tokens: int = GRAPH_TOKENS,
        max_graphs: int = MAX_GRAPHS,
    ) -> None:
        self._forward = forward
        self._plain = plain
        self.device = device
        self.dtype = dtype
        self.pad_id = pad_id
        self.max_width = max_width
        self.capture = capture
        self.max_tokens = max_tokens
        self.max_graphs = max_graphs
        self.enabled = True
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._seen: Counter[tuple[int, int]] = Counter()
        self._pool = torch.cuda.graph_pool_handle() if capture else None
        self._stream = torch.cuda.Stream(device) if capture else None

    @property
    def captured(self) -> int:
        """How many buckets have a graph."""
        return len(self._graphs)

    def bucket(self, rows: int, width: int) -> tuple[int, int] | None:
        """The (rows, width) a batch is padded to, or None where it runs eagerly."""
        at = bisect.bisect_left(ROW_STEPS, rows)
        if at == len(ROW_STEPS) or width > self.max_width:
            return None
        padded_width = min(-(-width // WIDTH_STEP) * WIDTH_STEP, self.max_width)
        if ROW_STEPS[at] * padded_width > self.max_tokens:
            return None
        return ROW_STEPS[at], padded_width

    def logits(self, rows: Sequence[Sequence[int]]) -> torch.Tensor | None:
        """The pass's output for `rows` (rows first, a tensor of its own), or None where
        the batch runs eagerly: graphs off, a shape too large or not seen before."""
        if not self.enabled or not rows:
            return None
        width = max(len(r) for r in rows)
        key = self.bucket(len(rows), width)
        if key is None:
            return None
        graph = self._graphs.get(key)
        if graph is None:
            self._seen[key] += 1
            if self._seen[key] < 2 or len(self._graphs) >= self.max_graphs:
                return None
            graph = self._build(key)
            if graph is None:
                return None
        ids, keep = self._inputs(rows, key)
        graph.ids.copy_(ids, non_blocking=True)
        graph.keep.copy_(keep, non_blocking=True)
        graph.replay()
        out = graph.out[: len(rows)]
        if out.dim() == 3:  # every position's logits (token models): the batch's own width
            out = out[:, :width]
        out = out.clone()  # the next replay writes the static output again
        if not graph.checked:
            plain = self._plain(rows)
            if not self._agrees(out, plain):
                return plain
            graph.checked = True
        return out

    def _inputs(self, rows: Sequence[Sequence[int]], key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The bucket-shaped ids and keep mask of `rows` on the host (pinned for a GPU):
        padding rows keep their first token, so no row of the mask is empty."""
        n_rows, width = key
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        keep = np.zeros((n_rows, width), dtype=np.int64)
        keep[: len(rows)] = np.arange(width) < lengths[:, None]
        keep[len(rows) :, 0] = 1
        ids = np.full((n_rows, width), self.pad_id, dtype=np.int64)
        ids[: len(rows)][keep[: len(rows)].astype(bool)] = np.fromiter(
            (t for r in rows for t in r), dtype=np.int64, count=int(lengths.sum())
        )
        ids_t, keep_t = torch.from_numpy(ids), torch.from_numpy(keep)
        if self.device.type == "cuda":
            return ids_t.pin_memory(), keep_t.pin_memory()
        return ids_t, keep_t

    def _run(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The pass on static inputs, the mask made 4-D and additive on the device."""
        blocked = (1 - keep[:, None, None, :]).to(self.dtype) * torch.finfo(self.dtype).min
        return self._forward(ids, blocked)

    def _build(self, key: tuple[int, int]) -> _Graph | None:
        """The graph of one bucket (captured on a GPU), or None with graphs turned off
        where capturing fails."""
        n_rows, width = key
        ids = torch.full((n_rows, width), self.pad_id, dtype=torch.int64, device=self.device)
        keep = torch.ones((n_rows, width), dtype=torch.int64, device=self.device)
        try:
            if not self.capture:
                out = self._run(ids, keep).clone()
                graph = _Graph(ids, keep, out, lambda: out.copy_(self._run(ids, keep)))
            else:
                graph = self._capture(ids, keep)
        except Exception as exc:  # any failure means: run this model eagerly
            self._give_up(f"capturing a graph of {n_rows} rows × {width} tokens failed: {exc!r}")
            return None
        self._graphs[key] = graph
        log.debug("forward graph captured", extra={"rows": n_rows, "width": width, "graphs": len(self._graphs)})
        return graph

    def _capture(self, ids: torch.Tensor, keep: torch.Tensor) -> _Graph:
        """Warm the pass up on a side stream, then capture it (PyTorch's recipe), one capture
        in the process at a time. The graphs share one memory pool: they run one at a time
        on one stream, and each replay's output is copied out before the next replay is
        queued. `thread_local`: the server's other threads (another model's worker, pinned
        copies) may allocate meanwhile without breaking the capture."""
        assert self._stream is not None
        current = torch.cuda.current_stream(self.device)
        with _CAPTURING:
            self._stream.wait_stream(current)
            with torch.cuda.stream(self._stream):
                for _ in range(2):
                    self._run(ids, keep)
            current.wait_stream(self._stream)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=self._pool, stream=self._stream, capture_error_mode="thread_local"):
                    out = self._run(ids, keep)
            except BaseException:
                self._abandon(current)
                raise
        return _Graph(ids, keep, out, graph.replay)

    def _abandon(self, current: torch.cuda.Stream) -> None:
        """After a failed capture: this thread back on its own stream, and the allocator told
        that the capture's allocations have ended (a failed `capture_end` skips both)."""
        torch.cuda.set_stream(current)
        assert self._pool is not None
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        try:
            torch._C._cuda_endAllocateToPool(index, self._pool)
        except Exception as exc:  # the capture had ended cleanly: nothing to end
            log.debug("no capture allocations to end: %r", exc)

    def _agrees(self, out: torch.Tensor, plain: torch.Tensor) -> bool:
        """Whether a graph's first batch gives the plain pass's output (else graphs off)."""
        plain = plain.to(out.dtype)
        scale = max(1.0, float(plain.abs().max()))
        worst = float((out - plain).abs().max()) if out.shape == plain.shape else float("inf")
        if worst <= TOLERANCE.get(self.dtype, HALF_TOLERANCE) * scale:
            return True
        self._give_up(f"a graph's output differs from the plain pass by {worst:.3g} (scale {scale:.3g})")
        return False

    def _give_up(self, why: str) -> None:
        self.enabled = False
        self._graphs.clear()
        log.warning("CUDA graphs off for this model, its passes run eagerly: %s", why)
