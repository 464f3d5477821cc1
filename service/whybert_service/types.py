"""Transport-free request and result types: what the data plane takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class ExplainerName(StrEnum):
    SHAP_PARTITION = "shap-partition"
    LIME = "lime"
    INTEGRATED_GRADIENTS = "integrated-gradients"
    ATTENTION = "attention"


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
    pairs: tuple[str, ...] = ()  # text-pair models: the second text of each input


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
class AttentionParams:
    """The attention explainer's options: whether raw maps come back, and of which layers
    and heads (empty: all; the servicer resolves them against the model)."""

    raw: bool = False
    layers: tuple[int, ...] = ()
    heads: tuple[int, ...] = ()
    max_cells: int = 1_048_576  # the server's --max-attention-cells, set by the servicer


@dataclass(frozen=True)
class AttentionMapsResult:
    """Raw attention of one text: weights[layer, head, query, key] for these layers/heads."""

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    weights: np.ndarray  # float32, len(layers) × len(heads) × tokens × tokens


@dataclass(frozen=True)
class EntityChoice:
    """Which entity of a text to explain (token models): exactly one of the three."""

    index: int | None = None
    span: tuple[int, int] | None = None
    all: bool = False


@dataclass(frozen=True)
class EntityResult:
    """One entity a token model found: characters [start, end), type, pipeline score, and
    the position (special tokens included) of its first word's first piece."""

    text: str
    label: str
    start: int
    end: int
    score: float
    position: int


@dataclass(frozen=True)
class EntityTarget:
    """An entity resolved for one explanation: what the explainers read out and where."""

    entity: EntityResult
    index: int  # among the text's entities
    text_index: int  # among the request's texts
    columns: tuple[int, ...]  # the tag columns summed: B-X, I-X


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
    attention: AttentionParams = field(default_factory=AttentionParams)
    faithfulness: bool = False
    entity: EntityChoice | None = None
    pairs: tuple[str, ...] = ()  # text-pair models: the second text of each input
    # Set by the data plane for one entity's explanation (not part of the request).
    entity_target: EntityTarget | None = None

    def options_key(self) -> tuple[object, ...]:
        """What, besides model and text, decides an explanation's values (the cache key)."""
        per_explainer: object = {
            ExplainerName.SHAP_PARTITION: self.shap,
            ExplainerName.LIME: self.lime,
            ExplainerName.INTEGRATED_GRADIENTS: self.integrated_gradients,
            ExplainerName.ATTENTION: self.attention,
        }[self.explainer]
        return (
            self.explainer.value,
            self.output.value,
            self.target_mode.value,
            self.target_labels,
            per_explainer,
            self.faithfulness,
            None if self.entity_target is None else (self.entity_target.index, self.entity_target.entity),
        )


@dataclass(frozen=True)
class PredictionResult:
    """The classifier's output on one text."""

    labels: list[str]
    probabilities: np.ndarray
    logits: np.ndarray
    truncated: bool
    token_count: int
    entities: tuple[EntityResult, ...] = ()  # token models only

    @property
    def label(self) -> str:
        if not len(self.probabilities):
            return ""
        return self.labels[int(np.argmax(self.probabilities))]


@dataclass(frozen=True)
class TokenSpan:
    text: str
    start: int
    end: int
    special: bool = False
    segment: int = 0  # text pairs: 0 for the text, 1 for the pair text (offsets into it)


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
    entity: EntityTarget | None = None  # token models: the explained entity
    # Text pairs: tokens carry their segment; the pair text is explained up to this.
    explained_pair_chars: int | None = None
    # Attention explainer: the position whose rollout row `values` holds, and raw maps.
    attention_position: int | None = None
    attention_maps: AttentionMapsResult | None = None

    @property
    def additivity_error(self) -> float:
        if self.explainer is ExplainerName.ATTENTION:
            return float("nan")  # attention weights are not additive: not applicable
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
    kind: str = "sequence"  # or "token", or "pair"
    # Encoder layers and attention heads per layer (the attention explainer's maps).
    attention_layers: int = 0
    attention_heads: int = 0
