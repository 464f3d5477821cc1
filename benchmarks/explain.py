"""How fast is a SHAP explanation from whybert, against what users write today and the limit?

Measured in one run, on the same texts, model and max_evals (all labels explained):
  (a) baseline: `shap.Explainer(transformers.pipeline(..., top_k=None))`, one text after another;
  (b) limit:    the model alone on exactly the rows those explanations need (token ids, as
                whybert's Partition engine produces them, run in this process), padded and
                run as the server runs them, at its best batch size;
  (c) whybert:  a whybert server (its own process, cache off) under N concurrent callers.
Each figure is wall time per explanation; the ratios (a)/(c) and (b)/(c) are what to compare
across machines (issue 10's goals on the 2-core CPU: (b)/(c) ≥ 0.9, (a)/(c) ≥ 5). The
texts are 32 review sentences of 15–22 word pieces (plus [CLS] and [SEP]). Run:
`python benchmarks/explain.py --texts 32 --baseline-texts 4 --callers 16 --batch-sizes 64`
(see --help; several minutes on 2 cores). The 1-minute load average is recorded after each
part: on a shared machine, other work stretches the wall times; `--rounds 3` measures the
three in turn three times and reports each one's mean, which the machine's drift over the
run weighs on alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Review-like sentences of 15–22 word pieces each.
TEXTS = [
    "the food was great but the service was painfully slow and the waiter never came back to our table",
    "I have been waiting three weeks for a refund and nobody in customer support answers my emails",
    "absolutely loved the new update, the app feels faster and the dark mode finally looks right",
    "the hotel room was spotless, the staff were friendly, but the breakfast was cold and overpriced",
    "my package arrived damaged, the box was crushed and two of the glasses inside were broken",
    "this is the third time the train has been cancelled this week and there is still no explanation",
    "great battery life, decent camera, but the speaker crackles at high volume which is annoying",
    "the concert was incredible, the band played every song we hoped for and the crowd was amazing",
    "customer service was polite but could not fix my billing issue after an hour on the phone",
    "the movie started strong but the last hour dragged on and the ending made no sense at all",
    "fast delivery and the shoes fit perfectly, I will definitely order from this shop again soon",
    "the checkout page keeps crashing when I try to pay with my card, please fix this bug quickly",
    "lovely little cafe with friendly staff, although the coffee was a bit too bitter for my taste",
    "the software update deleted all my saved settings and now the printer refuses to connect",
    "our guide was knowledgeable and funny, the tour was the highlight of our trip to the city",
    "the gym is always crowded in the evening and half of the machines have been broken for months",
    "I am impressed by how quickly the support team answered and solved the login problem for me",
    "the pizza arrived an hour late and cold, and the driver was rude when we asked about it",
    "beautiful design and solid build quality, but the keyboard is too loud for working at night",
    "the course material was clear and well organised, though the exercises could be more varied",
    "flight delayed by five hours, no food vouchers, and the gate agents kept giving wrong information",
    "the new manager has made the office a much better place to work, everyone seems happier now",
    "terrible experience at the clinic, they lost my test results and asked me to come back again",
    "the headphones sound fantastic and the noise cancelling works great on my daily train commute",
    "the apartment looked nothing like the photos, the kitchen was dirty and the heating was broken",
    "quick and friendly service at the bank today, I opened a new account in under twenty minutes",
    "the game has great graphics but the servers lag constantly and matches disconnect all the time",
    "my order was wrong again, I asked for no onions and got a burger covered in them, disappointing",
    "the library's new reading room is quiet, bright and comfortable, a perfect place to study",
    "the repair took twice as long as promised and the bill was much higher than the original quote",
    "such a thoughtful gift shop, the owner helped me pick something perfect for my mother's birthday",
    "the streaming service raised its prices again while removing half of the shows I actually watch",
]


def default_model_dir(work: Path) -> tuple[Path, str]:
    """The built-in sentiment model exported as a plain directory, or MiniLM with a random head."""
    try:
        import torch
        from whybert_service.models.builtin import load_builtin

        classifier = load_builtin(torch.device("cpu"), torch.float32)
        out = work / "sentiment"
        classifier.model.save_pretrained(out, safe_serialization=True)
        classifier.tokenizer.save_pretrained(out)
        return out, "built-in sentiment model (all-MiniLM-L6-v2 + adapter)"
    except Exception as exc:  # the default model is not available: same encoder, random head
        print(f"[setup] built-in model unavailable ({exc}); using MiniLM with a random head")
        return minilm_random_head(work), "all-MiniLM-L6-v2 + random 3-class head"


def minilm_random_head(work: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification
    from whybert_service.models.builtin import encoder_dir

    encoder = encoder_dir()
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(encoder, num_labels=3)
    out = work / "minilm-random-head"
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(encoder).save_pretrained(out)
    return out


def bert_base_random(work: Path, tokenizer_dir: str | None) -> Path:
    """A BERT-base sized classifier with random weights (timing only)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    from whybert_service.models.builtin import encoder_dir

    encoder = Path(tokenizer_dir) if tokenizer_dir else encoder_dir()
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=3))
    out = work / "bert-base-random"
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(encoder).save_pretrained(out)
    return out


