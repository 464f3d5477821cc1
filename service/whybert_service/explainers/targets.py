"""Which of a model's outputs an explanation covers: the explainers' own business, since
the predicted label is known only once the model has read the text."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InvalidArgument, quote_some
from ..types import ExplainParams, TargetModeName


def resolve_targets(params: ExplainParams, labels: Sequence[str], predicted: int) -> list[int]:
    """Indices of the labels to explain for one text."""
    if params.target_mode is TargetModeName.ALL:
        return list(range(len(labels)))
    if params.target_mode is TargetModeName.NAMED:
        return [list(labels).index(name) for name in params.target_labels]
    return [predicted]


def check_target_labels(params: ExplainParams, labels: Sequence[str]) -> None:
    """Named targets must be labels of the model. The message quotes a few of the unknown
    ones, each cut short: a caller may send thousands, or one of 16 KiB."""
    known = set(labels)
    unknown = [name for name in params.target_labels if name not in known]
    if unknown:
        raise InvalidArgument(
            [("target_labels", f"unknown label(s) {quote_some(unknown)}; the model has {list(labels)}")]
        )
