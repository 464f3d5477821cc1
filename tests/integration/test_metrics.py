"""Metrics without Prometheus (metrics.py): the worker's queue gauges and drop counters
follow the queue, the /metrics endpoint closes and frees its port, and a call whose
deadline passes in the handler counts as DEADLINE_EXCEEDED. (A real Prometheus scraping a
server: system/test_prometheus.py.)"""

from __future__ import annotations

import math
import urllib.request
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest
from _servers import ServerThread, free_port, hold_worker_thread, tiny_settings
from _wait import wait_for
from whybert.v1 import explainer_pb2 as pb
from whybert.v1 import explainer_pb2_grpc as pb_grpc
from whybert_service.batching.worker import ModelWorker, WorkerConfig
from whybert_service.context import Priority, RequestContext
from whybert_service.errors import Unavailable
from whybert_service.metrics import Metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_queue_gauges_follow_the_queue_and_drops_count_by_reason(tiny_classifier: Any) -> None:
    metrics = Metrics()
    worker = ModelWorker(tiny_classifier, WorkerConfig(max_batch_delay_s=1.5), metrics)
    worker.start()
    try:
        ids = tiny_classifier.encode(["one text", "and another text"]).ids
        first, second = RequestContext(), RequestContext()
        late = RequestContext.with_timeout(Priority.PREDICT, 0.5)
        gone = RequestContext()
        futures: list[Future[Any]] = [
            worker.submit(ids, first),
            worker.submit(ids[:1], first),  # the same request, a second round
            worker.submit(ids, second),
        ]
        doomed = [worker.submit(ids, late), worker.submit(ids, gone)]
        # Nothing runs before the batch delay: all of it is waiting.
        assert sample(metrics, "whybert_queue_rows", model="tiny") == 9
        assert sample(metrics, "whybert_queue_submissions", model="tiny") == 5
        assert sample(metrics, "whybert_queue_requests", model="tiny") == 4
        gone.cancel()
        for future in futures:
            assert future.result(timeout=30).logits.shape[0] >= 1
        for future in doomed:
            with pytest.raises(Exception):  # noqa: B017 - deadline or cancelled, counted below
                future.result(timeout=30)
        assert sample(metrics, "whybert_dropped_rows_total", model="tiny", reason="deadline") == 2
        assert sample(metrics, "whybert_dropped_rows_total", model="tiny", reason="cancelled") == 2
        # The batch is counted just after its rows are delivered.
        assert wait_for(lambda: sample(metrics, "whybert_rows_total", model="tiny") == 5, timeout=5)
        for gauge in ("whybert_queue_rows", "whybert_queue_submissions", "whybert_queue_requests"):
            assert sample(metrics, gauge, model="tiny") == 0, gauge

        # Rows queued when the worker stops get UNAVAILABLE and are counted as such.
        stranded = worker.submit(ids, RequestContext())
    finally:
        worker.stop()
    with pytest.raises(Unavailable):
        stranded.result(timeout=30)
    assert sample(metrics, "whybert_dropped_rows_total", model="tiny", reason="unavailable") == 2
    assert sample(metrics, "whybert_model_loaded", model="tiny") == 0
    with pytest.raises(Unavailable):
        worker.submit(ids, RequestContext())
    assert sample(metrics, "whybert_dropped_rows_total", model="tiny", reason="rejected") == 2
    assert sample(metrics, "whybert_queue_requests", model="tiny") == 0
    assert math.isclose(sample(metrics, "whybert_batch_rows_sum", model="tiny"), 5)


def test_metrics_endpoint_closes_and_frees_its_port() -> None:
    metrics = Metrics()
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert b"whybert_cache_hits_total" in response.read()
    metrics.close()
    again = Metrics()
    again.serve(port, "127.0.0.1")  # would fail with "address in use" if still bound
    again.close()


def test_a_call_whose_deadline_passes_in_the_handler_counts_as_deadline_exceeded(
    tiny_model_dir: Path,
) -> None:
    with ServerThread(tiny_settings(tiny_model_dir)) as server:
        assert server.server is not None
        registry = server.server.metrics.registry
        labels = {"grpc_type": "unary", "grpc_service": "whybert.v1.Explainer", "grpc_method": "Predict"}

        def handled(code: str) -> float:
            return registry.get_sample_value("grpc_server_handled_total", {**labels, "grpc_code": code}) or 0

        before = {code: handled(code) for code in ("DEADLINE_EXCEEDED", "CANCELLED")}
        release = hold_worker_thread(server.worker)  # the model is busy
        try:
            with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as exc:
                pb_grpc.ExplainerStub(channel).Predict(pb.PredictRequest(texts=["hello"]), timeout=0.3)
        finally:
            release.set()
        assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_for(lambda: handled("DEADLINE_EXCEEDED") == before["DEADLINE_EXCEEDED"] + 1, timeout=5)
        assert handled("CANCELLED") == before["CANCELLED"]
