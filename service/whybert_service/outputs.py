"""Output spaces, in plain numpy (imported by explainer processes, which never load torch)."""

from __future__ import annotations

import numpy as np

from .types import OutputName


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
