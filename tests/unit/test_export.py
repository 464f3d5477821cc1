"""`whybert export-model`: a plain Hugging Face directory that gives the server's logits."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from whybert_service.models.classifier import Classifier
from whybert_service.models.export import add_export_arguments, run_export
from whybert_service.models.loading import load_directory

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


def transformers_logits(path: Path, texts: list[str]) -> np.ndarray:
    """Logits as anyone would compute them with plain transformers, one text at a time."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        rows = [model(**tokenizer(text, return_tensors="pt")).logits[0].numpy() for text in texts]
    return np.stack(rows)


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
    np.testing.assert_allclose(transformers_logits(exported_sentiment, TEXTS), expected, atol=1e-4)
    reloaded = load_directory("again", exported_sentiment, torch.device("cpu"), torch.float32)
    assert reloaded.labels == ["negative", "neutral", "positive"]
    np.testing.assert_allclose(server_logits(reloaded, TEXTS), expected, atol=1e-4)


def test_sentiment_export_is_plain_safetensors(exported_sentiment: Path) -> None:
    names = {p.name for p in exported_sentiment.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) or "adapter" in n for n in names)


def test_a_model_given_by_path_exports_too(tiny_model_dir: Path, tiny_classifier: Classifier, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    assert export("tiny", "--model", f"tiny={tiny_model_dir}", "--no-builtin-model", "--out", str(out)) == 0
    np.testing.assert_allclose(transformers_logits(out, TEXTS), server_logits(tiny_classifier, TEXTS), atol=1e-5)


def test_unknown_names_and_full_directories_are_refused(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export("nope", "--out", str(tmp_path / "a")) == 2
    assert "no model named 'nope'" in capsys.readouterr().err
    assert export("sentiment", "--no-builtin-model", "--out", str(tmp_path / "b")) == 2
    assert export("tiny", "--model", f"tiny={tiny_model_dir}", "--out", str(tiny_model_dir)) == 2
    assert "not empty" in capsys.readouterr().err
