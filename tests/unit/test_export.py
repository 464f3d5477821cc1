"""`whybert export-model`: a plain Hugging Face directory that gives the server's logits
(the built-in model's export: system/test_export_builtin.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from _references import PlainModel
from whybert_service.models.classifier import Classifier
from whybert_service.models.export import add_export_arguments, run_export

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


def test_a_model_given_by_path_exports_too(tiny_model_dir: Path, tiny_classifier: Classifier, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    assert export("tiny", "--model", f"tiny={tiny_model_dir}", "--no-builtin-model", "--out", str(out)) == 0
    plain = PlainModel.from_directory(out).logits(TEXTS, batch=1)  # as anyone would, a text at a time
    np.testing.assert_allclose(plain, server_logits(tiny_classifier, TEXTS), atol=1e-5)


def test_unknown_names_and_full_directories_are_refused(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export("nope", "--out", str(tmp_path / "a")) == 2
    assert "no model named 'nope'" in capsys.readouterr().err
    assert export("sentiment", "--no-builtin-model", "--out", str(tmp_path / "b")) == 2
    assert export("tiny", "--model", f"tiny={tiny_model_dir}", "--out", str(tiny_model_dir)) == 2
    assert "not empty" in capsys.readouterr().err
