"""Result types: plain Python and numpy, built from the server's messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .v1 import explainer_pb2 as pb

# The explainers and output spaces by their names in the API: one table each, read both ways.
EXPLAINER_KINDS = {
    "shap-partition": pb.EXPLAINER_KIND_SHAP_PARTITION,
    "lime": pb.EXPLAINER_KIND_LIME,
    "integrated-gradients": pb.EXPLAINER_KIND_INTEGRATED_GRADIENTS,
    "attention": pb.EXPLAINER_KIND_ATTENTION,
}
EXPLAINER_ALIASES = {"shap": "shap-partition", "ig": "integrated-gradients"}  # accepted in calls
EXPLAINER_NAMES = {kind: name for name, kind in EXPLAINER_KINDS.items()}
OUTPUT_SPACES = {"probability": pb.OUTPUT_SPACE_PROBABILITY, "logit": pb.OUTPUT_SPACE_LOGIT}
OUTPUT_NAMES = {space: name for name, space in OUTPUT_SPACES.items()}
MODEL_KINDS = {
    pb.MODEL_KIND_SEQUENCE_CLASSIFICATION: "sequence",
    pb.MODEL_KIND_TOKEN_CLASSIFICATION: "token",
    pb.MODEL_KIND_TEXT_PAIR_CLASSIFICATION: "text-pair",
}


@dataclass(frozen=True)
class Entity:
    """A named entity of a token-classification model: text[start:end], its type and score."""

    text: str
    label: str
    start: int
    end: int
    score: float

    @classmethod
    def from_proto(cls, msg: pb.Entity) -> Entity:
        return cls(text=msg.text, label=msg.label, start=msg.start, end=msg.end, score=msg.score)


@dataclass(frozen=True)
class Prediction:
    """The classifier's output on one text."""

    label: str
    scores: dict[str, float]
    logits: dict[str, float] = field(default_factory=dict)
    truncated: bool = False
    token_count: int = 0
    # Token-classification models: the text's entities in text order (`label` is then empty).
    entities: list[Entity] = field(default_factory=list)

    @classmethod
    def from_proto(cls, msg: pb.Prediction) -> Prediction:
        return cls(
            label=msg.label,
            scores={s.label: s.probability for s in msg.scores},
            logits={s.label: s.logit for s in msg.scores},
            truncated=msg.truncated,
            token_count=msg.token_count,
            entities=[Entity.from_proto(e) for e in msg.entities],
        )


@dataclass(frozen=True)
class Faithfulness:
    """AOPC comprehensiveness (higher is better) and sufficiency (lower is better)."""

    comprehensiveness: float
    sufficiency: float


@dataclass(frozen=True)
class AttentionMaps:
    """Raw attention of one text: `weights[i, j, query, key]` is layer `layers[i]`, head
    `heads[j]`'s softmax weight from token `query` to token `key` (the explanation's tokens,
    special tokens included); each query's row sums to 1."""

    layers: list[int]
    heads: list[int]
    weights: np.ndarray  # float32, len(layers) × len(heads) × tokens × tokens

    @classmethod
    def from_proto(cls, msg: pb.AttentionMaps) -> AttentionMaps:
        shape = (len(msg.layers), len(msg.heads), msg.tokens, msg.tokens)
        return cls(list(msg.layers), list(msg.heads), np.asarray(msg.weights, dtype=np.float32).reshape(shape))


