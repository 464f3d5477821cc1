"""Nobody let in uninvited: TLS, mutual TLS and bearer tokens (with certificates made by
tests/_pki.py), health and reflection readable without a token, reflection that can be
switched off, message size limits, and /metrics that follows the server's security.
(The token rules alone: unit/test_auth.py; model loading that never unpickles:
unit/test_loading.py; the CLI's --tls in a fresh process: system/test_cli_process.py.)"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import whybert
from _pki import make_pki
from _servers import ServerThread, free_port, health, tiny_settings
from _wait import wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from whybert import cli as client_cli
from whybert.v1 import explainer_pb2 as pb
from whybert.v1 import explainer_pb2_grpc as pb_grpc
from whybert_service.grpc.auth import REFUSAL


def predict_ok(client: whybert.Client) -> None:
    (prediction,) = client.predict(["a secure hello"])
    assert abs(sum(prediction.scores.values()) - 1) < 1e-6


def refused(client: whybert.Client) -> whybert.WhybertError:
    with pytest.raises(whybert.WhybertError) as exc:
        client.predict(["hello"], timeout=5)
    return exc.value


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_pki(tmp_path_factory.mktemp("pki"))


# ---- TLS and mutual TLS -------------------------------------------------------------------


def test_tls_serves_clients_that_trust_its_ca_only(
    tiny_model_dir: Path, pki: dict[str, Any]
) -> None:
    settings = tiny_settings(
        tiny_model_dir, tls_cert=str(pki["server"].cert), tls_key=str(pki["server"].key)
    )
    with ServerThread(settings) as server:
        with whybert.Client(
            server.target, tls=whybert.TLSConfig(ca_cert=str(pki["ca"])), retries=0
        ) as client:
            predict_ok(client)
        with whybert.Client(server.target, retries=0) as plaintext:
            assert refused(plaintext).code == grpc.StatusCode.UNAVAILABLE
        with whybert.Client(
            server.target, tls=whybert.TLSConfig(ca_cert=str(pki["rogue_ca"])), retries=0
        ) as wrong:
            assert refused(wrong).code == grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def mtls_server(tiny_model_dir: Path, pki: dict[str, Any]) -> Iterator[ServerThread]:
    settings = tiny_settings(
        tiny_model_dir,
        tls_cert=str(pki["server"].cert),
        tls_key=str(pki["server"].key),
        tls_client_ca=str(pki["ca"]),
    )
    with ServerThread(settings) as server:
        yield server


def test_mutual_tls_requires_a_client_certificate_from_its_ca(
    mtls_server: ServerThread, pki: dict[str, Any]
) -> None:
    ca = str(pki["ca"])
    good = whybert.TLSConfig(ca, str(pki["client"].cert), str(pki["client"].key))
    with whybert.Client(mtls_server.target, tls=good, retries=0) as client:
        predict_ok(client)
    with whybert.Client(mtls_server.target, tls=whybert.TLSConfig(ca), retries=0) as anonymous:
        assert refused(anonymous).code == grpc.StatusCode.UNAVAILABLE
    rogue = whybert.TLSConfig(ca, str(pki["rogue_client"].cert), str(pki["rogue_client"].key))
    with whybert.Client(mtls_server.target, tls=rogue, retries=0) as impostor:
        assert refused(impostor).code == grpc.StatusCode.UNAVAILABLE


def test_the_cli_speaks_mutual_tls(
    mtls_server: ServerThread, pki: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    tls = [
        "--tls-ca",
        str(pki["ca"]),
        "--tls-cert",
        str(pki["client"].cert),
        "--tls-key",
        str(pki["client"].key),
    ]
    code = client_cli.main(
        ["predict", "a secure hello", "--target", mtls_server.target, "--json", *tls]
    )
    assert code == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["text"] == "a secure hello" and row["label"] in row["scores"]
    assert client_cli.main(["health", "--target", mtls_server.target, *tls]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert (
        client_cli.main(
            [
                "predict",
                "hello",
                "--target",
                mtls_server.target,
                "--tls-ca",
                str(pki["ca"]),
                "--timeout",
                "5",
            ]
        )
        == 1
    )
    assert "UNAVAILABLE" in capsys.readouterr().err


# ---- bearer tokens --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    tokens_file = tmp_path_factory.mktemp("auth") / "tokens"
    tokens_file.write_text("# who may call\nalpha-token-1\n\n  beta-token-2  \n")
    settings = tiny_settings(
        tiny_model_dir,
        auth_tokens_file=str(tokens_file),
        auth_tokens="gamma-token-3",
        max_message_bytes=1024 * 1024,
    )
    with ServerThread(settings) as server:
        yield server


def raw_call(
    target: str, method: str, data: bytes, metadata: list[tuple[str, str]] | None = None
) -> bytes:
    with grpc.insecure_channel(target, options=[("grpc.enable_retries", 0)]) as channel:
        stub = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        response: bytes = stub(data, timeout=10, metadata=metadata)
        return response


PREDICT = "/whybert.v1.Explainer/Predict"
HELLO = pb.PredictRequest(texts=["hello"]).SerializeToString()


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        [("authorization", "Bearer wrong-token")],
        [("authorization", "Bearer alpha-token-")],  # a prefix of a real one
        [("authorization", "Basic alpha-token-1")],
        [("authorization", "alpha-token-1")],
        [("authorization", "Bearer")],
        [("authorization", "Bearer alpha-token-1"), ("authorization", "Bearer wrong-token")],
        [("x-api-key", "alpha-token-1")],
    ],
    ids=[
        "none",
        "wrong",
        "prefix",
        "basic-scheme",
        "no-scheme",
        "empty",
        "two-headers",
        "other-header",
    ],
)
def test_calls_without_a_valid_token_are_unauthenticated(
    token_server: ServerThread, metadata: list[tuple[str, str]] | None
) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        raw_call(token_server.target, PREDICT, HELLO, metadata)
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert exc.value.details() == REFUSAL


@pytest.mark.parametrize(
    "header", ["Bearer alpha-token-1", "Bearer beta-token-2", "bearer gamma-token-3"]
)
def test_every_configured_token_is_accepted(token_server: ServerThread, header: str) -> None:
    response = pb.PredictResponse.FromString(
        raw_call(token_server.target, PREDICT, HELLO, [("authorization", header)])
    )
    assert len(response.predictions) == 1


def test_unauthenticated_bytes_are_never_decoded(token_server: ServerThread) -> None:
    garbage = b"\xff\xff\xff\xff"
    with pytest.raises(grpc.RpcError) as anonymous:
        raw_call(token_server.target, PREDICT, garbage)
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as authenticated:
        raw_call(token_server.target, PREDICT, garbage, [("authorization", "Bearer alpha-token-1")])
    assert authenticated.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_and_reflection_stay_readable_without_a_token(token_server: ServerThread) -> None:
    with grpc.insecure_channel(token_server.target) as channel:
        assert health(channel) == "SERVING"
        assert "whybert.v1.Explainer" in reflected_services(channel)
    with whybert.Client(token_server.target, retries=0) as client:
        assert client.health() == "SERVING"
        with pytest.raises(whybert.UnauthenticatedError):
            client.list_models()
    with whybert.Client(token_server.target, token="beta-token-2") as client:
        assert [m.name for m in client.list_models()] == ["tiny"]


def test_the_cli_sends_the_token_from_the_environment(
    token_server: ServerThread, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--target", token_server.target]
    assert client_cli.main(["predict", "hello", *target]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    monkeypatch.setenv("WHYBERT_TOKEN", "gamma-token-3")
    assert client_cli.main(["predict", "hello", "--json", *target]) == 0
    assert json.loads(capsys.readouterr().out)[0]["text"] == "hello"


def test_refusals_are_counted_in_the_grpc_metrics(token_server: ServerThread) -> None:
    assert token_server.server is not None
    registry = token_server.server.metrics.registry
    labels = {
        "grpc_type": "unary",
        "grpc_service": "whybert.v1.Explainer",
        "grpc_method": "Predict",
    }

    def unauthenticated_count() -> float:
        value = registry.get_sample_value(
            "grpc_server_handled_total", {**labels, "grpc_code": "UNAUTHENTICATED"}
        )
        return value or 0

    before = unauthenticated_count()
    with pytest.raises(grpc.RpcError):
        raw_call(token_server.target, PREDICT, HELLO)
    # The status leaves the server before the interceptor's bookkeeping finishes, so
    # the count may trail the client's error by a moment.
    assert wait_for(lambda: unauthenticated_count() >= before + 1, timeout=5.0)
    assert unauthenticated_count() == before + 1


def test_messages_beyond_the_configured_size_are_resource_exhausted(
    token_server: ServerThread,
) -> None:
    big = pb.PredictRequest(texts=["word " * 300_000]).SerializeToString()  # 1.5 MB > 1 MiB
    with pytest.raises(grpc.RpcError) as exc:
        raw_call(token_server.target, PREDICT, big, [("authorization", "Bearer alpha-token-1")])
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (exc.value.details() or "")


# ---- the metrics endpoint follows the server's security --------------------------------------


def scrape(port: int, context: ssl.SSLContext | None = None) -> str:
    scheme = "https" if context is not None else "http"
    with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/metrics", timeout=10, context=context) as reply:
        return str(reply.read().decode())


def test_the_metrics_of_a_tls_server_are_https_on_loopback(tiny_model_dir: Path, pki: dict[str, Any]) -> None:
    settings = tiny_settings(
        tiny_model_dir,
        host="0.0.0.0",
        metrics_port=free_port(),
        tls_cert=str(pki["server"].cert),
        tls_key=str(pki["server"].key),
    )
    with ServerThread(settings) as server:
        assert server.server is not None
        assert server.server.metrics.address == ("127.0.0.1", settings.metrics_port)
        body = scrape(settings.metrics_port, ssl.create_default_context(cafile=str(pki["ca"])))
        assert "# TYPE grpc_server_started_total counter" in body
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # the server's own
            scrape(settings.metrics_port, ssl.create_default_context(cafile=str(pki["rogue_ca"])))
        with pytest.raises((OSError, http.client.HTTPException)):  # nothing in clear
            scrape(settings.metrics_port)


@pytest.mark.parametrize(
    ("overrides", "address"),
    [
        ({"auth_tokens": "alpha-token-1"}, "127.0.0.1"),
        ({}, "0.0.0.0"),  # an open server's metrics are as open as its gRPC port
    ],
    ids=["tokens", "open"],
)
def test_the_metrics_of_a_token_server_listen_on_loopback(
    tiny_model_dir: Path, overrides: dict[str, str], address: str
) -> None:
    settings = tiny_settings(tiny_model_dir, host="0.0.0.0", metrics_port=free_port(), **overrides)
    with ServerThread(settings) as server:
        assert server.server is not None
        assert server.server.metrics.address == (address, settings.metrics_port)
        assert "# TYPE grpc_server_started_total counter" in scrape(settings.metrics_port)


# ---- reflection -----------------------------------------------------------------------------


def reflected_services(channel: grpc.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    return [s.name for s in response.list_services_response.service]


def test_health_watch_streams_are_capped(tiny_model_dir: Path) -> None:
    """Watch needs no token and holds its stream open: beyond --max-watch-streams a new one
    is refused at once, and a closed one gives its place back."""
    settings = tiny_settings(tiny_model_dir, auth_tokens="alpha-token-1", max_watch_streams=2)
    serving = health_pb2.HealthCheckResponse.SERVING
    with ServerThread(settings) as server, grpc.insecure_channel(server.target) as channel:
        assert server.server is not None
        limit = server.server.watch_limit
        stub = health_pb2_grpc.HealthStub(channel)

        def watch() -> Any:
            return stub.Watch(health_pb2.HealthCheckRequest(), timeout=60)

        streams = [watch(), watch()]
        assert [next(s).status for s in streams] == [serving, serving]
        assert limit.active == 2

        with pytest.raises(grpc.RpcError) as refused:
            next(watch())
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 2 open Watch streams" in (refused.value.details() or "")
        assert health(channel) == "SERVING"  # Check is not a stream: never capped

        streams[0].cancel()
        assert wait_for(lambda: limit.active == 1)
        again = watch()
        assert next(again).status == serving
        assert limit.active == 2

        for stream in (streams[1], again):
            stream.cancel()
        assert wait_for(lambda: limit.active == 0)
        registry = server.server.metrics.registry
        labels = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Watch"}
        assert wait_for(
            lambda: registry.get_sample_value(
                "grpc_server_handled_total",
                {"grpc_type": "server_stream", **labels, "grpc_code": "RESOURCE_EXHAUSTED"},
            )
            == 1
        )


def test_reflection_can_be_switched_off(tiny_model_dir: Path) -> None:
    with (
        ServerThread(tiny_settings(tiny_model_dir, reflection=False)) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        with pytest.raises(grpc.RpcError) as exc:
            reflected_services(channel)
        assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert (
            pb_grpc.ExplainerStub(channel)
            .Predict(pb.PredictRequest(texts=["hi"]), timeout=10)
            .predictions
        )


