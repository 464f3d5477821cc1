"""`whybert export-model sentiment`: the built-in model as a plain Hugging Face directory
that gives the server's logits."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from _references import PlainModel
from whybert_service.models.classifier import Classifier
from whybert_service.models.export import add_export_arguments, run_export
from whybert_service.models.loading import load_directory

pytestmark = pytest.mark.slow  # the real default model

TEXTS = [
    "the food was great but the service was painfully slow",
    "I love it",
    "terrible, never again",
    "The flight leaves at 6pm from gate 12.",
]


def export(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    return run_export(parser.parse_args(list(argv)))


def server_logits(classifier: Classifier, texts: list[str]) -> np.ndarray:
    return np.stack([classifier.forward(classifier.encode([t]).ids)[0] for t in texts])


@pytest.fixture(scope="module")
def exported_sentiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "sentiment"
    assert export("sentiment", "--out", str(out)) == 0
    return out


def test_sentiment_export_gives_the_servers_logits(exported_sentiment: Path) -> None:
    from whybert_service.models.builtin import load_builtin

    served = load_builtin(torch.device("cpu"), torch.float32)
    expected = server_logits(served, TEXTS)
    plain = PlainModel.from_directory(exported_sentiment).logits(TEXTS, batch=1)  # a text at a time
    np.testing.assert_allclose(plain, expected, atol=1e-4)
    reloaded = load_directory("again", exported_sentiment, torch.device("cpu"), torch.float32)
    assert reloaded.labels == ["negative", "neutral", "positive"]
    np.testing.assert_allclose(server_logits(reloaded, TEXTS), expected, atol=1e-4)


def test_sentiment_export_is_plain_safetensors(exported_sentiment: Path) -> None:
    names = {p.name for p in exported_sentiment.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) or "adapter" in n for n in names)