def baseline_pipeline(model_dir: Path, texts: list[str], max_evals: int, device: str) -> float:
    """(a) What users write today; seconds per explanation."""
    import shap
    import transformers

    pipe = transformers.pipeline(
        "text-classification", model=str(model_dir), tokenizer=str(model_dir), top_k=None,
        device=0 if device.startswith("cuda") else -1,
    )
    explainer = shap.Explainer(pipe)
    explainer(texts[:1], max_evals=max_evals, silent=True)  # warm-up (numba, lazy init)
    started = time.perf_counter()
    for i, text in enumerate(texts):
        explainer([text], max_evals=max_evals, silent=True)
        print(f"  (a) {i + 1}/{len(texts)} explained", flush=True)
    return (time.perf_counter() - started) / len(texts)


def load_classifier(model_dir: Path, device: str, dtype: str) -> Any:
    """The model as whybert's server loads it (tokenizer, padding, forward)."""
    import torch
    from whybert_service.models.loading import load_directory

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    return load_directory("bench", model_dir, torch.device(device), torch_dtype)


def engine_rows(model_dir: Path, texts: list[str], max_evals: int, device: str, dtype: str) -> list[list[list[int]]]:
    """The token-id rows whybert's Partition engine evaluates for each text, all labels.

    The server's own engine (`PartitionEngine` + `prepare_text`) runs in this process on the
    same model, the rounds of all texts batched together; a row's outputs only steer which
    rows come next, so these are the rows the server evaluates (up to float noise from
    different batch padding, which could in principle change a tie-break).
    """
    from whybert_service.explainers.partition import MaskingSpec, PartitionEngine, prepare_text
    from whybert_service.types import OutputName

    classifier = load_classifier(model_dir, device, dtype)
    spec = MaskingSpec.for_tokenizer(classifier.tokenizer)

    def encode(strings: Any) -> list[list[int]]:
        ids: list[list[int]] = classifier.encode(list(strings)).ids
        return ids

    everything = list(range(classifier.num_labels))
    engines = [
        PartitionEngine(
            prepare_text(classifier.tokenizer, spec, text, classifier.max_length, encode), spec, encode,
            output=OutputName.PROBABILITY, targets=lambda _logits: everything, max_evals=max_evals,
        )
        for text in texts
    ]
    rows: list[list[list[int]]] = [[] for _ in texts]
    rounds = 0
    while active := [i for i, e in enumerate(engines) if not e.done]:
        pending = [(i, [r.tolist() for r in engines[i].rows()]) for i in active]
        flat = [r for _, text_rows in pending for r in text_rows]
        logits = np.concatenate([classifier.forward(flat[k : k + 256]) for k in range(0, len(flat), 256)])
        at = 0
        for i, text_rows in pending:
            rows[i].extend(text_rows)
            engines[i].feed(logits[at : at + len(text_rows)])
            at += len(text_rows)
        rounds += 1
        if rounds % 20 == 0:
            print(f"  (rows) round {rounds}: {len(active)} explanations still running", flush=True)
    return rows


