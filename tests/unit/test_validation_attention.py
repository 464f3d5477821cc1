"""The attention explainer's options in grpc/validation.py: checked alone (distinct, only
with raw), resolved against the model (in range; empty means all), and counted in the
reply's size bound, capped by --max-attention-cells."""

from __future__ import annotations

import dataclasses

import pytest
from whybert.v1 import explainer_pb2 as pb
from whybert_service.errors import InvalidArgument
from whybert_service.grpc import validation
from whybert_service.types import AttentionParams, ExplainerName

LIMITS = validation.Limits(64, 20_000, 4000, 10_000, 512, 200_000, max_attention_cells=5_000)
LABELS = ["negative", "neutral", "positive"]


def params(**attention: object) -> validation.ExplainParams:
    request = pb.ExplainRequest(
        texts=["the food was great"], explainer=pb.EXPLAINER_KIND_ATTENTION,
        attention=pb.AttentionOptions(**attention),  # type: ignore[arg-type]
    )
    return validation.explain_params(request, LIMITS)


def violations(**attention: object) -> list[str]:
    with pytest.raises(InvalidArgument) as info:
        validation.resolve_attention(params(**attention), 6, 12, LIMITS)
    return [field for field, _ in info.value.violations]


def test_unset_options_ask_for_the_rollout_only() -> None:
    p = params()
    assert p.explainer is ExplainerName.ATTENTION and p.attention == AttentionParams()
    assert validation.resolve_attention(p, 6, 12, LIMITS) == p


def test_raw_without_choices_means_every_layer_and_head() -> None:
    resolved = validation.resolve_attention(params(raw=True), 6, 12, LIMITS).attention
    assert resolved == AttentionParams(True, tuple(range(6)), tuple(range(12)), 5_000)


def test_choices_are_kept_in_their_order() -> None:
    resolved = validation.resolve_attention(params(raw=True, layers=[5, 0], heads=[3]), 6, 12, LIMITS).attention
    assert (resolved.layers, resolved.heads) == ((5, 0), (3,))


@pytest.mark.parametrize(
    ("attention", "fields"),
    [
        ({"raw": True, "layers": [6]}, ["attention.layers[0]"]),
        ({"raw": True, "layers": [0, 9], "heads": [12]}, ["attention.layers[1]", "attention.heads[0]"]),
    ],
)
def test_out_of_range_choices_name_their_index(attention: dict[str, object], fields: list[str]) -> None:
    assert violations(**attention) == fields


@pytest.mark.parametrize(
    ("attention", "field"),
    [({"layers": [0]}, "attention.layers"), ({"heads": [1]}, "attention.heads"),
     ({"raw": True, "heads": [1, 1]}, "attention.heads")],
)
def test_choices_alone_are_checked_before_the_model_is_known(attention: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        params(**attention)
    assert [f for f, _ in info.value.violations] == [field]


def test_the_reply_bound_counts_the_maps_up_to_the_cell_limit() -> None:
    rollout = params()
    few = validation.resolve_attention(params(raw=True, layers=[0], heads=[0]), 6, 12, LIMITS)
    every = validation.resolve_attention(params(raw=True), 6, 12, LIMITS)
    plain = validation.reply_bytes_bound(rollout, LABELS, 128, LIMITS.max_attention_cells)
    one_map = validation.reply_bytes_bound(few, LABELS, 128, LIMITS.max_attention_cells)
    capped = validation.reply_bytes_bound(every, LABELS, 128, LIMITS.max_attention_cells)
    tokens = validation.token_bound("the food was great", 128)
    assert one_map - plain >= tokens * tokens * validation.FLOAT_BYTES
    # 72 maps × tokens² is beyond the cell limit, which the explainer enforces: the bound stops there.
    assert 72 * tokens * tokens > LIMITS.max_attention_cells
    assert LIMITS.max_attention_cells * validation.FLOAT_BYTES <= capped - plain
    assert capped - plain < LIMITS.max_attention_cells * validation.FLOAT_BYTES + 2_000
    # Other explainers ignore the options.
    shap = dataclasses.replace(every, explainer=ExplainerName.SHAP_PARTITION)
    assert validation.reply_bytes_bound(shap, LABELS, 128, LIMITS.max_attention_cells) == validation.reply_bytes_bound(
        dataclasses.replace(rollout, explainer=ExplainerName.SHAP_PARTITION), LABELS, 128, LIMITS.max_attention_cells
    )
