"""Shared fixtures: a tiny random-weight BERT with the real MiniLM tokenizer, and a
running in-process server that serves it."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from _servers import ServerThread
    from whybert_service.grpc.server import WhybertServer
    from whybert_service.settings import ServerSettings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def make_tiny_bert(path: Path) -> Path:
    """A random-weight BERT classifier (hidden 32) with the real uncased WordPiece tokenizer.

    BERT's initial weights (std 0.02) make a model whose outputs barely depend on the
    text (probabilities move ~1e-4): attention, feed-forward and pooler weights are scaled
    up so that words move the outputs by tenths and comparisons with the libraries mean
    something.
    """
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    from whybert_service.models.builtin import encoder_dir

    labels = ["negative", "neutral", "positive"]
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ("encoder" in name or "pooler" in name):
                module.weight.mul_(8.0)
        model.classifier.weight.mul_(4.0)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir())
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_classifier(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from whybert_service.models.loading import load_directory

    return load_directory("tiny", tiny_model_dir, torch.device("cpu"), torch.float32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_settings(model_dir: Path, **overrides: object):  # type: ignore[no-untyped-def]
    from whybert_service.settings import ServerSettings

    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "model": (f"tiny={model_dir}",),
        "no_builtin_model": True,
        "device": "cpu",
        "max_batch_delay_ms": 2.0,
    }
    values.update(overrides)
    return ServerSettings(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(settings: ServerSettings) -> AsyncIterator[WhybertServer]:
    """A started in-process whybert server on this event loop, stopped afterwards."""
    from whybert_service.grpc.server import WhybertServer

    server = WhybertServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


@pytest.fixture
async def tiny_server(tiny_model_dir: Path) -> AsyncIterator[object]:
    """A whybert server on a free loopback port serving the tiny model as 'tiny'."""
    async with running(tiny_settings(tiny_model_dir)) as server:
        yield server


@pytest.fixture
def threaded_server(tiny_model_dir: Path) -> Iterator[ServerThread]:
    """A whybert server serving the tiny model on its own thread, for blocking clients."""
    from _servers import ServerThread

    with ServerThread(tiny_settings(tiny_model_dir)) as server:
        yield server


@pytest.fixture(scope="module")
def target(tiny_model_dir: Path) -> Iterator[str]:
    """The address of a tiny-model server shared by one test module's blocking clients."""
    from _servers import ServerThread

    with ServerThread(tiny_settings(tiny_model_dir)) as server:
        yield server.target
