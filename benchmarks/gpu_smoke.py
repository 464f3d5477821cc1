"""The CUDA path gives the CPU's answers: Predict and SHAP values from a server on the GPU
(float32) against shap's own explainer on the CPU, and a bfloat16 server's additivity.

Run on a GPU machine: `python benchmarks/gpu_smoke.py --tokenizer-dir DIR`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = [
    "the food was great but the service was painfully slow",
    "I will never order from this shop again, what a waste of money",
    "lovely staff and a spotless room",
]


def tiny_bert(path: Path, tokenizer_dir: str) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128, num_labels=3)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(20)
    model.save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


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
    import whybert
    from whybert_service.grpc.server import WhybertServer
    from whybert_service.settings import ServerSettings

    settings = ServerSettings(host="127.0.0.1", port=0, metrics_port=0, model=(f"tiny={model_dir}",),
                              no_builtin_model=True, device=device, dtype=dtype)
    server = WhybertServer(settings)
    await server.start()
    try:
        async with whybert.AsyncClient(f"127.0.0.1:{server.port}") as client:
            (info,) = await client.list_models()
            print(f"[{dtype}] model on {info.device} {info.dtype}")
            results = await asyncio.gather(*[client.explain([t], targets="all") for t in TEXTS])
            extra = await client.explain([TEXTS[0]], explainer="lime", num_samples=300)
            ig = await client.explain([TEXTS[0]], explainer="integrated-gradients", n_steps=32)
            print(f"[{dtype}] lime rows {extra[0].model_rows}; IG delta {ig[0].convergence_delta}")
            return [r[0] for r in results]
    finally:
        await server.stop(0)


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
        print(f"[float32] max |GPU values - CPU shap| = {worst:.2e}; "
              f"max additivity error {max(e.additivity_error for e in fp32):.2e}")  # type: ignore[attr-defined]
        bf16 = asyncio.run(run(model_dir, args.device, "bfloat16"))
        print(f"[bfloat16] max additivity error {max(e.additivity_error for e in bf16):.2e}")  # type: ignore[attr-defined]
        ok = worst < 1e-3 and all(e.additivity_error < 1e-5 for e in fp32 + bf16)  # type: ignore[attr-defined]
        print("GPU SMOKE", "OK" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