def model_limit(
    model_dir: Path, rows: list[list[list[int]]], device: str, dtype: str, batch_sizes: list[int]
) -> tuple[float, int, dict[int, float]]:
    """(b) The model alone on those rows (token ids, each text's rows in the engine's order),
    padded and run as the server runs them (`Classifier.forward`), at its best batch size;
    seconds per explanation."""
    classifier = load_classifier(model_dir, device, dtype)
    flat = [r for text_rows in rows for r in text_rows]
    timings: dict[int, float] = {}
    for batch_size in batch_sizes:
        classifier.forward(flat[:batch_size])  # warm-up (and, on a GPU, synchronises: logits come back)
        started = time.perf_counter()
        for i in range(0, len(flat), batch_size):
            classifier.forward(flat[i : i + batch_size])
        timings[batch_size] = time.perf_counter() - started
        print(f"  (b) batch {batch_size}: {timings[batch_size]:.2f} s for {len(flat)} rows", flush=True)
    best = min(timings, key=timings.__getitem__)
    return timings[best] / len(rows), best, timings


def encoder_flops(config: Any, rows: list[list[int]], batch_size: int) -> float:
    """Matrix FLOPs of the encoder on `rows` cut into batches of `batch_size`, each padded
    to its longest row as `Classifier.forward` pads: per layer and padded token, 2·(4h² + 2hi)
    for the projections and feed-forward, plus 4·s·h for the attention scores and mixing."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    total = 0.0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        s = max(len(r) for r in batch)
        total += len(batch) * layers * (2 * s * (4 * h * h + 2 * h * i) + 4 * s * s * h)
    return total


def matmul_peak(device: str, dtype: str) -> float:
    """FLOP/s of a large square matrix product on the device in `dtype` (the roofline the
    forward passes are read against), the mean of ten after three warm-ups."""
    import torch

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    n = 8192
    x = torch.randn(n, n, device=device, dtype=torch_dtype)
    y = torch.randn(n, n, device=device, dtype=torch_dtype)
    for _ in range(3):
        x @ y
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        x @ y
    torch.cuda.synchronize()
    return 10 * 2 * n**3 / (time.perf_counter() - started)


def roofline_of(
    model_dir: Path, rows: list[list[list[int]]], batch_size: int, seconds: float, args: argparse.Namespace
) -> dict[str, float]:
    """(b)'s rows per second and matrix FLOP/s (on a GPU, against its measured peak)."""
    from transformers import AutoConfig

    flat = [r for text_rows in rows for r in text_rows]
    flops = encoder_flops(AutoConfig.from_pretrained(model_dir), flat, batch_size)
    roofline = {"forward_rows_per_s": len(flat) / seconds, "forward_tflops": flops / seconds / 1e12}
    if args.device.startswith("cuda"):
        roofline["matmul_peak_tflops"] = matmul_peak(args.device, args.dtype) / 1e12
        roofline["fraction_of_peak"] = roofline["forward_tflops"] / roofline["matmul_peak_tflops"]
    return roofline


def load_average() -> str:
    """The machine's 1-minute load average (other people's work disturbs the figures)."""
    return Path("/proc/loadavg").read_text().split()[0]


def code_state() -> str:
    """The commit measured, and the service files changed since (others edit them)."""

    def git(*args: str) -> str:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--short", "--", "service").splitlines()
    changed = ", ".join(line.split()[-1].removeprefix("service/whybert_service/") for line in dirty)
    return git("rev-parse", "--short", "HEAD") + (f" + uncommitted changes in {changed}" if dirty else "")


def start_server(
    model_dir: Path, port: int, metrics_port: int, device: str, extra: list[str]
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "whybert_service.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--metrics-port", str(metrics_port), "--no-builtin-model", "--model", f"bench={model_dir}",
        "--device", device, "--cache-entries", "0", *extra,
    ]
    return subprocess.Popen(cmd)


