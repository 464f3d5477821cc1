"""Assembling the served models (compose.py), without loading one: the worker's settings
come from the server's, and a server with nothing to serve, or a default model it does not
load, is refused before any model loads. (Loading the tiny model and serving it:
integration/test_compose_loader.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from _servers import tiny_settings
from whybert_service.compose import load_models, model_loader, worker_config
from whybert_service.metrics import Metrics
from whybert_service.registry import ModelRegistry


def test_the_worker_config_follows_the_settings() -> None:
    settings = tiny_settings(
        Path("/m"), max_batch_tokens=1024, max_batch_ms=150, max_batch_delay_ms=7.5, max_queued_rows=99
    )
    config = worker_config(settings)
    assert (config.max_batch_tokens, config.max_batch_seconds, config.max_batch_delay_s, config.max_queued_rows) == (
        1024, 0.15, 0.0075, 99
    )
    assert worker_config(tiny_settings(Path("/m"), max_batch_ms=0)).max_batch_seconds is None  # off


def test_nothing_to_serve_is_refused() -> None:
    load = model_loader(tiny_settings(None, model=(), no_builtin_model=True))
    registry = ModelRegistry()
    with pytest.raises(ValueError, match="no model to serve"):
        load(registry, Metrics(), lambda _ok: None)
    assert len(registry) == 0 and not registry.is_open


def test_a_default_model_that_is_not_loaded_is_refused_before_any_loading() -> None:
    registry, metrics = ModelRegistry(), Metrics()
    with pytest.raises(ValueError, match="--default-model 'other' is not among the loaded models"):
        load_models(
            registry, {"tiny": "/no/such/directory"}, default_model="other", load_builtin=False,
            device_spec="cpu", dtype_spec="auto", worker_config=worker_config(tiny_settings(None)),
            metrics=metrics,
        )  # fmt: skip
    assert len(registry) == 0  # the missing directory was never read
    assert metrics.registry.get_sample_value("whybert_model_loaded", {"model": "tiny"}) is None
