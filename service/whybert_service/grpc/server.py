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
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from whybert.v1 import explainer_pb2 as pb
from whybert.v1 import explainer_pb2_grpc as pb_grpc

from ..batching.queue import settle
from ..compose import ModelLoader, model_loader
from ..dataplane import DataPlane
from ..explainers import create_explainers
from ..metrics import Metrics
from ..registry import ModelRegistry
from ..settings import ServerSettings
from .auth import TokenAuthInterceptor, load_tokens
from .decoding import DecodeErrorInterceptor
from .interceptors import MetricsInterceptor, StreamLimitInterceptor
from .servicer import ExplainerServicer
from .validation import Limits

log = logging.getLogger(__name__)

# After the grace period, how long the models' workers get to finish the batch they run.
WORKER_STOP_SECONDS = 1.0
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Explainer"].full_name
T = TypeVar("T")


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

    def __init__(self, settings: ServerSettings, load_models: ModelLoader | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self._load = load_models or model_loader(settings)
        # Built empty: until the models are loaded, the registry answers UNAVAILABLE.
        self.registry = ModelRegistry()
        self.dataplane = DataPlane(
            self.registry,
            self.metrics,
            explain_threads=settings.explain_threads,
            max_concurrent_requests=settings.max_concurrent_requests,
            cache_entries=settings.cache_entries,
            cache_bytes=settings.cache_bytes,
            explainers=create_explainers(),
        )
        self.health = health.aio.HealthServicer()
        self.servicer = ExplainerServicer(self.dataplane, Limits.from_settings(settings))
        self.watch_limit = StreamLimitInterceptor(settings.max_watch_streams)
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = asyncio.Event()
        self._stop_task: asyncio.Future[None] | None = None
        self._loading: asyncio.Future[None] | None = None

    async def start(self) -> int:
        """Listen, then load the models; returns the bound gRPC port."""
        self._loop = asyncio.get_running_loop()
        s = self.settings
        if s.metrics_port:
            # Loopback on a secured server unless --metrics-host says otherwise; HTTPS under TLS.
            self.metrics.serve(s.metrics_port, s.metrics_address(), certfile=s.tls_cert, keyfile=s.tls_key)
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
        log.info("listening", extra={"address": address, "port": self.port, "settings": s.describe()})
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
        explainers = self.dataplane.explainers.values()

        def warm_up() -> None:
            for e in explainers:
                e.warm_up()

        await asyncio.gather(
            _in_daemon_thread(self._load_registry, "whybert-load-models"),
            _in_daemon_thread(warm_up, "whybert-warm-up"),
        )
        await self._set_health(self.registry.all_healthy())
        log.info("serving", extra={"models": [h.name for h in self.registry]})

    def _load_registry(self) -> None:
        """Fill the registry (on a loading thread); a model that finishes loading after the
        server stopped is released by the registry itself."""
        self._load(self.registry, self.metrics, self._on_worker_health)

    def _on_worker_health(self, _ok: bool) -> None:
        """Called from worker threads; recompute overall health on the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
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
        await asyncio.to_thread(self.registry.close, WORKER_STOP_SECONDS)
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


def _in_daemon_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run `fn` on a daemon thread: unlike `asyncio.to_thread`, the process need not wait
    for it to exit (a shutdown during a long model load stops at once)."""
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not done.set_running_or_notify_cancel():
            return
        try:
            settle(done, result=fn())
        except BaseException as exc:
            settle(done, exception=exc)

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
