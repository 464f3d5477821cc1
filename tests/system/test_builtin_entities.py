"""The built-in `entities` model (`models/builtin.py` with `entities_model/`): it loads
offline as an ordinary token classifier, peft's own loader reads the committed adapter as
the same model, the artefact is small, and `whybert serve` in a process of its own serves
it beside `sentiment` by default and finds the entities of an obvious sentence, while
`--no-builtin-model` turns both built-in models off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import whybert
from _servers import free_port
from _wait import wait_for
from whybert_service.models import adapter, builtin
from whybert_service.models.token_classifier import TokenClassifier

SENTENCE = "Angela Merkel visited Paris with officials from Siemens."
ROWS = [
    SENTENCE,
    "the european commission met in brussels on monday.",
    "Shares of Microsoft rose 3 percent in New York, said John Smith of Reuters.",
]


@pytest.fixture(scope="module")
def entities() -> TokenClassifier:
    return builtin.load_entities(torch.device("cpu"), torch.float32)


def test_loads_offline_as_a_token_classifier(entities: TokenClassifier) -> None:
    assert entities.kind == "token" and entities.name == "entities"
    assert entities.labels[0] == "O" and set(entities.entity_types) == {"PER", "ORG", "LOC", "MISC"}
    assert type(entities.model).__name__ == "BertForTokenClassification"
    assert entities.tokenizer("Paris")["input_ids"] == entities.tokenizer("paris")["input_ids"]  # uncased


def test_a_packed_batch_gives_each_text_the_token_logits_it_gets_alone(entities: TokenClassifier) -> None:
    ids = entities.encode(ROWS).ids
    assert entities.packer is not None and entities.packed(ids) is not None
    for row, got in zip(ids, entities.token_logits(ids), strict=True):
        np.testing.assert_allclose(got, entities.token_logits([row])[0], rtol=1e-4, atol=1e-4)
    positions = [len(row) - 2 for row in ids]  # each row's last word piece
    at = entities.forward(ids, positions)
    alone = np.stack([entities.token_logits([row])[0][p] for row, p in zip(ids, positions, strict=True)])
    np.testing.assert_allclose(at, alone, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # inside peft
def test_peft_reads_the_committed_adapter_as_the_served_model(entities: TokenClassifier) -> None:
    """The committed files are peft's format, and whybert's merge gives peft's logits."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    config = json.loads((builtin.ENTITIES_ADAPTER_DIR / adapter.ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "TOKEN_CLS"
    hf_logging.set_verbosity_error()
    base = AutoModelForTokenClassification.from_pretrained(
        builtin.encoder_dir(), local_files_only=True, num_labels=len(entities.labels)
    )
    model = peft.PeftModel.from_pretrained(base, builtin.ENTITIES_ADAPTER_DIR).merge_and_unload().eval()
    for text in ROWS:
        row = entities.tokenizer(text)["input_ids"]
        with torch.no_grad():
            by_peft = model(input_ids=torch.tensor([row])).logits[0].numpy()
        np.testing.assert_allclose(by_peft, entities.token_logits([row])[0], atol=1e-4)


def test_the_artefact_is_small_safetensors_and_the_card_states_the_figures() -> None:
    weights = builtin.ENTITIES_ADAPTER_DIR / adapter.ADAPTER_WEIGHTS
    assert weights.stat().st_size <= 5 * 1024 * 1024
    assert not list(builtin.ENTITIES_ADAPTER_DIR.glob("*.bin")) and not list(builtin.ENTITIES_ADAPTER_DIR.glob("*.txt"))
    report = json.loads((builtin.ENTITIES_ADAPTER_DIR / "training_report.json").read_text())
    card = (builtin.ENTITIES_ADAPTER_DIR / "MODEL_CARD.md").read_text()
    assert report["test"]["f1"] >= 0.86
    for split in ("dev", "test"):
        assert f"{report[split]['f1']:.4f}" in card
        for kind, figures in report[split]["per_type"].items():
            assert f"{figures['f1']:.4f}" in card, (split, kind)
    assert "uncased" in card and "research" in card


class Serve:
    """`whybert serve` in a child process on a loopback port, its output kept in a file."""

    def __init__(self, log: Path, *extra: str) -> None:
        self.target = f"127.0.0.1:{free_port()}"
        self._log = log.open("wb")
        self.log_path = log
        command = [
            sys.executable, "-m", "whybert_service.cli", "serve", "--host", "127.0.0.1",
            "--port", self.target.rsplit(":", 1)[1], "--metrics-port", "0", "--device", "cpu", *extra,
        ]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def models(self) -> list[whybert.ModelInfo] | None:
        assert self.process.poll() is None, f"the server exited:\n{self.log_path.read_text(errors='replace')}"
        try:
            with whybert.Client(self.target, timeout=5) as client:
                return client.list_models()
        except whybert.WhybertError:
            return None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(*extra: str) -> Serve:
        server = Serve(tmp_path / f"serve-{len(started)}.log", *extra)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def test_serve_offers_both_builtin_models_and_finds_obvious_entities(serve: Callable[..., Serve]) -> None:
    server = serve()
    models = wait_for(server.models, 180, step=0.5, message="the server never listed its models")
    assert {m.name for m in models} >= {"sentiment", "entities"}
    with whybert.Client(server.target, timeout=60) as client:
        (prediction,) = client.predict([SENTENCE], model="entities")
    found = {(e.text, e.label) for e in prediction.entities}
    assert found == {("Angela Merkel", "PER"), ("Paris", "LOC"), ("Siemens", "ORG")}
    for entity in prediction.entities:
        assert SENTENCE[entity.start : entity.end] == entity.text and 0.5 < entity.score <= 1.0


def test_no_builtin_model_turns_both_off(serve: Callable[..., Serve], tiny_model_dir: Path) -> None:
    server = serve("--no-builtin-model", "--model", f"tiny={tiny_model_dir}")
    models = wait_for(server.models, 120, step=0.5, message="the server never listed its models")
    assert [m.name for m in models] == ["tiny"]
