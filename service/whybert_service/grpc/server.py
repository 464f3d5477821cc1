"""Assembling and running one whybert server.

Start-up order: metrics endpoint, then the gRPC server with health NOT_SERVING (so
orchestrators can watch it load), then the models are loaded and warmed in a thread,
then health turns SERVING. On SIGTERM/SIGINT: health NOT_SERVING, new calls refused,
calls in flight get `grace_seconds` to finish, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path

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
from .interceptors import MetricsInterceptor
from .servicer import ExplainerServicer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Explainer"].full_name
RegistryFactory = Callable[[Metrics, Callable[[bool], None]], ModelRegistry]


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
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = asyncio.Event()

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
            names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                     reflection.SERVICE_NAME)
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
        await self._load_models()
        return self.port

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [MetricsInterceptor(self.metrics)]

    async def _load_models(self) -> None:
        """Load the models and warm the explainers up, side by side."""
        explainers = create_explainers()
        self.registry, _ = await asyncio.gather(
            asyncio.to_thread(self._registry_factory, self.metrics, self._on_worker_health),
            asyncio.to_thread(lambda: [e.warm_up() for e in explainers.values()]),
        )
        s = self.settings
        self.dataplane = DataPlane(
            self.registry,
            self.metrics,
            explain_threads=s.explain_threads,
            max_concurrent_requests=s.max_concurrent_requests,
            cache_entries=s.cache_entries,
            explainers=explainers,
        )
        self.servicer.dataplane = self.dataplane
        await self._set_health(self.registry.all_healthy())
        log.info("serving", extra={"models": [h.name for h in self.registry]})

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
        """Health NOT_SERVING, refuse new calls, let calls in flight finish, release models."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(self.settings.grace_seconds if grace is None else grace)
        if self.registry is not None:
            await asyncio.to_thread(self.registry.stop)
        if self.dataplane is not None:
            self.dataplane.close()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
        if self.server is not None:
            await self.server.wait_for_termination()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda sig=sig: self._on_signal(sig))  # type: ignore[misc]

    def _on_signal(self, sig: signal.Signals) -> None:
        log.warning("shutting down", extra={"signal": sig.name, "grace_seconds": self.settings.grace_seconds})
        asyncio.ensure_future(self.stop())


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
