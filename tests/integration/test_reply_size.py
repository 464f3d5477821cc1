"""An Explain whose reply could exceed `--max-message-bytes` is refused before any work,
with INVALID_ARGUMENT naming the limit; requests that fit (the normal ones above all) are
served; and a reply that still comes out too large ends RESOURCE_EXHAUSTED with a clear
message and nothing logged as an error.

The bound counts, per text, at most the model's max tokens (a text is explained on the
prefix the model reads) and never more tokens than the text has bytes, times the
explained labels; it is checked here against real replies of every explainer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from _servers import ServerThread, tiny_settings
from _wait import wait_for
from whybert._exceptions import from_rpc_error
from whybert.v1 import explainer_pb2 as pb
from whybert_service.grpc import validation
from whybert_service.types import ExplainParams, TargetModeName

LIMIT = 128 * 1024
EXPLAIN = "/whybert.v1.Explainer/Explain"
# About 100 word pieces: within the tiny model's 128 tokens, so every explainer covers
# the whole text, and long enough that its explanation is a few kilobytes.
PHRASE = "the food was great and the service was quick "


def long_text(i: int) -> str:
    return f"text {i}: " + PHRASE * 11


def all_labels(*texts: str, max_evals: int = 10) -> pb.ExplainRequest:
    return pb.ExplainRequest(
        texts=list(texts),
        target_mode=pb.TARGET_MODE_ALL,
        shap=pb.ShapOptions(max_evals=max_evals),
    )


def bound(request: pb.ExplainRequest, classifier: Any) -> int:
    params = ExplainParams(
        model=request.model,
        texts=tuple(request.texts),
        target_mode=TargetModeName.ALL,
    )
    return validation.reply_bytes_bound(params, classifier.labels, classifier.max_length)


def explain_bytes(target: str, request: pb.ExplainRequest) -> bytes:
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.enable_retries", 0)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = channel.unary_unary(EXPLAIN, request_serializer=None, response_deserializer=None)
        response: bytes = stub(request.SerializeToString(), timeout=120)
        return response


@pytest.fixture(scope="module")
def small(tiny_model_dir: Path) -> Iterator[ServerThread]:
    """A server whose messages may be 128 KiB at most."""
    with ServerThread(tiny_settings(tiny_model_dir, max_message_bytes=LIMIT)) as server:
        yield server


@pytest.fixture(scope="module")
def default(tiny_model_dir: Path) -> Iterator[ServerThread]:
    """A server with the default limits (8 MiB messages)."""
    with ServerThread(tiny_settings(tiny_model_dir)) as server:
        yield server


def rows_run(server: ServerThread) -> float:
    assert server.server is not None
    registry = server.server.metrics.registry
    return registry.get_sample_value("whybert_rows_total", {"model": "tiny"}) or 0.0


def test_a_reply_that_could_exceed_the_limit_is_refused_before_any_work(
    small: ServerThread, tiny_classifier: Any
) -> None:
    request = all_labels(*(long_text(i) for i in range(64)))
    assert request.ByteSize() < LIMIT < bound(request, tiny_classifier)  # the request fits
    before = rows_run(small)
    with pytest.raises(grpc.RpcError) as exc:
        explain_bytes(small.target, request)
    error = from_rpc_error(exc.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    ((field, description),) = error.field_violations
    assert field == "texts"
    assert f"message limit of {LIMIT} bytes (--max-message-bytes)" in description
    assert "64 texts × up to 128 tokens × 3 labels" in description
    assert rows_run(small) == before  # not one model row


def test_a_big_request_that_fits_is_served(small: ServerThread, tiny_classifier: Any) -> None:
    request = all_labels(*(long_text(100 + i) for i in range(16)))
    assert LIMIT // 2 < bound(request, tiny_classifier) <= LIMIT
    response = pb.ExplainResponse.FromString(explain_bytes(small.target, request))
    assert len(response.explanations) == 16
    assert all(len(e.labels) == 3 and e.tokens for e in response.explanations)


def test_a_normal_request_at_the_default_limits_is_served(default: ServerThread) -> None:
    """64 texts of ordinary length, every label: far from the limit, never refused."""
    texts = [f"review {i}: the room was clean but the staff were rude and slow" for i in range(64)]
    response = pb.ExplainResponse.FromString(explain_bytes(default.target, all_labels(*texts)))
    assert len(response.explanations) == 64


TEXTS = [
    "fine",
    "ok!!!!!!!!!!!!!!!!!!!!",
    "👍🏽 great 🎉🎉 ok",
    "东京的拉面很好吃,但是服务很慢",
    "café crème brûlée, naïve façade",
    "[CLS] [SEP] [MASK] unbelievably unforgettable",
    "a" * 300,
    PHRASE * 11,
]
OPTIONS = {
    "shap-predicted": {"shap": pb.ShapOptions(max_evals=20)},
    "shap-all": {"target_mode": pb.TARGET_MODE_ALL, "shap": pb.ShapOptions(max_evals=20)},
    "shap-named-faithfulness": {
        "target_mode": pb.TARGET_MODE_NAMED,
        "target_labels": ["neutral", "positive"],
        "faithfulness": True,
        "shap": pb.ShapOptions(max_evals=20),
    },
    "lime-all": {
        "explainer": pb.EXPLAINER_KIND_LIME,
        "target_mode": pb.TARGET_MODE_ALL,
        "lime": pb.LimeOptions(num_samples=30),
    },
    "ig-all": {
        "explainer": pb.EXPLAINER_KIND_INTEGRATED_GRADIENTS,
        "target_mode": pb.TARGET_MODE_ALL,
        "integrated_gradients": pb.IntegratedGradientsOptions(n_steps=4),
    },
}


@pytest.mark.parametrize("option", OPTIONS, ids=list(OPTIONS))
def test_the_bound_holds_for_real_replies(default: ServerThread, tiny_classifier: Any, option: str) -> None:
    request = pb.ExplainRequest(texts=TEXTS, **OPTIONS[option])
    reply = explain_bytes(default.target, request)
    params = validation.explain_params(request, validation.Limits(64, 20_000, 4000, 10_000, 512, 200_000))
    assert len(reply) <= validation.reply_bytes_bound(params, tiny_classifier.labels, tiny_classifier.max_length)
    for text in TEXTS:  # and each text alone
        single = pb.ExplainRequest(texts=[text], **OPTIONS[option])
        params = validation.explain_params(single, validation.Limits(64, 20_000, 4000, 10_000, 512, 200_000))
        assert len(explain_bytes(default.target, single)) <= validation.reply_bytes_bound(
            params, tiny_classifier.labels, tiny_classifier.max_length
        )


def test_a_reply_still_too_large_after_the_work_is_resource_exhausted(
    small: ServerThread, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The backstop: with the estimate switched off, the finished reply is measured before
    it is sent, and refused with a status, not a failed send and a traceback."""
    monkeypatch.setattr(validation, "check_reply_size", lambda *_args: None)
    request = all_labels(*(long_text(200 + i) for i in range(64)))
    with caplog.at_level(logging.WARNING), pytest.raises(grpc.RpcError) as exc:
        explain_bytes(small.target, request)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = exc.value.details() or ""
    assert details.startswith("the reply is ")
    assert f"more than the server's message limit of {LIMIT} bytes (--max-message-bytes)" in details
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text