def scrape(metrics_port: int) -> dict[str, float]:
    """The server's Prometheus series, each summed over its labels."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def worker_stats(before: dict[str, float], after: dict[str, float], seconds: float, n: int) -> dict[str, float]:
    """What the model's worker did during (c), from the server's metrics."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    batches = max(delta("whybert_forward_seconds_count"), 1.0)
    return {
        "batches": delta("whybert_forward_seconds_count"),
        "batch_rows_mean": delta("whybert_batch_rows_sum") / batches,
        # tokens the model computed: padded, or (a model that packs rows, on a CPU) the rows' own
        "batch_tokens_mean": delta("whybert_batch_tokens_sum") / batches,
        "padding_ratio_mean": delta("whybert_batch_padding_ratio_sum") / max(
            delta("whybert_batch_padding_ratio_count"), 1.0),
        # whybert_forward_seconds times a whole batch on the worker: the forward passes and the
        # delivery of their logits, which runs the next SHAP round in the callbacks.
        "batch_s_per_explanation": delta("whybert_forward_seconds_sum") / n,
        "worker_batch_busy_fraction": delta("whybert_forward_seconds_sum") / seconds,
    }


async def wait_serving(target: str, timeout: float = 300) -> None:
    import whybert

    deadline = time.monotonic() + timeout
    async with whybert.AsyncClient(target, retries=0) as client:
        while time.monotonic() < deadline:
            try:
                if await client.health(timeout=2) == "SERVING":
                    return
            except whybert.WhybertError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError("the server did not become SERVING")


async def warm_up(target: str, text: str, max_evals: int) -> None:
    import whybert

    async with whybert.AsyncClient(target, timeout=3600) as client:
        await client.explain([text + " warm up"], max_evals=max_evals, targets="all")


async def whybert_run(target: str, texts: list[str], callers: int, max_evals: int) -> tuple[float, dict[str, Any]]:
    """(c) `callers` concurrent callers, each explaining its share of the texts one by one."""
    import whybert

    async with whybert.AsyncClient(target, timeout=3600) as client:
        queue: asyncio.Queue[str] = asyncio.Queue()
        for t in texts:
            queue.put_nowait(t)
        results: list[Any] = []

        async def caller() -> None:
            while not queue.empty():
                text = queue.get_nowait()
                (e,) = await client.explain([text], max_evals=max_evals, targets="all")
                results.append(e)
                print(f"  (c) {len(results)}/{len(texts)} explained", flush=True)

        started = time.perf_counter()
        await asyncio.gather(*[caller() for _ in range(callers)])
        elapsed = time.perf_counter() - started
    stats = {
        "rows": int(sum(e.model_rows for e in results)),
        "queue_seconds_mean": float(np.mean([e.queue_seconds for e in results])),
        "max_additivity_error": float(max(e.additivity_error for e in results)),
    }
    return elapsed, stats


