"""Test helpers: settings for a server of the tiny model, a whybert server on its own thread
and event loop (or on the test's loop), and a classifier whose forward pass can be held,
counted and made to fail on demand.

A server on its own thread lets plain (sync) tests and module-scoped fixtures share one
server, and keeps the callers' load off the server's event loop, as in production.
Every layer imports these from `_servers` (tests/ is on sys.path: `pythonpath` in
pyproject.toml), never from conftest.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from _wait import wait_for
from whybert_service.batching.worker import ModelWorker, WorkerCrash
from whybert_service.compose import ModelLoader, serve_classifier, worker_config
from whybert_service.context import RequestContext
from whybert_service.grpc.server import WhybertServer
from whybert_service.metrics import Metrics
from whybert_service.models.classifier import Classifier, Launched
from whybert_service.registry import ModelRegistry
from whybert_service.settings import ServerSettings

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_settings(model_dir: Path | None, **overrides: object) -> ServerSettings:
    """Settings of a loopback server (free ports) serving the tiny model as 'tiny'."""
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
    server = WhybertServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


class FaultyClassifier(Classifier):
    """The real classifier's model and tokenizer, with a forward pass that records every
    row it runs and, on demand, blocks, runs out of memory, fails on one word, or crashes.

    - `hold()` / `release()`: forward passes wait until released (`entered` is set once
      one is waiting), so a queue builds up behind them.
    - `oom_above`: a forward of more rows than this raises a CUDA-style OOM error.
    - `poison`: a row holding this word's tokens raises, alone or not.
    - `crashes`: the next so many forward passes raise `WorkerCrash`.
    - `crash_after`: that many more forward passes succeed, then the next one crashes.
    - `delay`: seconds every forward pass sleeps first (a slow device).
    - `seconds_per_token`: seconds it sleeps per padded token (longest row × rows), too.
    `batches` and `padded` record each forward pass's rows and padded tokens.
    """

    def __init__(self, base: Classifier, name: str | None = None) -> None:
        super().__init__(
            name=name or base.name,
            model=base.model,
            tokenizer=base.tokenizer,
            labels=base.labels,
            device=base.device,
            weights_sha256=base.weights_sha256,
            source=base.source,
            max_length=base.max_length,
        )
        self.seen: list[tuple[int, ...]] = []
        self.batches: list[int] = []
        self.events: list[str] = []
        self.entered = threading.Event()
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self.oom_above: int | None = None
        self.crashes = 0
        self.crash_after: int | None = None
        self.delay = 0.0
        self.seconds_per_token = 0.0
        self.padded: list[int] = []
        self._poison: tuple[int, ...] | None = None

    def hold(self) -> None:
        self.entered.clear()
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def set_poison(self, word: str | None) -> None:
        self._poison = None if word is None else tuple(self.encode([word]).ids[0][1:-1])

    def saw_text(self, text: str) -> bool:
        """Whether any forwarded row was exactly this text's encoding."""
        ids = tuple(self.encode([text]).ids[0])
        with self._lock:
            return ids in self.seen

    def launch(self, rows: Sequence[Sequence[int]], positions: Sequence[int | None] | None = None) -> Launched:
        """Every forward pass starts here, pipelined or not: the faults strike at launch."""
        self.entered.set()
        if not self._open.wait(timeout=30):
            raise RuntimeError("the test never released the held forward pass")
        padded = len(rows) * max((len(r) for r in rows), default=0)
        if self.delay or self.seconds_per_token:
            time.sleep(self.delay + self.seconds_per_token * padded)  # the fault under test: a slow device
        with self._lock:
            if self.crash_after is not None:
                self.crashes += self.crash_after == 0
                self.crash_after = None if self.crash_after == 0 else self.crash_after - 1
            if self.crashes > 0:
                self.crashes -= 1
                self.events.append("crash")
                raise WorkerCrash("injected by the test")
            if self.oom_above is not None and len(rows) > self.oom_above:
                self.events.append("oom")
                raise RuntimeError(OOM_MESSAGE)
            if self._poison is not None and any(_holds(r, self._poison) for r in rows):
                self.events.append("poison")
                raise ValueError("the injected fault hit a poisoned row")
            self.seen.extend(tuple(r) for r in rows)
            self.batches.append(len(rows))
            self.padded.append(padded)
            self.events.append("forward")
        return super().launch(rows, positions)


def _holds(row: Sequence[int], part: tuple[int, ...]) -> bool:
    n = len(part)
    return any(tuple(row[i : i + n]) == part for i in range(len(row) - n + 1))


def registry_factory(classifier: Classifier, settings: ServerSettings) -> ModelLoader:
    """A loader serving just `classifier`, with the worker the settings describe."""

    def load(registry: ModelRegistry, metrics: Metrics, on_health: Callable[[bool], None]) -> None:
        serve_classifier(registry, classifier, worker_config(settings), metrics, on_health)
        registry.open(classifier.name)

    return load


class ServerThread:
    """A `WhybertServer` running on its own thread and event loop; a context manager."""

    def __init__(
        self,
        settings: ServerSettings,
        registry_factory: ModelLoader | None = None,
    ) -> None:
        self.settings = settings
        self._factory = registry_factory
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="test-server", daemon=True
        )
        self.server: WhybertServer | None = None
        self.port = 0

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self.server = self.run(self._start())
        self.port = self.server.port
        return self

    async def _start(self) -> WhybertServer:
        server = WhybertServer(self.settings, self._factory)
        await server.start()
        return server

    def run(self, coro: Any, timeout: float = 120.0) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self, grace: float = 0.0) -> None:
        if self.server is not None:
            self.run(self.server.stop(grace))

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def worker(self) -> ModelWorker:
        assert self.server is not None and self.server.registry is not None
        return next(iter(self.server.registry)).worker


def health(channel: grpc.Channel, timeout: float = 5.0) -> str:
    """The overall grpc.health.v1 status, by name, through a plain channel."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    response = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=timeout
    )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def hold_worker_thread(worker: ModelWorker) -> threading.Event:
    """Keep the worker's thread busy (the model is taken) until the returned event is set;
    returns once the worker runs it (a Predict sent earlier would go first)."""
    release, running = threading.Event(), threading.Event()

    def hold(_classifier: Classifier) -> bool:
        running.set()
        return release.wait(10)

    worker.call(hold, RequestContext())
    assert running.wait(10), "the worker did not take the job"
    return release


def reference_probabilities(classifier: Classifier, text: str) -> np.ndarray:
    """The model's probabilities for one text, straight from the model (no server)."""
    logits = classifier.forward(classifier.encode([text]).ids)[0].astype(np.float64)
    e = np.exp(logits - logits.max())
    return np.asarray(e / e.sum())


__all__ = [
    "OOM_MESSAGE",
    "FaultyClassifier",
    "ServerThread",
    "free_port",
    "health",
    "hold_worker_thread",
    "reference_probabilities",
    "registry_factory",
    "running",
    "tiny_settings",
    "wait_for",  # re-exported from _wait, where it lives
]
