"""Showing explanations to people: coloured terminal text (here), HTML and PNG (see below).

Colours follow shap's convention: red pushes the explained label's output up, blue pushes
it down; the stronger the colour, the larger the attribution relative to the text's largest.
"""

from __future__ import annotations

import os
from typing import TextIO

import numpy as np

from ._types import Explanation

RED = (255, 13, 87)
BLUE = (30, 136, 229)


def blend(value: float, scale: float) -> tuple[int, int, int]:
    """White fading to red (positive) or blue (negative) as |value| approaches `scale`."""
    if scale <= 0:
        return (255, 255, 255)
    strength = min(abs(value) / scale, 1.0)
    base = RED if value > 0 else BLUE
    return tuple(round(255 + (c - 255) * strength) for c in base)  # type: ignore[return-value]


def _wants_colour(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)()) or bool(os.environ.get("FORCE_COLOR"))


def terminal(e: Explanation, label: str | None = None, colour: bool = True, top: int = 5) -> str:
    """The text with each token's background coloured by its attribution, and the top tokens."""
    j = e.labels.index(label) if label is not None else 0
    column = e.values[:, j]
    visible = [i for i in range(len(e.tokens)) if not e.special[i]]
    scale = float(np.max(np.abs(column[visible]))) if visible else 0.0
    parts = []
    for i in visible:
        token = e.tokens[i]
        if colour:
            r, g, b = blend(float(column[i]), scale)
            parts.append(f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{token}\x1b[0m")
        else:
            parts.append(f"{token.strip()}[{column[i]:+.3f}] ")
    scores = ", ".join(f"{k} {v:.3f}" for k, v in e.prediction.scores.items())
    lines = [
        f"prediction: {e.prediction.label} ({scores})",
        f"explaining {e.labels[j]!r} ({e.output}, {e.explainer}): base {e.base_values[j]:+.4f} "
        f"+ attributions {column.sum():+.4f} = {e.output_values[j]:+.4f}",
        "".join(parts).rstrip(),
    ]
    ranked = e.top_tokens(e.labels[j], top)
    if ranked:
        lines.append("top: " + ", ".join(f"{tok} {val:+.3f}" for tok, val in ranked))
    return "\n".join(lines)


def print_terminal(e: Explanation, stream: TextIO, label: str | None = None) -> None:
    stream.write(terminal(e, label, colour=_wants_colour(stream)) + "\n")
