"""Which labels an explanation covers (explainers/targets.py): the predicted one, all of
them, or the named ones in the order asked; an unknown name is INVALID_ARGUMENT, quoting a
few of them, each cut short."""

from __future__ import annotations

import pytest
from whybert_service.errors import InvalidArgument
from whybert_service.explainers.targets import check_target_labels, resolve_targets
from whybert_service.types import ExplainParams, TargetModeName

LABELS = ["negative", "neutral", "positive"]


def params(mode: TargetModeName, *names: str) -> ExplainParams:
    return ExplainParams(model="", texts=("x",), target_mode=mode, target_labels=names)


def test_the_predicted_label_all_of_them_or_the_named_ones_in_order() -> None:
    assert resolve_targets(params(TargetModeName.PREDICTED), LABELS, 2) == [2]
    assert resolve_targets(params(TargetModeName.ALL), LABELS, 2) == [0, 1, 2]
    assert resolve_targets(params(TargetModeName.NAMED, "positive", "negative"), LABELS, 1) == [2, 0]


def test_known_names_pass_the_check() -> None:
    check_target_labels(params(TargetModeName.NAMED, "neutral", "positive"), LABELS)
    check_target_labels(params(TargetModeName.PREDICTED), LABELS)


def test_unknown_names_are_invalid_and_the_message_stays_short() -> None:
    unknown = ["x" * 5000, "bogus", "other", "more"]
    with pytest.raises(InvalidArgument) as refused:
        check_target_labels(params(TargetModeName.NAMED, "positive", *unknown), LABELS)
    ((field, description),) = refused.value.violations
    assert field == "target_labels"
    assert "'bogus'" in description and "and 1 more" in description and "'more'" not in description
    assert "x" * 65 not in description  # each name cut to 64 bytes
    assert str(LABELS) in description
