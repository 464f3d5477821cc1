"""Transport-free request and result types: what the data plane takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class ExplainerName(StrEnum):
    SHAP_PARTITION = "shap-partition"
    LIME = "lime"
    INTEGRATED_GRADIENTS = "integrated-gradients"


class OutputName(StrEnum):
    PROBABILITY = "probability"
    LOGIT = "logit"


class TargetModeName(StrEnum):
    PREDICTED = "predicted"
    ALL = "all"
    NAMED = "named"


@dataclass(frozen=True)
class PredictParams:
    model: str
    texts: tuple[str, ...]


@dataclass(frozen=True)
class ShapParams:
    max_evals: int = 500
    fixed_context: int | None = None
    batch_size: int | None = None  # None: the Text masker's default (5)


@dataclass(frozen=True)
class LimeParams:
    num_samples: int = 5000
    num_features: int | None = None  # None: every word
    random_seed: int = 0


@dataclass(frozen=True)
class IntegratedGradientsParams:
    n_steps: int = 50


@dataclass(frozen=True)
class ExplainParams:
    model: str
    texts: tuple[str, ...]
    explainer: ExplainerName = ExplainerName.SHAP_PARTITION
    output: OutputName = OutputName.PROBABILITY
    target_mode: TargetModeName = TargetModeName.PREDICTED
    target_labels: tuple[str, ...] = ()
    shap: ShapParams = field(default_factory=ShapParams)
    lime: LimeParams = field(default_factory=LimeParams)
    integrated_gradients: IntegratedGradientsParams = field(default_factory=IntegratedGradientsParams)
    faithfulness: bool = False

    def options_key(self) -> tuple[object, ...]:
        """What, besides model and text, decides an explanation's values (the cache key)."""
        per_explainer: object = {
            ExplainerName.SHAP_PARTITION: self.shap,
            ExplainerName.LIME: self.lime,
            ExplainerName.INTEGRATED_GRADIENTS: self.integrated_gradients,
        }[self.explainer]
        return (
            self.explainer.value,
            self.output.value,
            self.target_mode.value,
            self.target_labels,
            per_explainer,
            self.faithfulness,
        )


@dataclass(frozen=True)
class PredictionResult:
    """The classifier's output on one text."""

    labels: list[str]
    probabilities: np.ndarray
    logits: np.ndarray
    truncated: bool
    token_count: int

    @property
    def label(self) -> str:
        return self.labels[int(np.argmax(self.probabilities))]


@dataclass(frozen=True)
class TokenSpan:
    text: str
    start: int
    end: int
    special: bool = False


@dataclass(frozen=True)
class Faithfulness:
    comprehensiveness: float
    sufficiency: float


@dataclass(frozen=True)
class ExplanationResult:
    """Attributions of one text: values are (tokens × targets) in the output space."""

    tokens: list[TokenSpan]
    labels: list[str]
    values: np.ndarray
    base_values: np.ndarray
    output_values: np.ndarray
    prediction: PredictionResult
    explainer: ExplainerName
    output: OutputName
    model_rows: int = 0
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0
    cached: bool = False
    convergence_delta: np.ndarray | None = None
    faithfulness: Faithfulness | None = None
    # The explanation covers text[:explained_chars]: the prefix the model reads.
    truncated: bool = False
    explained_chars: int | None = None

    @property
    def additivity_error(self) -> float:
        if self.values.size == 0:
            return 0.0
        gap = self.base_values + self.values.sum(axis=0) - self.output_values
        return float(np.max(np.abs(gap)))


@dataclass(frozen=True)
class ModelDescription:
    name: str
    labels: list[str]
    max_tokens: int
    is_default: bool
    explainers: list[ExplainerName]
    weights_sha256: str
    device: str
    dtype: str
