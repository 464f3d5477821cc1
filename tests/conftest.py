"""Shared fixtures of every layer: a tiny random-weight BERT with the real MiniLM tokenizer,
servers that serve it, and the libraries' reference explanations on it.

The tests are layered by folder, and each test gets its folder's marker (registered in
pyproject.toml), so `./scripts/test -m unit` runs one layer:

- tests/unit/: no server, no subprocess, no network port; the whole folder in under 30 s.
- tests/integration/: in-process servers on the tiny model (one per module where the
  tests allow), and workers and explainers against a real worker.
- tests/system/: `whybert serve` processes, Prometheus, Chromium, Node.js, buf, the
  built-in `sentiment` model.

Helpers are imported from their modules (tests/ is on sys.path), never from a conftest:
`_servers` (settings, server threads, the faulty classifier), `_wait` (bounded polling),
`_references` (shap, lime and Captum's own answers).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
from threadpoolctl import threadpool_limits

if TYPE_CHECKING:
    from _references import CaptumReference, LimeReference, PlainModel, ShapReference
    from _servers import ServerThread
    from transformers import BertConfig
    from whybert_service.models.classifier import Classifier
    from whybert_service.models.token_classifier import TokenClassifier

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One compute thread per test process, and (through the environment) per server process the
# tests start: scripts/test runs several pytest-xdist workers beside those servers, and on a
# 2-core machine the OpenMP and OpenBLAS threads of oversubscribed processes spin against each
# other (the built-in model's Partition sweep: 92 s with two threads, 29 s with one, beside
# another test run). Export OMP_NUM_THREADS to choose otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
threadpool_limits(int(os.environ["OMP_NUM_THREADS"]))

TESTS = Path(__file__).resolve().parent
LAYERS = ("unit", "integration", "system")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its layer, read from its folder (tests/<layer>/...)."""
    for item in items:
        try:
            layer = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))


def make_tiny_bert(path: Path) -> Path:
    """A random-weight BERT classifier (hidden 32) with the real uncased WordPiece tokenizer.

    BERT's initial weights (std 0.02) make a model whose outputs barely depend on the
    text (probabilities move ~1e-4): attention, feed-forward and pooler weights are scaled
    up so that words move the outputs by tenths and comparisons with the libraries mean
    something.
    """
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(["negative", "neutral", "positive"])).eval()
    with torch.no_grad():
        scale_up(model, "encoder", "pooler")
        model.classifier.weight.mul_(4.0)
    return save_tiny(model, path, 128)


def tiny_bert_config(labels: list[str], max_positions: int = 128, **extra: Any) -> BertConfig:
    """The tiny models' shape (hidden 32, 2 layers, 2 heads, the real uncased vocabulary)."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        **extra,
    )


def scale_up(model: torch.nn.Module, *parts: str, factor: float = 8.0) -> None:
    """Multiply the weights of the linear layers whose names hold one of `parts`."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(part in name for part in parts):
            module.weight.mul_(factor)


def save_tiny(model: torch.nn.Module, path: Path, max_tokens: int) -> Path:
    """Save a tiny model with the real uncased WordPiece tokenizer, cut at `max_tokens`."""
    from transformers import AutoTokenizer
    from whybert_service.models.builtin import encoder_dir

    model.save_pretrained(path, safe_serialization=True)  # type: ignore[operator]
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir())
    tokenizer.model_max_length = max_tokens
    tokenizer.save_pretrained(path)
    return path


# ---- the tiny model ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_classifier(tiny_model_dir: Path) -> Classifier:
    from whybert_service.models.loading import load_directory

    return load_directory("tiny", tiny_model_dir, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def ner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny token-classification model's directory (tests/_entities.py)."""
    from _entities import make_tiny_ner

    return make_tiny_ner(tmp_path_factory.mktemp("tiny-ner"))


@pytest.fixture(scope="session")
def ner(ner_dir: Path) -> TokenClassifier:
    """The tiny token-classification model, loaded as the server loads it."""
    from whybert_service.models.loading import load_directory
    from whybert_service.models.token_classifier import TokenClassifier

    classifier = load_directory("ner", ner_dir, torch.device("cpu"), torch.float32)
    assert isinstance(classifier, TokenClassifier)
    return classifier


# ---- the libraries' own answers on it (tests/_references.py) ----------------------------------


@pytest.fixture(scope="session")
def plain_model(tiny_model_dir: Path) -> PlainModel:
    """The tiny model straight from transformers, no whybert code involved."""
    from _references import PlainModel

    return PlainModel.from_directory(tiny_model_dir)


@pytest.fixture(scope="session")
def shap_reference(plain_model: PlainModel) -> ShapReference:
    from _references import ShapReference

    return ShapReference(plain_model)


@pytest.fixture(scope="session")
def lime_reference(plain_model: PlainModel) -> LimeReference:
    from _references import LimeReference

    return LimeReference(plain_model)


@pytest.fixture(scope="session")
def captum_reference(plain_model: PlainModel) -> CaptumReference:
    from _references import CaptumReference

    return CaptumReference(plain_model)


# ---- servers of it ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def threaded_server(tiny_model_dir: Path) -> Iterator[ServerThread]:
    """A whybert server serving the tiny model as 'tiny' on its own thread, shared by one
    test module (sync and async tests alike: its loop is not the test's)."""
    from _servers import ServerThread, tiny_settings

    with ServerThread(tiny_settings(tiny_model_dir)) as server:
        yield server


@pytest.fixture(scope="module")
def target(threaded_server: ServerThread) -> str:
    """The address of the module's tiny-model server."""
    return threaded_server.target
