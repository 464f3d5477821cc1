"""Prometheus metrics: the standard gRPC server set and whybert's own, in base units.

Each server owns a `Metrics` with its own registry, so several servers can live in one
process (tests, benchmarks) without sharing counters.
"""

from __future__ import annotations

import ssl
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Latency buckets from a millisecond to two minutes: Predict lives at the bottom,
# explanations (seconds to a minute) at the top.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
    60.0, 120.0,
)
BATCH_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
BATCH_TOKENS_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
ROWS_PER_EXPLANATION_BUCKETS = (1, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000)


class Metrics:
    """All collectors of one server."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._http: WSGIServer | None = None
        r = self.registry
        grpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self.grpc_started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", grpc_labels, registry=r
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*grpc_labels, "grpc_code"),
            registry=r,
        )
        self.grpc_handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from receiving an RPC to sending its status.",
            grpc_labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.grpc_msg_received = Counter(
            "grpc_server_msg_received_total",
            "Messages received from clients.",
            grpc_labels,
            registry=r,
        )
        self.grpc_msg_sent = Counter(
            "grpc_server_msg_sent_total", "Messages sent to clients.", grpc_labels, registry=r
        )

        self.queue_rows = Gauge(
            "whybert_queue_rows", "Rows waiting for the model.", ("model",), registry=r
        )
        self.queue_submissions = Gauge(
            "whybert_queue_submissions",
            "Submissions (groups of rows from one request round) waiting for the model.",
            ("model",),
            registry=r,
        )
        self.queue_requests = Gauge(
            "whybert_queue_requests",
            "Requests with at least one row waiting for the model.",
            ("model",),
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "whybert_requests_in_flight", "Requests being served.", ("method",), registry=r
        )
        self.stream_texts = Counter(
            "whybert_stream_texts_total",
            "Texts whose result a PredictStream or ExplainStream call has sent.",
            ("method",),
            registry=r,
        )
        self.stream_texts_in_flight = Gauge(
            "whybert_stream_texts_in_flight",
            "Texts of streams started and whose result is not sent yet (at most --stream-window "
            "per stream).",
            ("method",),
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "whybert_queue_wait_seconds",
            "Time a submission's rows waited before their batch started.",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "whybert_batch_rows", "Rows per forward batch.", ("model",),
            buckets=BATCH_ROWS_BUCKETS, registry=r,
        )
        self.batch_tokens = Histogram(
            "whybert_batch_tokens",
            "Tokens the model computes per forward batch: longest × rows, or the rows' own where it packs them.",
            ("model",),
            buckets=BATCH_TOKENS_BUCKETS, registry=r,
        )
        self.batch_token_budget = Gauge(
            "whybert_batch_token_budget",
            "Tokens the next forward batch may hold: --max-batch-tokens, less where batches "
            "that large would run longer than --max-batch-ms on this device.",
            ("model",),
            registry=r,
        )
        self.padding_fraction = Histogram(
            "whybert_batch_padding_ratio",
            "Fraction of a batch's padded tokens that are padding.",
            ("model",),
            buckets=(0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
            registry=r,
        )
        self.forward_seconds = Histogram(
            "whybert_forward_seconds", "Time of one forward batch on the device.", ("model",),
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.rows_total = Counter(
            "whybert_rows_total", "Rows run through the model.", ("model",), registry=r
        )
        self.dropped_rows = Counter(
            "whybert_dropped_rows_total",
            "Rows that never got logits, by reason: cancelled, deadline (passed in queue), "
            "rejected (queue full or model not serving), failed (the model failed on the row "
            "alone), unavailable (queued when the worker stopped or restarted).",
            ("model", "reason"),
            registry=r,
        )
        self.batch_failures = Counter(
            "whybert_batch_failures_total",
            "Forward batches that failed (then split and retried), by kind.",
            ("model", "kind"),
            registry=r,
        )
        self.worker_restarts = Counter(
            "whybert_worker_restarts_total", "Times a model worker was restarted.", ("model",),
            registry=r,
        )
        self.explanations = Counter(
            "whybert_explanations_total",
            "Explanations finished, by explainer and outcome (ok, cached, error code).",
            ("model", "explainer", "outcome"),
            registry=r,
        )
        self.explanation_seconds = Histogram(
            "whybert_explanation_seconds",
            "Time to compute one text's explanation.",
            ("model", "explainer"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rows_per_explanation = Histogram(
            "whybert_rows_per_explanation",
            "Model rows one explanation needed.",
            ("model", "explainer"),
            buckets=ROWS_PER_EXPLANATION_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "whybert_cache_hits_total", "Explanations served from the cache.", registry=r
        )
        self.cache_misses = Counter(
            "whybert_cache_misses_total", "Explanations not found in the cache.", registry=r
        )
        self.cache_entries = Gauge(
            "whybert_cache_entries", "Explanations held in the cache.", registry=r
        )
        self.cache_bytes = Gauge(
            "whybert_cache_bytes",
            "Estimated memory held by the cached explanations (bounded by --cache-bytes).",
            registry=r,
        )
        self.model_loaded = Gauge(
            "whybert_model_loaded",
            "1 when the model is loaded, warmed and its worker is running, else 0.",
            ("model",),
            registry=r,
        )
        self.device_memory_bytes = Gauge(
            "whybert_device_memory_used_bytes",
            "GPU memory allocated by the model's process (absent on CPU).",
            ("device",),
            registry=r,
        )
        self.cuda_graphs = Gauge(
            "whybert_cuda_graphs",
            "Batch shapes the model replays from CUDA graphs: 0 once a failed or disagreeing graph "
            "turned them off; absent where the model has none (a CPU, --no-cuda-graphs).",
            ("model",),
            registry=r,
        )

    def serve(self, port: int, host: str = "0.0.0.0", certfile: str = "", keyfile: str = "") -> None:
        """Expose /metrics in a background thread, until `close()`: over HTTPS when given a
        certificate and its key (the gRPC server's, so a TLS server leaks nothing in clear)."""
        self._http, _ = start_http_server(
            port,
            addr=host,
            registry=self.registry,
            certfile=certfile or None,
            keyfile=keyfile or None,
            tls_min_version=ssl.TLSVersion.TLSv1_2 if certfile else None,
        )

    @property
    def address(self) -> tuple[str, int] | None:
        """Where /metrics listens, (host, port); None when it does not."""
        if self._http is None:
            return None
        host, port = self._http.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop the /metrics endpoint and free its port (several servers in one process)."""
        http, self._http = self._http, None
        if http is not None:
            http.shutdown()
            http.server_close()
