"""Typed results → protobuf messages, and the one table of each wire enum."""

from __future__ import annotations

from whybert.v1 import explainer_pb2 as pb

from ..types import (
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
}
OUTPUT_SPACES = {
    OutputName.PROBABILITY: pb.OUTPUT_SPACE_PROBABILITY,
    OutputName.LOGIT: pb.OUTPUT_SPACE_LOGIT,
}
# The same tables read from the wire (validation adds what UNSPECIFIED means).
EXPLAINER_NAMES = {kind: name for name, kind in EXPLAINER_KINDS.items()}
OUTPUT_NAMES = {space: name for name, space in OUTPUT_SPACES.items()}


def prediction(p: PredictionResult) -> pb.Prediction:
    return pb.Prediction(
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
        tokens=[pb.Token(text=t.text, start=t.start, end=t.end, special=t.special) for t in e.tokens],
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
    if e.convergence_delta is not None:
        msg.convergence_delta.extend(e.convergence_delta.tolist())
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
            )
            for m in models
        ],
        default_model=default,
    )


def progressive_response(model: str, e: ExplanationResult, evals: int, final: bool) -> pb.ExplainProgressiveResponse:
    return pb.ExplainProgressiveResponse(model=model, explanation=explanation(e), evals=evals, final=final)
