"""`whybert serve`, with the model's forward passes recorded and, optionally, CPU timers on
the stages of a SHAP explanation: the runner that `benchmarks/engine_cpu.py` starts.

Nothing under `service/` changes: before the server starts, this module wraps a few of its
functions in place (functions looked up through a module or class attribute at call time).

- Always: `Classifier.launch` (the worker's forward pass; on a CPU it computes the logits,
  `collect` only hands them over) records the rows of every call (so the model alone can be
  timed later on exactly the batches the server ran) and its thread CPU (with one torch
  thread, a forward runs wholly on the calling thread).
- With `--stages`: every wrapped function charges its *exclusive* thread CPU (its own time
  less that of wrapped functions it calls, e.g. `deliver` less the engine step that runs in
  its callback) to its stage. A function the service no longer has is skipped (with a
  note on stderr). Each timed call costs about a microsecond of timer calls itself.

Each SIGUSR1 appends one JSON line to `--report` (cumulative counters, the process's and
each thread's CPU) and pickles the forward calls recorded since the previous snapshot to
`<report>.rows<N>.pkl`. Run: `python benchmarks/serve_instrumented.py --report FILE
[--stages] -- <whybert serve flags>`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

# (stage, owner, attribute): owner is a module path or "module:Class".
STAGES: list[tuple[str, str, str]] = [
    ("prepare_text", "whybert_service.explainers.shap_partition", "prepare_text"),
    ("engine: construct (first rows)", "whybert_service.explainers.partition.engine:PartitionEngine", "__init__"),
    ("engine: feed (round, next rows)", "whybert_service.explainers.partition.engine:PartitionEngine", "feed"),
    ("task: submit/callback glue", "whybert_service.explainers.partition.task:PartitionTask", "_submit"),
    ("task: submit/callback glue", "whybert_service.explainers.partition.task:PartitionTask", "_on_logits"),
    ("worker: submit", "whybert_service.batching.worker:ModelWorker", "_enqueue"),
    ("worker: queue push", "whybert_service.batching.queue:RowQueue", "push"),
    ("worker: take_batch", "whybert_service.batching.queue:RowQueue", "take_batch"),
    ("worker: queue scans (sweep, oldest, cost, head)", "whybert_service.batching.queue:RowQueue", "sweep"),
    ("worker: queue scans (sweep, oldest, cost, head)", "whybert_service.batching.queue:RowQueue",
     "oldest_enqueued_at"),
    ("worker: queue scans (sweep, oldest, cost, head)", "whybert_service.batching.queue:RowQueue", "pending_cost"),
    ("worker: queue scans (sweep, oldest, cost, head)", "whybert_service.batching.queue:RowQueue", "head_priority"),
    ("worker: _next_work (rest)", "whybert_service.batching.worker:ModelWorker", "_next_work"),
    ("worker: deliver", "whybert_service.batching.worker", "deliver"),
    ("worker: batch plumbing (run_batch, slices, groups)", "whybert_service.batching.worker:ModelWorker",
     "_run_batch"),
    ("worker: batch plumbing (run_batch, slices, groups)", "whybert_service.batching.worker:ModelWorker",
     "_run_work"),
    ("worker: batch plumbing (run_batch, slices, groups)", "whybert_service.batching.worker:ModelWorker",
     "_forward_grouped"),
    ("worker: batch plumbing (run_batch, slices, groups)", "whybert_service.batching.worker:ModelWorker",
     "_deliver"),
    ("worker: batch plumbing (run_batch, slices, groups)", "whybert_service.batching.worker:ModelWorker",
     "_live"),
    ("worker: batch plumbing (run_batch, slices, groups)", "whybert_service.batching.worker:ModelWorker",
     "_groups"),
    ("worker: metrics (queue depth, batch observations)", "whybert_service.batching.worker:ModelWorker",
     "_observe_batch"),
    ("worker: metrics (queue depth, batch observations)", "whybert_service.batching.worker:ModelWorker",
     "_batch_done"),
    ("result: explanation object", "whybert_service.explainers.base:Explainer", "result"),
    ("protobuf: validate, convert, size checks", "whybert_service.grpc.convert", "explain_response"),
    ("protobuf: validate, convert, size checks", "whybert_service.grpc.validation", "explain_params"),
    ("protobuf: validate, convert, size checks", "whybert_service.grpc.validation", "check_reply_size"),
    ("protobuf: validate, convert, size checks", "whybert_service.grpc.validation", "check_reply_sent"),
]
MODEL_STAGE = "model: forward pass (Classifier.launch)"
NAMES = sorted({s for s, _, _ in STAGES} | {MODEL_STAGE})
INDEX = {name: i for i, name in enumerate(NAMES)}


class _ThreadTotals:
    """One thread's counters: exclusive CPU and calls per stage, and the open-call stack."""

    def __init__(self) -> None:
        self.cpu = [0.0] * len(NAMES)
        self.calls = [0] * len(NAMES)
        self.stack: list[float] = []  # CPU of wrapped callees, per open wrapped call


