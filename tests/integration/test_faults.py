"""Faults seen from a caller, over real gRPC on loopback: deadlines and cancellations are
honoured before the model, out-of-memory batches are split, a bad row fails only its own
request, a crashed worker restarts with health following it, and the client retries
UNAVAILABLE over several targets."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest
import whybert
from _servers import (
    FaultyClassifier,
    ServerThread,
    free_port,
    health,
    reference_probabilities,
    registry_factory,
    tiny_settings,
)
from _wait import wait_for, wait_for_async
from grpc_health.v1 import health_pb2, health_pb2_grpc
from whybert.v1 import explainer_pb2 as pb
from whybert.v1 import explainer_pb2_grpc as pb_grpc
from whybert_service.context import RequestContext
from whybert_service.grpc.server import WhybertServer
from whybert_service.registry import ModelRegistry

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

LONG_TEXT = " ".join(["the soup was cold but the staff were friendly and the bread was fresh"] * 3)


@pytest.fixture
def faulty(tiny_classifier: Any) -> FaultyClassifier:
    return FaultyClassifier(tiny_classifier)


@pytest.fixture
def server(faulty: FaultyClassifier, tiny_model_dir: Any) -> Iterator[ServerThread]:
    settings = tiny_settings(tiny_model_dir, cache_entries=0, explain_threads=4)
    with ServerThread(settings, registry_factory(faulty, settings)) as running:
        faulty.seen.clear()
        faulty.events.clear()
        faulty.batches.clear()
        faulty.padded.clear()
        try:
            yield running
        finally:
            faulty.release()


@pytest.fixture
def stub(server: ServerThread) -> Iterator[pb_grpc.ExplainerStub]:
    """A stub on a channel without retries: every status is seen as the server sent it."""
    with grpc.insecure_channel(server.target, options=[("grpc.enable_retries", 0)]) as channel:
        yield pb_grpc.ExplainerStub(channel)


def in_flight(server: ServerThread) -> int:
    assert server.server is not None and server.server.dataplane is not None
    return server.server.dataplane._in_flight


def test_expired_and_cancelled_predicts_never_reach_the_model(
    server: ServerThread, stub: pb_grpc.ExplainerStub, faulty: FaultyClassifier
) -> None:
    faulty.hold()
    blocker = stub.Predict.future(pb.PredictRequest(texts=["holding the worker"]), timeout=30)
    assert faulty.entered.wait(10)
    leaving = stub.Predict.future(
        pb.PredictRequest(texts=["caller leaves while queued"]), timeout=30
    )
    staying = stub.Predict.future(pb.PredictRequest(texts=["caller stays"]), timeout=30)
    assert wait_for(lambda: server.worker.queued_rows() == 2)  # both wait behind the held batch
    leaving.cancel()
    expiring = stub.Predict.future(
        pb.PredictRequest(texts=["deadline passes while queued"]), timeout=0.2
    )
    with pytest.raises(grpc.RpcError) as expired:
        expiring.result()
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    faulty.release()
    assert blocker.result().predictions and staying.result().predictions
    assert leaving.cancelled()
    assert wait_for(lambda: server.worker.queued_rows() == 0)
    assert faulty.saw_text("caller stays")
    assert not faulty.saw_text("deadline passes while queued")
    assert not faulty.saw_text("caller leaves while queued")
    assert wait_for(lambda: in_flight(server) == 0)


@pytest.mark.parametrize("how", ["deadline", "cancel"])
def test_an_explanation_stops_sending_rounds_once_its_caller_is_gone(
    server: ServerThread, stub: pb_grpc.ExplainerStub, faulty: FaultyClassifier, how: str
) -> None:
    faulty.delay = 0.03  # a slow device: the explanation needs many seconds of rounds
    request = pb.ExplainRequest(texts=[LONG_TEXT], shap=pb.ShapOptions(max_evals=3000))
    call = stub.Explain.future(request, timeout=0.8 if how == "deadline" else 30)
    if how == "cancel":
        assert wait_for(lambda: len(faulty.seen) > 20)
        call.cancel()
    else:
        with pytest.raises(grpc.RpcError) as exc:
            call.result()
        assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The call is over on the server (its request cancelled: no round can be submitted any
    # more) and its queued rows are dropped; a job after them waits for the round already in
    # the model, if any, to finish.
    assert wait_for(lambda: in_flight(server) == 0 and server.worker.queued_rows() == 0)
    server.worker.call(lambda _classifier: None, RequestContext()).result(10)
    rows_then = len(faulty.seen)
    time.sleep(1.0)  # the check itself: a second in which no further round may come
    assert len(faulty.seen) == rows_then, "rounds kept coming after the caller was gone"
    assert 0 < rows_then < 3000
    assert server.worker.queued_rows() == 0
    assert wait_for(lambda: in_flight(server) == 0)
    faulty.delay = 0.0
    assert stub.Predict(pb.PredictRequest(texts=["still fine"]), timeout=10).predictions


def test_out_of_memory_is_split_and_a_bad_row_fails_only_its_request(
    server: ServerThread,
    stub: pb_grpc.ExplainerStub,
    faulty: FaultyClassifier,
    tiny_classifier: Any,
) -> None:
    faulty.oom_above = 2
    faulty.set_poison("xylophone")
    faulty.hold()
    blocker = stub.Predict.future(pb.PredictRequest(texts=["holding the worker"]), timeout=30)
    assert faulty.entered.wait(10)
    texts = [f"review number {i} of the new place" for i in range(6)]
    good = [stub.Predict.future(pb.PredictRequest(texts=[t]), timeout=30) for t in texts]
    bad = stub.Predict.future(
        pb.PredictRequest(texts=["ok", "the xylophone was too loud"]), timeout=30
    )
    assert wait_for(lambda: server.worker.queued_rows() == 8)
    faulty.release()  # the next batch holds 8 rows: OOM, split down to pairs, one pair poisoned
    blocker.result()
    for text, f in zip(texts, good, strict=True):
        got = [s.probability for s in f.result().predictions[0].scores]
        np.testing.assert_allclose(
            got, reference_probabilities(tiny_classifier, text), rtol=1e-4, atol=1e-6
        )
    with pytest.raises(grpc.RpcError) as failed:
        bad.result()
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert failed.value.details() == (
        "the model failed on this request's input: "
        "ValueError: the injected fault hit a poisoned row"
    )
    assert "oom" in faulty.events and max(faulty.batches) <= 2
    assert server.worker.restarts == 0
    with grpc.insecure_channel(server.target) as channel:
        assert health(channel) == "SERVING"


def watch_health(target: str, seen: list[str], stop: threading.Event) -> None:
    with grpc.insecure_channel(target) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=30
        )
        try:
            for response in stream:
                seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
        except grpc.RpcError:
            if not stop.is_set():
                raise


def test_a_crashed_worker_restarts_queued_calls_get_unavailable_and_health_follows(
    server: ServerThread, stub: pb_grpc.ExplainerStub, faulty: FaultyClassifier
) -> None:
    statuses: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=watch_health, args=(server.target, statuses, stop), daemon=True
    )
    watcher.start()
    try:
        assert wait_for(lambda: statuses == ["SERVING"])
        faulty.hold()
        running = stub.Predict.future(
            pb.PredictRequest(texts=["the batch that crashes"]), timeout=30
        )
        assert faulty.entered.wait(10)
        calls = [
            stub.Predict.future(pb.PredictRequest(texts=[f"text {i}"]), timeout=30)
            for i in range(4)
        ]
        assert wait_for(lambda: server.worker.queued_rows() == 4)
        faulty.crashes = 3  # the running batch, then two warm-ups: about 0.75 s down
        faulty.release()
        for call in [running, *calls]:
            with pytest.raises(grpc.RpcError) as exc:
                call.result()
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
            assert exc.value.details() == "the worker of model 'tiny' restarted; retry"
        assert wait_for(
            lambda: statuses[-1:] == ["SERVING"] and "NOT_SERVING" in statuses, timeout=15
        )
        assert statuses == ["SERVING", "NOT_SERVING", "SERVING"]
        assert server.worker.restarts == 1
        assert stub.Predict(pb.PredictRequest(texts=["after the restart"]), timeout=10).predictions
    finally:
        stop.set()


def test_a_request_while_the_model_is_down_is_unavailable_then_served(
    server: ServerThread, stub: pb_grpc.ExplainerStub, faulty: FaultyClassifier
) -> None:
    faulty.crashes = 10_000
    with pytest.raises(grpc.RpcError):
        stub.Predict(pb.PredictRequest(texts=["this batch crashes the worker"]), timeout=10)
    with pytest.raises(grpc.RpcError) as down:
        stub.Predict(pb.PredictRequest(texts=["refused while down"]), timeout=10)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (
        down.value.details()
        == "model 'tiny' is not serving right now (loading or restarting); retry"
    )
    with faulty._lock:
        faulty.crashes = 0
    assert wait_for(lambda: server.worker.healthy, timeout=15)
    assert stub.Predict(pb.PredictRequest(texts=["served again"]), timeout=10).predictions


async def test_while_models_load_calls_are_unavailable_and_health_is_not_serving(
    tiny_classifier: Any, tiny_model_dir: Any
) -> None:
    settings = tiny_settings(tiny_model_dir)
    release = threading.Event()
    inner = registry_factory(FaultyClassifier(tiny_classifier), settings)

    def slow_factory(registry: ModelRegistry, metrics: Any, on_health: Any) -> None:
        release.wait(30)
        inner(registry, metrics, on_health)

    server = WhybertServer(settings, slow_factory)
    starting = asyncio.ensure_future(server.start())
    try:
        await wait_for_async(lambda: server.port, timeout=5)  # listening, the models still loading
        target = f"127.0.0.1:{server.port}"
        async with grpc.aio.insecure_channel(
            target, options=[("grpc.enable_retries", 0)]
        ) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            assert (await check(health_pb2.HealthCheckRequest())).status == NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as loading:
                await pb_grpc.ExplainerStub(channel).Predict(
                    pb.PredictRequest(texts=["too early"]), timeout=5
                )
            assert loading.value.code() == grpc.StatusCode.UNAVAILABLE
            assert (
                loading.value.details() == "the server is still loading its models; retry shortly"
            )
            release.set()
            await starting
            assert (await check(health_pb2.HealthCheckRequest())).status == SERVING
    finally:
        release.set()
        await server.stop(0)


# ---- the client: retries and several targets ------------------------------------------------


class FlakyExplainer(pb_grpc.ExplainerServicer):
    """Answers UNAVAILABLE (or another code) the first `failures` times, then its name."""

    def __init__(
        self, name: str, failures: int = 0, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    ):
        self.name = name
        self.failures = failures
        self.code = code
        self.attempts = 0
        self._lock = threading.Lock()

    def Predict(
        self, request: pb.PredictRequest, context: grpc.ServicerContext
    ) -> pb.PredictResponse:
        with self._lock:
            self.attempts += 1
            failing = self.attempts <= self.failures
        if failing:
            context.abort(self.code, "injected by the test")
        return pb.PredictResponse(
            model=self.name,
            predictions=[
                pb.Prediction(label="x", scores=[pb.LabelScore(label="x", probability=1.0)])
            ],
        )


def serve_fake(servicer: FlakyExplainer) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_ExplainerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def test_the_client_retries_unavailable_with_backoff() -> None:
    flaky = FlakyExplainer("flaky", failures=2)
    fake, target = serve_fake(flaky)
    try:
        with whybert.Client(target, timeout=10) as client:
            assert client.predict(["hello"])[0].label == "x"
        assert flaky.attempts == 3
        with whybert.Client(target, timeout=10, retries=0) as client:
            flaky.attempts, flaky.failures = 0, 1
            with pytest.raises(whybert.UnavailableError):
                client.predict(["hello"])
        assert flaky.attempts == 1
    finally:
        fake.stop(0)


def test_the_client_does_not_retry_other_codes() -> None:
    broken = FlakyExplainer("broken", failures=5, code=grpc.StatusCode.INTERNAL)
    fake, target = serve_fake(broken)
    try:
        with whybert.Client(target, timeout=10) as client, pytest.raises(whybert.InternalError):
            client.predict(["hello"])
        assert broken.attempts == 1
    finally:
        fake.stop(0)


def test_the_client_spreads_calls_over_several_targets_and_skips_a_dead_one() -> None:
    a, b = FlakyExplainer("a"), FlakyExplainer("b")
    (server_a, target_a), (server_b, target_b) = serve_fake(a), serve_fake(b)
    dead = f"127.0.0.1:{free_port()}"  # a port nobody listens on
    try:
        with whybert.Client([target_a, dead, target_b], timeout=10) as client:
            for _ in range(20):
                client.predict(["hello"])
        assert a.attempts >= 5 and b.attempts >= 5 and a.attempts + b.attempts == 20
    finally:
        server_a.stop(0)
        server_b.stop(0)
