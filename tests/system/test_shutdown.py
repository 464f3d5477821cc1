"""Graceful shutdown of the real `whybert serve` process: on SIGTERM health turns
NOT_SERVING, new calls are refused with UNAVAILABLE, calls in flight finish, and the
process exits 0; a SIGTERM during model loading exits at once; and a SIGTERM in the
middle of each explainer's longest work (SHAP on long texts, LIME with many samples,
integrated gradients with many steps) ends the call within the grace period with OK or a
clear status and the process with 0 within the grace period plus 2 s. (Calls that outlive
the grace period of an in-process server: integration/test_server_stop.py.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest
from _servers import free_port
from _wait import wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from whybert.v1 import explainer_pb2 as pb
from whybert.v1 import explainer_pb2_grpc as pb_grpc

GRACE_SECONDS = 20.0
LONG_TEXT = " ".join(["the soup was cold but the staff were friendly and the bread was fresh"] * 2)
# The grace period of the SIGTERM-in-the-middle tests, and what they allow beyond it: the
# calls end at its end (gRPC cancels them then), the process within 2 s more.
SHORT_GRACE = 2.0
CALL_SLACK = 0.5
EXIT_SLACK = 2.0
# A normal long English text: many distinct words, far more tokens than the tiny model reads.
LONG_ENGLISH = " ".join(
    [
        "We booked the corner table for a birthday dinner and arrived a little early.",
        "The host was polite, although the dining room felt crowded and rather loud.",
        "Our waiter recommended the grilled trout, a mushroom risotto and a bottle of",
        "crisp white wine from a small vineyard north of the river.",
        "The starters came quickly: warm bread, salted butter, olives and a bright salad",
        "with shaved fennel, oranges and toasted almonds that everybody enjoyed.",
        "Then we waited almost fifty minutes for the main courses, and nobody explained why.",
        "The trout was perfectly cooked, with crackling skin and a lemony caper sauce,",
        "but the risotto was gluey, oversalted and barely warm in the middle.",
        "When we mentioned it, the manager apologised, replaced the dish without arguing",
        "and took the dessert off the bill, which we genuinely appreciated.",
        "The chocolate tart was rich and dense; the rhubarb sorbet tasted sharp and fresh.",
        "Coffee was strong, the espresso cups were chipped, and the bathroom needed cleaning.",
        "Prices are high for the neighbourhood, yet portions are generous and the menu",
        "changes with the seasons, so regulars always find something new to try.",
        "Parking nearby is difficult on weekends; the tram stop is a short walk away.",
        "Overall it was a memorable evening with a few frustrating moments, and I would",
        "probably return for lunch on a quiet weekday rather than a busy Saturday night.",
    ]
    * 3
)


class ServeProcess:
    """`whybert serve` in a child process on a loopback port; stderr kept in a file."""

    def __init__(self, model_dir: Path, log_path: Path, *extra: str, metrics: bool = False) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.metrics_port = free_port() if metrics else 0
        self.log_path = log_path
        command = [
            sys.executable, "-m", "whybert_service.cli", "serve",
            "--model", f"tiny={model_dir}", "--no-builtin-model",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--metrics-port", str(self.metrics_port), "--device", "cpu", *extra,
        ]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    def health(self) -> str | None:
        """The overall health status, or None while the port does not answer."""
        try:
            with grpc.insecure_channel(self.target) as channel:
                response = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
        except grpc.RpcError:
            return None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def wait_health(self, status: str, timeout: float) -> None:
        def reached() -> bool:
            assert self.process.poll() is None, f"the server exited early:\n{self.log()}"
            return self.health() == status

        wait_for(reached, timeout, step=0.1, message=lambda: f"health never became {status}:\n{self.log()}")

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the server's /metrics summed over the labels not given (0 while absent)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        families = text_string_to_metric_families(text)
        return sum(
            s.value
            for f in families
            for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[ServeProcess] = []

    def start(model_dir: Path, *extra: str, metrics: bool = False) -> ServeProcess:
        proc = ServeProcess(model_dir, tmp_path / f"serve-{len(started)}.log", *extra, metrics=metrics)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


def watch(target: str, seen: list[str]) -> None:
    """Record every health status the server streams until it goes away."""
    with grpc.insecure_channel(target) as channel:
        try:
            for response in health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=120
            ):
                seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
        except grpc.RpcError:
            pass


def log_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_sigterm_under_load_finishes_calls_in_flight_refuses_new_ones_and_exits_0(
    serve: Any, tiny_model_dir: Path
) -> None:
    # Every round of an explanation waits the full batch delay: slow, whatever the CPU.
    server = serve(
        tiny_model_dir,
        "--grace-seconds",
        str(GRACE_SECONDS),
        "--max-batch-delay-ms",
        "200",
        "--cache-entries",
        "0",
        metrics=True,
    )
    server.wait_health("SERVING", timeout=180)
    statuses: list[str] = []
    watcher = threading.Thread(target=watch, args=(server.target, statuses), daemon=True)
    watcher.start()
    assert wait_for(lambda: statuses == ["SERVING"], timeout=10)

    channel = grpc.insecure_channel(server.target, options=[("grpc.enable_retries", 0)])
    stub = pb_grpc.ExplainerStub(channel)
    request = pb.ExplainRequest(texts=[LONG_TEXT], shap=pb.ShapOptions(max_evals=100))
    in_flight: list[Future[Any]] = [stub.Explain.future(request, timeout=120) for _ in range(3)]
    predicts = [
        stub.Predict.future(pb.PredictRequest(texts=[f"review {i}"]), timeout=120)
        for i in range(20)
    ]
    # Every call is on the server when the signal comes: the 20 Predicts started, the three
    # explanations in flight (their rounds take seconds).
    wait_until(server, in_flight, "the calls on the server",
               lambda: server.metric("grpc_server_started_total", grpc_method="Predict") == 20
               and server.metric("whybert_requests_in_flight", method="Explain") == 3)  # fmt: skip
    assert not any(f.done() for f in in_flight), "the explanations finished before the signal"

    server.process.send_signal(signal.SIGTERM)
    assert wait_for(lambda: "NOT_SERVING" in statuses, timeout=10), statuses

    def refusal() -> grpc.StatusCode | None:
        """A new call's status, None while one is still served (the port closes just after
        health turns NOT_SERVING)."""
        fresh = grpc.insecure_channel(server.target, options=[("grpc.enable_retries", 0)])
        with fresh:
            try:
                pb_grpc.ExplainerStub(fresh).Predict(pb.PredictRequest(texts=["too late"]), timeout=10)
            except grpc.RpcError as exc:
                return exc.code()
        return None

    assert wait_for(refusal, timeout=10, step=0.05) == grpc.StatusCode.UNAVAILABLE

    for f in in_flight:
        (explanation,) = f.result(timeout=GRACE_SECONDS + 30).explanations
        assert explanation.tokens and explanation.model_rows > 0
    for f in predicts:
        assert len(f.result(timeout=30).predictions) == 1
    channel.close()

    assert server.process.wait(timeout=GRACE_SECONDS + 30) == 0, server.log()
    output = server.log()
    assert "Traceback" not in output, output
    shutting = [e for e in log_lines(output) if e["msg"] == "shutting down"]
    assert (
        shutting
        and shutting[0]["signal"] == "SIGTERM"
        and shutting[0]["grace_seconds"] == GRACE_SECONDS
    )


def test_sigterm_while_the_models_load_exits_at_once(
    serve: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # A weights file that is a FIFO: hashing it blocks until the test writes to it, which
    # it never does. Loading hangs as it would on a stuck network filesystem.
    stuck = tmp_path / "stuck-model"
    shutil.copytree(tiny_model_dir, stuck)
    os.mkfifo(stuck / "zz-stuck.safetensors")
    server = serve(stuck, "--grace-seconds", str(GRACE_SECONDS))
    server.wait_health("NOT_SERVING", timeout=120)
    channel = grpc.insecure_channel(server.target, options=[("grpc.enable_retries", 0)])
    with channel, pytest.raises(grpc.RpcError) as loading:
        pb_grpc.ExplainerStub(channel).Predict(pb.PredictRequest(texts=["hello"]), timeout=10)
    assert loading.value.code() == grpc.StatusCode.UNAVAILABLE
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0, server.log()
    assert time.monotonic() - signalled < GRACE_SECONDS, "exit waited for the stuck load"
    assert "Traceback" not in server.log()


# ---- SIGTERM in the middle of each explainer's longest work -------------------------------


def start_short_grace_server(serve: Any, model_dir: Path) -> ServeProcess:
    server: ServeProcess = serve(
        model_dir, "--grace-seconds", str(SHORT_GRACE), "--cache-entries", "0", metrics=True
    )
    server.wait_health("SERVING", timeout=180)
    return server


def explain_calls(target: str, requests: list[pb.ExplainRequest]) -> tuple[grpc.Channel, list[Future[Any]]]:
    channel = grpc.insecure_channel(target, options=[("grpc.enable_retries", 0)])
    stub = pb_grpc.ExplainerStub(channel)
    return channel, [stub.Explain.future(r, timeout=300) for r in requests]


def wait_until(server: ServeProcess, calls: list[Future[Any]], what: str, ready: Callable[[], bool]) -> None:
    """Poll the server's state until the work is under way (never a fixed sleep)."""

    def under_way() -> bool:
        assert not any(c.done() for c in calls), f"a call ended before {what}:\n{server.log()}"
        return ready()

    wait_for(under_way, 120, step=0.05, message=lambda: f"never saw {what}:\n{server.log()}")


