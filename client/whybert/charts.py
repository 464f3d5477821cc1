"""PNG charts beyond `render.bar_chart`: the top tokens of every explained label, a histogram
of the values, the top words of a corpus (`whybert.aggregate`), a corpus's confidence against
its largest attributions, an evaluation's confusion matrix and the raw attention maps of
an `attention` explanation (a layer × head grid of heat maps).

Each function returns a matplotlib `Figure` (no pyplot: no display, no global state, safe
from threads) of a size fixed by its content, and `save_png` writes one. matplotlib is the
`whybert[plot]` extra, imported only when a chart is drawn. NaN and ±inf values are drawn
as such (see `render.draw_bars`) and counted apart in histograms, never a crash.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._types import Explanation
from .aggregate import Aggregate, Measure
from .render import BLUE, GREY, RED, _label_index, _matplotlib_figure, _number, _plain, draw_bars, ranked_tokens

WIDTH = 7.0  # inches; a panel's height grows with its bars
BAR_INCHES = 0.38
MEASURE_TITLES = {"mean_abs": "mean |value|", "mean": "mean value", "count": "occurrences"}


def _panel_height(bars: int) -> float:
    return 1.1 + BAR_INCHES * max(bars, 1)


def token_bars(e: Explanation, top: int = 10, labels: Sequence[str] | None = None) -> Any:
    """The `top` tokens by |value| for each explained label (or `labels`), one panel each,
    the predicted label's first; a text pair's second-text tokens are named `word (pair)`,
    and an entity's explanation names the entity in the title."""
    chosen = list(labels) if labels is not None else _predicted_first(e)
    ranked = {label: ranked_tokens(e, label, top) for label in chosen}
    heights = [_panel_height(len(r)) for r in ranked.values()]
    fig = _matplotlib_figure()(figsize=(WIDTH, sum(heights) + 0.4), layout="constrained")
    axes = fig.subplots(len(chosen), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (label, tokens) in zip(axes, ranked.items(), strict=True):
        draw_bars(ax, [tok for tok, _ in tokens], [val for _, val in tokens])
        ax.set_title(f"why {label}", loc="left", fontsize=10)
    axes[-1].set_xlabel(f"attribution ({e.output}, {e.explainer})")
    p = e.prediction
    title = f"prediction: {p.label} ({p.scores.get(p.label, 0.0):.3f})"
    if e.entity is not None:
        x = e.entity
        title = _plain(f"entity {e.entity_index}: {x.text!r} {x.label} [{x.start}, {x.end}) ({x.score:.3f})")
    fig.suptitle(title, x=0.01, ha="left", fontsize=11)
    return fig


def _predicted_first(e: Explanation) -> list[str]:
    first = e.labels[_label_index(e, None)]
    return [first, *(label for label in e.labels if label != first)]


def value_histogram(
    explanations: Explanation | Sequence[Explanation], bins: int = 30, labels: Sequence[str] | None = None
) -> Any:
    """A histogram of the token values of each explained label (non-special tokens), one
    panel per label; several explanations are pooled. NaN and ±inf cannot be binned: each
    panel's title counts them instead."""
    items = [explanations] if isinstance(explanations, Explanation) else list(explanations)
    if not items:
        raise ValueError("no explanation to draw")
    chosen = list(labels) if labels is not None else list(dict.fromkeys(lb for e in items for lb in e.labels))
    fig = _matplotlib_figure()(figsize=(WIDTH, 0.4 + 2.2 * len(chosen)), layout="constrained")
    axes = fig.subplots(len(chosen), 1, squeeze=False)[:, 0]
    for ax, label in zip(axes, chosen, strict=True):
        values = np.concatenate(
            [e.values[~np.asarray(e.special, dtype=bool), e.labels.index(label)] for e in items if label in e.labels]
            or [np.zeros(0)]
        )
        finite = values[np.isfinite(values)]
        if finite.size:
            _, edges, patches = ax.hist(finite, bins=bins, color=_rgb(RED), edgecolor="white", linewidth=0.5)
            for left, patch in zip(edges[:-1], patches, strict=True):
                if left + patch.get_width() <= 0:
                    patch.set_facecolor(_rgb(BLUE))
        ax.axvline(0.0, color="#8e8e98", linewidth=0.8)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_ylabel("tokens")
        ax.set_title(f"{label}: {finite.size} values{_non_finite_note(values)}", loc="left", fontsize=10)
    first = items[0]
    axes[-1].set_xlabel(f"attribution ({first.output}, {first.explainer})")
    return fig


def _non_finite_note(values: np.ndarray) -> str:
    counts = {
        "nan": int(np.isnan(values).sum()),
        "+inf": int(np.isposinf(values).sum()),
        "-inf": int(np.isneginf(values).sum()),
    }
    shown = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    return f" (not shown: {shown})" if shown else ""


def aggregate_bars(
    agg: Aggregate,
    by: Measure = "mean_abs",
    top: int = 15,
    labels: Sequence[str] | None = None,
    min_count: int = 1,
) -> Any:
    """The top words of each label by `by`, one panel per label, as shap's cohort bar plot;
    a mean |value| bar is coloured by the word's mean direction (red raises the label), and
    each bar notes how often the word occurs."""
    chosen = list(labels) if labels is not None else agg.labels
    if not chosen:
        raise ValueError("the aggregate has no label to draw")
    ranked = {label: agg.top(label, by, top, min_count=min_count) for label in chosen}
    heights = [_panel_height(len(r)) for r in ranked.values()]
    fig = _matplotlib_figure()(figsize=(WIDTH, sum(heights) + 0.4), layout="constrained")
    axes = fig.subplots(len(chosen), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (label, words) in zip(axes, ranked.items(), strict=True):
        draw_bars(
            ax,
            [w.word for w in words],
            [float(getattr(w, by)) for w in words],
            notes=[f"×{w.count}" for w in words],
            signs=[w.mean for w in words],
            value_text=_number if by == "mean" else (lambda v: f"{v:g}" if by == "count" else f"{v:.4f}"),
        )
        ax.set_title(f"{label}: {agg.explanations[label]} explanations", loc="left", fontsize=10)
    axes[-1].set_xlabel(f"{MEASURE_TITLES[by]} ({agg.output}, {agg.explainer})")
    return fig


RIGHT = (42, 157, 92)
WRONG = (214, 96, 77)


def confidence_scatter(
    confidence: Sequence[float],
    largest: Sequence[float],
    correct: Sequence[bool | None],
    ylabel: str = "largest attribution to the predicted label",
    title: str = "",
) -> Any:
    """Each text's predicted probability (x) against its largest attribution (y), green
    where the prediction is right, orange-red where it is wrong and grey where the true
    label is unknown: a confident prediction that rests on no strong word, or a wrong one
    that rests on one, stands out. Points that are not finite are counted in the title."""
    x = np.asarray(confidence, dtype=np.float64)
    y = np.asarray(largest, dtype=np.float64)
    if not len(x) == len(y) == len(correct):
        raise ValueError(f"{len(x)} confidences, {len(y)} attributions and {len(correct)} correctness flags")
    finite = np.isfinite(x) & np.isfinite(y)
    fig = _matplotlib_figure()(figsize=(WIDTH, 4.8), layout="constrained")
    ax = fig.add_subplot()
    groups = (("right", True, RIGHT), ("wrong", False, WRONG), ("true label unknown", None, GREY))
    for name, flag, colour in groups:
        chosen = np.fromiter(
            ((c is None) if flag is None else (c is not None and bool(c) is flag) for c in correct),
            dtype=bool, count=len(correct),
        )
        mask = finite & chosen
        if mask.any():
            ax.scatter(x[mask], y[mask], s=16, alpha=0.75, color=_rgb(colour), edgecolors="none",
                       label=f"{name} ({int(mask.sum())})")
    ax.axhline(0.0, color="#8e8e98", linewidth=0.8)
    ax.set_xlim(min(0.0, float(np.min(x[finite], initial=0.0))), 1.0)
    ax.set_xlabel("probability of the predicted label")
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    if finite.any():
        ax.legend(loc="best", fontsize=8, frameon=False)
    skipped = int((~finite).sum())
    note = f" ({skipped} not finite, not shown)" if skipped else ""
    ax.set_title(f"{title}{' · ' if title else ''}{int(finite.sum())} texts{note}", loc="left", fontsize=10)
    return fig


def confusion_matrix_chart(matrix: np.ndarray, labels: Sequence[str], title: str = "") -> Any:
    """Counts of true (rows) against predicted (columns) labels, shaded by each row's share,
    so a rare label's errors show as clearly as a common one's."""
    counts = np.asarray(matrix)
    n = len(labels)
    if counts.shape != (n, n):
        raise ValueError(f"a {n}-label confusion matrix must be {n}×{n}, not {counts.shape}")
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    side = 2.2 + 0.7 * n
    fig = _matplotlib_figure()(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(n), labels, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, label="share of the true label's rows", shrink=0.8)
    if title:
        ax.set_title(title, loc="left", fontsize=10)
    return fig


ATTENTION_PANEL_INCHES = 2.2  # one heat map of the layer × head grid
MAX_ATTENTION_PANELS = 64  # more maps than this make unreadable thumbnails: choose layers/heads
TICK_LABELS_UP_TO = 24  # tokens: beyond this a panel's axes carry no token names


def attention_grid(e: Explanation) -> Any:
    """The raw attention maps of an `attention` explanation (asked for with raw_attention,
    attention_layers or attention_heads): one heat map per (layer, head), layers as rows and
    heads as columns, queries down and keys across, on one scale from 0 to 1 (each query's
    row sums to 1). Token names label the axes of short texts only."""
    maps = e.attention
    if maps is None:
        raise ValueError("this explanation has no raw attention maps: ask the attention explainer for them")
    n_layers, n_heads = len(maps.layers), len(maps.heads)
    if n_layers * n_heads > MAX_ATTENTION_PANELS:
        raise ValueError(
            f"{n_layers} layers × {n_heads} heads is more than {MAX_ATTENTION_PANELS} heat maps; "
            "choose fewer attention_layers or attention_heads"
        )
    names = [t.strip() or "␣" for t in e.tokens]
    fig = _matplotlib_figure()(
        figsize=(0.6 + ATTENTION_PANEL_INCHES * n_heads, 0.8 + ATTENTION_PANEL_INCHES * n_layers),
        layout="constrained",
    )
    axes = fig.subplots(n_layers, n_heads, squeeze=False)
    image = None
    for i, layer in enumerate(maps.layers):
        for j, head in enumerate(maps.heads):
            ax = axes[i, j]
            image = ax.imshow(maps.weights[i, j], cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
            if len(names) <= TICK_LABELS_UP_TO:
                ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
                ax.set_yticks(range(len(names)), names, fontsize=6)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=axes, label="attention weight (query → key)", shrink=0.8)
    fig.suptitle("raw attention (rows: queries, columns: keys)", x=0.01, ha="left", fontsize=10)
    return fig


def _rgb(colour: tuple[int, int, int]) -> tuple[float, ...]:
    return tuple(c / 255 for c in colour)


def save_png(figure: Any, path: str | os.PathLike[str], dpi: int = 150) -> None:
    """Write a figure as a PNG of its size × dpi pixels (no tight cropping, so the size is
    known before drawing)."""
    figure.savefig(path, format="png", dpi=dpi)

