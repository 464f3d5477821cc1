"""The first whole path: Predict, ListModels and health over gRPC, and bad input refused, on
a server of the tiny model shared by the module."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import whybert
from _references import PlainModel
from _servers import tiny_settings
from _wait import wait_for_async
from grpc_health.v1 import health_pb2, health_pb2_grpc
from whybert.v1 import explainer_pb2 as pb
from whybert.v1 import explainer_pb2_grpc as pb_grpc


def address(server: Any) -> str:
    return f"127.0.0.1:{server.port}"


async def test_predict_returns_the_models_probabilities(threaded_server: Any, plain_model: PlainModel) -> None:
    texts = ["the food was great", "the service was painfully slow and rude", "ok"]
    async with whybert.AsyncClient(address(threaded_server)) as client:
        predictions = await client.predict(texts)
    expected = plain_model.probabilities(texts)
    assert [p.label for p in predictions] == [["negative", "neutral", "positive"][i] for i in expected.argmax(1)]
    for p, row in zip(predictions, expected, strict=True):
        assert list(p.scores) == ["negative", "neutral", "positive"]
        np.testing.assert_allclose(list(p.scores.values()), row, atol=1e-5)
        assert not p.truncated


def test_sync_client_and_named_model(threaded_server: Any) -> None:
    with whybert.Client(threaded_server.target) as client:
        (p,) = client.predict("a single text is fine too", model="tiny")
        models = client.list_models()
        assert client.health() == "SERVING"
    assert abs(sum(p.scores.values()) - 1) < 1e-6
    (info,) = models
    assert info.name == "tiny" and info.is_default
    assert info.labels == ["negative", "neutral", "positive"]
    assert info.max_tokens == 128
    assert "shap-partition" in info.explainers
    assert len(info.weights_sha256) == 64 and info.device == "cpu" and info.dtype == "float32"


async def test_long_text_is_truncated_and_says_so(threaded_server: Any) -> None:
    long_text = "word " * 400
    async with whybert.AsyncClient(address(threaded_server)) as client:
        short, long = await client.predict(["word " * 10, long_text])
    assert not short.truncated and long.truncated
    assert long.token_count == 128


async def test_results_return_to_the_right_caller_in_order(threaded_server: Any, plain_model: PlainModel) -> None:
    texts = [f"review number {i}: " + "good " * (i % 7) + "bad " * (i % 5) for i in range(40)]
    expected = plain_model.probabilities(texts)
    async with whybert.AsyncClient(address(threaded_server)) as client:
        answers = await asyncio.gather(*[client.predict(texts[i : i + 3]) for i in range(0, 40, 3)])
    flat = [p for group in answers for p in group]
    got = np.array([list(p.scores.values()) for p in flat])
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("texts", "model", "code", "fragment"),
    [
        ([], "", grpc.StatusCode.INVALID_ARGUMENT, "texts"),
        ([""], "", grpc.StatusCode.INVALID_ARGUMENT, "texts[0]"),
        (["fine", "   \n\t "], "", grpc.StatusCode.INVALID_ARGUMENT, "texts[1]"),
        (["fine"], "no-such-model", grpc.StatusCode.NOT_FOUND, "no-such-model"),
        (["t"] * 65, "", grpc.StatusCode.INVALID_ARGUMENT, "at most 64"),
    ],
)
async def test_bad_input_gets_a_clear_status_and_the_server_keeps_serving(
    threaded_server: Any, texts: list[str], model: str, code: grpc.StatusCode, fragment: str
) -> None:
    async with whybert.AsyncClient(address(threaded_server)) as client:
        with pytest.raises(whybert.WhybertError) as info:
            await client.predict(texts, model=model or None)
        assert info.value.code == code
        assert fragment in info.value.message
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert info.value.field_violations and info.value.field_violations[0][0].startswith("texts")
        (p,) = await client.predict(["still serving"])
        assert p.label in ("negative", "neutral", "positive")
        assert await client.health() == "SERVING"


def _reflected_services(target: str) -> list[str]:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(target) as channel:
        return list(ProtoReflectionDescriptorDatabase(channel).get_services())


async def test_health_and_reflection_over_raw_stubs(threaded_server: Any) -> None:
    async with grpc.aio.insecure_channel(address(threaded_server)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "whybert.v1.Explainer"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.ExplainerStub(channel)
        reply = await stub.Predict(pb.PredictRequest(texts=["raw stubs work"]))
        assert len(reply.predictions) == 1 and reply.model == "tiny"
    # The reflection client is blocking: run it off the server's event loop.
    services = await asyncio.to_thread(_reflected_services, address(threaded_server))
    assert "whybert.v1.Explainer" in services and "grpc.health.v1.Health" in services


async def test_health_is_not_serving_until_models_are_loaded(tiny_model_dir: Path) -> None:
    import threading

    from whybert_service.compose import model_loader
    from whybert_service.grpc.server import WhybertServer

    settings = tiny_settings(tiny_model_dir)
    release = threading.Event()
    real = model_loader(settings)

    def slow_loader(registry: Any, metrics: Any, on_health: Any) -> None:
        release.wait(30)
        real(registry, metrics, on_health)

    server = WhybertServer(settings, load_models=slow_loader)
    starting = asyncio.ensure_future(server.start())
    try:
        await wait_for_async(lambda: server.port, timeout=10)  # listening, the models still loading
        async with whybert.AsyncClient(address(server), retries=0) as client:
            assert await client.health() == "NOT_SERVING"
            with pytest.raises(whybert.UnavailableError):
                await client.predict(["too early"])
            release.set()
            await starting
            assert await client.health() == "SERVING"
            assert len(await client.predict(["now"])) == 1
    finally:
        release.set()
        await server.stop(0)
