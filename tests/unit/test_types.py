"""The plain types below the transport (`types.py`): the cache key of an explanation, the
predicted label and the additivity gap every explanation reports."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from whybert_service.types import (
    EntityResult,
    EntityTarget,
    ExplainerName,
    ExplainParams,
    ExplanationResult,
    IntegratedGradientsParams,
    LimeParams,
    OutputName,
    PredictionResult,
    ShapParams,
    TargetModeName,
)


def _params(**changes: object) -> ExplainParams:
    return dataclasses.replace(ExplainParams(model="m", texts=("a",)), **changes)  # type: ignore[arg-type]


def test_options_key_ignores_model_texts_and_other_explainers_options() -> None:
    """The cache keys on (model, text, options): options of an explainer not used must not split it."""
    base = _params()
    assert base.options_key() == _params(model="other", texts=("b", "c")).options_key()
    assert base.options_key() == _params(lime=LimeParams(num_samples=7)).options_key()
    lime = _params(explainer=ExplainerName.LIME)
    assert lime.options_key() == _params(explainer=ExplainerName.LIME, shap=ShapParams(max_evals=9)).options_key()


@pytest.mark.parametrize(
    "changes",
    [
        {"explainer": ExplainerName.LIME},
        {"output": OutputName.LOGIT},
        {"target_mode": TargetModeName.ALL},
        {"target_labels": ("pos",)},
        {"shap": ShapParams(max_evals=9)},
        {"faithfulness": True},
    ],
)
def test_options_key_changes_with_every_option_that_changes_values(changes: dict[str, object]) -> None:
    assert _params(**changes).options_key() != _params().options_key()


def test_options_key_of_integrated_gradients_and_entities() -> None:
    ig = _params(explainer=ExplainerName.INTEGRATED_GRADIENTS)
    steps = dataclasses.replace(ig, integrated_gradients=IntegratedGradientsParams(n_steps=3))
    assert ig.options_key() != steps.options_key()
    entity = EntityResult(text="Paris", label="LOC", start=0, end=5, score=0.9, position=1)
    one = EntityTarget(entity=entity, index=0, text_index=0, columns=(1, 2))
    two = EntityTarget(entity=entity, index=1, text_index=0, columns=(1, 2))
    assert _params(entity_target=one).options_key() != _params(entity_target=two).options_key()
    assert _params(entity_target=one).options_key() != _params().options_key()
    hash(_params(entity_target=one).options_key())  # a usable dict key


def _prediction(probabilities: list[float]) -> PredictionResult:
    p = np.array(probabilities)
    return PredictionResult(
        labels=["a", "b", "c"][: len(p)], probabilities=p, logits=np.log(p + 1e-9), truncated=False, token_count=3
    )


def test_label_is_the_most_probable_and_empty_without_outputs() -> None:
    assert _prediction([0.2, 0.7, 0.1]).label == "b"
    assert _prediction([]).label == ""


def _explanation(values: np.ndarray, base: list[float], output: list[float]) -> ExplanationResult:
    return ExplanationResult(
        tokens=[],
        labels=["a", "b"],
        values=values,
        base_values=np.array(base),
        output_values=np.array(output),
        prediction=_prediction([0.5, 0.5]),
        explainer=ExplainerName.SHAP_PARTITION,
        output=OutputName.PROBABILITY,
    )


def test_additivity_error_is_the_largest_gap_over_targets() -> None:
    values = np.array([[0.1, -0.2], [0.3, 0.1]])  # tokens × targets
    assert _explanation(values, [0.1, 0.5], [0.5, 0.4]).additivity_error == pytest.approx(0.0)
    assert _explanation(values, [0.1, 0.5], [0.5, 0.1]).additivity_error == pytest.approx(0.3)
    assert _explanation(np.zeros((0, 2)), [0.1, 0.5], [9.0, 9.0]).additivity_error == 0.0