def whybert_figures(model_dir: Path, texts: list[str], args: argparse.Namespace) -> tuple[float, dict[str, Any]]:
    """(c) once: a fresh server, warmed up, explaining the texts under the callers; seconds
    per explanation and what its worker did."""
    extra = ["--dtype", args.dtype, *args.server_arg]
    server = start_server(model_dir, args.port, args.metrics_port, args.device, extra)
    try:
        target = f"127.0.0.1:{args.port}"
        asyncio.run(wait_serving(target))
        print(f"[c] whybert with {args.callers} concurrent callers", flush=True)
        asyncio.run(warm_up(target, texts[0], args.max_evals))
        before = scrape(args.metrics_port)
        elapsed, stats = asyncio.run(whybert_run(target, texts, args.callers, args.max_evals))
        stats.update(worker_stats(before, scrape(args.metrics_port), elapsed, len(texts)))
        c = elapsed / len(texts)
        print(f"  (c) {c:.3f} s per explanation; worker: {stats['batch_rows_mean']:.1f} rows per batch, "
              f"batches {stats['batch_s_per_explanation']:.3f} s per explanation, busy with batches "
              f"{100 * stats['worker_batch_busy_fraction']:.0f}% of the time", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    return c, stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=32, help="texts explained by whybert and the limit")
    parser.add_argument("--baseline-texts", type=int, default=6, help="texts explained by the slow baseline")
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--max-evals", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--bert-base", action="store_true", help="a random BERT-base model (GPU timing)")
    parser.add_argument("--model-dir", default=None, help="a classifier directory to use instead")
    parser.add_argument("--tokenizer-dir", default=None, help="WordPiece tokenizer files for --bert-base")
    parser.add_argument("--port", type=int, default=50571)
    parser.add_argument("--metrics-port", type=int, default=50572)
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for whybert serve")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--only-whybert", action="store_true", help="measure (c) alone")
    parser.add_argument("--batch-sizes", default="16,32,64,128,256,512", help="batch sizes tried for (b)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="measure (c), (b) and (a) this many times in turn and report each one's mean (a noisy machine)",
    )  # fmt: skip
    args = parser.parse_args()

    texts = (TEXTS * ((args.texts + len(TEXTS) - 1) // len(TEXTS)))[: args.texts]
    texts = [t if i < len(TEXTS) else f"{t} (again {i})" for i, t in enumerate(texts)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.model_dir:
            model_dir, model_name = Path(args.model_dir), args.model_dir
        elif args.bert_base:
            model_dir, model_name = bert_base_random(work, args.tokenizer_dir), "BERT-base (random weights)"
        else:
            model_dir, model_name = default_model_dir(work)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        pieces = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        loads = {"start": load_average()}
        code = code_state()
        print(f"[setup] code: {code}", flush=True)
        print(f"[setup] model: {model_name}; {len(texts)} texts of {min(pieces)}–{max(pieces)} word pieces; "
              f"max_evals {args.max_evals}; load average {loads['start']}", flush=True)

        c_runs: list[float] = []
        b_runs: list[float] = []
        a_runs: list[float] = []
        best_batch, rows = 0, [[[0]]]
        timings: dict[int, float] = {}
        roofline: dict[str, float] = {}
        for round_ in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"[round {round_} of {args.rounds}]", flush=True)
            c_one, stats = whybert_figures(model_dir, texts, args)
            c_runs.append(c_one)
            loads[f"c{round_}"] = load_average()
            if args.only_whybert:
                continue
            if round_ == 1:
                print("[rows] whybert's engine in this process: the rows each explanation evaluates", flush=True)
                rows = engine_rows(model_dir, texts, args.max_evals, args.device, args.dtype)
            print("[b] the model alone on the same rows", flush=True)
            sizes = [int(x) for x in args.batch_sizes.split(",")] if round_ == 1 else [best_batch]
            b_one, best, by_size = model_limit(model_dir, rows, args.device, args.dtype, sizes)
            b_runs.append(b_one)
            loads[f"b{round_}"] = load_average()
            if round_ == 1:
                best_batch, timings = best, by_size
                roofline = roofline_of(model_dir, rows, best_batch, timings[best_batch], args)
                print(f"  (b) roofline: {roofline}", flush=True)
            if not args.skip_baseline:
                print(f"[a] shap.Explainer(transformers.pipeline) on {args.baseline_texts} texts", flush=True)
                a_runs.append(baseline_pipeline(model_dir, texts[: args.baseline_texts], args.max_evals, args.device))
                loads[f"a{round_}"] = load_average()
        # Each figure's mean over the rounds: the rounds interleave the three, so the
        # machine's drift over the run weighs on all of them alike.
        c = float(np.mean(c_runs))
        b = float(np.mean(b_runs)) if b_runs else float("nan")
        a = float(np.mean(a_runs)) if a_runs else float("nan")

    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "code": code,
        "device": args.device,
        "model": model_name,
        "texts": len(texts),
        "word_pieces": f"{min(pieces)}-{max(pieces)} (mean {np.mean(pieces):.1f}, [CLS] and [SEP] not counted)",
        "max_evals": args.max_evals,
        "callers": args.callers,
        "a_baseline_s_per_explanation": a,
        "b_limit_s_per_explanation": b,
        "b_best_batch_size": best_batch,
        "b_seconds_by_batch_size": timings,
        "c_whybert_s_per_explanation": c,
        "c_explanations_per_second": 1 / c,
        "a_over_c": a / c,
        "b_over_c": b / c,
        "rounds": args.rounds,
        "by_round": {"a": a_runs, "b": b_runs, "c": c_runs},
        "rows_per_explanation_limit": float(np.mean([len(r) for r in rows])),
        "rows_per_explanation_whybert": stats["rows"] / len(texts),
        "roofline": roofline,
        "load_average_after": loads,
        **stats,
    }
    print(json.dumps(figures, indent=2))
    print(f"\n(a)/(c) = {a / c:.2f}   (b)/(c) = {b / c:.2f}   whybert {1 / c:.2f} explanations/s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
