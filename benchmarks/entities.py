"""Predict rows/s and SHAP explanations/s on the built-in `entities` model, as for `sentiment`.

Measured in one run, on the same texts:
  Predict   (p1) whybert: a `whybert serve` process (built-in models, cache off), N callers
                 each predicting one text per call; texts per second;
            (p2) the model alone: `TokenClassifier.token_logits` on the same texts' ids in
                 batches of 32, in this process; texts per second.
  SHAP      (a)  what a user writes today: `shap.PartitionExplainer(f, shap.maskers.Text(
                 tokenizer, output_type="token_ids"))` on one text at a time, `f` the
                 entity's p(B-X) + p(I-X) at its first piece (the output whybert explains);
            (c)  whybert: the first entity of each text, max_evals 500, N concurrent callers.
The ratios (p1)/(p2) and (a)/(c) are what to compare across machines. (a) and (c) explain
the same entity of the same text: their largest difference is printed as a check.
Run: `python benchmarks/entities.py [--texts 32 --baseline-texts 4 --callers 16]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from explain import code_state, load_average, wait_serving

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# News-like sentences, each with at least one person, organisation, place or other name.
TEXTS = [
    "Angela Merkel visited Paris with officials from Siemens.",
    "Shares of Microsoft rose 3 percent in New York, said John Smith of Reuters.",
    "The European Commission fined Google 2.4 billion euros on Tuesday in Brussels.",
    "Manchester United beat Chelsea 2-1 at Old Trafford on Saturday.",
    "Prime Minister Tony Blair met Bill Clinton at the White House.",
    "Toyota said it would build a new plant in Kentucky next year.",
    "The United Nations sent aid to flood victims in Bangladesh.",
    "Boris Yeltsin returned to the Kremlin after heart surgery in Moscow.",
    "Police in Sydney arrested two men after the robbery at a Westpac branch.",
    "Nelson Mandela addressed the parliament in Cape Town on Friday.",
    "Deutsche Bank and Commerzbank held merger talks in Frankfurt.",
    "The Dutch striker Patrick Kluivert scored twice for Ajax Amsterdam.",
    "Oil prices fell in London after OPEC agreed to raise output.",
    "Japanese investors bought more bonds, the Bank of Japan said in Tokyo.",
    "Steffi Graf won the Wimbledon title for the seventh time.",
    "Rebels attacked a convoy near Grozny, the Interfax news agency reported.",
    "The Boeing 747 landed safely at Heathrow airport after an engine failure.",
    "Italian Prime Minister Romano Prodi met union leaders in Rome.",
    "Nestle reported higher sales in Switzerland and across Europe.",
    "The New York Yankees signed pitcher David Cone for two more seasons.",
    "Brazil's central bank cut interest rates, Finance Minister Pedro Malan said.",
    "Greenpeace protested against French nuclear tests in the Pacific.",
    "The Indian cricket team arrived in Johannesburg for the series against South Africa.",
    "Volkswagen workers in Wolfsburg voted to accept the new contract.",
    "President Jacques Chirac flew to Bonn for talks with Helmut Kohl.",
    "Sony launched its new PlayStation in Tokyo and Los Angeles.",
    "The Red Cross said fighting had stopped around Kabul.",
    "Carlos Moya of Spain reached the final of the Australian Open in Melbourne.",
    "General Motors cut production at its plant in Ohio.",
    "The Israeli army withdrew from Hebron, Palestinian officials said.",
    "Ericsson won a contract to build a mobile network in China.",
    "The Chicago Bulls beat the Utah Jazz behind 38 points from Michael Jordan.",
]


async def predict_run(target: str, texts: list[str], callers: int) -> float:
    """(p1) texts per second through the server: `callers` callers, one text per call."""
    import whybert

    async with whybert.AsyncClient(target, timeout=600) as client:
        queue: asyncio.Queue[str] = asyncio.Queue()
        for t in texts:
            queue.put_nowait(t)

        async def caller() -> None:
            while not queue.empty():
                await client.predict([queue.get_nowait()], model="entities")

        started = time.perf_counter()
        await asyncio.gather(*[caller() for _ in range(callers)])
        return len(texts) / (time.perf_counter() - started)


async def explain_run(target: str, texts: list[str], callers: int, max_evals: int) -> tuple[float, list[Any]]:
    """(c) seconds per explanation: each text's first entity, `callers` at once."""
    import whybert

    async with whybert.AsyncClient(target, timeout=3600) as client:
        await client.explain([texts[0]], model="entities", entity=0, max_evals=max_evals)  # warm-up
        results: list[Any] = [None] * len(texts)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(texts)):
            queue.put_nowait(i)

        async def caller() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                try:
                    (results[i],) = await client.explain([texts[i]], model="entities", entity=0, max_evals=max_evals)
                except whybert.InvalidArgumentError:  # the model found no entity in this text
                    results[i] = False
                print(f"  (c) {sum(r is not None for r in results)}/{len(texts)} done", flush=True)

        started = time.perf_counter()
        await asyncio.gather(*[caller() for _ in range(callers)])
        elapsed = time.perf_counter() - started
        explained = [r for r in results if r]
        return elapsed / len(explained), explained