@dataclass(frozen=True)
class Explanation:
    """Per-token attributions of one text, with the fields of `shap.Explanation`.

    `values` is (tokens × labels): `values[i, j]` is token i's contribution to label j's
    output, in `output` space; `base_values[j] + values[:, j].sum()` gives
    `output_values[j]` (up to `additivity_error`).

    The `attention` explainer is the exception: `values[:, j]` is the attention rollout row
    of the position that carries the decision (`attention_position`, [CLS] for sequence
    models), the same for every label, non-negative and summing to 1; it is not an
    attribution and does not add up to the output (`additivity_error` is NaN). Its raw maps,
    when asked for, are in `attention`.
    """

    text: str
    tokens: list[str]
    offsets: list[tuple[int, int]]
    special: list[bool]
    values: np.ndarray
    base_values: np.ndarray
    output_values: np.ndarray
    labels: list[str]
    prediction: Prediction
    explainer: str
    output: str
    additivity_error: float = 0.0
    model_rows: int = 0
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0
    cached: bool = False
    convergence_delta: np.ndarray | None = None
    faithfulness: Faithfulness | None = None
    # Only text[:explained_chars] was explained: the prefix the model reads.
    truncated: bool = False
    explained_chars: int = 0
    # Token-classification models: the explained entity (its type is `labels[0]`), its
    # index among the text's entities, the text's index in the request and the token
    # position whose output is explained.
    entity: Entity | None = None
    entity_index: int = 0
    text_index: int = 0
    entity_position: int = 0
    # The attention explainer: the rollout row's position, and the raw maps on request.
    attention_position: int = 0
    attention: AttentionMaps | None = None
    # Text-pair models: the second text, each token's segment (0: `text`, 1: `pair`; its
    # `offsets` point into that text) and the prefix pair[:explained_pair_chars] explained.
    pair: str | None = None
    segments: list[int] = field(default_factory=list)
    explained_pair_chars: int = 0

    @classmethod
    def from_proto(cls, text: str, msg: pb.TextExplanation, pair: str | None = None) -> Explanation:
        n_labels = max(len(msg.labels), 1)
        values = np.asarray(msg.values, dtype=np.float64).reshape(-1, n_labels)
        return cls(
            text=text,
            tokens=[t.text for t in msg.tokens],
            offsets=[(t.start, t.end) for t in msg.tokens],
            special=[t.special for t in msg.tokens],
            values=values,
            base_values=np.asarray(msg.base_values, dtype=np.float64),
            output_values=np.asarray(msg.output_values, dtype=np.float64),
            labels=list(msg.labels),
            prediction=Prediction.from_proto(msg.prediction),
            explainer=EXPLAINER_NAMES.get(msg.explainer, "unknown"),
            output=OUTPUT_NAMES.get(msg.output, "unknown"),
            additivity_error=msg.additivity_error,
            model_rows=msg.model_rows,
            queue_seconds=msg.queue_seconds,
            compute_seconds=msg.compute_seconds,
            cached=msg.cached,
            convergence_delta=(
                np.asarray(msg.convergence_delta, dtype=np.float64) if msg.convergence_delta else None
            ),
            faithfulness=(
                Faithfulness(msg.faithfulness.comprehensiveness, msg.faithfulness.sufficiency)
                if msg.HasField("faithfulness")
                else None
            ),
            truncated=msg.truncated,
            explained_chars=msg.explained_chars if msg.explained_chars or msg.truncated else len(text),
            entity=Entity.from_proto(msg.entity) if msg.HasField("entity") else None,
            entity_index=msg.entity_index,
            text_index=msg.text_index,
            entity_position=msg.entity_position,
            attention_position=msg.attention_position,
            attention=AttentionMaps.from_proto(msg.attention) if msg.HasField("attention") else None,
            pair=pair if msg.pair else None,
            segments=[t.segment for t in msg.tokens],
            explained_pair_chars=msg.explained_pair_chars if msg.pair else 0,
        )

    def to_shap(self) -> Any:
        """A `shap.Explanation` (needs shap installed), so `shap.plots.text(e.to_shap())` works."""
        try:
            import shap
        except ImportError as exc:
            raise ImportError("to_shap() needs the shap package: pip install shap") from exc
        # The shape shap gives one row of a text explanation: (tokens × outputs). Where there
        # are as many tokens as outputs, shap's slicing cannot tell which axis the feature
        # names follow (`e[:, 0]` would slice the names' characters): then the tokens are in
        # `data` alone, which the text plot reads, and the other plots number the features.
        square = self.values.ndim == 2 and self.values.shape[0] == self.values.shape[1]
        return shap.Explanation(
            values=self.values,
            base_values=self.base_values,
            data=np.asarray(self.tokens, dtype=object),
            feature_names=None if square else [t.strip() for t in self.tokens],
            output_names=list(self.labels),
        )

    def source(self, i: int) -> str:
        """The text token i's offsets point into: `text`, or `pair` for a pair's segment 1."""
        if self.pair is not None and self.segments and self.segments[i] == 1:
            return self.pair
        return self.text

    def top_tokens(self, label: str | None = None, k: int = 10) -> list[tuple[str, float]]:
        """The k non-special tokens with the largest |attribution| for a label."""
        j = self.labels.index(label) if label is not None else 0
        order = np.argsort(-np.abs(self.values[:, j]))
        picked = [i for i in order if not self.special[i]][:k]
        return [(self.tokens[i].strip(), float(self.values[i, j])) for i in picked]


@dataclass(frozen=True)
class Progress:
    """One message of a progressive explanation: the values so far (additive), the budget
    spent on them, and whether they are the final ones."""

    explanation: Explanation
    evals: int
    final: bool

    @classmethod
    def from_proto(cls, text: str, msg: pb.ExplainProgressiveResponse, pair: str | None = None) -> Progress:
        return cls(Explanation.from_proto(text, msg.explanation, pair), msg.evals, msg.final)


@dataclass(frozen=True)
class ModelInfo:
    """A model the server serves."""

    name: str
    labels: list[str]
    max_tokens: int
    is_default: bool
    explainers: list[str]
    weights_sha256: str = ""
    device: str = ""
    dtype: str = ""
    kind: str = "sequence"  # "token" for entity models, "text-pair"; "unknown" from an older server

    @classmethod
    def from_proto(cls, msg: pb.ModelInfo) -> ModelInfo:
        return cls(
            name=msg.name,
            labels=list(msg.labels),
            max_tokens=msg.max_tokens,
            is_default=msg.is_default,
            explainers=[EXPLAINER_NAMES.get(e, "unknown") for e in msg.explainers],
            weights_sha256=msg.weights_sha256,
            device=msg.device,
            dtype=msg.dtype,
            kind=MODEL_KINDS.get(msg.kind, "unknown"),
        )
