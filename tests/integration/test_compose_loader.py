"""Loading and serving a model (compose.py): the loader of the settings loads the tiny model,
starts its worker (warmed up, healthy), registers it and opens the registry with it as the
default; the loaded gauge and the health callback follow; the CUDA-graphs setting reaches
each classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _servers import tiny_settings
from whybert_service.compose import model_loader
from whybert_service.context import RequestContext
from whybert_service.metrics import Metrics
from whybert_service.models.classifier import Classifier
from whybert_service.registry import ModelRegistry


def test_the_settings_loader_serves_the_tiny_model(tiny_model_dir: Path, tiny_classifier: object) -> None:
    registry, metrics, health = ModelRegistry(), Metrics(), []
    model_loader(tiny_settings(tiny_model_dir, max_queued_rows=123))(registry, metrics, health.append)
    try:
        assert registry.is_open and registry.default_model == "tiny" and registry.all_healthy()
        handle = registry.get("")
        assert handle.name == "tiny" and handle.worker.config.max_queued_rows == 123
        assert health == [True]
        assert metrics.registry.get_sample_value("whybert_model_loaded", {"model": "tiny"}) == 1
        rows = handle.classifier.encode(["the food was great"]).ids
        logits = handle.worker.submit(rows, RequestContext()).result(10).logits
        np.testing.assert_allclose(logits, tiny_classifier.forward(rows), rtol=1e-5, atol=1e-6)  # type: ignore[attr-defined]
    finally:
        registry.close()
    assert health[-1] is False
    assert metrics.registry.get_sample_value("whybert_model_loaded", {"model": "tiny"}) == 0


@pytest.mark.parametrize("graphs", [True, False])
def test_cuda_graphs_follow_the_setting(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, graphs: bool) -> None:
    """`--cuda-graphs` (on by default) asks each loaded classifier to replay its recurring
    shapes from graphs; on this CPU the classifier declines and runs as before."""
    asked: list[str] = []
    use_graphs = Classifier.use_graphs

    def spy(self: Classifier, *, capture: bool = True) -> bool:
        asked.append(self.name)
        return use_graphs(self, capture=capture)

    monkeypatch.setattr(Classifier, "use_graphs", spy)
    registry = ModelRegistry()
    model_loader(tiny_settings(tiny_model_dir, cuda_graphs=graphs))(registry, Metrics(), lambda _ok: None)
    try:
        assert asked == (["tiny"] if graphs else [])
        assert registry.get("tiny").classifier.graphs is None  # no GPU here: nothing captured
    finally:
        registry.close()
