"""Explanation methods, by name."""

from __future__ import annotations

from ..types import ExplainerName
from .base import Explainer
from .shap_partition import ShapPartitionExplainer

EXPLAINERS: dict[ExplainerName, type[Explainer]] = {
    ExplainerName.SHAP_PARTITION: ShapPartitionExplainer,
}



def create_explainers() -> dict[str, Explainer]:
    """One instance of every explainer, by its name in the API."""
    return {name.value: cls() for name, cls in EXPLAINERS.items()}


__all__ = ["EXPLAINERS", "Explainer", "create_explainers"]
