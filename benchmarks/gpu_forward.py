"""Why does a server batch cost more than a lone forward pass of its size on a GPU?

One forward pass of the BERT-base sized random model (bfloat16, SDPA) timed several ways,
on batches shaped as the server's are (rows of 17–28 tokens from many explanations) and as
the limit's are (rows of one length): wall time per batch with the device synchronised,
the CPU time until the launch returns, a mask built by the model or passed ready-made,
SDPA's kernels forced one at a time, batches launched back to back (the worker's pipeline),
a CUDA graph replay of the same shapes (what the Python launch costs), the same batches
through whybert's own graphs (`models/graphs.py`), and the profiler's top operators.
Run on a GPU: `python benchmarks/gpu_forward.py --tokenizer-dir DIR`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from explain import bert_base_random, load_classifier


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """(wall ms per call with the device synchronised, CPU ms until `fn` returned)."""
    fn()
    sync()
    wall = launch = 0.0
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        launch += time.perf_counter() - started
        sync()
        wall += time.perf_counter() - started
    return 1000 * wall / repeat, 1000 * launch / repeat


def pipelined(clf: Any, batches: list[list[list[int]]]) -> float:
    """Wall ms per batch as the worker runs them: batch N+1 launched before N is collected."""
    started, flight = time.perf_counter(), None
    for rows in batches:
        launched = clf.launch(rows)
        if flight is not None:
            clf.collect(flight)
        flight = launched
    if flight is not None:
        clf.collect(flight)
    return 1000 * (time.perf_counter() - started) / len(batches)


def rows_of(rng: np.random.Generator, n: int, mixed: bool, vocab: int) -> list[list[int]]:
    lengths = rng.integers(17, 29, size=n) if mixed else np.full(n, 26)
    return [[101, *rng.integers(1000, vocab, size=int(k) - 2).tolist(), 102] for k in lengths]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer-dir", default=None)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", default=None)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of this script only")
    parser.add_argument("--sizes", default="128,183,512")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cuda = args.device == "cuda"
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        clf = load_classifier(
            bert_base_random(Path(tmp), args.tokenizer_dir), args.device, "bfloat16" if cuda else "float32"
        )
    model, vocab = clf.model, clf.model.config.vocab_size
    dtype = clf.dtype

    def four_d(mask: torch.Tensor) -> torch.Tensor:
        neg = torch.finfo(dtype).min
        return ((1 - mask[:, None, None, :].to(dtype)) * neg).contiguous()

    def call(ids: torch.Tensor, mask: torch.Tensor | None) -> Callable[[], Any]:
        return lambda: model(input_ids=ids, attention_mask=mask)

    def line(name: str, value: Any) -> None:
        report[name] = value
        print(f"{name}: {value}", flush=True)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    n = args.repeat
    backends = (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH, SDPBackend.CUDNN_ATTENTION)[: 3 if cuda else 1]
    for b in [int(x) for x in args.sizes.split(",")]:
        for mixed in (False, True):
            rows = rows_of(rng, b, mixed, vocab)
            tag = f"B{b} {'mixed' if mixed else 'uniform'}"
            ids, mask = clf.pad(rows)
            line(f"{tag} launch+collect (wall, launch ms)", timed(lambda r=rows: clf.collect(clf.launch(r)), n))
            with torch.inference_mode():
                line(f"{tag} model only", timed(call(ids, mask), n))
                if mask is None:
                    continue
                m4 = four_d(mask)
                line(f"{tag} ready 4D mask", timed(call(ids, m4), n))
                line(f"{tag} no mask (wrong values, cost only)", timed(call(ids, None), n))
                for backend in backends:
                    try:
                        with sdpa_kernel([backend]):
                            line(f"{tag} 4D mask, {backend.name}", timed(call(ids, m4), n))
                    except RuntimeError as exc:
                        line(f"{tag} 4D mask, {backend.name}", f"refused: {str(exc)[:80]}")

    # The worker's pipeline: launch N+1, then collect N (events), against launch-collect.
    for mixed in (False, True):
        batches = [rows_of(rng, 183, mixed, vocab) for _ in range(40 if cuda else 2)]
        tag = "mixed" if mixed else "uniform"
        clf.collect(clf.launch(batches[0]))
        started = time.perf_counter()
        for rows in batches:
            clf.collect(clf.launch(rows))
        serial = (time.perf_counter() - started) / len(batches)
        line(f"B183 {tag}: serial / pipelined ms per batch", (1000 * serial, pipelined(clf, batches)))

    # whybert's own graphs (models/graphs.py) on the same kinds of batches through
    # Classifier.launch: a bucket captured on its second sight and checked, then replayed.
    # What a server batch's launch costs the worker thread with graphs on.
    if cuda and clf.use_graphs():
        graphs = clf.graphs
        assert graphs is not None
        for b in [int(x) for x in args.sizes.split(",")]:
            for mixed in (False, True):
                rows = rows_of(rng, b, mixed, vocab)
                for _ in range(2):
                    clf.collect(clf.launch(rows))
                tag = f"graphs B{b} {'mixed' if mixed else 'uniform'}"
                line(f"{tag} launch+collect (wall, launch ms)", timed(lambda r=rows: clf.collect(clf.launch(r)), n))
        batches = [rows_of(rng, 183, True, vocab) for _ in range(40)]
        for rows in batches[:2]:
            clf.collect(clf.launch(rows))
        line("graphs B183 mixed: pipelined ms per batch", pipelined(clf, batches))
        line("graphs captured", graphs.captured if graphs.enabled else "off (see the warning above)")
        clf.graphs = None

    # A CUDA graph of the same forward: the device's own time, without Python's launches.
    for b, width in ((128, 32), (256, 32), (512, 32), (1024, 32)) if cuda else ():
        static_ids = torch.randint(1000, vocab, (b, width), device=args.device)
        static_mask = four_d(torch.ones(b, width, dtype=torch.long, device=args.device))
        try:
            with torch.inference_mode():
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):
                        model(input_ids=static_ids, attention_mask=static_mask)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    model(input_ids=static_ids, attention_mask=static_mask)
                line(f"graph B{b}x{width} replay ms", timed(graph.replay, n)[0])
                line(f"eager B{b}x{width} ms", timed(call(static_ids, static_mask), n)[0])
        except Exception as exc:  # a measurement script: report and go on
            line(f"graph B{b}x{width}", f"failed: {type(exc).__name__}: {str(exc)[:120]}")

    from torch.profiler import ProfilerActivity, profile

    for mixed in (False, True):
        rows = rows_of(rng, 183, mixed, vocab)
        clf.collect(clf.launch(rows))
        with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
            for _ in range(5 if cuda else 1):
                clf.collect(clf.launch(rows))
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=48)
        print(f"== profile B183 {'mixed' if mixed else 'uniform'} (5 batches), by self CPU\n{table}", flush=True)
        report[f"profile {'mixed' if mixed else 'uniform'}"] = table
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