def model_alone(ner: Any, texts: list[str], batch: int = 32, repeats: int = 3) -> float:
    """(p2) texts per second of the model alone on the same texts' ids."""
    rows = [ner.window(t).ids for t in texts]
    ner.token_logits(rows[:batch])  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        for i in range(0, len(rows), batch):
            ner.token_logits(rows[i : i + batch])
    return repeats * len(rows) / (time.perf_counter() - started)


def baseline(ner: Any, explanations: list[Any], max_evals: int) -> tuple[float, float]:
    """(a) seconds per explanation with shap's own explainer, and the largest difference
    from whybert's values of the same entity."""
    import shap
    import torch
    from whybert_service.entities import entity_output

    masker = shap.maskers.Text(ner.tokenizer, output_type="token_ids")
    seconds, worst = 0.0, 0.0
    for i, e in enumerate(explanations):
        columns, position = ner.type_columns(e.labels[0]), e.entity_position

        def f(rows: Any, columns: list[int] = columns, position: int = position) -> np.ndarray:
            with torch.no_grad():
                ids = torch.tensor(np.asarray(rows).reshape(len(rows), -1).astype(np.int64))
                logits = ner.model(input_ids=ids).logits[:, position].float().numpy()
            return entity_output(logits, columns, False)

        explainer = shap.PartitionExplainer(f, masker)
        np.random.seed(0)
        started = time.perf_counter()
        ref = explainer([e.text], max_evals=max_evals, silent=True)
        seconds += time.perf_counter() - started
        worst = max(worst, float(np.abs(np.asarray(ref.values[0]).reshape(-1) - e.values[:, 0]).max()))
        print(f"  (a) {i + 1}/{len(explanations)} explained", flush=True)
    return seconds / len(explanations), worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--baseline-texts", type=int, default=4)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--max-evals", type=int, default=500)
    parser.add_argument("--predict-repeats", type=int, default=8, help="each text predicted this many times in (p1)")
    parser.add_argument("--port", type=int, default=50591)
    parser.add_argument("--metrics-port", type=int, default=50592)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    import torch
    from whybert_service.models.builtin import load_entities

    texts = (TEXTS * ((args.texts + len(TEXTS) - 1) // len(TEXTS)))[: args.texts]
    texts = [t if i < len(TEXTS) else f"{t} ({i})" for i, t in enumerate(texts)]
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ner = load_entities(torch.device("cpu"), torch.float32)
    print(f"[setup] code: {code_state()}; {len(texts)} texts; load average {load_average()}", flush=True)
    server = subprocess.Popen([
        sys.executable, "-m", "whybert_service.cli", "serve", "--host", "127.0.0.1", "--port", str(args.port),
        "--metrics-port", str(args.metrics_port), "--device", "cpu", "--cache-entries", "0",
    ])
    try:
        target = f"127.0.0.1:{args.port}"
        asyncio.run(wait_serving(target))
        print(f"[p1] Predict through the server, {args.callers} callers", flush=True)
        p1 = asyncio.run(predict_run(target, texts * args.predict_repeats, args.callers))
        print(f"  (p1) {p1:.1f} texts/s", flush=True)
        print(f"[c] SHAP on each text's first entity, {args.callers} callers", flush=True)
        c, explanations = asyncio.run(explain_run(target, texts, args.callers, args.max_evals))
        print(f"  (c) {c:.3f} s per explanation", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    print("[p2] the model alone on the same ids", flush=True)
    p2 = model_alone(ner, texts)
    print(f"  (p2) {p2:.1f} texts/s", flush=True)
    print(f"[a] shap's PartitionExplainer (token_ids masker) on {args.baseline_texts} texts", flush=True)
    a, worst = baseline(ner, explanations[: args.baseline_texts], args.max_evals)
    figures = {
        "code": code_state(), "texts": len(texts), "callers": args.callers, "max_evals": args.max_evals,
        "predict_whybert_texts_per_s": p1, "predict_model_alone_texts_per_s": p2, "p1_over_p2": p1 / p2,
        "a_baseline_s_per_explanation": a, "c_whybert_s_per_explanation": c, "a_over_c": a / c,
        "rows_per_explanation": float(np.mean([e.model_rows for e in explanations])),
        "max_abs_difference_a_c": worst, "load_average_end": load_average(),
    }
    print(json.dumps(figures, indent=2))
    print(f"\nPredict {p1:.1f} texts/s ({p1 / p2:.2f} of the model alone); SHAP {1 / c:.2f} explanations/s, "
          f"(a)/(c) = {a / c:.2f}; largest difference from shap {worst:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
