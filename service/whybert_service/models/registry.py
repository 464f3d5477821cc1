"""The models a server serves, by name, each with the worker that owns it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..batching.worker import ModelWorker, WorkerConfig
from ..errors import NotFound, Unavailable
from ..metrics import Metrics
from .builtin import BUILTIN_NAME  # and importable as registry.BUILTIN_NAME
from .classifier import Classifier
from .loading import load_directory, resolve_device, resolve_dtype

log = logging.getLogger(__name__)


@dataclass
class ModelHandle:
    """A served model: the classifier and its worker."""

    classifier: Classifier
    worker: ModelWorker

    @property
    def name(self) -> str:
        return self.classifier.name


class ModelRegistry:
    """Name → served model, and which one is the default."""

    def __init__(self, default_model: str) -> None:
        self._models: dict[str, ModelHandle] = {}
        self.default_model = default_model

    def __iter__(self) -> Iterator[ModelHandle]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def add(self, handle: ModelHandle) -> None:
        if handle.name in self._models:
            raise ValueError(f"model {handle.name!r} is registered twice")
        self._models[handle.name] = handle

    def get(self, name: str) -> ModelHandle:
        """The named model (the default one for an empty name); NOT_FOUND otherwise."""
        key = name or self.default_model
        handle = self._models.get(key)
        if handle is None:
            known = ", ".join(sorted(self._models)) or "none"
            raise NotFound(f"model {key!r} is not served here (models: {known})")
        if not handle.worker.healthy:
            raise Unavailable(f"model {key!r} is not serving right now (loading or restarting); retry")
        return handle

    def all_healthy(self) -> bool:
        return bool(self._models) and all(h.worker.healthy for h in self)

    def stop(self) -> None:
        for handle in self:
            handle.worker.stop()


def build_registry(
    model_paths: dict[str, str],
    *,
    default_model: str,
    load_builtin: bool,
    device_spec: str,
    dtype_spec: str,
    worker_config: WorkerConfig,
    metrics: Metrics,
    on_health: Callable[[bool], None] | None = None,
) -> ModelRegistry:
    """Load every model, start its worker (which warms it up) and return the registry."""
    device = resolve_device(device_spec)
    dtype = resolve_dtype(dtype_spec, device)
    loaders: list[tuple[str, Callable[[], Classifier]]] = []
    if load_builtin and BUILTIN_NAME not in model_paths:
        from .builtin import load_builtin as _load_builtin

        loaders.append((BUILTIN_NAME, lambda: _load_builtin(device, dtype)))
    for name, path in model_paths.items():
        loaders.append((name, lambda name=name, path=path: load_directory(name, path, device, dtype)))  # type: ignore[misc]
    if not loaders:
        raise ValueError("no model to serve: give --model NAME=PATH or allow the built-in model")
    chosen_default = default_model or (BUILTIN_NAME if load_builtin else loaders[0][0])
    if chosen_default not in {name for name, _ in loaders}:
        raise ValueError(f"--default-model {chosen_default!r} is not among the loaded models")
    registry = ModelRegistry(chosen_default)
    for name, loader in loaders:
        metrics.model_loaded.labels(name).set(0)
        classifier = loader()
        worker = ModelWorker(classifier, worker_config, metrics, on_health)
        worker.start()
        registry.add(ModelHandle(classifier, worker))
        log.info(
            "model loaded",
            extra={"model": name, "device": str(classifier.device), "dtype": str(classifier.dtype)},
        )
    if device.type == "cpu":
        log.info("running on the CPU with %d threads", torch.get_num_threads())
    return registry
