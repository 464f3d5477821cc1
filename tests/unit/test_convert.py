"""Typed results → protobuf (`grpc/convert.py`), read back by the client's own decoder: the
values' (tokens × targets) layout, optional fields and every enum must survive the wire."""

from __future__ import annotations

import numpy as np
import pytest
from whybert._types import Explanation, Prediction
from whybert.v1 import explainer_pb2 as pb
from whybert_service.grpc import convert
from whybert_service.types import (
    EntityResult,
    EntityTarget,
    ExplainerName,
    ExplanationResult,
    Faithfulness,
    ModelDescription,
    OutputName,
    PredictionResult,
    TokenSpan,
)

PREDICTION = PredictionResult(
    labels=["neg", "pos"],
    probabilities=np.array([0.25, 0.75]),
    logits=np.array([-1.0, 0.1]),
    truncated=True,
    token_count=4,
)


def _explanation(**extra: object) -> ExplanationResult:
    values = np.arange(6, dtype=np.float64).reshape(3, 2) / 10  # 3 tokens × 2 targets
    return ExplanationResult(
        tokens=[TokenSpan("[CLS]", 0, 0, special=True), TokenSpan("good", 0, 4), TokenSpan("day", 5, 8)],
        labels=["neg", "pos"],
        values=values,
        base_values=np.array([0.1, 0.2]),
        output_values=np.array([0.1, 0.2]) + values.sum(axis=0),
        prediction=PREDICTION,
        explainer=ExplainerName.LIME,
        output=OutputName.LOGIT,
        model_rows=12,
        **extra,  # type: ignore[arg-type]
    )


def test_prediction_on_the_wire() -> None:
    msg = convert.prediction(PREDICTION)
    assert msg.label == "pos" and msg.truncated and msg.token_count == 4
    assert [(s.label, s.probability, s.logit) for s in msg.scores] == [
        ("neg", 0.25, -1.0),
        ("pos", 0.75, pytest.approx(0.1)),
    ]
    back = Prediction.from_proto(msg)
    assert back.label == "pos" and back.scores == {"neg": 0.25, "pos": 0.75}


def test_explanation_round_trips_through_the_client() -> None:
    e = _explanation(convergence_delta=np.array([0.01, -0.02]), faithfulness=Faithfulness(0.4, 0.1), explained_chars=8)
    msg = convert.explanation(e)
    assert msg.explainer == pb.EXPLAINER_KIND_LIME and msg.output == pb.OUTPUT_SPACE_LOGIT
    assert msg.additivity_error == pytest.approx(e.additivity_error)
    back = Explanation.from_proto("good day", msg)
    np.testing.assert_allclose(back.values, e.values)  # row-major: token i, target j
    np.testing.assert_allclose(back.base_values, e.base_values)
    np.testing.assert_allclose(back.output_values, e.output_values)
    assert back.tokens == ["[CLS]", "good", "day"] and back.special == [True, False, False]
    assert back.offsets == [(0, 0), (0, 4), (5, 8)]
    assert back.explainer == "lime" and back.output == "logit" and back.model_rows == 12
    assert back.convergence_delta is not None
    np.testing.assert_allclose(back.convergence_delta, [0.01, -0.02])
    assert back.faithfulness is not None and back.faithfulness.comprehensiveness == pytest.approx(0.4)
    assert back.explained_chars == 8


def test_optional_fields_stay_unset() -> None:
    msg = convert.explanation(_explanation())
    assert not msg.convergence_delta
    assert not msg.HasField("faithfulness") and not msg.HasField("entity")
    back = Explanation.from_proto("good day", msg)
    assert back.convergence_delta is None and back.faithfulness is None and back.entity is None


def test_entity_explanation_says_which_entity() -> None:
    entity = EntityResult(text="Paris", label="LOC", start=3, end=8, score=0.5, position=2)
    msg = convert.explanation(_explanation(entity=EntityTarget(entity=entity, index=1, text_index=4, columns=(3, 4))))
    assert (msg.entity.text, msg.entity.label, msg.entity.start, msg.entity.end) == ("Paris", "LOC", 3, 8)
    assert (msg.entity_index, msg.text_index, msg.entity_position) == (1, 4, 2)


def test_every_explainer_and_output_has_a_wire_value_and_back() -> None:
    assert set(convert.EXPLAINER_KINDS) == set(ExplainerName)
    assert set(convert.OUTPUT_SPACES) == set(OutputName)
    for name, kind in convert.EXPLAINER_KINDS.items():
        assert kind != pb.EXPLAINER_KIND_UNSPECIFIED and convert.EXPLAINER_NAMES[kind] is name
    for name, space in convert.OUTPUT_SPACES.items():
        assert space != pb.OUTPUT_SPACE_UNSPECIFIED and convert.OUTPUT_NAMES[space] is name


def test_list_models_response() -> None:
    def model(name: str, kind: str) -> ModelDescription:
        return ModelDescription(
            name=name, labels=["a"], max_tokens=128, is_default=name == "x", explainers=[ExplainerName.SHAP_PARTITION],
            weights_sha256="ab", device="cpu", dtype="float32", kind=kind,
        )  # fmt: skip

    msg = convert.list_models_response([model("x", "sequence"), model("y", "token"), model("z", "odd")], "x")
    assert msg.default_model == "x"
    assert [m.kind for m in msg.models] == [
        pb.MODEL_KIND_SEQUENCE_CLASSIFICATION,
        pb.MODEL_KIND_TOKEN_CLASSIFICATION,
        pb.MODEL_KIND_UNSPECIFIED,
    ]
    assert list(msg.models[0].explainers) == [pb.EXPLAINER_KIND_SHAP_PARTITION]
    assert [m.is_default for m in msg.models] == [True, False, False]


def test_responses_carry_model_index_and_final() -> None:
    e = _explanation()
    assert convert.explain_stream_response("m", 3, e).index == 3
    assert convert.predict_stream_response("m", 2, PREDICTION).index == 2
    progressive = convert.progressive_response("m", e, evals=40, final=True)
    assert progressive.model == "m" and progressive.evals == 40 and progressive.final
    assert len(convert.explain_response("m", [e, e]).explanations) == 2
    assert len(convert.predict_response("m", [PREDICTION]).predictions) == 1
