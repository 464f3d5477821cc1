"""The client's decoding of error details and health replies, with the real google.rpc and
grpc.health.v1 messages and no server: what a server sends must come out as the same
typed error, and broken details must never hide the error itself; options of the wrong
kind are refused before anything is sent."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import pytest
import whybert
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from whybert._client import _health_request, _health_status
from whybert._exceptions import from_rpc_error

DETAILS_KEY = "grpc-status-details-bin"


class FakeRpcError(grpc.RpcError):
    """What grpc raises on a failed call: a code, a message and the trailing metadata."""

    def __init__(self, code: grpc.StatusCode, message: str, trailers: Sequence[tuple[str, str | bytes]]) -> None:
        self._code, self._message, self._trailers = code, message, tuple(trailers)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailers


def packed(message: Message) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)
    return detail


def bad_request(*violations: tuple[str, str]) -> error_details_pb2.BadRequest:
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in violations
        ]
    )


def status_bytes(*details: any_pb2.Any, message: str = "bad request") -> bytes:
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=list(details))
    return bytes(status.SerializeToString())


def invalid(trailers: Sequence[tuple[str, str | bytes]]) -> whybert.WhybertError:
    return from_rpc_error(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad request", trailers))


VIOLATIONS = [
    ("texts[0]", "must not be empty"),
    ("texts[1]", "contains the control character U+0000"),
    ("target_labels[0]", "unknown label 'très positif 👍'; known: négatif, positif"),
    ("shap.max_evals", "must be between 3 and 4000 (got 1) — „zu klein“"),
]


def test_a_bad_request_built_with_the_real_messages_keeps_every_violation_in_order() -> None:
    details = status_bytes(
        packed(error_details_pb2.ErrorInfo(reason="VALIDATION", domain="whybert")),  # not a BadRequest: skipped
        packed(bad_request(*VIOLATIONS[:3])),
        packed(bad_request(VIOLATIONS[3])),
    )
    error = invalid([("content-type", "application/grpc"), (DETAILS_KEY, details)])
    assert isinstance(error, whybert.InvalidArgumentError)
    assert error.field_violations == VIOLATIONS
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "bad request"
    assert str(error) == "INVALID_ARGUMENT: bad request"


def test_out_of_range_is_an_invalid_argument_with_its_violations() -> None:
    trailers = [(DETAILS_KEY, status_bytes(packed(bad_request(("n_steps", "too many")))))]
    error = from_rpc_error(FakeRpcError(grpc.StatusCode.OUT_OF_RANGE, "too big", trailers))
    assert isinstance(error, whybert.InvalidArgumentError)
    assert error.field_violations == [("n_steps", "too many")]


@pytest.mark.parametrize(
    "details",
    [
        b"\xff\xff\xff\xff\xff",  # a varint that never ends
        b"\x1a\x7f\x0a",  # details (field 3) claims 127 bytes, has 1
        b"\x0b",  # a group start, a wire type proto3 never writes here
        status_bytes(packed(bad_request(*VIOLATIONS)))[:-7],  # cut short
        b"",
    ],
    ids=["endless-varint", "overlong-length", "group", "truncated", "empty"],
)
def test_garbage_details_give_no_violations_and_never_raise(details: bytes) -> None:
    error = invalid([(DETAILS_KEY, details)])
    assert isinstance(error, whybert.InvalidArgumentError)
    assert error.field_violations == []
    assert error.message == "bad request"


def test_a_broken_bad_request_is_skipped_and_the_good_ones_kept() -> None:
    broken = any_pb2.Any(type_url="type.googleapis.com/google.rpc.BadRequest", value=b"\x0a\xff\x01")
    invalid_utf8 = any_pb2.Any(
        type_url="type.googleapis.com/google.rpc.BadRequest",
        value=b"\x0a\x04\x0a\x02\xc3\x28",  # FieldViolation.field holds bytes that are not UTF-8
    )
    details = status_bytes(broken, packed(bad_request(VIOLATIONS[0])), invalid_utf8)
    assert invalid([(DETAILS_KEY, details)]).field_violations == [VIOLATIONS[0]]


@pytest.mark.parametrize(
    "trailers",
    [
        [],
        [("content-type", "application/grpc")],
        [(DETAILS_KEY, "not bytes")],
        [("grpc-status-details", status_bytes(packed(bad_request(VIOLATIONS[0]))))],
    ],
    ids=["none", "no-details", "text-value", "other-key"],
)
def test_trailers_without_details_give_no_violations(trailers: list[tuple[str, str | bytes]]) -> None:
    assert invalid(trailers).field_violations == []


def test_an_error_without_trailers_or_code_is_still_typed() -> None:
    class Bare(grpc.RpcError):
        def __str__(self) -> str:
            return "it broke"

    error = from_rpc_error(Bare())
    assert isinstance(error, whybert.InternalError)
    assert (error.code, error.message, error.field_violations) == (grpc.StatusCode.UNKNOWN, "it broke", [])


def test_health_requests_and_replies_are_the_real_messages() -> None:
    assert _health_request("whybert.v1.Explainer") == health_pb2.HealthCheckRequest(service="whybert.v1.Explainer")
    assert _health_request("").SerializeToString() == b""
    names = {
        health_pb2.HealthCheckResponse.UNKNOWN: "UNKNOWN",
        health_pb2.HealthCheckResponse.SERVING: "SERVING",
        health_pb2.HealthCheckResponse.NOT_SERVING: "NOT_SERVING",
        health_pb2.HealthCheckResponse.SERVICE_UNKNOWN: "SERVICE_UNKNOWN",
    }
    for status, name in names.items():
        assert _health_status(health_pb2.HealthCheckResponse(status=status)) == name


def test_a_serving_status_newer_than_the_stubs_reads_as_unknown() -> None:
    # proto3 enums are open: a later server may send a value these stubs do not name.
    response = health_pb2.HealthCheckResponse.FromString(b"\x08\x07")
    assert _health_status(response) == "UNKNOWN"


# ---- options refused before anything is sent ---------------------------------------------------


@pytest.mark.parametrize("name", ["faithfulness", "raw_attention"])
@pytest.mark.parametrize("value", ["no", "false", "yes", 0, 1, [True]])
def test_a_yes_or_no_option_takes_a_bool_only(name: str, value: object) -> None:
    # "no" is truthy: read as a bool it would turn the option on.
    from whybert._core import BaseClient

    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        BaseClient.explain_request(["a text"], None, "attention", {name: value})


def test_yes_or_no_options_as_bools() -> None:
    from whybert._core import BaseClient

    for value in (True, False, None):
        options = {"faithfulness": value, "raw_attention": value}
        request = BaseClient.explain_request(["a text"], None, "attention", options)
        assert request.faithfulness is bool(value) and request.attention.raw is bool(value)


@pytest.mark.parametrize("targets", [5, [1, None], [], {"positive": 1}, 2.5])
def test_targets_other_than_labels_are_refused_clearly(targets: object) -> None:
    from whybert._core import BaseClient

    with pytest.raises(TypeError, match='targets must be "predicted", "all", a label or a list of labels'):
        BaseClient.explain_request(["a text"], None, "shap", {"targets": targets})


def test_targets_by_mode_and_by_name() -> None:
    from whybert._core import BaseClient
    from whybert.v1 import explainer_pb2 as pb

    assert BaseClient.explain_request(["t"], None, "shap", {"targets": "all"}).target_mode == pb.TARGET_MODE_ALL
    named = BaseClient.explain_request(["t"], None, "shap", {"targets": ("positive", "negative")})
    assert named.target_mode == pb.TARGET_MODE_NAMED and list(named.target_labels) == ["positive", "negative"]
    assert list(BaseClient.explain_request(["t"], None, "shap", {"targets": "neutral"}).target_labels) == ["neutral"]