def test_all_entities_are_bounded_once_they_are_known(ner_dir: Path, ner: Any) -> None:
    """`entity.all` gives one explanation per entity, which the bound before any work cannot
    know: once the Predict pass has found them, the reply is bounded again with their
    number, and refused before any explanation row runs."""
    from whybert_service.entities import entity_prediction
    from whybert_service.types import EntityChoice

    text = "Angela Merkel met Emmanuel Macron and Joe Biden in Paris, Berlin and Washington with Siemens"
    window = ner.window(text)
    found = len(entity_prediction(ner, window, ner.token_logits([window.ids])[0]).entities)
    assert found >= 3  # the tiny random model finds many (short) entities
    params = ExplainParams(model="ner", texts=(text,), entity=EntityChoice(all=True))
    one = validation.reply_bytes_bound(params, ner.labels, ner.max_length)
    limit = one * 2  # one explanation fits, all of them cannot
    assert validation.reply_bytes_bound(params, ner.labels, ner.max_length, explanations=[found]) > limit
    with ServerThread(tiny_settings(ner_dir, model=(f"ner={ner_dir}",), max_message_bytes=limit)) as server:
        assert server.server is not None
        registry = server.server.metrics.registry
        request = pb.ExplainRequest(
            model="ner", texts=[text], entity=pb.EntitySelector(all=True), shap=pb.ShapOptions(max_evals=50)
        )
        with pytest.raises(grpc.RpcError) as exc:
            explain_bytes(server.target, request)
        error = from_rpc_error(exc.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        ((field, description),) = error.field_violations
        assert field == "texts" and f"{found} entity explanations of 1 texts" in description
        # The Predict row alone ran (the counter moves just after a batch is delivered).
        rows = wait_for(lambda: registry.get_sample_value("whybert_rows_total", {"model": "ner"}), timeout=10)
        assert rows == 1.0
        request.entity.CopyFrom(pb.EntitySelector(index=0))  # one entity of the same text fits
        reply = pb.ExplainResponse.FromString(explain_bytes(server.target, request))
        assert len(reply.explanations) == 1
