"""Scale-out: identical replicas behind client-side round robin survive losing one.

Three real `whybert serve` processes on loopback, one `whybert.Client` over all three,
concurrent Predict calls. One replica is frozen (SIGSTOP) so that calls pile up on it,
then killed (SIGKILL) with those calls in flight: every call must still succeed, through
the client's retry policy, and each replica's own /metrics must show its share of load.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import whybert
from _servers import free_port
from _wait import wait_for
from prometheus_client.parser import text_string_to_metric_families

REPLICAS = 3
CALLERS = 6
pytestmark = pytest.mark.timeout(300)


@dataclass
class Replica:
    """One server process and its ports."""

    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def handled_ok(self, method: str = "Predict") -> float:
        """grpc_server_handled_total{grpc_method=method, grpc_code=OK}, read from /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "grpc_server_handled_total"
            and sample.labels.get("grpc_method") == method
            and sample.labels.get("grpc_code") == "OK"
        )

    def kill(self) -> None:
        """Throwaway servers: SIGKILL (a graceful exit takes seconds, and is not tested here)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def start_replica(model_dir: Path, log: Path) -> Replica:
    """`whybert serve` as its own process, serving the tiny model on free loopback ports."""
    port, metrics_port = free_port(), free_port()
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        # Only Predict runs here: skip compiling shap's numba kernels at start-up (~15 s each).
        NUMBA_DISABLE_JIT="1",
    )
    command = [
        sys.executable, "-m", "whybert_service.cli", "serve",
        "--model", f"tiny={model_dir}", "--no-builtin-model", "--device", "cpu",
        "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
        "--max-batch-delay-ms", "1", "--grace-seconds", "0",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    return Replica(process, port, metrics_port, log)


def wait_serving(replicas: list[Replica], timeout: float = 180.0) -> None:
    """Bounded wait until every replica answers SERVING on grpc.health.v1."""
    deadline = time.monotonic() + timeout
    for replica in replicas:
        wait_replica_serving(replica, max(0.0, deadline - time.monotonic()))


def wait_replica_serving(replica: Replica, timeout: float) -> None:
    def log() -> str:
        return replica.log.read_text()[-3000:]

    with whybert.Client(replica.address, timeout=1.0, retries=0) as client:

        def serving() -> bool:
            if replica.process.poll() is not None:
                pytest.fail(f"replica exited early:\n{log()}")
            try:
                return client.health() == "SERVING"
            except whybert.WhybertError:
                return False

        wait_for(serving, timeout, step=0.2, message=lambda: f"replica not serving in time:\n{log()}")


@pytest.fixture
def replicas(tiny_model_dir: Path, tmp_path: Path) -> Iterator[list[Replica]]:
    started = [start_replica(tiny_model_dir, tmp_path / f"server-{i}.log") for i in range(REPLICAS)]
    try:
        wait_serving(started)
        yield started
    finally:
        for replica in started:
            replica.kill()


class Load:
    """Closed-loop callers sharing one round-robin client; records every outcome."""

    def __init__(self, client: whybert.Client) -> None:
        self.client = client
        self.ok = 0
        self.failures: list[BaseException] = []
        self.outstanding: dict[int, float] = {}  # caller → start of its call in flight
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._caller, args=(i,)) for i in range(CALLERS)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _caller(self, index: int) -> None:
        n = 0
        while not self._stop.is_set():  # the load itself, until the test stops it
            n += 1
            with self._lock:
                self.outstanding[index] = time.monotonic()
            try:
                predictions = self.client.predict([f"caller {index} says hello {n}"], model="tiny")
                assert len(predictions) == 1
            except Exception as exc:  # every failure is a test failure; keep it to report
                with self._lock:
                    self.failures.append(exc)
            else:
                with self._lock:
                    self.ok += 1
            finally:
                with self._lock:
                    self.outstanding.pop(index, None)

    def stuck(self, older_than: float) -> int:
        """Calls in flight for longer than `older_than` seconds."""
        now = time.monotonic()
        with self._lock:
            return sum(now - started > older_than for started in self.outstanding.values())

    def all_started_after(self, moment: float) -> bool:
        """No call that began before `moment` is still in flight."""
        with self._lock:
            return all(started > moment for started in self.outstanding.values())

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        def holds() -> bool:
            if self.failures:
                raise AssertionError(f"calls failed while waiting for {what}: {self.failures[:3]}")
            return condition()

        wait_for(holds, timeout, step=0.02, message=lambda: f"timed out waiting for {what} ({self.ok} calls ok)")


def test_round_robin_spreads_load_and_survives_a_killed_replica(replicas: list[Replica]) -> None:
    victim, survivors = replicas[1], [replicas[0], replicas[2]]
    targets = [r.address for r in replicas]
    with whybert.Client(targets, timeout=30.0) as client, Load(client) as load:
        load.wait_for(lambda: load.ok >= 150, 60, "150 calls over three replicas")
        before = [r.handled_ok() for r in replicas]

        # Freeze the victim: round robin keeps sending it calls, which now hang there...
        victim.process.send_signal(signal.SIGSTOP)
        load.wait_for(lambda: load.stuck(older_than=0.5) >= 2, 20, "calls stuck on the victim")
        stuck = load.stuck(older_than=0.5)
        # ...then kill it with those calls in flight: they must be retried elsewhere.
        killed_at, ok_at_kill = time.monotonic(), load.ok
        victim.process.kill()
        victim.process.wait(10)
        load.wait_for(
            lambda: load.ok >= ok_at_kill + 150 and load.all_started_after(killed_at),
            60,
            "150 calls after the kill, and the end of every call begun before it",
        )
    after = [r.handled_ok() for r in survivors]

    assert load.failures == [], f"{len(load.failures)} calls failed, e.g. {load.failures[:3]}"
    assert stuck >= 2
    # Round robin: each of the three replicas served about a third before the kill.
    total_before = sum(before)
    assert all(n >= 0.2 * total_before for n in before), before
    # After the kill the two survivors shared the load, about half each.
    gained = [a - b for a, b in zip(after, (before[0], before[2]), strict=True)]
    assert all(g >= 0.3 * sum(gained) for g in gained), gained
    # Every success the servers counted was a success the client saw, and no call was lost:
    # the stuck calls were never counted by the victim, yet succeeded on a survivor.
    assert sum(after) + before[1] <= load.ok
    print(f"\ncalls ok {load.ok}; per replica before the kill {before}; survivors after {after}; "
          f"stuck on the victim when killed {stuck}")  # fmt: skip
