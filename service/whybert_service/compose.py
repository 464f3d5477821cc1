"""Assembling the served models: load each, start the worker that owns it, register it.

The one module that joins `models` (what a model is), `batching` (who runs it) and the
registry (who serves it), so none of them imports another's caller. The server calls
`model_loader(settings)` on a loading thread; tests pass their own loader.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from .batching.worker import ModelWorker, WorkerConfig
from .metrics import Metrics
from .models.builtin import BUILTIN_NAME, ENTITIES_NAME
from .models.classifier import Classifier
from .models.loading import load_directory, resolve_device, resolve_dtype
from .registry import ModelHandle, ModelRegistry
from .settings import ServerSettings

log = logging.getLogger(__name__)

# Fills a (loading) registry with started workers and opens it; called on a loading thread
# with the server's metrics and the callback that worker health changes go to.
ModelLoader = Callable[[ModelRegistry, Metrics, Callable[[bool], None]], None]


def worker_config(settings: ServerSettings) -> WorkerConfig:
    return WorkerConfig(
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_seconds=settings.max_batch_ms / 1000.0 or None,
        max_batch_delay_s=settings.max_batch_delay_ms / 1000.0,
        max_queued_rows=settings.max_queued_rows,
    )


def model_loader(settings: ServerSettings) -> ModelLoader:
    """The loader of the models the settings name (and the built-in one unless turned off)."""

    def load(registry: ModelRegistry, metrics: Metrics, on_health: Callable[[bool], None]) -> None:
        load_models(
            registry,
            settings.model_paths(),
            default_model=settings.default_model,
            load_builtin=not settings.no_builtin_model,
            device_spec=settings.device,
            dtype_spec=settings.dtype,
            cuda_graphs=settings.cuda_graphs,
            worker_config=worker_config(settings),
            metrics=metrics,
            on_health=on_health,
        )

    return load


def serve_classifier(
    registry: ModelRegistry,
    classifier: Classifier,
    config: WorkerConfig,
    metrics: Metrics,
    on_health: Callable[[bool], None] | None = None,
) -> ModelHandle:
    """Start a worker for a loaded classifier (it warms the model up) and register both."""
    worker = ModelWorker(classifier, config, metrics, on_health)
    worker.start()
    handle = ModelHandle(classifier, worker)
    registry.add(handle)
    return handle


def load_models(
    registry: ModelRegistry,
    model_paths: dict[str, str],
    *,
    default_model: str,
    load_builtin: bool,
    device_spec: str,
    dtype_spec: str,
    worker_config: WorkerConfig,
    cuda_graphs: bool = True,
    metrics: Metrics,
    on_health: Callable[[bool], None] | None = None,
) -> None:
    """Load every model, start its worker and open the registry (`cuda_graphs`: on a GPU,
    recurring batch shapes replayed from CUDA graphs)."""
    device = resolve_device(device_spec)
    dtype = resolve_dtype(dtype_spec, device)
    loaders: list[tuple[str, Callable[[], Classifier]]] = []
    if load_builtin and BUILTIN_NAME not in model_paths:
        from .models.builtin import load_builtin as _load_builtin

        loaders.append((BUILTIN_NAME, lambda: _load_builtin(device, dtype)))
    if load_builtin and ENTITIES_NAME not in model_paths:
        from .models.builtin import load_entities

        loaders.append((ENTITIES_NAME, lambda: load_entities(device, dtype)))
    for name, path in model_paths.items():
        loaders.append((name, lambda name=name, path=path: load_directory(name, path, device, dtype)))  # type: ignore[misc]
    if not loaders:
        raise ValueError("no model to serve: give --model NAME=PATH or allow the built-in model")
    chosen_default = default_model or (BUILTIN_NAME if load_builtin else loaders[0][0])
    if chosen_default not in {name for name, _ in loaders}:
        raise ValueError(f"--default-model {chosen_default!r} is not among the loaded models")
    for name, loader in loaders:
        metrics.model_loaded.labels(name).set(0)
        classifier = loader()
        if cuda_graphs:
            classifier.use_graphs()
        serve_classifier(registry, classifier, worker_config, metrics, on_health)
        log.info(
            "model loaded",
            extra={
                "model": name,
                "device": str(classifier.device),
                "dtype": str(classifier.dtype),
                "cuda_graphs": classifier.graphs is not None,
            },
        )
    if device.type == "cpu":
        log.info("running on the CPU with %d threads", torch.get_num_threads())
    registry.open(chosen_default)
