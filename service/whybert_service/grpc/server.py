"""Assembling and running one whybert server.

Start-up order: metrics endpoint, then the gRPC server with health NOT_SERVING (so
orchestrators can watch it load), then the models are loaded and warmed in a thread,
then health turns SERVING. On SIGTERM/SIGINT: health NOT_SERVING, new calls refused
(UNAVAILABLE), calls in flight get `grace_seconds` to finish, the models' workers stop,
then the process exits 0. A signal during loading stops at once: loading runs in daemon
threads, and whatever they finish after the signal is released by them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from whybert.v1 import explainer_pb2 as pb
from whybert.v1 import explainer_pb2_grpc as pb_grpc

from ..batching.worker import WorkerConfig
from ..dataplane import DataPlane
from ..explainers import create_explainers
from ..metrics import Metrics
from ..models.registry import ModelRegistry, build_registry
from ..settings import ServerSettings, describe
from ..validation import Limits
from .auth import TokenAuthInterceptor, load_tokens
from .decoding import DecodeErrorInterceptor
from .interceptors import MetricsInterceptor, StreamLimitInterceptor
from .servicer import ExplainerServicer

log = logging.getLogger(__name__)

# After the grace period, how long the models' workers get to finish the batch they run.
WORKER_STOP_SECONDS = 1.0
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Explainer"].full_name
RegistryFactory = Callable[[Metrics, Callable[[bool], None]], ModelRegistry]
T = TypeVar("T")


def worker_config(settings: ServerSettings) -> WorkerConfig:
    return WorkerConfig(
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_delay_s=settings.max_batch_delay_ms / 1000.0,
        max_queued_rows=settings.max_queued_rows,
    )


def default_registry_factory(settings: ServerSettings) -> RegistryFactory:
    def factory(metrics: Metrics, on_health: Callable[[bool], None]) -> ModelRegistry:
        return build_registry(
            settings.model_paths(),
            default_model=settings.default_model,
            load_builtin=not settings.no_builtin_model,
            device_spec=settings.device,
            dtype_spec=settings.dtype,
            worker_config=worker_config(settings),
            metrics=metrics,
            on_health=on_health,
        )

    return factory


def channel_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """Message limits set on purpose, and keepalive that suits long unary calls."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Clients re-resolve now and then, so new replicas get traffic.
        ("grpc.max_connection_age_ms", 30 * 60_000),
        ("grpc.max_connection_age_grace_ms", 5 * 60_000),
    ]


