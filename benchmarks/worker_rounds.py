"""The worker's own CPU per SHAP round, with the model taken out: what queueing a round,
cutting batches and handing back logits cost, beside what they cost with a future per round.

16 fake explanations, each resubmitting a round of 5–6 rows of 32 tokens the moment its
logits arrive (on the worker thread, as an explanation's rounds do), for `--rounds` rounds,
on a stub model that returns zeros at once. Process CPU per round, two ways in one run:

- **receiver**: `ModelWorker.submit_to`, what `PartitionTask` uses (a function called once);
- **future**: `ModelWorker.submit` and `add_done_callback`, a `concurrent.futures.Future`
  per round (what the tasks used before).

Run: `python benchmarks/worker_rounds.py [--rounds 300 --repeats 5]` (seconds).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

import numpy as np
import torch
from whybert_service.batching.worker import ModelWorker, WorkerConfig
from whybert_service.context import Priority, RequestContext
from whybert_service.models.classifier import Launched

ROW = [101, *range(1000, 1030), 102]


class StubClassifier:
    """Logits of zeros at once: only the worker's own work is left to measure."""

    name = "stub"
    num_labels = 2
    device = torch.device("cpu")
    pad_id = 0
    kind = "sequence"
    max_length = 128
    packer = None
    graphs = None

    def launch(self, rows: list[list[int]], positions: Any = None) -> Launched:
        return Launched(torch.zeros((len(rows), self.num_labels)))

    def collect(self, launched: Launched) -> np.ndarray:
        out: np.ndarray = launched.logits.numpy()
        return out

    def forward(self, rows: list[list[int]]) -> np.ndarray:
        return np.zeros((len(rows), self.num_labels), np.float32)


def run(how: str, explanations: int, rounds: int) -> float:
    """Process CPU seconds per round."""
    worker = ModelWorker(StubClassifier(), WorkerConfig(max_batch_seconds=None, max_batch_delay_s=0.0))  # type: ignore[arg-type]
    worker._warm_up = lambda: None  # type: ignore[method-assign]
    worker.start()
    done, left, lock = threading.Event(), [explanations], threading.Lock()

    def explanation() -> None:
        context = RequestContext(priority=Priority.EXPLAIN)
        served = [0]

        def next_round() -> None:
            rows = [list(ROW) for _ in range(5 + served[0] % 2)]
            if how == "receiver":
                worker.submit_to(rows, context, on_receiver)
            else:
                worker.submit(rows, context).add_done_callback(on_future)

        def advance() -> None:
            served[0] += 1
            if served[0] < rounds:
                next_round()
                return
            with lock:
                left[0] -= 1
                if not left[0]:
                    done.set()

        def on_receiver(result: Any, error: BaseException | None) -> None:
            assert error is None, error
            advance()

        def on_future(future: Any) -> None:
            future.result()
            advance()

        next_round()

    started = time.process_time()
    for _ in range(explanations):
        explanation()
    done.wait(120)
    cpu = time.process_time() - started
    worker.stop()
    return cpu / (explanations * rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--explanations", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ways: dict[str, list[float]] = {"receiver": [], "future": []}
    run("receiver", args.explanations, 20)  # warm up
    for k in range(args.repeats):
        for how in ways:  # side by side, alternating
            ways[how].append(run(how, args.explanations, args.rounds))
        print(f"  repeat {k + 1}/{args.repeats}: " + ", ".join(f"{h} {1e6 * v[-1]:.1f} µs" for h, v in ways.items()),
              flush=True)
    receiver, future = (statistics.median(v) for v in ways.values())
    print(f"\nworker CPU per round (median of {args.repeats}): receiver {1e6 * receiver:.1f} µs, "
          f"future {1e6 * future:.1f} µs; receiver / future = {receiver / future:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
