"""Metrics: a real Prometheus scrapes a real whybert server on loopback, and what it reads
back through its HTTP API matches the calls that were made; the shipped dashboard's
queries and alert rules run. (The metrics without Prometheus: integration/test_metrics.py.)"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import whybert
import yaml
from _deploy import PROMETHEUS, RULES, dashboard_exprs
from _servers import free_port, running, tiny_settings
from _wait import wait_for
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

pytestmark = pytest.mark.timeout(180)
PREDICT_OK = 5
MAX_QUEUED_ROWS = 32


# ---- a Prometheus of our own on loopback ------------------------------------------------


@dataclass
class Prometheus:
    """A Prometheus process and its HTTP API."""

    url: str
    process: subprocess.Popen[bytes]

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The value of a query that gives one series, None when it gives none."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} gave {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    def number(self, expr: str) -> float:
        """The value of a query that must give exactly one series."""
        value = self.value(expr)
        assert value is not None, f"{expr} gave no series"
        return value

    def wait_for(
        self, expr: str, ok: Callable[[float | None], bool], timeout: float = 30
    ) -> float | None:
        """Poll until the value satisfies `ok` (scrapes come every second), bounded."""
        seen: list[float | None] = []

        def holds() -> bool:
            seen.append(self.value(expr))
            return ok(seen[-1])

        wait_for(holds, timeout, step=0.25, message=lambda: f"{expr} is {seen[-1]} after {timeout} s")
        return seen[-1]


def prometheus_config(target: str, folder: Path) -> Path:
    """The shipped config and rules, scraping one loopback target every second."""
    config = yaml.safe_load(PROMETHEUS.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "whybert")
    job.pop("dns_sd_configs")
    job["static_configs"] = [{"targets": [target]}]
    config["scrape_configs"] = [job]
    shutil.copy(RULES, folder / RULES.name)
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_prometheus(target: str, folder: Path) -> Prometheus:
    port = free_port()
    command = [
        "prometheus",
        f"--config.file={prometheus_config(target, folder)}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    log_file = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process)

    def log() -> str:
        return (folder / "prometheus.log").read_text()

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{log()}")
        try:
            with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        wait_for(ready, 30, step=0.2, message=lambda: f"prometheus did not start:\n{log()}")
    except AssertionError:
        process.kill()
        raise
    return prometheus


@pytest.fixture
async def served(tiny_model_dir: Path) -> AsyncIterator[Any]:
    """An in-process whybert with a real /metrics port (and a small queue, to reject rows)."""
    settings = tiny_settings(tiny_model_dir, metrics_port=free_port(), max_queued_rows=MAX_QUEUED_ROWS)
    async with running(settings) as server:
        yield server


@pytest.fixture
def prometheus(served: Any, tmp_path: Path) -> Iterator[Prometheus]:
    if shutil.which("prometheus") is None:
        pytest.skip("the prometheus binary is missing (scripts/test installs Debian's package)")
    instance = start_prometheus(f"127.0.0.1:{served.settings.metrics_port}", tmp_path)
    try:
        yield instance
    finally:
        instance.process.terminate()
        try:
            instance.process.wait(15)
        except subprocess.TimeoutExpired:
            instance.process.kill()
            instance.process.wait(5)


def make_calls(port: int) -> dict[str, Any]:
    """Predict (ok and three failures), Explain (computed, then cached), ListModels, health
    and a reflection stream; returns what the client saw."""
    seen: dict[str, Any] = {"codes": []}
    with whybert.Client(f"127.0.0.1:{port}", timeout=60) as client:
        for i in range(PREDICT_OK):
            client.predict([f"text number {i}", "and another"], model="tiny")
        failing = (
            lambda: client.predict(["x"], model="no-such-model"),
            lambda: client.predict([], model="tiny"),
            lambda: client.predict(["row"] * (MAX_QUEUED_ROWS + 8), model="tiny"),
        )
        for call in failing:
            with pytest.raises(whybert.WhybertError) as failed:
                call()
            seen["codes"].append(failed.value.code.name)
        first, second = (
            client.explain(["a quiet evening"], model="tiny", max_evals=40, batch_size=8)[0]
            for _ in range(2)
        )
        assert not first.cached and second.cached
        seen["explain_rows"] = first.model_rows
        client.list_models()
        assert client.health() == "SERVING"
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        seen["services"] = ProtoReflectionDescriptorDatabase(channel).get_services()
    return seen


# ---- the end-to-end test ------------------------------------------------------------------


async def test_prometheus_scrapes_the_calls_made(served: Any, prometheus: Prometheus) -> None:
    seen = await asyncio.to_thread(make_calls, served.port)
    assert seen["codes"] == ["NOT_FOUND", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"]
    assert "whybert.v1.Explainer" in seen["services"]
    p = prometheus

    def handled(method: str, code: str) -> str:
        return f'grpc_server_handled_total{{grpc_method="{method}",grpc_code="{code}"}}'

    n_predict = PREDICT_OK + len(seen["codes"])
    await asyncio.to_thread(p.wait_for, "sum(grpc_server_handled_total{grpc_method=\"Predict\"})",
                            lambda v: v == n_predict)  # fmt: skip
    await asyncio.to_thread(p.wait_for, 'grpc_server_handled_total{grpc_type="bidi_stream"}',
                            lambda v: v is not None)  # fmt: skip
    assert p.value('up{job="whybert"}') == 1

    # The standard gRPC set, by method and code.
    assert p.value(handled("Predict", "OK")) == PREDICT_OK
    for code in seen["codes"]:
        assert p.value(handled("Predict", code)) == 1
    assert p.value(handled("Explain", "OK")) == 2
    assert p.value(handled("ListModels", "OK")) == 1
    assert p.value(handled("Check", "OK")) == 1
    assert p.value('grpc_server_started_total{grpc_method="Predict"}') == n_predict
    assert p.value('grpc_server_msg_received_total{grpc_method="Predict"}') == n_predict
    assert p.value('grpc_server_msg_sent_total{grpc_method="Predict"}') == PREDICT_OK
    assert p.number('grpc_server_msg_sent_total{grpc_method="ServerReflectionInfo"}') >= 1
    assert p.value('grpc_server_handling_seconds_count{grpc_method="Predict"}') == n_predict
    # Buckets reach a minute and beyond, so explanation percentiles stay meaningful.
    assert p.value('grpc_server_handling_seconds_bucket{grpc_method="Explain",le="60.0"}') == 2
    p99 = p.number('histogram_quantile(0.99, sum by (le) '
                   '(grpc_server_handling_seconds_bucket{grpc_method="Predict"}))')  # fmt: skip
    assert 0 < p99 < 60

    # whybert's own: batches, rows, explanations, cache, drops, state.
    assert p.number('whybert_batch_rows_count{model="tiny"}') > 0
    rows = p.number('whybert_rows_total{model="tiny"}')
    assert rows == p.value('whybert_batch_rows_sum{model="tiny"}')
    assert rows >= 2 * PREDICT_OK + seen["explain_rows"]
    assert p.number('whybert_forward_seconds_count{model="tiny"}') > 0
    assert p.number('whybert_queue_wait_seconds_count{model="tiny"}') > 0
    batches = p.number('whybert_batch_padding_ratio_count{model="tiny"}')
    assert batches > 0
    assert p.number('whybert_batch_padding_ratio_sum{model="tiny"}') <= batches  # fractions
    assert p.value('whybert_explanations_total{explainer="shap-partition",outcome="ok"}') == 1
    assert p.value('whybert_explanations_total{explainer="shap-partition",outcome="cached"}') == 1
    assert p.value("whybert_rows_per_explanation_sum") == seen["explain_rows"]
    assert p.value("whybert_cache_hits_total") == 1
    assert p.value("whybert_cache_misses_total") == 1
    assert p.value("whybert_cache_entries") == 1
    assert p.number("whybert_cache_bytes") == served.dataplane.cache.bytes > 0
    assert p.value('whybert_dropped_rows_total{reason="rejected"}') == MAX_QUEUED_ROWS + 8
    assert p.value('whybert_model_loaded{model="tiny"}') == 1
    for idle in ("whybert_queue_rows", "whybert_queue_submissions", "whybert_queue_requests"):
        assert p.value(f'{idle}{{model="tiny"}}') == 0
    assert p.query("whybert_device_memory_used_bytes") == []  # no GPU here: no series
    assert p.query("whybert_cuda_graphs") == []  # nor graphs


async def test_dashboard_queries_and_alert_rules_run_on_scraped_data(
    served: Any, prometheus: Prometheus
) -> None:
    await asyncio.to_thread(make_calls, served.port)
    p = prometheus
    # rate() needs two scrapes after the calls.
    scrapes = 'count_over_time(up{job="whybert"}[1m])'
    await asyncio.to_thread(p.wait_for, scrapes, lambda v: (v or 0) >= 4)
    empty = []
    for title, expr in dashboard_exprs():
        result = await asyncio.to_thread(p.query, expr.replace("$__rate_interval", "1m"))
        if not result:
            empty.append(title)
    # On a CPU server with no failures of those kinds, only these have nothing to show.
    assert set(empty) <= {"GPU memory used", "Failed batches and worker restarts"}, empty
    groups = (await asyncio.to_thread(p.api, "rules"))["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert rules and all(r["health"] in ("ok", "unknown") for r in rules), rules
    firing = [r["name"] for r in rules if r.get("state") == "firing"]
    assert firing == []
