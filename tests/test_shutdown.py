"""Graceful shutdown of the real `whybert serve` process: on SIGTERM health turns
NOT_SERVING, new calls are refused with UNAVAILABLE, calls in flight finish, and the
process exits 0; a SIGTERM during model loading exits at once; calls that outlive the
grace period are cut at its end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest
from _servers import FaultyClassifier, ServerThread, registry_factory, wait_for
from conftest import free_port, tiny_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from whybert.v1 import explainer_pb2 as pb
from whybert.v1 import explainer_pb2_grpc as pb_grpc

GRACE_SECONDS = 20.0
LONG_TEXT = " ".join(["the soup was cold but the staff were friendly and the bread was fresh"] * 2)


class ServeProcess:
    """`whybert serve` in a child process on a loopback port; stderr kept in a file."""

    def __init__(self, model_dir: Path, log_path: Path, *extra: str) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [
            sys.executable, "-m", "whybert_service.cli", "serve",
            "--model", f"tiny={model_dir}", "--no-builtin-model",
            "--host", "127.0.0.1", "--port", str(self.port), "--metrics-port", "0",
            "--device", "cpu", *extra,
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
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.process.poll() is None, f"the server exited early:\n{self.log()}"
            if self.health() == status:
                return
            time.sleep(0.1)
        raise AssertionError(f"health never became {status}:\n{self.log()}")

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

    def start(model_dir: Path, *extra: str) -> ServeProcess:
        proc = ServeProcess(model_dir, tmp_path / f"serve-{len(started)}.log", *extra)
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
    time.sleep(0.5)
    assert not any(f.done() for f in in_flight), "the explanations finished before the signal"

    server.process.send_signal(signal.SIGTERM)
    assert wait_for(lambda: "NOT_SERVING" in statuses, timeout=10), statuses
    time.sleep(0.2)
    fresh = grpc.insecure_channel(server.target, options=[("grpc.enable_retries", 0)])
    with fresh, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.ExplainerStub(fresh).Predict(pb.PredictRequest(texts=["too late"]), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

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


def test_calls_that_outlive_the_grace_period_are_cut_at_its_end(
    tiny_classifier: Any, tiny_model_dir: Path
) -> None:
    faulty = FaultyClassifier(tiny_classifier)
    settings = tiny_settings(tiny_model_dir)
    with ServerThread(settings, registry_factory(faulty, settings)) as server:
        with grpc.insecure_channel(server.target, options=[("grpc.enable_retries", 0)]) as channel:
            stub = pb_grpc.ExplainerStub(channel)
            faulty.hold()
            stuck = stub.Predict.future(
                pb.PredictRequest(texts=["a forward pass that never ends"]), timeout=60
            )
            assert faulty.entered.wait(10)
            queued = stub.Predict.future(pb.PredictRequest(texts=["waiting behind it"]), timeout=60)
            assert wait_for(lambda: server.worker.queued_rows() == 1)
            started = time.monotonic()
            threading.Timer(2.0, faulty.release).start()  # lets the worker thread end, later
            server.stop(grace=0.5)
            for call in (stuck, queued):
                with pytest.raises(grpc.RpcError) as cut:
                    call.result(timeout=10)
                assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 10
        assert server.server is not None and server.server.dataplane is not None
        assert server.server.dataplane._in_flight == 0
        assert not server.worker.healthy and server.worker.queued_rows() == 0
