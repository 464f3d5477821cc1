"""Typed results → protobuf messages, and the one table of each wire enum."""

from __future__ import annotations

from whybert.v1 import explainer_pb2 as pb

from ..types import (
    EntityResult,
    ExplainerName,
    ExplanationResult,
    ModelDescription,
    OutputName,
    PredictionResult,
)

EXPLAINER_KINDS = {
    ExplainerName.SHAP_PARTITION: pb.EXPLAINER_KIND_SHAP_PARTITION,
    ExplainerName.LIME: pb.EXPLAINER_KIND_LIME,
    ExplainerName.INTEGRATED_GRADIENTS: pb.EXPLAINER_KIND_INTEGRATED_GRADIENTS,
    ExplainerName.ATTENTION: pb.EXPLAINER_KIND_ATTENTION,
}
OUTPUT_SPACES = {
    OutputName.PROBABILITY: pb.OUTPUT_SPACE_PROBABILITY,
    OutputName.LOGIT: pb.OUTPUT_SPACE_LOGIT,
}
# The same tables read from the wire (validation adds what UNSPECIFIED means).
EXPLAINER_NAMES = {kind: name for name, kind in EXPLAINER_KINDS.items()}
OUTPUT_NAMES = {space: name for name, space in OUTPUT_SPACES.items()}


MODEL_KINDS = {
    "sequence": pb.MODEL_KIND_SEQUENCE_CLASSIFICATION,
    "token": pb.MODEL_KIND_TOKEN_CLASSIFICATION,
    "pair": pb.MODEL_KIND_TEXT_PAIR_CLASSIFICATION,
}


def entity(e: EntityResult) -> pb.Entity:
    return pb.Entity(text=e.text, label=e.label, start=e.start, end=e.end, score=e.score)


def prediction(p: PredictionResult) -> pb.Prediction:
    return pb.Prediction(
        entities=[entity(e) for e in p.entities],
        label=p.label,
        scores=[
            pb.LabelScore(label=label, probability=float(prob), logit=float(logit))
            for label, prob, logit in zip(p.labels, p.probabilities, p.logits, strict=True)
        ],
        truncated=p.truncated,
        token_count=p.token_count,
    )


def predict_response(model: str, predictions: list[PredictionResult]) -> pb.PredictResponse:
    return pb.PredictResponse(model=model, predictions=[prediction(p) for p in predictions])


def predict_stream_response(model: str, index: int, p: PredictionResult) -> pb.PredictStreamResponse:
    return pb.PredictStreamResponse(model=model, index=index, prediction=prediction(p))


def explanation(e: ExplanationResult) -> pb.TextExplanation:
    msg = pb.TextExplanation(
        tokens=[
            pb.Token(text=t.text, start=t.start, end=t.end, special=t.special, segment=t.segment) for t in e.tokens
        ],
        labels=e.labels,
        values=e.values.reshape(-1).tolist(),
        base_values=e.base_values.tolist(),
        output_values=e.output_values.tolist(),
        prediction=prediction(e.prediction),
        additivity_error=e.additivity_error,
        model_rows=e.model_rows,
        queue_seconds=e.queue_seconds,
        compute_seconds=e.compute_seconds,
        cached=e.cached,
        explainer=EXPLAINER_KINDS[e.explainer],
        output=OUTPUT_SPACES[e.output],
        truncated=e.truncated,
        explained_chars=e.explained_chars or 0,
    )
    if e.explained_pair_chars is not None:
        msg.pair = True
        msg.explained_pair_chars = e.explained_pair_chars
    if e.convergence_delta is not None:
        msg.convergence_delta.extend(e.convergence_delta.tolist())
    if e.entity is not None:
        msg.entity.CopyFrom(entity(e.entity.entity))
        msg.entity_index = e.entity.index
        msg.text_index = e.entity.text_index
        msg.entity_position = e.entity.entity.position
    if e.attention_position is not None:
        msg.attention_position = e.attention_position
    if e.attention_maps is not None:
        maps = e.attention_maps
        msg.attention.layers.extend(maps.layers)
        msg.attention.heads.extend(maps.heads)
        msg.attention.tokens = int(maps.weights.shape[-1])
        msg.attention.weights.extend(maps.weights.reshape(-1).tolist())
    if e.faithfulness is not None:
        msg.faithfulness.comprehensiveness = e.faithfulness.comprehensiveness
        msg.faithfulness.sufficiency = e.faithfulness.sufficiency
    return msg


def explain_response(model: str, results: list[ExplanationResult]) -> pb.ExplainResponse:
    return pb.ExplainResponse(model=model, explanations=[explanation(e) for e in results])


def explain_stream_response(model: str, index: int, e: ExplanationResult) -> pb.ExplainStreamResponse:
    return pb.ExplainStreamResponse(model=model, index=index, explanation=explanation(e))


def list_models_response(models: list[ModelDescription], default: str) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(
        models=[
            pb.ModelInfo(
                name=m.name,
                labels=m.labels,
                max_tokens=m.max_tokens,
                is_default=m.is_default,
                explainers=[EXPLAINER_KINDS[e] for e in m.explainers],
                weights_sha256=m.weights_sha256,
                device=m.device,
                dtype=m.dtype,
                kind=MODEL_KINDS.get(m.kind, pb.MODEL_KIND_UNSPECIFIED),
            )
            for m in models
        ],
        default_model=default,
    )


def progressive_response(model: str, e: ExplanationResult, evals: int, final: bool) -> pb.ExplainProgressiveResponse:
    return pb.ExplainProgressiveResponse(model=model, explanation=explanation(e), evals=evals, final=final)
