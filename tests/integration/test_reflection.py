"""Generic gRPC tooling works through server reflection, and docs/grpc.md is right.

`Reflected` does what grpcurl does: it knows nothing of whybert's generated code; services,
methods and message types all come from the server's reflection service into a fresh
descriptor pool, and requests are built from JSON. The grpcurl commands of docs/grpc.md are
run this way against a real server.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import whybert
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from whybert.v1 import explainer_pb2

DOC = Path(__file__).resolve().parents[2] / "docs" / "grpc.md"
DOC_ADDRESS = "localhost:50051"


class Reflected:
    """A schema-less client: everything it knows about the server comes from reflection."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.database = ProtoReflectionDescriptorDatabase(channel)
        self.pool = descriptor_pool.DescriptorPool(self.database)

    def services(self) -> list[str]:
        return list(self.database.get_services())

    def describe(self, symbol: str) -> Any:
        try:
            return self.pool.FindServiceByName(symbol)
        except KeyError:
            return self.pool.FindMessageTypeByName(symbol)

    def call(self, method_path: str, body: str = "{}") -> dict[str, Any]:
        """`grpcurl -d BODY ADDRESS service/method`: JSON in, JSON out."""
        service_name, method_name = method_path.rsplit("/", 1)
        method = self.pool.FindServiceByName(service_name).methods_by_name[method_name]
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        request = json_format.Parse(body, request_type())
        serializers = {
            "request_serializer": request_type.SerializeToString,
            "response_deserializer": response_type.FromString,
        }
        if method.server_streaming:  # grpcurl prints each message of a stream
            stream = self.channel.unary_stream(f"/{service_name}/{method_name}", **serializers)
            return {"messages": [json_format.MessageToDict(m) for m in stream(request, timeout=120)]}
        rpc = self.channel.unary_unary(f"/{service_name}/{method_name}", **serializers)
        return json_format.MessageToDict(rpc(request, timeout=120))


@pytest.fixture
def reflected(target: str) -> Iterator[Reflected]:
    with grpc.insecure_channel(target) as channel:
        yield Reflected(channel)


def test_reflection_lists_the_services(reflected: Reflected) -> None:
    assert set(reflected.services()) >= {
        "whybert.v1.Explainer",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_reflected_schema_is_the_contract(reflected: Reflected) -> None:
    service = reflected.describe("whybert.v1.Explainer")
    methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    assert methods == {
        "Predict": ("whybert.v1.PredictRequest", "whybert.v1.PredictResponse"),
        "Explain": ("whybert.v1.ExplainRequest", "whybert.v1.ExplainResponse"),
        "ListModels": ("whybert.v1.ListModelsRequest", "whybert.v1.ListModelsResponse"),
        "PredictStream": ("whybert.v1.PredictStreamRequest", "whybert.v1.PredictStreamResponse"),
        "ExplainStream": ("whybert.v1.ExplainStreamRequest", "whybert.v1.ExplainStreamResponse"),
        "ExplainProgressive": ("whybert.v1.ExplainProgressiveRequest", "whybert.v1.ExplainProgressiveResponse"),
    }
    served, built_in = descriptor_pb2.FileDescriptorProto(), descriptor_pb2.FileDescriptorProto()
    service.file.CopyToProto(served)
    explainer_pb2.DESCRIPTOR.CopyToProto(built_in)
    assert served == built_in


def test_a_reflected_call_answers_like_the_typed_client(reflected: Reflected, target: str) -> None:
    texts = ["the food was great", "the service was slow"]
    got = reflected.call("whybert.v1.Explainer/Predict", json.dumps({"texts": texts}))
    with whybert.Client(target) as client:
        expected = client.predict(texts)
    assert [p["label"] for p in got["predictions"]] == [p.label for p in expected]
    for p, e in zip(got["predictions"], expected, strict=True):
        assert {s["label"]: s["probability"] for s in p["scores"]} == pytest.approx(e.scores)


def doc_commands() -> list[list[str]]:
    """Every grpcurl command line of docs/grpc.md's shell blocks, split like a shell would."""
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    lines = [line for block in blocks for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("grpcurl ")]


def test_doc_has_the_calls_users_need() -> None:
    methods = {argv[-1] for argv in doc_commands()}
    assert {"whybert.v1.Explainer/Predict", "whybert.v1.Explainer/Explain",
            "whybert.v1.Explainer/ListModels", "grpc.health.v1.Health/Check"} <= methods
    assert any("list" in argv for argv in doc_commands())
    assert any("describe" in argv for argv in doc_commands())


@pytest.mark.parametrize("argv", doc_commands(), ids=lambda argv: " ".join(argv[-2:]))
def test_doc_grpcurl_command_works(reflected: Reflected, argv: list[str]) -> None:
    body, rest, args = "{}", [], iter(argv[1:])
    for arg in args:
        if arg == "-d":
            body = next(args)
        elif arg == "-max-time":
            next(args)
        elif arg != "-plaintext":
            rest.append(arg)
    address, verb, *more = rest
    assert address == DOC_ADDRESS
    if verb == "list":
        names = (
            reflected.services() if not more
            else [m.full_name for m in reflected.describe(more[0]).methods]
        )
        assert names
    elif verb == "describe":
        assert reflected.describe(more[0]).full_name == more[0]
    else:
        check_reply(verb, json.loads(body), reflected.call(verb, body))


def check_reply(method: str, request: dict[str, Any], reply: dict[str, Any]) -> None:
    """What each documented call promises."""
    if method.endswith(("/PredictStream", "/ExplainStream")):
        indices = sorted(m.get("index", 0) for m in reply["messages"])  # JSON omits index 0
        assert indices == list(range(len(request["texts"])))
    elif method.endswith("/ExplainProgressive"):
        assert reply["messages"] and reply["messages"][-1]["final"]
    elif method.endswith("/Predict"):
        assert len(reply["predictions"]) == len(request["texts"])
    elif method.endswith("/Explain"):
        assert len(reply["explanations"]) == len(request["texts"])
        for e in reply["explanations"]:
            assert len(e["values"]) == len(e["tokens"]) * len(e["labels"])
            kind = request.get("explainer", "EXPLAINER_KIND_SHAP_PARTITION")
            assert e["explainer"] == kind
            if request.get("targetMode") == "TARGET_MODE_ALL":
                assert len(e["labels"]) == len(e["prediction"]["scores"])
    elif method.endswith("/ListModels"):
        assert reply["defaultModel"] in [m["name"] for m in reply["models"]]
    else:
        assert reply == {"status": "SERVING"}


def test_a_reflection_stream_left_by_its_caller_ends_without_an_error_logged(
    target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone may open a reflection stream: one whose caller sends thousands of requests,
    reads none of the replies and leaves must end as a cancelled call, not as an error with
    a traceback in the server's log; reflection keeps answering afterwards."""
    import asyncio
    import logging

    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async def flood_and_leave() -> None:
        async with grpc.aio.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)]) as channel:
            call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
            request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="whybert.v1.Explainer")
            for _ in range(2000):  # replies pile up unread until the sends block
                await call.write(request)
            await asyncio.sleep(1.0)
            call.cancel()
            await asyncio.sleep(0.5)

    with caplog.at_level(logging.ERROR):
        for _ in range(2):
            asyncio.run(flood_and_leave())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    with grpc.insecure_channel(target) as channel:
        assert "whybert.v1.Explainer" in Reflected(channel).services()