_local = threading.local()
_all_totals: list[_ThreadTotals] = []
_totals_lock = threading.Lock()
_forward_calls: list[Sequence[Sequence[int]]] = []
_forward_wall = [0.0]


def _totals() -> _ThreadTotals:
    t: _ThreadTotals | None = getattr(_local, "totals", None)
    if t is None:
        t = _ThreadTotals()
        _local.totals = t
        with _totals_lock:
            _all_totals.append(t)
    return t


def timed(stage: str, fn: Callable[..., Any], record: bool = False) -> Callable[..., Any]:
    """`fn`, charging its exclusive thread CPU to `stage` (and recording rows if asked)."""
    index = INDEX[stage]
    clock = time.thread_time

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = _totals()
        t.stack.append(0.0)
        started = clock()
        wall = time.perf_counter() if record else 0.0
        try:
            return fn(*args, **kwargs)
        finally:
            elapsed = clock() - started
            inner = t.stack.pop()
            t.cpu[index] += elapsed - inner
            t.calls[index] += 1
            if t.stack:
                t.stack[-1] += elapsed
            if record:
                _forward_wall[0] += time.perf_counter() - wall
                _forward_calls.append(args[1])

    return wrapper


def _resolve(owner: str) -> Any:
    import importlib

    module_name, _, cls = owner.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, cls) if cls else module


def install(stages: bool) -> None:
    """Wrap `Classifier.launch` (always) and the stage functions (with `stages`)."""
    from whybert_service.models.classifier import Classifier

    Classifier.launch = timed(MODEL_STAGE, Classifier.launch, record=True)  # type: ignore[method-assign,unused-ignore]
    if stages:
        for stage, owner, attribute in STAGES:
            target = _resolve(owner)
            if not hasattr(target, attribute):  # the service changed: time what is still there
                print(f"[serve_instrumented] {owner}.{attribute} is gone; not timed", file=sys.stderr)
                continue
            setattr(target, attribute, timed(stage, getattr(target, attribute)))


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by thread name."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for entry in os.scandir("/proc/self/task"):
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            comm = Path(entry.path, "comm").read_text().strip()
        except OSError:
            continue
        name = names.get(int(entry.name), f"[{comm}]")
        name = name.split("_")[0] if name.startswith("asyncio_") else name
        name = "whybert-explain" if name.startswith("whybert-explain") else name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


class Reporter:
    """Writes a snapshot on SIGUSR1."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.recorded = 0

    def __call__(self, _signum: int, _frame: FrameType | None) -> None:
        cpu = [0.0] * len(NAMES)
        calls = [0] * len(NAMES)
        with _totals_lock:
            for t in _all_totals:
                for i in range(len(NAMES)):
                    cpu[i] += t.cpu[i]
                    calls[i] += t.calls[i]
        calls_now = len(_forward_calls)
        new = _forward_calls[self.recorded : calls_now]
        rows_file = f"{self.path}.rows{self.count}.pkl"
        snapshot: dict[str, Any] = {
            "time": time.monotonic(),
            "process_cpu": sum(os.times()[:2]),
            "threads": thread_cpu(),
            "stages": {name: {"cpu": cpu[i], "calls": calls[i]} for i, name in enumerate(NAMES)},
            "forward_calls": calls_now,
            "forward_rows": sum(len(rows) for rows in _forward_calls[:calls_now]),
            "forward_wall": _forward_wall[0],
            "rows_file": rows_file,
        }
        with open(rows_file, "wb") as f:
            pickle.dump([[list(r) for r in rows] for rows in new], f)
        self.recorded = calls_now
        self.count += 1
        with self.path.open("a") as f:
            f.write(json.dumps(snapshot) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", required=True, help="file the snapshots are appended to")
    parser.add_argument("--stages", action="store_true", help="time the stages, not only the forward passes")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("serve_args", nargs=argparse.REMAINDER, help="-- then the flags of whybert serve")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.torch_threads)
    install(args.stages)
    signal.signal(signal.SIGUSR1, Reporter(Path(args.report)))
    from whybert_service.cli import main as cli_main

    serve_args = args.serve_args[1:] if args.serve_args[:1] == ["--"] else args.serve_args
    return cli_main(["serve", *serve_args])


if __name__ == "__main__":
    raise SystemExit(main())
