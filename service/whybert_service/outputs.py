"""The model's outputs read as predictions and output spaces, in plain numpy."""

from __future__ import annotations

import numpy as np

from .types import OutputName, PredictionResult


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def to_output_space(logits: np.ndarray, output: OutputName) -> np.ndarray:
    """Logits → the space explanations add up in (float64)."""
    if output is OutputName.LOGIT:
        return logits.astype(np.float64)
    return softmax(logits)


def prediction_from_logits(
    labels: list[str], logits: np.ndarray, truncated: bool, token_count: int
) -> PredictionResult:
    """The classifier's prediction on one text, from its raw logits."""
    return PredictionResult(
        labels=list(labels),
        probabilities=softmax(logits[None, :])[0],
        logits=logits.astype(np.float64),
        truncated=truncated,
        token_count=token_count,
    )
