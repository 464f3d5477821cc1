"""The shap library's Partition explainer on one text, given a function for model logits.

Runs in a server thread or in an explainer process (it imports numpy and shap only). The
values are shap's own: `shap.PartitionExplainer(f, shap.maskers.Text(tokenizer))` where
`f` returns the model's outputs for the explained targets only, in the requested space.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shap

from ..outputs import to_output_space
from ..types import OutputName, ShapParams

Logits = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class PartitionValues:
    values: np.ndarray  # tokens × targets
    base_values: np.ndarray  # targets
    segments: list[str]  # shap's token strings (each with the white space after it)
    unmasked: str  # the string shap rebuilds with nothing masked: additivity is against it


def partition_values(
    tokenizer: Any,
    logits: Logits,
    text: str,
    params: ShapParams,
    output: OutputName,
    targets: list[int],
) -> PartitionValues:
    def f(texts: Any) -> np.ndarray:
        strings = [str(t) for t in np.asarray(texts).reshape(-1)]
        return to_output_space(logits(strings), output)[:, targets]

    masker = shap.maskers.Text(tokenizer)
    explanation = shap.PartitionExplainer(f, masker)(
        [text],
        max_evals=params.max_evals,
        fixed_context=params.fixed_context,
        batch_size=params.batch_size or "auto",
        silent=True,
    )
    values = np.asarray(explanation.values[0], dtype=np.float64).reshape(-1, len(targets))
    base_values = np.asarray(explanation.base_values[0], dtype=np.float64).reshape(len(targets))
    unmasked = str(masker(np.ones(values.shape[0], dtype=bool), text)[0][0])
    return PartitionValues(values, base_values, [str(s) for s in explanation.data[0]], unmasked)


def warm_up_shap() -> None:
    """shap's numba kernels compile on first use (~10 s on a small CPU): do it now."""
    masker = shap.maskers.Text()  # shap's regex tokenizer: same kernels, no model needed
    shap.PartitionExplainer(lambda t: np.ones((len(t), 2)), masker)(["warm up the explainer"], silent=True)
