"""Hand-made explanations for the tests of what is drawn or computed from explanations."""

from __future__ import annotations

import numpy as np
import whybert


def explanation(
    tokens: list[str], values: list[list[float]], labels: list[str], output: str = "probability"
) -> whybert.Explanation:
    """An explanation of the given tokens; `[CLS]`/`[SEP]` (texts "") are special."""
    special = [t in ("[CLS]", "[SEP]") for t in tokens]
    shown = ["" if s else t for t, s in zip(tokens, special, strict=True)]
    offsets, cursor = [], 0
    for t in shown:
        offsets.append((cursor, cursor + len(t)))
        cursor += len(t)
    return whybert.Explanation(
        text="".join(shown),
        tokens=shown,
        offsets=offsets,
        special=special,
        values=np.asarray(values, dtype=np.float64).reshape(len(tokens), len(labels)),
        base_values=np.zeros(len(labels)),
        output_values=np.zeros(len(labels)),
        labels=labels,
        prediction=whybert.Prediction(labels[0], {label: 1 / len(labels) for label in labels}),
        explainer="shap-partition",
        output=output,
    )


# Two texts explaining pos and neg, one explaining pos only; "great" three times, written two ways.
CORPUS = [
    explanation(["[CLS]", "Great ", "food", "[SEP]"], [[9, 9], [0.3, -0.1], [-0.2, 0.4], [9, 9]], ["pos", "neg"]),
    explanation(["[CLS]", "great ", "great ", " ", "service", "[SEP]"],
                [[9], [0.5], [-0.1], [7], [-0.6], [9]], ["pos"]),
    explanation(["[CLS]", "food ", "was ", "great", "[SEP]"],
                [[9, 9], [0.05, 0.0], [0.01, -0.02], [0.2, -0.3], [9, 9]], ["neg", "pos"]),
]