def sigterm_mid_work(server: ServeProcess, calls: list[Future[Any]]) -> tuple[float, float]:
    """SIGTERM while `calls` run; each must end within the grace period with OK or a clear
    status, the process with 0 within the grace period plus 2 s. Returns the seconds from
    the signal to the last call's end and to the exit."""
    ended: list[float] = []
    for call in calls:
        call.add_done_callback(lambda _f: ended.append(time.monotonic()))
    assert not any(c.done() for c in calls), "the work ended before the signal"
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    for call in calls:
        try:
            call.result(timeout=SHORT_GRACE + 30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), (
            code,
            server.log(),
        )
    rc = server.process.wait(timeout=SHORT_GRACE + 60)
    exited = time.monotonic() - signalled
    assert wait_for(lambda: len(ended) == len(calls), timeout=5)
    to_end = max(ended) - signalled
    output = server.log()
    print(f"signal to calls' end {to_end:.2f} s, to exit {exited:.2f} s")
    assert rc == 0, (rc, output)
    assert to_end <= SHORT_GRACE + CALL_SLACK, f"the calls ended {to_end:.1f} s after SIGTERM"
    assert exited <= SHORT_GRACE + EXIT_SLACK, f"the process exited {exited:.1f} s after SIGTERM:\n{output}"
    assert "Traceback" not in output and "terminate called" not in output, output
    return to_end, exited