class WhybertServer:
    """One server process's gRPC server, health, reflection, metrics and models."""

    def __init__(self, settings: ServerSettings, registry_factory: RegistryFactory | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self._registry_factory = registry_factory or default_registry_factory(settings)
        self.registry: ModelRegistry | None = None
        self.dataplane: DataPlane | None = None
        self.health = health.aio.HealthServicer()
        self.servicer = ExplainerServicer(Limits.from_settings(settings))
        self.watch_limit = StreamLimitInterceptor(settings.max_watch_streams)
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = asyncio.Event()
        self._stop_task: asyncio.Future[None] | None = None
        self._loading: asyncio.Future[None] | None = None
        # Between the loading thread publishing the registry and stop() releasing it.
        self._registry_lock = threading.Lock()
        self._closing = False

    async def start(self) -> int:
        """Listen, then load the models; returns the bound gRPC port."""
        self._loop = asyncio.get_running_loop()
        s = self.settings
        if s.metrics_port:
            self.metrics.serve(s.metrics_port, s.host)
        self.server = grpc.aio.server(
            interceptors=self._interceptors(),
            options=channel_options(s),
            maximum_concurrent_rpcs=None,
        )
        pb_grpc.add_ExplainerServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        await self._set_health(False)
        if s.reflection:
            names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self.server)
        address = f"{s.host}:{s.port}"
        credentials = server_credentials(s)
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        if not self.port:
            raise RuntimeError(f"cannot listen on {address}")
        await self.server.start()
        log.info("listening", extra={"address": address, "port": self.port, "settings": dict(describe(s))})
        self._loading = asyncio.ensure_future(self._load_models())
        try:
            await self._loading
        except asyncio.CancelledError:
            if not (self._stopped.is_set() and self._loading.cancelled()):
                raise
            log.warning("stopped while loading the models")
        return self.port

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Metrics outermost (they count refusals too), the cap on health Watch streams (open
        to all), then authentication, then decoding."""
        interceptors: list[grpc.aio.ServerInterceptor] = [
            MetricsInterceptor(self.metrics),
            self.watch_limit,
        ]
        tokens = load_tokens(self.settings)
        if tokens:
            interceptors.append(TokenAuthInterceptor(tokens))
        interceptors.append(DecodeErrorInterceptor())
        return interceptors

    async def _load_models(self) -> None:
        """Load the models and warm the explainers up, side by side."""
        explainers = create_explainers()

        def warm_up() -> None:
            for e in explainers.values():
                e.warm_up()

        registry, _ = await asyncio.gather(
            _in_daemon_thread(self._build_registry, "whybert-load-models"),
            _in_daemon_thread(warm_up, "whybert-warm-up"),
        )
        s = self.settings
        self.dataplane = DataPlane(
            registry,
            self.metrics,
            explain_threads=s.explain_threads,
            max_concurrent_requests=s.max_concurrent_requests,
            cache_entries=s.cache_entries,
            cache_bytes=s.cache_bytes,
            explainers=explainers,
        )
        self.servicer.dataplane = self.dataplane
        await self._set_health(registry.all_healthy())
        log.info("serving", extra={"models": [h.name for h in registry]})

    def _build_registry(self) -> ModelRegistry:
        """Load the models (on a loading thread); if the server stopped meanwhile, release them."""
        registry = self._registry_factory(self.metrics, self._on_worker_health)
        with self._registry_lock:
            if not self._closing:
                self.registry = registry
                return registry
        registry.stop()
        raise RuntimeError("the server stopped while its models were loading")

    def _on_worker_health(self, _ok: bool) -> None:
        """Called from worker threads; recompute overall health on the loop."""
        loop = self._loop
        if loop is None or loop.is_closed() or self.registry is None:
            return
        registry = self.registry
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._set_health(registry.all_healthy())))

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        if self._stopped.is_set():
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, refuse new calls, let calls in flight finish, release models.

        Idempotent: a second call waits for the first shutdown to finish.
        """
        await asyncio.shield(self._begin_stop(grace))

    def _begin_stop(self, grace: float | None) -> asyncio.Future[None]:
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._shutdown(grace))
        return self._stop_task

    async def _shutdown(self, grace: float | None) -> None:
        self._stopped.set()
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(self.settings.grace_seconds if grace is None else grace)
        with self._registry_lock:
            self._closing = True
            registry = self.registry
        if registry is not None:
            await asyncio.to_thread(_stop_workers, registry, WORKER_STOP_SECONDS)
        if self.dataplane is not None:
            self.dataplane.close()
        self.metrics.close()

    async def wait_stopped(self) -> None:
        """Return once a shutdown (a signal's, or `stop()`) has completed."""
        await self._stopped.wait()
        assert self._stop_task is not None
        await asyncio.shield(self._stop_task)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda sig=sig: self._on_signal(sig))  # type: ignore[misc]

    def _on_signal(self, sig: signal.Signals) -> None:
        log.warning("shutting down", extra={"signal": sig.name, "grace_seconds": self.settings.grace_seconds})
        self._begin_stop(None)


def _stop_workers(registry: ModelRegistry, seconds: float) -> None:
    """Stop every model's worker (their queued work gets UNAVAILABLE at once), giving the
    batches that run at most `seconds` in all: the process must exit within the grace
    period plus a little, and a batch left running is only work nobody waits for."""
    deadline = time.monotonic() + seconds
    for handle in registry:
        handle.worker.stop(timeout=max(0.0, deadline - time.monotonic()))


def _in_daemon_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run `fn` on a daemon thread: unlike `asyncio.to_thread`, the process need not wait
    for it to exit (a shutdown during a long model load stops at once)."""
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not done.set_running_or_notify_cancel():
            return
        try:
            done.set_result(fn())
        except BaseException as exc:
            done.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return asyncio.wrap_future(done)


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS when a certificate is given; mutual TLS when a client CA is given too."""
    if not settings.tls_cert:
        return None
    key = Path(settings.tls_key).read_bytes()
    chain = Path(settings.tls_cert).read_bytes()
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def serve(settings: ServerSettings) -> None:
    """Run a server until SIGTERM/SIGINT, then shut down gracefully."""
    server = WhybertServer(settings)
    server.install_signal_handlers()
    try:
        await server.start()
    except BaseException:
        await server.stop(0)
        raise
    await server.wait_stopped()
