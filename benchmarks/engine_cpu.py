"""The server's CPU per SHAP explanation beyond the model's own forward passes, by stage.

What is measured (issue 10, section 1's target: ≤ 15 ms median on the 2-core machine):

- a whybert server in its own process (`benchmarks/serve_instrumented.py`, which is
  `whybert serve` with its forward passes recorded) serves a tiny random BERT (tests/
  conftest.py's `make_tiny_bert`) with one torch thread (OMP_NUM_THREADS=1), the cache off;
- 16 concurrent callers (`whybert.AsyncClient`) explain texts of 20–40 word pieces, one text
  per request, SHAP with max_evals 500, all labels;
- **server CPU**: the server process's utime + stime (/proc/PID/stat) over the run, per
  explanation (after a warm-up round of explanations);
- **model CPU**: a separate process (one torch thread) runs `Classifier.forward` on exactly
  the batches the server ran in that window (same rows, same groups, same order), timed
  with `time.process_time`; per explanation;
- **non-model CPU** = server CPU − model CPU. The median over `--repeats` runs is the figure.
  The forward passes' thread CPU measured inside the server is printed beside it;
- **by stage**: one more run with `--stages`, where the runner charges each wrapped
  function's exclusive thread CPU to its stage (prepare_text, the engine's rounds, the task
  glue, the worker's queue and batch plumbing, the result and protobuf conversion); what no
  stage covers (gRPC core, asyncio, the event loop's own work) is the rest. Also the CPU of
  each server thread. The timers cost a little themselves: compare this run's total with
  the plain runs'. Beside it, the same texts' `prepare_text` and engine steps driven alone
  in a separate one-thread process (no server, the forward passes between them not timed):
  what the algorithm costs by itself.

Run: `python benchmarks/engine_cpu.py [--texts 64 --callers 16 --repeats 3]` (two to three
minutes on 2 cores). The machine should be otherwise idle: other processes do not count in
the server's CPU, but they stretch the run and disturb caches.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from explain import code_state, load_average, wait_serving

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # conftest.make_tiny_bert

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
MODEL_STAGE = "model: forward pass (Classifier.launch)"


def make_texts(tokenizer: Any, n: int, lo: int = 20, hi: int = 40) -> list[str]:
    """`n` texts of `lo`–`hi` word pieces ([CLS] and [SEP] not counted), spread evenly:
    explain.py's review sentences joined, cut by words to the length nearest a target."""
    from explain import TEXTS

    out = []
    for i in range(n):
        target = lo + (i * 8) % (hi - lo + 1)
        parts = [TEXTS[(i + k * 11) % len(TEXTS)] for k in range(3)]
        words = ", and ".join(parts).split()
        lengths = [len(tokenizer(" ".join(words[:k]), add_special_tokens=False)["input_ids"])
                   for k in range(1, len(words) + 1)]
        fits = [k for k, length in enumerate(lengths, 1) if lo <= length <= hi]
        best = min(fits, key=lambda k: (abs(lengths[k - 1] - target), k))
        out.append(" ".join(words[:best]))
    return out


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def snapshot(server: subprocess.Popen[bytes], report: Path) -> dict[str, Any]:
    """Ask the runner for a snapshot (SIGUSR1) and wait for it."""
    before = len(report.read_text().splitlines()) if report.exists() else 0
    server.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = report.read_text().splitlines() if report.exists() else []
        if len(lines) > before:
            data: dict[str, Any] = json.loads(lines[before])
            return data
        time.sleep(0.05)
    raise TimeoutError("the server wrote no snapshot")


async def explain_all(target: str, texts: list[str], callers: int, max_evals: int, label: str) -> list[Any]:
    """`callers` concurrent callers, each explaining one text per request until none is left."""
    import whybert

    async with whybert.AsyncClient(target, timeout=600) as client:
        pending = list(reversed(texts))
        results: list[Any] = []

        async def caller() -> None:
            while pending:
                text = pending.pop()
                (e,) = await client.explain([text], max_evals=max_evals, targets="all")
                results.append(e)
                if len(results) % 16 == 0 or len(results) == len(texts):
                    print(f"    {label}: {len(results)}/{len(texts)} explained", flush=True)

        await asyncio.gather(*[caller() for _ in range(callers)])
    return results