def test_sigterm_during_shap_on_long_texts_ends_calls_in_the_grace_period_and_exits_0(
    serve: Any, tiny_model_dir: Path
) -> None:
    server = start_short_grace_server(serve, tiny_model_dir)
    requests = [
        pb.ExplainRequest(texts=[text], shap=pb.ShapOptions(max_evals=4000), target_mode=pb.TARGET_MODE_ALL)
        for text in ("!" * 5000, LONG_ENGLISH)
    ]
    channel, calls = explain_calls(server.target, requests)
    with channel:
        wait_until(server, calls, "SHAP rounds on the model", lambda: server.metric("whybert_rows_total") > 0)
        sigterm_mid_work(server, calls)


def test_sigterm_during_lime_with_many_samples_ends_the_call_in_the_grace_period_and_exits_0(
    serve: Any, tiny_model_dir: Path
) -> None:
    server = start_short_grace_server(serve, tiny_model_dir)
    request = pb.ExplainRequest(
        texts=[LONG_ENGLISH],
        explainer=pb.EXPLAINER_KIND_LIME,
        target_mode=pb.TARGET_MODE_ALL,
        lime=pb.LimeOptions(num_samples=10_000),
    )
    channel, calls = explain_calls(server.target, [request])
    with channel:
        wait_until(server, calls, "LIME's samples on the model", lambda: server.metric("whybert_rows_total") > 0)
        sigterm_mid_work(server, calls)


@pytest.mark.parametrize("moment", ["before the step batches", "during the step batches"])
def test_sigterm_during_integrated_gradients_ends_the_call_in_the_grace_period_and_exits_0(
    serve: Any, tiny_model_dir: Path, moment: str
) -> None:
    server = start_short_grace_server(serve, tiny_model_dir)

    def request(texts: list[str]) -> pb.ExplainRequest:
        return pb.ExplainRequest(
            texts=texts,
            explainer=pb.EXPLAINER_KIND_INTEGRATED_GRADIENTS,
            target_mode=pb.TARGET_MODE_ALL,
            integrated_gradients=pb.IntegratedGradientsOptions(n_steps=512),
        )

    if moment == "during the step batches":
        # A first, small request pays for the 512 steps' integration points, so that the
        # long one goes straight to its step batches (8 texts x 3 labels x 512 steps).
        with grpc.insecure_channel(server.target) as warm:
            pb_grpc.ExplainerStub(warm).Explain(request(["short"]), timeout=300)
    channel, calls = explain_calls(server.target, [request([LONG_ENGLISH] * 8)])
    with channel:
        if moment == "before the step batches":
            # Each text's first rows (the text and its baseline) ran: its explainer thread
            # goes on to the integration points, which no cancellation interrupts (numpy;
            # seconds for 8 threads at once on a busy machine), then to the step batches.
            wait_until(server, calls, "the texts' first rows", lambda: server.metric("whybert_rows_total") > 0)
        else:
            # Step batches are under way once the rows they hold in the queue go down.
            seen: list[float] = []

            def step_batches_ran() -> bool:
                seen.append(server.metric("whybert_queue_rows"))
                return 0 < seen[-1] < max(seen)

            wait_until(server, calls, "step batches of integrated gradients", step_batches_ran)
        sigterm_mid_work(server, calls)
