"""The pair texts of Predict and Explain requests: read into the parameters, bad ones
refused with INVALID_ARGUMENT naming the field, the reply's size bound counting them; and
the client's `pairs=` building the same requests."""

from __future__ import annotations

from typing import Any

import pytest
from whybert._core import BaseClient
from whybert.v1 import explainer_pb2 as pb
from whybert_service.errors import InvalidArgument
from whybert_service.grpc import validation

LIMITS = validation.Limits(64, 200, 4000, 10_000, 512, 200_000)


def _fields(call: Any) -> list[str]:
    with pytest.raises(InvalidArgument) as caught:
        call()
    return [field for field, _ in caught.value.violations]


def test_pairs_become_parameters() -> None:
    predict = validation.predict_params(pb.PredictRequest(texts=["a", "b"], pairs=["c", "d"]), LIMITS)
    assert predict.pairs == ("c", "d") and predict.texts == ("a", "b")
    explain = validation.explain_params(pb.ExplainRequest(texts=["a"], pairs=["c"]), LIMITS)
    assert explain.pairs == ("c",)
    assert validation.explain_params(pb.ExplainRequest(texts=["a"]), LIMITS).pairs == ()
    progressive, _ = validation.progressive_params(pb.ExplainProgressiveRequest(text="a", pair="c"), LIMITS)
    assert progressive.pairs == ("c",)


@pytest.mark.parametrize(
    ("pairs", "fields"),
    [
        (["c"], ["pairs"]),  # one pair for two texts
        (["c", " \n"], ["pairs[1]"]),
        (["x" * 201, "d"], ["pairs[0]"]),
        (["c", "bad\x00"], ["pairs[1]"]),
    ],
)
def test_bad_pairs_name_their_field(pairs: list[str], fields: list[str]) -> None:
    assert (
        _fields(lambda: validation.predict_params(pb.PredictRequest(texts=["a", "b"], pairs=pairs), LIMITS)) == fields
    )
    request = pb.ExplainStreamRequest(texts=["a", "b"], pairs=pairs)
    assert _fields(lambda: validation.explain_params(request, LIMITS)) == fields


def test_a_progressive_pair_is_named_pair() -> None:
    request = pb.ExplainProgressiveRequest(text="a", pair="x" * 201)
    assert _fields(lambda: validation.progressive_params(request, LIMITS)) == ["pair"]


def test_the_reply_bound_counts_the_pair_text() -> None:
    single = validation.explain_params(pb.ExplainRequest(texts=["short"]), LIMITS)
    paired = validation.explain_params(pb.ExplainRequest(texts=["short"], pairs=["a much longer pair text"]), LIMITS)
    labels = ["yes", "no"]
    assert validation.reply_bytes_bound(paired, labels, 512) > validation.reply_bytes_bound(single, labels, 512)


def test_the_client_sends_pairs() -> None:
    assert list(BaseClient.predict_request(["a"], None, ["b"]).pairs) == ["b"]
    assert list(BaseClient.explain_request(["a"], None, "lime", {"pairs": ["b"]}).pairs) == ["b"]
    assert BaseClient.progressive_request("a", None, None, {"pair": "b"}).pair == "b"
    with pytest.raises(ValueError, match="one pair text per text"):
        BaseClient.explain_request(["a", "b"], None, "lime", {"pairs": ["c"]})
    with pytest.raises(TypeError):
        BaseClient.predict_request(["a"], None, [3])  # type: ignore[list-item]
