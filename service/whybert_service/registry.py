"""The models a server serves, by name, each with the worker that owns it.

The registry exists from the server's start: while the models load it answers UNAVAILABLE,
once `open` it serves them, and `close` stops every worker it was given (one added after
that, by a loading thread that finished late, is stopped at once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

from .batching.worker import ModelWorker
from .errors import NotFound, Unavailable
from .models.classifier import Classifier


@dataclass
class ModelHandle:
    """A served model: the classifier and its worker."""

    classifier: Classifier
    worker: ModelWorker

    @property
    def name(self) -> str:
        return self.classifier.name


class _State(Enum):
    LOADING = "loading"
    OPEN = "open"
    CLOSED = "closed"


class RegistryClosed(RuntimeError):
    """A model finished loading after the server stopped; its worker was stopped."""


class ModelRegistry:
    """Name → served model, and which one is the default."""

    def __init__(self) -> None:
        self._models: dict[str, ModelHandle] = {}
        self.default_model = ""
        self._state = _State.LOADING
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[ModelHandle]:
        return iter(list(self._models.values()))

    def __len__(self) -> int:
        return len(self._models)

    @property
    def is_open(self) -> bool:
        return self._state is _State.OPEN

    def add(self, handle: ModelHandle) -> None:
        """Register a loaded model (its worker started) while the registry loads."""
        with self._lock:
            closed = self._state is _State.CLOSED
            if not closed:
                if handle.name in self._models:
                    raise ValueError(f"model {handle.name!r} is registered twice")
                self._models[handle.name] = handle
        if closed:
            handle.worker.stop()
            raise RegistryClosed("the server stopped while its models were loading")

    def open(self, default_model: str) -> None:
        """Start serving: every model is loaded and `default_model` answers empty names."""
        with self._lock:
            if default_model not in self._models:
                raise ValueError(f"--default-model {default_model!r} is not among the loaded models")
            if self._state is _State.CLOSED:
                raise RegistryClosed("the server stopped while its models were loading")
            self.default_model = default_model
            self._state = _State.OPEN

    def get(self, name: str) -> ModelHandle:
        """The named model (the default one for an empty name); NOT_FOUND for a model not
        served here, UNAVAILABLE while loading, stopping or restarting."""
        if self._state is not _State.OPEN:
            if self._state is _State.LOADING:
                raise Unavailable("the server is still loading its models; retry shortly")
            raise Unavailable("the server is shutting down")
        key = name or self.default_model
        handle = self._models.get(key)
        if handle is None:
            known = ", ".join(sorted(self._models)) or "none"
            raise NotFound(f"model {key!r} is not served here (models: {known})")
        if not handle.worker.healthy:
            raise Unavailable(f"model {key!r} is not serving right now (loading or restarting); retry")
        return handle

    def all_healthy(self) -> bool:
        return self.is_open and bool(self._models) and all(h.worker.healthy for h in self)

    def close(self, timeout: float = 5.0) -> None:
        """Stop every model's worker (their queued work gets UNAVAILABLE at once), giving
        the batches that run at most `timeout` seconds in all: the process must exit within
        its grace period plus a little, and a batch left running is work nobody waits for."""
        with self._lock:
            self._state = _State.CLOSED
            handles = list(self._models.values())
        deadline = time.monotonic() + timeout
        for handle in handles:
            handle.worker.stop(timeout=max(0.0, deadline - time.monotonic()))
