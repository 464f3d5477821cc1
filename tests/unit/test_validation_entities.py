"""The EntitySelector of Explain requests: read into `EntityChoice`, bad ones refused with
INVALID_ARGUMENT naming the field; and the client's `entity=` building the same selector."""

from __future__ import annotations

import pytest
from whybert._core import BaseClient
from whybert.v1 import explainer_pb2 as pb
from whybert_service.errors import InvalidArgument
from whybert_service.grpc import validation
from whybert_service.types import EntityChoice, ExplainParams

LIMITS = validation.Limits(64, 20_000, 4000, 10_000, 512, 200_000)


def _params(**selector: object) -> ExplainParams:
    request = pb.ExplainRequest(texts=["Angela Merkel visited Paris"], entity=pb.EntitySelector(**selector))
    return validation.explain_params(request, LIMITS)


def test_each_selector_becomes_its_choice() -> None:
    assert _params(index=2).entity == EntityChoice(index=2)
    assert _params(index=0).entity == EntityChoice(index=0)  # present, though zero
    assert _params(start=0, end=13).entity == EntityChoice(span=(0, 13))
    assert _params(all=True).entity == EntityChoice(all=True)
    assert validation.explain_params(pb.ExplainRequest(texts=["a"]), LIMITS).entity is None


@pytest.mark.parametrize(
    ("selector", "field"),
    [
        ({}, "entity"),
        ({"index": 1, "all": True}, "entity"),
        ({"index": 1, "start": 0, "end": 3}, "entity"),
        ({"start": 4}, "entity.end"),
        ({"end": 4}, "entity.start"),
        ({"start": 4, "end": 4}, "entity.end"),
    ],
)
def test_bad_selectors_name_their_field(selector: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        _params(**selector)
    assert [f for f, _ in caught.value.violations] == [field]


def test_a_progressive_request_keeps_its_selector() -> None:
    request = pb.ExplainProgressiveRequest(text="Paris", entity=pb.EntitySelector(index=0))
    params, _ = validation.progressive_params(request, LIMITS)
    assert params.entity == EntityChoice(index=0)


@pytest.mark.parametrize(
    ("entity", "expected"),
    [
        (0, pb.EntitySelector(index=0)),
        ((3, 9), pb.EntitySelector(start=3, end=9)),
        ("all", pb.EntitySelector(all=True)),
    ],
)
def test_the_client_builds_the_selector(entity: object, expected: pb.EntitySelector) -> None:
    request = BaseClient.explain_request(["Paris"], "ner", "lime", {"entity": entity})
    assert request.HasField("entity") and request.entity == expected
    assert not BaseClient.explain_request(["Paris"], "ner", "lime", {}).HasField("entity")


@pytest.mark.parametrize("entity", [-1, "first", (1,), (1, 2, 3), True, 1.5])
def test_the_client_refuses_other_entities(entity: object) -> None:
    with pytest.raises(ValueError, match="entity"):
        BaseClient.explain_request(["Paris"], "ner", "lime", {"entity": entity})