def replay(rows_file: Path, model_dir: Path, passes: int) -> dict[str, float]:
    """The model alone, in a separate one-thread process, on the batches the server ran."""
    out = subprocess.run(
        [sys.executable, __file__, "--replay", str(rows_file), "--model-dir", str(model_dir),
         "--passes", str(passes)],
        env={**os.environ, **ONE_THREAD}, capture_output=True, text=True, check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run_replay(rows_file: Path, model_dir: Path, passes: int) -> int:
    """(child process) Time `Classifier.forward` on the recorded calls; print JSON."""
    import torch
    from whybert_service.models.loading import load_directory

    torch.set_num_threads(1)
    classifier = load_directory("tiny", model_dir, torch.device("cpu"), torch.float32)
    calls: list[list[list[int]]] = pickle.loads(rows_file.read_bytes())
    for rows in calls[:20]:  # warm-up
        classifier.forward(rows)
    cpu, wall = [], []
    for _ in range(passes):
        c0, w0 = time.process_time(), time.perf_counter()
        for rows in calls:
            classifier.forward(rows)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    print(json.dumps({
        "cpu": statistics.median(cpu), "wall": statistics.median(wall), "calls": len(calls),
        "rows": sum(len(r) for r in calls), "cpu_passes": cpu,
    }))
    return 0


def engine_alone(texts_file: Path, model_dir: Path, max_evals: int, passes: int) -> dict[str, float]:
    """The same texts' engines driven alone in a separate one-thread process (no server)."""
    out = subprocess.run(
        [sys.executable, __file__, "--engine-alone", str(texts_file), "--model-dir", str(model_dir),
         "--passes", str(passes), "--max-evals", str(max_evals)],
        env={**os.environ, **ONE_THREAD}, capture_output=True, text=True, check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run_engine_alone(texts_file: Path, model_dir: Path, max_evals: int, passes: int) -> int:
    """(child process) Thread CPU of `prepare_text`, building the engine and its `feed`
    calls, per explanation, with the model's forward passes between them left out; JSON."""
    import torch
    from whybert_service.explainers.partition import MaskingSpec, PartitionEngine, prepare_text
    from whybert_service.models.loading import load_directory
    from whybert_service.types import OutputName

    torch.set_num_threads(1)
    classifier = load_directory("tiny", model_dir, torch.device("cpu"), torch.float32)
    spec = MaskingSpec.for_tokenizer(classifier.tokenizer)
    texts: list[str] = json.loads(texts_file.read_text())

    def encode(strings: Any) -> list[list[int]]:
        ids: list[list[int]] = classifier.encode(list(strings)).ids
        return ids

    everything = list(range(classifier.num_labels))
    clock = time.thread_time
    per_pass: list[tuple[float, float]] = []
    for _ in range(passes + 1):  # the first pass warms up
        prepare = engine = 0.0
        for text in texts:
            t0 = clock()
            prepared = prepare_text(classifier.tokenizer, spec, text, classifier.max_length, encode)
            t1 = clock()
            e = PartitionEngine(prepared, spec, encode, output=OutputName.PROBABILITY,
                                targets=lambda _logits: everything, max_evals=max_evals)
            engine += clock() - t1
            prepare += t1 - t0
            while not e.done:
                logits = classifier.forward([r.tolist() for r in e.rows()])
                t2 = clock()
                e.feed(logits)
                engine += clock() - t2
        per_pass.append((prepare / len(texts), engine / len(texts)))
    measured = per_pass[1:]
    print(json.dumps({
        "prepare_ms": 1000 * statistics.median(p for p, _ in measured),
        "engine_ms": 1000 * statistics.median(e for _, e in measured),
    }))
    return 0


def measure(
    label: str, model_dir: Path, work: Path, texts: list[str], args: argparse.Namespace, stages: bool
) -> dict[str, Any]:
    """One server process, one timed run of all texts; CPU figures per explanation."""
    report = work / f"{label}.jsonl"
    cmd = [
        sys.executable, str(HERE / "serve_instrumented.py"), "--report", str(report),
        *(["--stages"] if stages else []), "--",
        "--host", "127.0.0.1", "--port", str(args.port), "--metrics-port", "0", "--no-builtin-model",
        "--model", f"tiny={model_dir}", "--device", "cpu", "--cache-entries", "0",
    ]
    server = subprocess.Popen(cmd, env={**os.environ, **ONE_THREAD})
    target = f"127.0.0.1:{args.port}"
    try:
        asyncio.run(wait_serving(target))
        warm = [f"{t} (warm-up)" for t in texts[: args.callers]]
        asyncio.run(explain_all(target, warm, args.callers, args.max_evals, f"{label} warm-up"))
        time.sleep(0.5)
        first = snapshot(server, report)
        cpu0, t0 = proc_cpu(server.pid), time.perf_counter()
        results = asyncio.run(explain_all(target, texts, args.callers, args.max_evals, label))
        cpu1, t1 = proc_cpu(server.pid), time.perf_counter()
        last = snapshot(server, report)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    n = len(results)
    model = replay(Path(last["rows_file"]), model_dir, args.passes)
    server_rows = last["forward_rows"] - first["forward_rows"]
    asked_rows = sum(e.model_rows for e in results)
    if server_rows != asked_rows or model["rows"] != server_rows:
        print(f"  [warning] rows differ: forwarded {server_rows}, explanations report {asked_rows}, "
              f"replayed {model['rows']}", flush=True)

    def delta(name: str) -> float:
        cpu: float = last["stages"][name]["cpu"] - first["stages"][name]["cpu"]
        return cpu

    out: dict[str, Any] = {
        "label": label,
        "explanations": n,
        "wall_s": t1 - t0,
        "server_cpu_ms": 1000 * (cpu1 - cpu0) / n,
        "model_cpu_ms": 1000 * model["cpu"] / n,
        "model_cpu_in_server_ms": 1000 * delta(MODEL_STAGE) / n,
        "forward_calls_per_explanation": model["calls"] / n,
        "rows_per_explanation": server_rows / n,
        "max_additivity_error": max(e.additivity_error for e in results),
        "server_cpu_by_snapshots_ms": 1000 * (last["process_cpu"] - first["process_cpu"]) / n,
        "load_average_after": load_average(),
    }
    out["non_model_cpu_ms"] = out["server_cpu_ms"] - out["model_cpu_ms"]
    if stages:
        out["stages_ms"] = {
            name: 1000 * delta(name) / n for name in last["stages"] if name != MODEL_STAGE
        }
        out["stage_calls"] = {
            name: (last["stages"][name]["calls"] - first["stages"][name]["calls"]) / n for name in last["stages"]
        }
        out["threads_ms"] = {
            name: 1000 * (cpu - first["threads"].get(name, 0.0)) / n for name, cpu in last["threads"].items()
        }
    print(f"  {label}: server {out['server_cpu_ms']:.1f} ms, model {out['model_cpu_ms']:.1f} ms "
          f"(in the server {out['model_cpu_in_server_ms']:.1f}), non-model {out['non_model_cpu_ms']:.1f} ms "
          f"per explanation; {out['rows_per_explanation']:.0f} rows, "
          f"{out['forward_calls_per_explanation']:.2f} forward calls per explanation; wall {out['wall_s']:.1f} s; "
          f"load average {out['load_average_after']}",
          flush=True)
    return out


def print_breakdown(b: dict[str, Any]) -> None:
    stages: dict[str, float] = b["stages_ms"]
    calls: dict[str, float] = b["stage_calls"]
    covered = sum(stages.values())
    rest = b["server_cpu_ms"] - b["model_cpu_in_server_ms"] - covered
    print(f"\nBy stage (the --stages run; exclusive thread CPU, ms per explanation; "
          f"server {b['server_cpu_ms']:.1f} ms in all):")
    print(f"  {'stage':52s} {'ms':>7s} {'calls':>8s}")
    print(f"  {MODEL_STAGE:52s} {b['model_cpu_in_server_ms']:7.2f} {calls[MODEL_STAGE]:8.1f}")
    for name in sorted(stages, key=lambda s: -stages[s]):
        print(f"  {name:52s} {stages[name]:7.2f} {calls[name]:8.1f}")
    print(f"  {'rest (gRPC core, asyncio, event loop, unwrapped code)':52s} {rest:7.2f}")
    groups = {
        "prepare_text": [s for s in stages if s.startswith("prepare")],
        "engine rounds (feed, construct)": [s for s in stages if s.startswith("engine")],
        "task glue": [s for s in stages if s.startswith("task")],
        "worker queue and plumbing": [s for s in stages if s.startswith("worker")],
        "result + protobuf conversion": [s for s in stages if s.startswith(("result", "protobuf"))],
    }
    print("  grouped: " + "; ".join(f"{g} {sum(stages[s] for s in members):.2f}" for g, members in groups.items())
          + f"; rest {rest:.2f}")
    alone = b["alone"]
    print(f"  the same texts' engines driven alone in one process, no server: prepare_text "
          f"{alone['prepare_ms']:.2f} ms, engine (construct + feed) {alone['engine_ms']:.2f} ms")
    print(f"\nBy server thread (CPU ms per explanation; the process between the two snapshots: "
          f"{b['server_cpu_by_snapshots_ms']:.1f}):")
    for name, ms in sorted(b["threads_ms"].items(), key=lambda kv: -kv[1]):
        if ms >= 0.05:
            print(f"  {name:40s} {ms:7.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--max-evals", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3, help="plain runs (the median is the figure)")
    parser.add_argument("--passes", type=int, default=3, help="replays of the model alone per run (median)")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the --stages run")
    parser.add_argument("--port", type=int, default=50581)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--replay", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--engine-alone", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replay:
        return run_replay(Path(args.replay), Path(args.model_dir), args.passes)
    if args.engine_alone:
        return run_engine_alone(Path(args.engine_alone), Path(args.model_dir), args.max_evals, args.passes)

    from conftest import make_tiny_bert
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = make_tiny_bert(work / "tiny")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        texts = make_texts(tokenizer, args.texts)
        pieces = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        print(f"[setup] code: {code_state()}", flush=True)
        print(f"[setup] tiny BERT; {len(texts)} texts of {min(pieces)}–{max(pieces)} word pieces "
              f"(mean {statistics.mean(pieces):.1f}); max_evals {args.max_evals}, all labels, "
              f"{args.callers} callers, cache off, one torch thread", flush=True)
        runs = []
        for k in range(args.repeats):
            print(f"[run {k + 1}/{args.repeats}]", flush=True)
            runs.append(measure(f"run{k + 1}", model_dir, work, texts, args, stages=False))
        breakdown = None
        if not args.no_breakdown:
            print("[stages] the same run with stage timers", flush=True)
            breakdown = measure("stages", model_dir, work, texts, args, stages=True)
            print("[alone] the same texts' engines driven alone, no server", flush=True)
            texts_file = work / "texts.json"
            texts_file.write_text(json.dumps(texts))
            breakdown["alone"] = engine_alone(texts_file, model_dir, args.max_evals, args.passes)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print("\nPer explanation (ms of CPU), run by run:")
    print(f"  {'run':8s} {'server':>8s} {'model':>8s} {'non-model':>10s} {'model in server':>16s} {'wall s':>7s}")
    for r in [*runs, *([breakdown] if breakdown else [])]:
        print(f"  {r['label']:8s} {r['server_cpu_ms']:8.1f} {r['model_cpu_ms']:8.1f} {r['non_model_cpu_ms']:10.1f} "
              f"{r['model_cpu_in_server_ms']:16.1f} {r['wall_s']:7.1f}")
    print(f"  {'median':8s} {med('server_cpu_ms'):8.1f} {med('model_cpu_ms'):8.1f} {med('non_model_cpu_ms'):10.1f} "
          f"{med('model_cpu_in_server_ms'):16.1f}")
    goal = med("non_model_cpu_ms") <= 15
    print(f"\nnon-model CPU per explanation, median of {len(runs)} runs: {med('non_model_cpu_ms'):.1f} ms "
          f"(goal ≤ 15 ms: {'met' if goal else 'missed'}); server minus the forward CPU measured inside it: "
          f"{med('server_cpu_ms') - med('model_cpu_in_server_ms'):.1f} ms")
    if breakdown:
        print_breakdown(breakdown)
    if args.json:
        figures = {"code": code_state(), "runs": runs, "breakdown": breakdown, "pieces": pieces}
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
