"""The CUDA path gives the CPU's answers: Predict and SHAP values from a server on the GPU
(float32) against shap's own explainer on the CPU, and a bfloat16 server's additivity; a
token model's Predict (rows of every position, batched across callers) and an entity's
SHAP values on the GPU against the same server on the CPU. On the GPU the servers replay
recurring batch shapes from CUDA graphs: how many were captured is printed, and a model
whose graphs turned themselves off (a failed capture, a graph that disagreed) fails it.

Run on a GPU machine: `python benchmarks/gpu_smoke.py --tokenizer-dir DIR`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = [
    "the food was great but the service was painfully slow",
    "I will never order from this shop again, what a waste of money",
    "lovely staff and a spotless room",
]


def tiny_bert(path: Path, tokenizer_dir: str, token_labels: list[str] | None = None) -> Path:
    """A tiny random BERT (weights scaled up so outputs differ): a sequence classifier of
    three labels, or with `token_labels` a token classifier of those tags."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertForTokenClassification

    torch.manual_seed(0)
    labels = token_labels or ["negative", "neutral", "positive"]
    config = BertConfig(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={k: i for i, k in enumerate(labels)},
    )
    kind = BertForTokenClassification if token_labels else BertForSequenceClassification
    model = kind(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(20)
    model.save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
NER_TEXTS = [
    "Angela Merkel visited Paris with officials from Siemens",
    "the United Nations met in New York on Tuesday",
    "John Smith of Reuters said Microsoft shares rose",
    "a quiet day with nothing much to report",
]


@contextlib.asynccontextmanager
async def serving(model: str, device: str, dtype: str) -> AsyncIterator[Any]:
    """An in-process server of one model (`NAME=PATH`) on `device`, and a client of it."""
    import whybert
    from whybert_service.grpc.server import WhybertServer
    from whybert_service.settings import ServerSettings

    settings = ServerSettings(
        host="127.0.0.1", port=0, metrics_port=0, model=(model,), no_builtin_model=True, device=device, dtype=dtype
    )
    server = WhybertServer(settings)
    await server.start()
    try:
        async with whybert.AsyncClient(f"127.0.0.1:{server.port}") as client:
            yield client
    finally:
        graphs = server.registry.get(model.split("=")[0]).classifier.graphs
        if graphs is not None:
            print(f"[{dtype}] {model.split('=')[0]}: {graphs.captured} CUDA graphs, on: {graphs.enabled}")
            GRAPHS_OFF.extend([] if graphs.enabled else [model])
        await server.stop(0)


GRAPHS_OFF: list[str] = []  # models whose graphs turned themselves off


async def entities(model_dir: Path, device: str) -> tuple[list[list[tuple[int, int, str, float]]], np.ndarray]:
    """Each text's entities (span, type, score) from concurrent one-text Predicts, and the
    SHAP values of the first text's first entity."""
    async with serving(f"ner={model_dir}", device, "float32") as client:
        predictions = await asyncio.gather(*[client.predict([t], model="ner") for t in NER_TEXTS * 4])
        found = [[(x.start, x.end, x.label, x.score) for x in p[0].entities] for p in predictions]
        (e,) = await client.explain([NER_TEXTS[0]], model="ner", entity=0, max_evals=200)
        return found, np.asarray(e.values)


def cpu_reference(model_dir: Path, text: str) -> np.ndarray:
    import shap
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()

    def f(texts: object) -> np.ndarray:
        enc = tok([str(t) for t in texts], padding=True, truncation=True, return_tensors="pt")  # type: ignore[attr-defined]
        with torch.no_grad():
            return torch.softmax(model(**enc).logits.double(), -1).numpy()

    return np.asarray(shap.PartitionExplainer(f, shap.maskers.Text(tok))([text], silent=True).values[0])


async def run(model_dir: Path, device: str, dtype: str) -> list[object]:
    async with serving(f"tiny={model_dir}", device, dtype) as client:
        (info,) = await client.list_models()
        print(f"[{dtype}] model on {info.device} {info.dtype}")
        results = await asyncio.gather(*[client.explain([t], targets="all") for t in TEXTS])
        extra = await client.explain([TEXTS[0]], explainer="lime", num_samples=300)
        ig = await client.explain([TEXTS[0]], explainer="integrated-gradients", n_steps=32)
        print(f"[{dtype}] lime rows {extra[0].model_rows}; IG delta {ig[0].convergence_delta}")
        return [r[0] for r in results]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokenizer-dir", required=True)
    parser.add_argument("--device", default="cuda", help="cpu runs the same check without a GPU")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tiny_bert(Path(tmp) / "tiny", args.tokenizer_dir)
        fp32 = asyncio.run(run(model_dir, args.device, "float32"))
        worst = 0.0
        for text, e in zip(TEXTS, fp32, strict=True):
            ref = cpu_reference(model_dir, text)
            worst = max(worst, float(np.max(np.abs(e.values - ref))))  # type: ignore[attr-defined]
        print(
            f"[float32] max |GPU values - CPU shap| = {worst:.2e}; "
            f"max additivity error {max(e.additivity_error for e in fp32):.2e}"
        )  # type: ignore[attr-defined]
        bf16 = asyncio.run(run(model_dir, args.device, "bfloat16"))
        print(f"[bfloat16] max additivity error {max(e.additivity_error for e in bf16):.2e}")  # type: ignore[attr-defined]
        ner_dir = tiny_bert(Path(tmp) / "ner", args.tokenizer_dir, NER_LABELS)
        on_device, values = asyncio.run(entities(ner_dir, args.device))
        on_cpu, cpu_values = asyncio.run(entities(ner_dir, "cpu"))
        spans = [[x[:3] for x in t] for t in on_device] == [[x[:3] for x in t] for t in on_cpu]
        pairs = [(a, b) for s, t in zip(on_device, on_cpu, strict=True) for a, b in zip(s, t, strict=False)]
        score_gap = max((abs(a[3] - b[3]) for a, b in pairs), default=0.0)
        value_gap = float(np.max(np.abs(values - cpu_values)))
        print(
            f"[entities] {sum(map(len, on_device))} entities over {len(on_device)} Predicts; same spans and "
            f"types as the CPU: {spans}; max score gap {score_gap:.1e}; max SHAP value gap {value_gap:.1e}"
        )
        ok = worst < 1e-3 and all(e.additivity_error < 1e-5 for e in fp32 + bf16)  # type: ignore[attr-defined]
        ok = ok and spans and score_gap < 1e-4 and value_gap < 1e-4 and not GRAPHS_OFF
        print("GPU SMOKE", "OK" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
