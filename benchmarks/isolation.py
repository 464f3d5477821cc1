"""Does one caller's largest request hurt another caller, and does the server let go of it?

Issue 10, section 5 ("Isolation"). A whybert server runs in its own process (cache off,
metrics on). For each kind of heavy work in turn, a heavy caller sends the largest request
the limits allow, with a deadline (`--deadline`, default 20 s):

- **shap**: 64 texts of 20,000 characters, max_evals 3125, all labels (64 × 3125 = the
  200,000-row request limit);
- **lime**: 20 texts of 20,000 characters, 10,000 samples, all labels (200,000 rows);
- **ig**: 64 texts of 20,000 characters, 512 steps, all labels.

Meanwhile, on its own channel, a second caller sends Predict (one short text) back to back
and, on a third channel, a small Explain (SHAP, max_evals 50, one short text) every 3 seconds
until 2.5 s before the deadline (each on its own, so they overlap when slow; those still
running at the heavy caller's deadline are cancelled then, so that only the heavy work is
left to stop).
Measured, against the goals of the issue:

- Predict p50/p95 while the heavy request runs, against its idle p95 (measured first):
  goal p95 ≤ 3 × idle p95 + one batch time. "One batch time" is measured at idle in this
  process on the same model, with the token budget the server was cutting batches to at the
  end of the phase (`whybert_batch_token_budget`: `--max-batch-tokens`, default 8192, or
  less where the server's time bound `--max-batch-ms` shrank it): one forward batch of rows
  as long as the model reads (shap, lime) or one forward + backward step batch (ig);
- the small Explain's duration: goal ≤ 2 s (a cancelled one counts as missed);
- after the heavy caller's deadline, how long until the server's CPU is idle: /proc/PID/stat
  sampled every 100 ms; idle is the first 1-second window with the server below 5% of a core;
  goal ≤ 2 s;
- the server's RSS (VmRSS sampled every 100 ms, and VmHWM after a reset through
  /proc/PID/clear_refs) from before the request until idle: goal, for LIME, growth ≤ 1 GB.

The model is the built-in `sentiment` model (256-token window) or, with `--tiny`, the tests'
tiny random BERT (128 tokens); the server's other settings are its defaults but for
`--max-batch-tokens` and `--max-batch-ms`. Run: `python benchmarks/isolation.py [--tiny]
[--deadline 20] [--max-batch-tokens 8192] [--max-batch-ms 200] [--phases shap,lime,ig]`
(about a minute a phase on 2 cores; longer when the server stays busy after a deadline).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from explain import code_state, load_average, scrape, wait_serving

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # conftest.make_tiny_bert

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHORT = "the food was great but the service was painfully slow"
IDLE_CPU = 0.05  # of one core, over a 1-second window

HEAVY: dict[str, tuple[int, dict[str, Any]]] = {
    "shap": (64, {"explainer": "shap-partition", "max_evals": 3125}),
    "lime": (20, {"explainer": "lime", "num_samples": 10_000}),
    "ig": (64, {"explainer": "integrated-gradients", "n_steps": 512}),
}


def long_texts(n: int, chars: int = 20_000) -> list[str]:
    """`n` different texts of `chars` characters: the review sentences in a different order each."""
    from explain import TEXTS

    out = []
    for i in range(n):
        order = [TEXTS[(i + k * 7) % len(TEXTS)] for k in range(len(TEXTS))]
        text = ""
        k = 0
        while len(text) < chars:
            text += order[k % len(order)] + (". " if k % 3 == 2 else ", ")
            k += 1
        out.append(text[:chars].rsplit(" ", 1)[0])
    return out


# ---- the server process, sampled ----------------------------------------------------------


@dataclass
class Sample:
    t: float
    cpu: float  # utime + stime, seconds
    rss: int  # bytes


@dataclass
class Sampler:
    """Samples a process's CPU and RSS every `period` seconds on a thread."""

    pid: int
    period: float = 0.1
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.is_set():
            try:
                fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
                rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            except OSError:
                return
            self.samples.append(Sample(time.monotonic(), (int(fields[11]) + int(fields[12])) / tick, rss))
            self._stop.wait(self.period)

    def idle_after(self, since: float, window: float = 1.0) -> float | None:
        """Start of the first `window` after `since` over which CPU < IDLE_CPU of a core."""
        s = [x for x in self.samples if x.t >= since - self.period]
        for i in range(len(s)):
            j = next((j for j in range(i, len(s)) if s[j].t - s[i].t >= window), None)
            if j is None:
                return None
            if (s[j].cpu - s[i].cpu) / (s[j].t - s[i].t) < IDLE_CPU:
                return max(s[i].t, since)
        return None

    def wait_idle(self, since: float, timeout: float) -> float | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = self.idle_after(since)
            if found is not None:
                return found
            time.sleep(0.2)
        return None


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss(pid: int) -> None:
    """Reset the process's VmHWM (peak RSS) to its current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


# ---- batch times at idle, in this process -------------------------------------------------


def batch_times(model_dir: Path, max_batch_tokens: int) -> tuple[float, float, int]:
    """Seconds of one forward batch and of one forward + backward step batch at the server's
    token budget, rows as long as the model reads (median of 3, default torch threads). A
    model that packs its rows (on the CPU) fills the budget exactly: the last row is cut to
    what is left of it, as the server's batches can hold."""
    import torch
    from whybert_service.models.loading import load_directory

    classifier = load_directory("probe", model_dir, torch.device("cpu"), torch.float32)
    width = classifier.max_length
    lengths = [width] * max(1, max_batch_tokens // width)
    if classifier.packer is not None and max_batch_tokens % width >= 2 and max_batch_tokens > width:
        lengths.append(max_batch_tokens % width)
    ids = [[101] + [1996 + (i * 31 + j) % 2000 for j in range(n - 2)] + [102] for i, n in enumerate(lengths)]
    forward, backward = [], []
    for _ in range(4):
        started = time.perf_counter()
        classifier.forward(ids)
        forward.append(time.perf_counter() - started)
        input_ids, mask = classifier.pad(ids[: max(1, max_batch_tokens // width)])  # a step batch: one length
        started = time.perf_counter()
        embeddings = classifier.input_embeddings()(input_ids).detach().requires_grad_()
        logits = classifier.model(inputs_embeds=embeddings, attention_mask=mask).logits
        logits[:, 0].sum().backward()
        backward.append(time.perf_counter() - started)
    return statistics.median(forward[1:]), statistics.median(backward[1:]), width


# ---- callers ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def predict_latencies(client: Any, until: float, pause: float = 0.02) -> tuple[list[float], int]:
    """Predict one short text back to back until `until`; latencies and failures."""
    import whybert

    latencies, failures = [], 0
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            await client.predict([SHORT], timeout=60)
            latencies.append(time.monotonic() - started)
        except whybert.WhybertError:
            failures += 1
        await asyncio.sleep(pause)
    return latencies, failures


async def small_explains(
    client: Any, until: float, every: float, stop_at: float | None = None
) -> list[tuple[float, str]]:
    """A small SHAP Explain (max_evals 50, one short text) sent every `every` seconds until
    `until`, each on its own (they overlap when slow): (seconds, outcome) of each. Those
    still running at `stop_at` are cancelled ("cancelled": their seconds are a lower bound),
    so that they do not keep the server busy after the heavy caller's deadline."""
    import whybert

    async def one(i: int) -> tuple[float, str]:
        started = time.monotonic()
        try:
            await client.explain([f"{SHORT} ({i})"], max_evals=50, timeout=120)
            return time.monotonic() - started, "ok"
        except whybert.WhybertError as exc:
            return time.monotonic() - started, type(exc).__name__
        except asyncio.CancelledError:
            return time.monotonic() - started, "cancelled"

    tasks: list[asyncio.Future[tuple[float, str]]] = []
    while time.monotonic() < until:
        tasks.append(asyncio.ensure_future(one(len(tasks))))
        await asyncio.sleep(min(every, max(0.0, until - time.monotonic())))
    if stop_at is not None and tasks:
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, stop_at - time.monotonic()))
        for task in pending:
            task.cancel()
    return list(await asyncio.gather(*tasks))


async def idle_figures(target: str, seconds: float) -> dict[str, Any]:
    import whybert

    async with whybert.AsyncClient(target, retries=0) as client:
        await client.predict([SHORT])
        latencies, failures = await predict_latencies(client, time.monotonic() + seconds)
        small = await small_explains(client, time.monotonic() + 3, every=1.0)
    return {
        "predict_n": len(latencies), "predict_failures": failures,
        "predict_p50_ms": 1000 * percentile(latencies, 50), "predict_p95_ms": 1000 * percentile(latencies, 95),
        "small_explain_s": [round(s, 3) for s, _ in small],
    }


async def phase(
    kind: str, target: str, pid: int, metrics_port: int, sampler: Sampler, args: argparse.Namespace,
    texts: list[str], idle_p95: float, batch_s: Callable[[int], float],
) -> dict[str, Any]:
    """One heavy request with its deadline, the probes beside it, then the wait for idle."""
    import whybert

    n, options = HEAVY[kind]
    reset_peak_rss(pid)
    rss_before = status_kb(pid, "VmRSS") * 1024
    metrics_before = scrape(metrics_port)
    async with (
        whybert.AsyncClient(target, retries=0) as heavy_client,
        whybert.AsyncClient(target, retries=0) as predict_client,
        whybert.AsyncClient(target, retries=0) as explain_client,
    ):
        await predict_client.predict([SHORT])
        sent = time.monotonic()
        deadline = sent + args.deadline
        heavy = asyncio.ensure_future(
            heavy_client.explain(texts[:n], targets="all", timeout=args.deadline, **options)
        )
        heavy_done: list[float] = []
        heavy.add_done_callback(lambda _f: heavy_done.append(time.monotonic()))
        await asyncio.sleep(1.0)  # let the heavy work reach the queue
        probe_until = deadline - 0.5
        (latencies, failures), small = await asyncio.gather(
            predict_latencies(predict_client, probe_until),
            # sent until 2.5 s before the deadline: one cancelled there had waited past the 2 s goal
            small_explains(explain_client, deadline - 2.5, every=3.0, stop_at=deadline),
        )
        probes_ended = time.monotonic()
        try:
            await heavy
            outcome = "finished"
        except whybert.WhybertError as exc:
            outcome = type(exc).__name__
    print(f"  [{kind}] heavy request: {outcome} after {heavy_done[0] - sent:.1f} s (probes ended "
          f"{probes_ended - sent:.1f} s after it was sent); waiting for the server to idle", flush=True)
    idle_at = sampler.wait_idle(deadline, args.max_idle_wait)
    peak = max((s.rss for s in sampler.samples if s.t >= sent), default=rss_before)
    during = [x for x in sampler.samples if sent <= x.t <= deadline]
    cores_busy = (during[-1].cpu - during[0].cpu) / (during[-1].t - during[0].t) if len(during) > 1 else float("nan")
    metrics_after = scrape(metrics_port)
    batches = metrics_after["whybert_forward_seconds_count"] - metrics_before["whybert_forward_seconds_count"]
    batch_mean = (metrics_after["whybert_forward_seconds_sum"] - metrics_before["whybert_forward_seconds_sum"]) / max(
        batches, 1)
    budget = int(metrics_after.get("whybert_batch_token_budget", args.max_batch_tokens))
    bound = 3 * idle_p95 + batch_s(budget)
    p95 = percentile(latencies, 95)
    small_s = [s for s, _ in small]
    idle_s = None if idle_at is None else idle_at - deadline
    growth = max(peak, status_kb(pid, "VmHWM") * 1024) - rss_before
    result = {
        "kind": kind, "texts": n, "options": options, "deadline_s": args.deadline, "heavy_outcome": outcome,
        "heavy_returned_after_s": heavy_done[0] - sent, "probes_ended_after_s": probes_ended - sent,
        "load_average": load_average(),
        "predict_n": len(latencies), "predict_failures": failures,
        "predict_p50_ms": 1000 * percentile(latencies, 50), "predict_p95_ms": 1000 * p95,
        "predict_max_ms": 1000 * max(latencies, default=float("nan")),
        "predict_p95_bound_ms": 1000 * bound, "predict_goal_met": bool(p95 <= bound and not failures),
        "small_explain_s": [round(s, 3) for s in small_s],
        "small_explain_outcomes": [o for _, o in small],
        "small_explain_max_s": max(small_s, default=float("nan")),
        "small_explain_completed_max_s": max((t for t, o in small if o == "ok"), default=float("nan")),
        "small_explain_goal_met": bool(small_s and max(small_s) <= 2.0 and all(o == "ok" for _, o in small)),
        "server_token_budget": budget, "one_batch_s": bound - 3 * idle_p95,
        "server_cores_busy_during": cores_busy, "server_batches": int(batches), "server_batch_mean_s": batch_mean,
        "cpu_idle_after_deadline_s": idle_s,
        "cpu_idle_goal_met": bool(idle_s is not None and idle_s <= 2.0),
        "rss_before_gb": rss_before / 1e9, "rss_peak_gb": (rss_before + growth) / 1e9,
        "rss_growth_gb": growth / 1e9, "rss_after_idle_gb": status_kb(pid, "VmRSS") * 1024 / 1e9,
    }
    if kind == "lime":
        result["rss_goal_met"] = bool(growth <= 1e9)
    print(f"  [{kind}] Predict p50 {result['predict_p50_ms']:.0f} ms, p95 {result['predict_p95_ms']:.0f} ms "
          f"(bound {result['predict_p95_bound_ms']:.0f} ms), {failures} failed; small Explain: "
          f"{sum(o == 'ok' for _, o in small)} of {len(small)} done, the slowest in "
          f"{result['small_explain_completed_max_s']:.2f} s, the longest wait {result['small_explain_max_s']:.2f} s; "
          f"CPU idle "
          f"{'never (within the wait)' if idle_s is None else f'{idle_s:.1f} s'} after the deadline; "
          f"RSS +{growth / 1e9:.2f} GB", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny random BERT instead of the built-in")
    parser.add_argument("--phases", default="shap,lime,ig")
    parser.add_argument("--deadline", type=float, default=20.0, help="the heavy request's deadline, seconds")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="idle Predict sampling, seconds")
    parser.add_argument("--max-idle-wait", type=float, default=300.0, help="longest wait for idle CPU, seconds")
    parser.add_argument("--max-batch-tokens", type=int, default=8192, help="the server's token budget per batch")
    parser.add_argument("--max-batch-ms", type=float, default=None,
                        help="the server's batch time bound (default: its own)")
    parser.add_argument("--port", type=int, default=50601)
    parser.add_argument("--metrics-port", type=int, default=50602)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.tiny:
            from conftest import make_tiny_bert

            model_dir, model_name = make_tiny_bert(work / "tiny"), "tiny random BERT (tests/conftest.py)"
        else:
            from explain import default_model_dir

            model_dir, model_name = default_model_dir(work)
        forward_s, backward_s, width = batch_times(model_dir, args.max_batch_tokens)
        print(f"[setup] code: {code_state()}; load average {load_average()}", flush=True)
        print(f"[setup] {model_name}, {width}-token window; one batch of {args.max_batch_tokens} tokens at idle: "
              f"forward {forward_s * 1000:.0f} ms, forward + backward {backward_s * 1000:.0f} ms", flush=True)
        texts = long_texts(64)
        cmd = [
            sys.executable, "-m", "whybert_service.cli", "serve", "--host", "127.0.0.1", "--port", str(args.port),
            "--metrics-port", str(args.metrics_port), "--no-builtin-model", "--model", f"bench={model_dir}",
            "--device", "cpu", "--cache-entries", "0", "--max-batch-tokens", str(args.max_batch_tokens),
            *(["--max-batch-ms", str(args.max_batch_ms)] if args.max_batch_ms is not None else []),
        ]
        server = subprocess.Popen(cmd)
        sampler = Sampler(server.pid)
        results: dict[str, Any] = {"code": code_state(), "load_average_start": load_average(),
                                   "model": model_name, "window_tokens": width,
                                   "max_batch_tokens": args.max_batch_tokens,
                                   "batch_forward_s": forward_s, "batch_forward_backward_s": backward_s}
        try:
            target = f"127.0.0.1:{args.port}"
            asyncio.run(wait_serving(target))
            sampler.start()
            time.sleep(2)
            print("[idle] Predict back to back and small Explains, nothing else running", flush=True)
            idle = asyncio.run(idle_figures(target, args.idle_seconds))
            checked = time.monotonic()
            became_idle = sampler.wait_idle(checked, 30)
            idle["server_idle_within_s"] = None if became_idle is None else became_idle - checked
            results["idle"] = idle
            print(f"  Predict p50 {idle['predict_p50_ms']:.1f} ms, p95 {idle['predict_p95_ms']:.1f} ms "
                  f"({idle['predict_n']} calls); small Explain {idle['small_explain_s']} s", flush=True)
            for kind in args.phases.split(","):
                print(f"[{kind}] heavy: {HEAVY[kind][0]} texts × 20,000 chars, {HEAVY[kind][1]}, all labels, "
                      f"deadline {args.deadline:.0f} s", flush=True)
                def batch_s(budget: int, kind: str = kind) -> float:
                    """One batch at the budget the server ended the phase with, at idle."""
                    if budget >= args.max_batch_tokens:
                        return backward_s if kind == "ig" else forward_s
                    forward, backward, _ = batch_times(model_dir, budget)
                    print(f"  [{kind}] the server cut batches to {budget} tokens: one batch at idle "
                          f"forward {forward * 1000:.0f} ms, forward + backward {backward * 1000:.0f} ms", flush=True)
                    return backward if kind == "ig" else forward

                results[kind] = asyncio.run(phase(kind, target, server.pid, args.metrics_port, sampler, args,
                                                  texts, idle["predict_p95_ms"] / 1000, batch_s))
        finally:
            sampler.stop()
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
