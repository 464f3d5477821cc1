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
}
EXPLAINER_ALIASES = {"shap": "shap-partition", "ig": "integrated-gradients"}  # accepted in calls
EXPLAINER_NAMES = {kind: name for name, kind in EXPLAINER_KINDS.items()}
OUTPUT_SPACES = {"probability": pb.OUTPUT_SPACE_PROBABILITY, "logit": pb.OUTPUT_SPACE_LOGIT}
OUTPUT_NAMES = {space: name for name, space in OUTPUT_SPACES.items()}


@dataclass(frozen=True)
class Prediction:
    """The classifier's output on one text."""

    label: str
    scores: dict[str, float]
    logits: dict[str, float] = field(default_factory=dict)
    truncated: bool = False
    token_count: int = 0

    @classmethod
    def from_proto(cls, msg: pb.Prediction) -> Prediction:
        return cls(
            label=msg.label,
            scores={s.label: s.probability for s in msg.scores},
            logits={s.label: s.logit for s in msg.scores},
            truncated=msg.truncated,
            token_count=msg.token_count,
        )


@dataclass(frozen=True)
class Faithfulness:
    """AOPC comprehensiveness (higher is better) and sufficiency (lower is better)."""

    comprehensiveness: float
    sufficiency: float


@dataclass(frozen=True)
class Explanation:
    """Per-token attributions of one text, with the fields of `shap.Explanation`.

    `values` is (tokens × labels): `values[i, j]` is token i's contribution to label j's
    output, in `output` space; `base_values[j] + values[:, j].sum()` gives
    `output_values[j]` (up to `additivity_error`).
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

    @classmethod
    def from_proto(cls, text: str, msg: pb.TextExplanation) -> Explanation:
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
        )

    def to_shap(self) -> Any:
        """A `shap.Explanation` (needs shap installed), so `shap.plots.text(e.to_shap())` works."""
        try:
            import shap
        except ImportError as exc:
            raise ImportError("to_shap() needs the shap package: pip install shap") from exc
        # The shape shap gives one row of a text explanation: (tokens × outputs).
        return shap.Explanation(
            values=self.values,
            base_values=self.base_values,
            data=np.asarray(self.tokens, dtype=object),
            feature_names=[t.strip() for t in self.tokens],
            output_names=list(self.labels),
        )

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
    def from_proto(cls, text: str, msg: pb.ExplainProgressiveResponse) -> Progress:
        return cls(Explanation.from_proto(text, msg.explanation), msg.evals, msg.final)


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
        )
