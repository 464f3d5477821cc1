"""Bad input of every kind gets its documented status and message (docs/operations.md),
never a crash or a hang; after each case the server is SERVING and answers a normal
request correctly.

Every case is sent as raw bytes through a generic channel method, so hand-made wire
bytes (invalid UTF-8, corrupt messages, out-of-range varints) go through exactly the
same path as messages built with the stubs. Errors are decoded by the client's own
translation (`whybert._exceptions.from_rpc_error`), which proves the client reads the
google.rpc.BadRequest details too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import whybert
from _servers import ServerThread, health, reference_probabilities, tiny_settings
from whybert._exceptions import from_rpc_error
from whybert.v1 import explainer_pb2 as pb

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
BAD_UTF8 = (
    "the request bytes are not a valid message for /whybert.v1.Explainer/Predict: Error parsing "
    "message with type 'whybert.v1.PredictRequest': String field had bad UTF-8 (every string "
    "field, texts included, must be valid UTF-8)"
)
CORRUPT = (
    "the request bytes are not a valid message for /whybert.v1.Explainer/{method}: Error parsing "
    "message with type 'whybert.v1.{method}Request': Wire format was corrupt"
)
EMPTY = "the text is empty or only white space"
LABELS = "['negative', 'neutral', 'positive']"
NORMAL_TEXT = "the service was quick and the food was lovely"


@dataclass(frozen=True)
class Case:
    """One bad (or surprising but valid) request and what it must get back."""

    id: str
    method: str
    request: Any  # a message, or raw bytes sent as they are
    code: grpc.StatusCode
    violations: list[tuple[str, str]] = field(default_factory=list)  # exact BadRequest details
    message: str = ""  # a part of the status message, where there are no violations


def predict(*texts: str, model: str = "") -> pb.PredictRequest:
    return pb.PredictRequest(model=model, texts=list(texts))


def explain(*texts: str, **fields: Any) -> pb.ExplainRequest:
    return pb.ExplainRequest(texts=list(texts), **fields)


def out_of_range(value: int, low: int, high: int) -> str:
    return f"{value} is out of range; allowed {low} to {high}"


def varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # negative numbers travel as 10-byte two's complement varints
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def text_field(raw: bytes) -> bytes:
    """PredictRequest/ExplainRequest field 2 (texts) holding exactly these bytes."""
    return b"\x12" + varint(len(raw)) + raw


NEGATIVE_MAX_EVALS = (
    text_field(b"fine") + b"\x3a" + varint(len(b"\x08" + varint(-1))) + b"\x08" + varint(-1)
)

CASES = [
    # ---- texts: empty, white space, size, count -------------------------------------------
    Case("no-texts", "Predict", predict(), INVALID, [("texts", "at least one text is required")]),
    Case("empty-text", "Predict", predict(""), INVALID, [("texts[0]", EMPTY)]),
    Case("whitespace-text", "Predict", predict("  \t\n  \r\n"), INVALID, [("texts[0]", EMPTY)]),
    Case(
        "unicode-spaces", "Predict", predict("\u3000\u2003\u00a0"), INVALID, [("texts[0]", EMPTY)]
    ),
    Case("second-text-empty", "Predict", predict("fine", ""), INVALID, [("texts[1]", EMPTY)]),
    Case(
        "one-megabyte-text",
        "Predict",
        predict("a" * 1_000_000),
        INVALID,
        [("texts[0]", "1000000 characters; at most 20000 per text")],
    ),
    Case(
        "one-char-over-limit",
        "Predict",
        predict("é" * 20_001),
        INVALID,
        [("texts[0]", "20001 characters; at most 20000 per text")],
    ),
    Case(
        "too-many-texts",
        "Predict",
        predict(*["hi"] * 65),
        INVALID,
        [("texts", "65 texts given; at most 64 per request")],
    ),
    # ---- control characters ---------------------------------------------------------------
    Case(
        "nul",
        "Predict",
        predict("nul\x00inside"),
        INVALID,
        [("texts[0]", "contains the control character U+0000")],
    ),
    Case(
        "bell",
        "Predict",
        predict("ding\x07"),
        INVALID,
        [("texts[0]", "contains the control character U+0007")],
    ),
    Case(
        "ansi-escape",
        "Predict",
        predict("\x1b[31mred\x1b[0m"),
        INVALID,
        [("texts[0]", "contains the control character U+001B")],
    ),
    Case(
        "delete",
        "Predict",
        predict("del\x7f"),
        INVALID,
        [("texts[0]", "contains the control character U+007F")],
    ),
    Case(
        "c1-next-line",
        "Predict",
        predict("c1 \x85 next line"),
        INVALID,
        [("texts[0]", "contains the control character U+0085")],
    ),
    Case(
        "every-bad-text-reported",
        "Predict",
        predict("", "x\x00y", "fine", " "),
        INVALID,
        [
            ("texts[0]", EMPTY),
            ("texts[1]", "contains the control character U+0000"),
            ("texts[3]", EMPTY),
        ],
    ),
    # ---- bytes that are not a valid message -------------------------------------------------
    Case("invalid-utf8", "Predict", text_field(b"\xff\xfe\xfd"), INVALID, [("request", BAD_UTF8)]),
    Case(
        "utf8-encoded-surrogate",
        "Predict",
        text_field(b"\xed\xa0\x80"),
        INVALID,
        [("request", BAD_UTF8)],
    ),
    Case("overlong-utf8", "Predict", text_field(b"\xc0\xaf"), INVALID, [("request", BAD_UTF8)]),
    Case("truncated-utf8", "Predict", text_field(b"caf\xc3"), INVALID, [("request", BAD_UTF8)]),
    Case(
        "invalid-utf8-model-name",
        "Predict",
        b"\x0a\x02\xc3\x28" + text_field(b"fine"),
        INVALID,
        [("request", BAD_UTF8)],
    ),
    Case(
        "truncated-message",
        "Predict",
        b"\x12\x10abc",
        INVALID,
        [("request", CORRUPT.format(method="Predict"))],
    ),
    Case(
        "garbage-bytes",
        "Predict",
        b"\xff\xff\xff\xff",
        INVALID,
        [("request", CORRUPT.format(method="Predict"))],
    ),
    Case(
        "garbage-list-models",
        "ListModels",
        b"\xff\xff\xff\xff",
        INVALID,
        [("request", CORRUPT.format(method="ListModels"))],
    ),
    # A wrong wire type for a known field is kept as an unknown field: texts stays empty.
    Case(
        "wrong-wire-type",
        "Predict",
        b"\x10\x01",
        INVALID,
        [("texts", "at least one text is required")],
    ),
    # ---- models -----------------------------------------------------------------------------
    Case(
        "unknown-model",
        "Predict",
        predict("fine", model="nope"),
        grpc.StatusCode.NOT_FOUND,
        message="model 'nope' is not served here (models: tiny)",
    ),
    Case(
        "path-like-model",
        "Predict",
        predict("fine", model="../../etc/passwd"),
        grpc.StatusCode.NOT_FOUND,
        message="model '../../etc/passwd' is not served here",
    ),
    Case(
        "long-model-name",
        "Predict",
        predict("fine", model="m" * 300),
        INVALID,
        [("model", "the model name is longer than 256 characters")],
    ),
    Case(
        "explain-unknown-model",
        "Explain",
        explain("fine", model="nope"),
        grpc.StatusCode.NOT_FOUND,
        message="model 'nope' is not served here (models: tiny)",
    ),
    # ---- explain options --------------------------------------------------------------------
    Case(
        "max-evals-zero",
        "Explain",
        explain("fine", shap=pb.ShapOptions(max_evals=0)),
        INVALID,
        [("shap.max_evals", out_of_range(0, 3, 4000))],
    ),
    Case(
        "max-evals-two",
        "Explain",
        explain("fine", shap=pb.ShapOptions(max_evals=2)),
        INVALID,
        [("shap.max_evals", out_of_range(2, 3, 4000))],
    ),
    Case(
        "max-evals-huge",
        "Explain",
        explain("fine", shap=pb.ShapOptions(max_evals=2**32 - 1)),
        INVALID,
        [("shap.max_evals", out_of_range(2**32 - 1, 3, 4000))],
    ),
    Case(
        "max-evals-negative",
        "Explain",
        NEGATIVE_MAX_EVALS,
        INVALID,
        [("shap.max_evals", out_of_range(2**32 - 1, 3, 4000))],
    ),
    Case(
        "batch-size-zero",
        "Explain",
        explain("fine", shap=pb.ShapOptions(batch_size=0)),
        INVALID,
        [("shap.batch_size", out_of_range(0, 1, 1024))],
    ),
    Case(
        "batch-size-huge",
        "Explain",
        explain("fine", shap=pb.ShapOptions(batch_size=5000)),
        INVALID,
        [("shap.batch_size", out_of_range(5000, 1, 1024))],
    ),
    Case(
        "unknown-fixed-context",
        "Explain",
        explain("fine", shap=pb.ShapOptions(fixed_context=7)),
        INVALID,
        [("shap.fixed_context", "unknown value 7")],
    ),
    Case(
        "unknown-explainer",
        "Explain",
        explain("fine", explainer=99),
        INVALID,
        [("explainer", "unknown value 99")],
    ),
    Case(
        "unknown-output",
        "Explain",
        explain("fine", output=5),
        INVALID,
        [("output", "unknown value 5")],
    ),
    Case(
        "unknown-target-mode",
        "Explain",
        explain("fine", target_mode=9),
        INVALID,
        [("target_mode", "unknown value 9")],
    ),
    Case(
        "named-without-labels",
        "Explain",
        explain("fine", target_mode=pb.TARGET_MODE_NAMED),
        INVALID,
        [("target_labels", "TARGET_MODE_NAMED needs at least one label")],
    ),
    Case(
        "label-named-twice",
        "Explain",
        explain("fine", target_mode=pb.TARGET_MODE_NAMED, target_labels=["positive", "positive"]),
        INVALID,
        [("target_labels", "a label is named twice")],
    ),
    Case(
        "labels-without-named-mode",
        "Explain",
        explain("fine", target_labels=["positive"]),
        INVALID,
        [("target_labels", "labels may only be named with TARGET_MODE_NAMED")],
    ),
    Case(
        "unknown-target-label",
        "Explain",
        explain("fine", target_mode=pb.TARGET_MODE_NAMED, target_labels=["bogus"]),
        INVALID,
        [
            (
                "target_labels",
                "unknown label(s) 'bogus'; the model has ['negative', 'neutral', 'positive']",
            )
        ],
    ),
    # A caller's values are quoted back cut short: a few of them, 64 bytes each at most.
    Case(
        "unknown-label-of-16-kib",
        "Explain",
        explain("fine", target_mode=pb.TARGET_MODE_NAMED, target_labels=["x" * 16 * 1024]),
        INVALID,
        [("target_labels", f"unknown label(s) '{'x' * 64}'…; the model has {LABELS}")],
    ),
    Case(
        "a-thousand-unknown-labels",
        "Explain",
        explain(
            "fine", target_mode=pb.TARGET_MODE_NAMED, target_labels=[f"l{i}" for i in range(1000)]
        ),
        INVALID,
        [("target_labels", f"unknown label(s) 'l0', 'l1', 'l2' and 997 more; the model has {LABELS}")],
    ),
    Case(
        "lime-samples-zero",
        "Explain",
        explain("fine", explainer=pb.EXPLAINER_KIND_LIME, lime=pb.LimeOptions(num_samples=0)),
        INVALID,
        [("lime.num_samples", out_of_range(0, 10, 10_000))],
    ),
    Case(
        "lime-samples-huge",
        "Explain",
        explain("fine", explainer=pb.EXPLAINER_KIND_LIME, lime=pb.LimeOptions(num_samples=10**9)),
        INVALID,
        [("lime.num_samples", out_of_range(10**9, 10, 10_000))],
    ),
    Case(
        "lime-features-zero",
        "Explain",
        explain("fine", explainer=pb.EXPLAINER_KIND_LIME, lime=pb.LimeOptions(num_features=0)),
        INVALID,
        [("lime.num_features", out_of_range(0, 1, 10_000))],
    ),
    Case(
        "ig-one-step",
        "Explain",
        explain(
            "fine",
            explainer=pb.EXPLAINER_KIND_INTEGRATED_GRADIENTS,
            integrated_gradients=pb.IntegratedGradientsOptions(n_steps=1),
        ),
        INVALID,
        [("integrated_gradients.n_steps", out_of_range(1, 2, 512))],
    ),
    Case(
        "ig-huge-steps",
        "Explain",
        explain(
            "fine",
            explainer=pb.EXPLAINER_KIND_INTEGRATED_GRADIENTS,
            integrated_gradients=pb.IntegratedGradientsOptions(n_steps=100_000),
        ),
        INVALID,
        [("integrated_gradients.n_steps", out_of_range(100_000, 2, 512))],
    ),
    Case(
        "rows-per-request",
        "Explain",
        explain(*["fine"] * 64, shap=pb.ShapOptions(max_evals=4000)),
        INVALID,
        [
            (
                "texts",
                "64 texts × 4000 evaluations = 256000 model rows; at most 200000 per request "
                "(send fewer texts or a smaller budget)",
            )
        ],
    ),
    Case(
        "every-violation-reported",
        "Explain",
        explain("", explainer=99, shap=pb.ShapOptions(max_evals=0)),
        INVALID,
        [
            ("texts[0]", EMPTY),
            ("explainer", "unknown value 99"),
            ("shap.max_evals", out_of_range(0, 3, 4000)),
        ],
    ),
    # ---- transport ----------------------------------------------------------------------------
    Case(
        "giant-message",
        "Predict",
        predict("word " * (9 * 1024 * 1024 // 5)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        message="Received message larger than max",
    ),
    Case("unknown-method", "Translate", predict("fine"), grpc.StatusCode.UNIMPLEMENTED),
    # ---- surprising but valid: answered normally ------------------------------------------
    Case("emoji", "Predict", predict("👍🏽 great 🎉🎉 ok"), OK),
    Case("zwj-sequence", "Predict", predict("👩\u200d👩\u200d👧 family dinner"), OK),
    Case(
        "combining-marks", "Predict", predict("cafe\u0301 Z\u0351\u0352a\u0353l\u0354g\u0355o"), OK
    ),
    Case("arabic-rtl", "Predict", predict("الخدمة كانت ممتازة"), OK),
    Case("rtl-override", "Predict", predict("\u202eשלום עולם"), OK),
    Case("tabs-and-newlines", "Predict", predict("line one\nline two\ttabbed\r\n"), OK),
    Case("special-tokens-as-text", "Predict", predict("[CLS] [SEP] [PAD] [MASK] [UNK]"), OK),
    Case("longest-allowed-text", "Predict", predict("é" * 20_000), OK),
    Case("most-texts-allowed", "Predict", predict(*[f"text {i}" for i in range(64)]), OK),
    Case("unknown-fields-ignored", "Predict", text_field(b"fine") + b"\xfa\x06\x03abc", OK),
    Case("explain-emoji", "Explain", explain("👍🏽 great", shap=pb.ShapOptions(max_evals=10)), OK),
]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(tiny_settings(tiny_model_dir)) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024), ("grpc.enable_retries", 0)]
    with grpc.insecure_channel(server.target, options=options) as ch:
        yield ch


def call(channel: grpc.Channel, method: str, request: Any) -> bytes:
    raw = request if isinstance(request, bytes) else request.SerializeToString()
    stub = channel.unary_unary(
        f"/whybert.v1.Explainer/{method}", request_serializer=None, response_deserializer=None
    )
    response: bytes = stub(raw, timeout=60)
    return response


def check_answered(case: Case, request: Any, response: bytes) -> None:
    """A valid request gets one result per text, each a probability distribution."""
    texts = (
        pb.PredictRequest.FromString(request).texts if isinstance(request, bytes) else request.texts
    )
    if case.method == "Predict":
        predictions = pb.PredictResponse.FromString(response).predictions
        assert len(predictions) == len(texts)
        for p in predictions:
            assert abs(sum(s.probability for s in p.scores) - 1) < 1e-6
            assert p.label == max(p.scores, key=lambda s: s.probability).label
    else:
        explanations = pb.ExplainResponse.FromString(response).explanations
        assert len(explanations) == len(texts) and all(e.tokens for e in explanations)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_its_documented_status(
    case: Case, channel: grpc.Channel, tiny_classifier: Any
) -> None:
    try:
        response = call(channel, case.method, case.request)
    except grpc.RpcError as exc:
        error = from_rpc_error(exc)
        assert error.code == case.code, error
        assert error.field_violations == case.violations
        if case.violations:
            assert isinstance(error, whybert.InvalidArgumentError)
            assert error.message == "; ".join(f"{f}: {d}" for f, d in case.violations)
        assert case.message in error.message
    else:
        assert case.code == OK, f"expected {case.code.name}, the call succeeded"
        check_answered(case, case.request, response)
    assert_still_serving(channel, tiny_classifier)


def assert_still_serving(channel: grpc.Channel, tiny_classifier: Any) -> None:
    assert health(channel) == "SERVING"
    response = pb.PredictResponse.FromString(call(channel, "Predict", predict(NORMAL_TEXT)))
    got = [s.probability for s in response.predictions[0].scores]
    np.testing.assert_allclose(
        got, reference_probabilities(tiny_classifier, NORMAL_TEXT), rtol=1e-4, atol=1e-6
    )


# Each would echo far more than the 8 KiB of trailers a client accepts, if echoed in full.
UNBOUNDED_ECHOES = {
    "label-16-kib": ("Explain", explain("fine", target_mode=pb.TARGET_MODE_NAMED,
                                        target_labels=["x" * 16 * 1024]), "target_labels"),
    "emoji-label-16-kib": ("Explain", explain("fine", target_mode=pb.TARGET_MODE_NAMED,
                                              target_labels=["😀" * 4096]), "target_labels"),
    "1000-labels": ("Explain", explain("fine", target_mode=pb.TARGET_MODE_NAMED,
                                       target_labels=[f"label-{i}" for i in range(1000)]),
                    "target_labels"),
    "1000-labels-of-1-kib": ("Explain", explain("fine", target_mode=pb.TARGET_MODE_NAMED,
                                                target_labels=[f"{i:04d}" + "é" * 510
                                                               for i in range(1000)]),
                             "target_labels"),
    "64-bad-texts": ("Predict", predict(*["bad\x00"] * 64), "texts[0]"),
    "64-bad-texts-and-labels": ("Explain", explain(*["é\x01"] * 64, target_labels=["é" * 9000]),
                                "texts[0]"),
}  # fmt: skip


@pytest.mark.parametrize("case", UNBOUNDED_ECHOES, ids=list(UNBOUNDED_ECHOES))
def test_messages_never_echo_unbounded_input(
    case: str, channel: grpc.Channel, tiny_classifier: Any
) -> None:
    """INVALID_ARGUMENT with the field named and a short message, never a trailer overflow
    (which the client would see as RESOURCE_EXHAUSTED 'received metadata size exceeds')."""
    method, request, first_field = UNBOUNDED_ECHOES[case]
    with pytest.raises(grpc.RpcError) as exc:
        call(channel, method, request)
    error = from_rpc_error(exc.value)
    assert error.code == INVALID, error
    assert isinstance(error, whybert.InvalidArgumentError)
    assert error.field_violations[0][0] == first_field
    assert 1 <= len(error.field_violations) <= 8
    assert len(error.message.encode()) <= 800
    assert all(len(d.encode()) <= 256 for _, d in error.field_violations)
    assert_still_serving(channel, tiny_classifier)


def test_many_violations_are_counted_not_all_listed(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        call(channel, "Predict", predict(*["bad\x00"] * 64))
    error = from_rpc_error(exc.value)
    listed = [(f"texts[{i}]", "contains the control character U+0000") for i in range(8)]
    assert error.field_violations == listed
    assert error.message == "; ".join(f"{f}: {d}" for f, d in listed) + "; and 56 more violations"


def test_there_are_at_least_forty_bad_input_cases() -> None:
    assert sum(c.code != OK for c in CASES) >= 40


def test_an_expired_deadline_is_deadline_exceeded(
    channel: grpc.Channel, tiny_classifier: Any
) -> None:
    stub = channel.unary_unary(
        "/whybert.v1.Explainer/Explain", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as exc:
        stub(explain("fine").SerializeToString(), timeout=0.0001)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_still_serving(channel, tiny_classifier)


def test_the_client_raises_typed_errors_with_field_violations(server: ServerThread) -> None:
    with whybert.Client(server.target, retries=0) as client:
        with pytest.raises(whybert.InvalidArgumentError) as bad:
            client.explain(["", "fine"], max_evals=1)
        with pytest.raises(whybert.NotFoundError):
            client.predict(["fine"], model="nope")
    assert bad.value.field_violations == [
        ("texts[0]", EMPTY),
        ("shap.max_evals", out_of_range(1, 3, 4000)),
    ]
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_async_client_raises_the_same_typed_errors(server: ServerThread) -> None:
    async with whybert.AsyncClient(server.target, retries=0) as client:
        with pytest.raises(whybert.InvalidArgumentError) as bad:
            await client.predict(["ok", "bad\x00"])
    assert bad.value.field_violations == [("texts[1]", "contains the control character U+0000")]
