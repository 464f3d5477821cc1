"""The registry of served models (registry.py): UNAVAILABLE while the models load, NOT_FOUND
for a model not served here, UNAVAILABLE for one whose worker is down, and `close` stops
every worker, a late one (added after the close) at once."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from whybert_service.errors import NotFound, Unavailable
from whybert_service.registry import ModelHandle, ModelRegistry, RegistryClosed


class FakeWorker:
    """What the registry needs of a worker: its health, and stop()."""

    def __init__(self, healthy: bool = True) -> None:
        self.healthy = healthy
        self.stops: list[float] = []

    def stop(self, timeout: float = 5.0) -> None:
        self.stops.append(timeout)
        self.healthy = False


def handle(name: str, healthy: bool = True) -> ModelHandle:
    return ModelHandle(SimpleNamespace(name=name), FakeWorker(healthy))  # type: ignore[arg-type]


def worker(h: ModelHandle) -> Any:
    return h.worker


def test_while_the_models_load_every_name_is_unavailable() -> None:
    registry = ModelRegistry()
    registry.add(handle("a"))
    assert not registry.is_open and not registry.all_healthy()
    for name in ("", "a", "nope"):
        with pytest.raises(Unavailable, match="still loading its models; retry shortly"):
            registry.get(name)


def test_once_open_names_resolve_and_the_empty_name_is_the_default() -> None:
    registry = ModelRegistry()
    a, b = handle("a"), handle("b")
    registry.add(a)
    registry.add(b)
    registry.open("b")
    assert registry.is_open and registry.default_model == "b"
    assert registry.get("") is b and registry.get("a") is a
    assert [h.name for h in registry] == ["a", "b"] and len(registry) == 2
    assert registry.all_healthy()


def test_a_model_not_served_here_is_not_found_and_the_message_lists_the_models() -> None:
    registry = ModelRegistry()
    registry.add(handle("b"))
    registry.add(handle("a"))
    registry.open("a")
    with pytest.raises(NotFound) as missing:
        registry.get("nope")
    assert missing.value.message == "model 'nope' is not served here (models: a, b)"


def test_a_model_whose_worker_is_down_is_unavailable() -> None:
    registry = ModelRegistry()
    registry.add(handle("a", healthy=False))
    registry.open("a")
    with pytest.raises(Unavailable, match=r"model 'a' is not serving right now \(loading or restarting\); retry"):
        registry.get("a")
    assert not registry.all_healthy()


def test_a_name_is_registered_once_and_the_default_must_be_loaded() -> None:
    registry = ModelRegistry()
    registry.add(handle("a"))
    with pytest.raises(ValueError, match="registered twice"):
        registry.add(handle("a"))
    with pytest.raises(ValueError, match="--default-model 'b' is not among the loaded models"):
        registry.open("b")
    assert not registry.is_open


def test_close_stops_every_worker_and_refuses_from_then_on() -> None:
    registry = ModelRegistry()
    handles = [handle("a"), handle("b")]
    for h in handles:
        registry.add(h)
    registry.open("a")
    registry.close(timeout=2.0)
    for h in handles:
        (timeout,) = worker(h).stops
        assert 0.0 <= timeout <= 2.0  # one budget shared by every worker's stop
    with pytest.raises(Unavailable, match="shutting down"):
        registry.get("a")
    assert not registry.is_open and not registry.all_healthy()


def test_a_model_loaded_after_the_close_is_stopped_at_once() -> None:
    registry = ModelRegistry()
    registry.close()
    late = handle("late")
    with pytest.raises(RegistryClosed):
        registry.add(late)
    assert worker(late).stops == [5.0]  # stopped by the registry, never registered
    assert len(registry) == 0
    registry_open_after_close = ModelRegistry()
    registry_open_after_close.add(handle("a"))
    registry_open_after_close.close()
    with pytest.raises(RegistryClosed):
        registry_open_after_close.open("a")
