"""Explanation methods, by name."""

from __future__ import annotations

from ..types import ExplainerName
from .attention import AttentionExplainer
from .base import Explainer
from .integrated_gradients import IntegratedGradientsExplainer
from .lime_text import LimeExplainer
from .shap_partition import ShapPartitionExplainer

EXPLAINERS: dict[ExplainerName, type[Explainer]] = {
    ExplainerName.SHAP_PARTITION: ShapPartitionExplainer,
    ExplainerName.LIME: LimeExplainer,
    ExplainerName.INTEGRATED_GRADIENTS: IntegratedGradientsExplainer,
    ExplainerName.ATTENTION: AttentionExplainer,
}

def create_explainers() -> dict[str, Explainer]:
    """One instance of every explainer, by its name in the API."""
    return {name.value: cls() for name, cls in EXPLAINERS.items()}


__all__ = ["EXPLAINERS", "Explainer", "create_explainers"]
