"""Packed against padded forward passes on the CPU (`models/packing.py`), side by side.

The built-in model (MiniLM-L6 + adapter) runs the same batches both ways, alternately, in
one process: batches like a busy server's SHAP batches (rounds of several texts of 17–24
tokens), Predict batches of mixed texts (8–128 tokens), and rows of one length (where the
plain pass runs either way: the check that packing costs nothing there). Prints the mean
milliseconds per batch and packed / padded. Run: `python benchmarks/packing.py` (~1 minute on
2 cores; --repeats for steadier means).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def batches(rng: np.random.Generator) -> dict[str, list[list[int]]]:
    """Rows of token ids ([CLS] … [SEP]) of each kind measured."""

    def rows(lengths: np.ndarray) -> list[list[int]]:
        return [[101, *map(int, rng.integers(1000, 20000, int(n) - 2)), 102] for n in lengths]

    return {
        "SHAP-like: 43 rows, 17-24 tokens": rows(rng.integers(17, 25, 43)),
        "SHAP-like: 128 rows, 17-24 tokens": rows(rng.integers(17, 25, 128)),
        "Predict-like: 32 rows, 8-128 tokens": rows(rng.integers(8, 129, 32)),
        "Predict-like: 64 rows, 8-64 tokens": rows(rng.integers(8, 65, 64)),
        "one length: 43 rows of 22 tokens": rows(np.full(43, 22)),
    }


def seconds(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9, help="runs of each batch each way (alternating)")
    args = parser.parse_args()

    import torch
    from whybert_service.models.builtin import load_builtin

    classifier = load_builtin(torch.device("cpu"), torch.float32)
    packer = classifier.packer
    if packer is None:
        print("the built-in model does not pack here (not on a CPU, or not a packed architecture)")
        return 1
    print(f"[setup] {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"{'batch':38} {'tokens':>7} {'padded':>7} {'padded ms':>10} {'packed ms':>10} {'packed/padded':>14}")
    for name, rows in batches(np.random.default_rng(0)).items():

        def padded(rows: list[list[int]] = rows) -> np.ndarray:
            classifier.packer = None
            try:
                return classifier.forward(rows)
            finally:
                classifier.packer = packer

        def packed(rows: list[list[int]] = rows) -> np.ndarray:
            return classifier.forward(rows)

        assert np.abs(padded() - packed()).max() < 1e-4  # warm-up, and the same answers both ways
        a = b = 0.0
        for _ in range(args.repeats):  # alternate, so that the machine's drift hits both
            a += seconds(padded)
            b += seconds(packed)
        a, b = 1e3 * a / args.repeats, 1e3 * b / args.repeats
        tokens, width = sum(map(len, rows)), len(rows) * max(map(len, rows))
        print(f"{name:38} {tokens:7d} {width:7d} {a:10.1f} {b:10.1f} {b / a:14.3f}", flush=True)
    print(f"[done] load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
