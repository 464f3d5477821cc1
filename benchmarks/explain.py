"""How fast is a SHAP explanation from whybert, against what users write today and the limit?

Measured in one run, on the same texts (20–40 tokens), model and max_evals:
  (a) baseline: `shap.Explainer(transformers.pipeline(..., top_k=None))`, one text after another;
  (b) limit:    the model alone on exactly the rows those explanations need, at its best batch size;
  (c) whybert:  a whybert server (its own process) under N concurrent callers.
Each figure is wall time per explanation; the ratios (a)/(c) and (b)/(c) are what to compare
across machines. Run: `python benchmarks/explain.py` (see --help).
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

# Review-like sentences of 20–40 word pieces each.
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


def shap_plain(
    model_dir: Path, texts: list[str], max_evals: int, device: str, dtype: str
) -> tuple[float, list[list[str]]]:
    """shap's Partition explainer over a plain batched model function, one text after another.

    Returns seconds per explanation and, per text, the distinct strings it evaluated: the
    rows these explanations need, which (b) runs again at the best batch size.
    """
    import shap
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_model(model_dir, device, dtype)

    def logits(batch: list[str]) -> np.ndarray:
        with torch.inference_mode():
            enc = tokenizer(batch, padding=True, truncation=True, return_tensors="pt").to(device)
            return model(**enc).logits.float().cpu().numpy()

    per_text = []
    shap.PartitionExplainer(lambda b: logits([str(s) for s in b]), shap.maskers.Text(tokenizer))(
        [texts[0]], max_evals=20, silent=True
    )
    started = time.perf_counter()
    for i, text in enumerate(texts):
        seen: dict[str, None] = {text: None}  # whybert also runs the text itself, for the prediction

        def f(batch: Any, seen: dict[str, None] = seen) -> np.ndarray:
            strings = [str(s) for s in batch]
            seen.update(dict.fromkeys(strings))
            out = torch.softmax(torch.from_numpy(logits(strings)), -1)
            return out.numpy()

        shap.PartitionExplainer(f, shap.maskers.Text(tokenizer))([text], max_evals=max_evals, silent=True)
        per_text.append(list(seen))
        if (i + 1) % 8 == 0 or i + 1 == len(texts):
            print(f"  (shap, plain f) {i + 1}/{len(texts)} explained", flush=True)
    return (time.perf_counter() - started) / len(texts), per_text


def load_model(model_dir: Path, device: str, dtype: str) -> Any:
    import torch
    from transformers import AutoModelForSequenceClassification

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    return AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch_dtype).to(device).eval()


def model_limit(
    model_dir: Path, rows: list[list[str]], device: str, dtype: str, batch_sizes: list[int]
) -> tuple[float, int]:
    """(b) The model alone on those rows, at its best batch size; seconds per explanation."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_model(model_dir, device, dtype)
    flat = [s for text_rows in rows for s in text_rows]
    best = (float("inf"), 0)
    for batch_size in batch_sizes:
        with torch.inference_mode():
            model(**tokenizer(flat[:batch_size], padding=True, return_tensors="pt").to(device))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            for i in range(0, len(flat), batch_size):
                enc = tokenizer(flat[i : i + batch_size], padding=True, truncation=True, return_tensors="pt")
                model(**enc.to(device)).logits.float().cpu()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        print(f"  (b) batch {batch_size}: {elapsed:.2f} s for {len(flat)} rows", flush=True)
        best = min(best, (elapsed, batch_size))
    return best[0] / len(rows), best[1]


def start_server(model_dir: Path, port: int, device: str, extra: list[str]) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "whybert_service.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--metrics-port", "0", "--no-builtin-model", "--model", f"bench={model_dir}", "--device", device,
        "--cache-entries", "0", *extra,
    ]
    return subprocess.Popen(cmd)


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


async def whybert_run(target: str, texts: list[str], callers: int, max_evals: int) -> tuple[float, dict[str, Any]]:
    """(c) `callers` concurrent callers, each explaining its share of the texts one by one."""
    import whybert

    async with whybert.AsyncClient(target, timeout=3600) as client:
        await client.explain([texts[0] + " warm up"], max_evals=max_evals, targets="all")
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
    return elapsed / len(texts), stats


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
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for whybert serve")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--only-whybert", action="store_true", help="measure (c) alone")
    parser.add_argument("--batch-sizes", default="16,32,64,128,256,512", help="batch sizes tried for (b)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
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
        print(f"[setup] model: {model_name}; {len(texts)} texts; max_evals {args.max_evals}", flush=True)

        server = start_server(model_dir, args.port, args.device,
                              ["--dtype", args.dtype, *args.server_arg])
        try:
            target = f"127.0.0.1:{args.port}"
            asyncio.run(wait_serving(target))
            print(f"[c] whybert with {args.callers} concurrent callers", flush=True)
            c, stats = asyncio.run(whybert_run(target, texts, args.callers, args.max_evals))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)

        a = b = plain = float("nan")
        best_batch, rows = 0, [[""]]
        if not args.only_whybert:
            print("[shap] shap's Partition explainer over a plain batched f, one text after another", flush=True)
            plain, rows = shap_plain(model_dir, texts, args.max_evals, args.device, args.dtype)
            print("[b] the model alone on the same rows", flush=True)
            sizes = [int(x) for x in args.batch_sizes.split(",")]
            b, best_batch = model_limit(model_dir, rows, args.device, args.dtype, sizes)
        if not args.skip_baseline and not args.only_whybert:
            print(f"[a] shap.Explainer(transformers.pipeline) on {args.baseline_texts} texts", flush=True)
            a = baseline_pipeline(model_dir, texts[: args.baseline_texts], args.max_evals, args.device)

    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "device": args.device,
        "model": model_name,
        "texts": len(texts),
        "max_evals": args.max_evals,
        "callers": args.callers,
        "a_baseline_s_per_explanation": a,
        "shap_plain_f_s_per_explanation": plain,
        "b_limit_s_per_explanation": b,
        "b_best_batch_size": best_batch,
        "c_whybert_s_per_explanation": c,
        "c_explanations_per_second": 1 / c,
        "a_over_c": a / c,
        "b_over_c": b / c,
        "rows_per_explanation_limit": float(np.mean([len(r) for r in rows])),
        "rows_per_explanation_whybert": stats["rows"] / len(texts),
        **stats,
    }
    print(json.dumps(figures, indent=2))
    print(f"\n(a)/(c) = {a / c:.2f}   (b)/(c) = {b / c:.2f}   whybert {1 / c:.2f} explanations/s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
