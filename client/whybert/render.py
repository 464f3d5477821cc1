"""Showing explanations to people: coloured terminal text, a self-contained HTML page and a
PNG bar chart.

Colours follow shap's convention: red pushes the explained label's output up, blue pushes
it down; the stronger the colour, the larger the attribution relative to the text's largest.
A value that is not finite (a broken model can give NaN or ±inf) is shown as such: `nan` in
grey, `±inf` in the full colour; the scale comes from the finite values only.
HTML needs only the standard library; the PNG needs matplotlib (`whybert[plot]`).
"""

from __future__ import annotations

import html as html_lib
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ._types import Entity, Explanation

RED = (255, 13, 87)
BLUE = (30, 136, 229)
GREY = (190, 190, 198)  # NaN: neither raises nor lowers


def blend(value: float, scale: float) -> tuple[int, int, int]:
    """White fading to red (positive) or blue (negative) as |value| approaches `scale`;
    ±inf is the full colour and NaN grey, so a broken value is seen, not a crash."""
    if math.isnan(value):
        return GREY
    if math.isinf(value):
        return RED if value > 0 else BLUE
    if not scale > 0 or math.isinf(scale):
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
    scale = _text_scale(e, j)
    parts = []
    segment = 0
    for i in _visible(e):
        token = e.tokens[i]
        if e.pair is not None and e.segments and e.segments[i] != segment:  # a pair: mark the join
            segment = e.segments[i]
            parts.append(" \x1b[1m‖ pair:\x1b[0m " if colour else "‖ pair: ")
        if colour:
            r, g, b = blend(float(column[i]), scale)
            underline = "\x1b[4m" if _in_entity(e, i) else ""  # the explained entity
            parts.append(f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{underline}{token}\x1b[0m")
        else:
            parts.append(f"{token.strip()}[{_signed(float(column[i]), 3)}] ")
    scores = ", ".join(f"{k} {v:.3f}" for k, v in e.prediction.scores.items())
    lines = [
        f"prediction: {e.prediction.label} ({scores})" if e.entity is None else _entity_line(e),
        _attention_caption(e)
        if e.explainer == "attention"
        else f"explaining {e.labels[j]!r} ({e.output}, {e.explainer}): base {_signed(float(e.base_values[j]))} "
        f"+ attributions {_signed(float(column.sum()))} = {_signed(float(e.output_values[j]))}",
        "".join(parts).rstrip(),
    ]
    ranked = e.top_tokens(e.labels[j], top)
    if ranked:
        lines.append("top: " + ", ".join(f"{tok} {_signed(val, 3)}" for tok, val in ranked))
    return "\n".join(lines)


def _entity_line(e: Explanation) -> str:
    entity = e.entity
    assert entity is not None
    span = f"[{entity.start}, {entity.end})"
    return f"entity {e.entity_index}: {entity.text!r} {entity.label} {span} score {entity.score:.3f}"


def _in_entity(e: Explanation, i: int) -> bool:
    """Whether token i lies in the explained entity's characters."""
    if e.entity is None or e.special[i]:
        return False
    start, end = e.offsets[i]
    return start < e.entity.end and e.entity.start < end


def mark_entities(text: str, entities: Sequence[Entity], stream: TextIO | None = None) -> str:
    """The text with each entity marked and typed: underlined with its type after it where
    `stream` takes colour, `[Angela Merkel]PER` otherwise."""
    colour = stream is not None and _wants_colour(stream)
    parts, cursor = [], 0
    for entity in sorted(entities, key=lambda x: x.start):
        if entity.start < cursor:
            continue
        parts.append(text[cursor : entity.start])
        inner = text[entity.start : entity.end]
        parts.append(f"\x1b[4m{inner}\x1b[0m\x1b[2m/{entity.label}\x1b[0m" if colour else f"[{inner}]{entity.label}")
        cursor = entity.end
    parts.append(text[cursor:])
    return "".join(parts)


def print_terminal(e: Explanation, stream: TextIO, label: str | None = None) -> None:
    stream.write(terminal(e, label, colour=_wants_colour(stream)) + "\n")


# ---- HTML -----------------------------------------------------------------------------------

#: The stylesheet of the HTML rendering; the page of `whybert ui` serves it as well.
STYLE = """
.wb-explanation { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: #1d1d1f; background: #fff; border: 1px solid #d8d8de; border-radius: 8px;
  padding: 14px 18px; margin: 0 0 16px; max-width: 60em; }
.wb-prediction { display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 14px;
  margin: 0 0 8px; }
.wb-prediction .wb-label { font-size: 1.15em; font-weight: 650; }
.wb-score { display: inline-flex; align-items: center; gap: 5px; font-size: .85em; color: #555; }
.wb-score-bar { display: inline-block; width: 60px; height: 7px; background: #ececf0;
  border-radius: 4px; overflow: hidden; }
.wb-score-bar > span { display: block; height: 100%; background: #8e8e98; }
.wb-score.wb-top .wb-score-bar > span { background: #1d1d1f; }
.wb-target { border-top: 1px solid #ececf0; padding-top: 8px; margin-top: 8px; }
.wb-caption { font-size: .85em; color: #555; margin: 0 0 6px; }
.wb-caption b { color: #1d1d1f; }
.wb-text { font-size: 1.05em; line-height: 2; white-space: pre-wrap; overflow-wrap: anywhere;
  margin: 0; }
.wb-pair-part { font-size: .75em; color: #555; text-transform: uppercase; letter-spacing: .05em;
  margin-right: .5em; }
.wb-pair-sep { display: block; border-top: 2px dashed #c8c8d0; margin: 6px 0; }
.wb-tok { position: relative; border-radius: 3px; padding: 1px 0; cursor: default;
  box-decoration-break: clone; -webkit-box-decoration-break: clone; }
.wb-tok:hover { outline: 1px solid #1d1d1f; }
.wb-tok:hover::after { content: attr(data-tip); position: absolute; left: 0; bottom: 130%;
  z-index: 1; white-space: nowrap; font: 12px/1.3 ui-monospace, monospace; color: #fff;
  background: #1d1d1f; padding: 3px 6px; border-radius: 4px; pointer-events: none; }
.wb-legend { display: flex; align-items: center; gap: 8px; font-size: .8em; color: #555;
  margin-top: 8px; }
.wb-legend-bar { width: 180px; height: 10px; border-radius: 5px; border: 1px solid #d8d8de; }
.wb-note { font-size: .8em; color: #8e8e98; margin-top: 4px; }
.wb-entity { text-decoration: underline 2px; text-underline-offset: 3px; }
.wb-entity-type { font-size: .7em; font-weight: 650; vertical-align: super; margin-left: 1px;
  color: #555; }
"""

_esc = html_lib.escape


def _rgb(colour: tuple[int, int, int]) -> str:
    return "rgb({}, {}, {})".format(*colour)


def _ink(colour: tuple[int, int, int]) -> str:
    """Black or white text, whichever reads better on the background."""
    r, g, b = colour
    return "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "#fff"


def _signed(value: float, digits: int = 4) -> str:
    """`+0.1234`, and `nan`, `+inf`, `-inf` for values that are not numbers to read."""
    if math.isnan(value):
        return "nan"
    return f"{value:+.{digits}f}"


def _number(value: float) -> str:
    """Signed, with enough digits for the tiny values of near-constant outputs."""
    return f"{value:+.2e}" if value and abs(value) < 1e-4 else _signed(value)


def _data_number(value: float) -> str:
    """A value for a data attribute that both Python's float() and JavaScript's Number() read."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _attention_caption(e: Explanation) -> str:
    """The `attention` explainer's values are rollout weights, not attributions: say so."""
    where = e.tokens[e.attention_position].strip() if e.attention_position < len(e.tokens) else "?"
    return (
        f"attention rollout read at token {e.attention_position} ({where}): weights over all tokens "
        "summing to 1; where the model attends, not an attribution of its output"
    )


def _visible(e: Explanation) -> list[int]:
    """The indices of the tokens shown (not special ones such as [CLS])."""
    return [i for i in range(len(e.tokens)) if not e.special[i]]


def _text_scale(e: Explanation, j: int) -> float:
    """The largest finite |attribution| of one label over the tokens shown (NaN and ±inf
    are drawn apart, so they cannot wash every other colour out)."""
    shown = np.abs(e.values[_visible(e), j])
    shown = shown[np.isfinite(shown)]
    return float(np.max(shown)) if shown.size else 0.0


def _token_span(piece: str, value: float, label: str, scale: float) -> str:
    colour = blend(value, scale)
    tip = _esc(f"{piece.strip() or piece}: {_number(value)} to {label}")
    return (
        f'<span class="wb-tok" style="background:{_rgb(colour)};color:{_ink(colour)}" '
        f'data-value="{_data_number(value)}" data-tip="{tip}" title="{tip}">{_esc(piece)}</span>'
    )


def _highlighted_text(e: Explanation, j: int, scale: float) -> str:
    """The original text, each token's characters wrapped in a span coloured by its value;
    a text pair's two texts one after the other, clearly apart.

    Spans come from the token offsets, so the text keeps its case and white space.
    """
    if e.pair is None or not e.segments:
        return _highlighted_segment(e, j, scale, e.text, range(len(e.tokens)))
    first, second = ([i for i, s in enumerate(e.segments) if s == k] for k in (0, 1))
    return (
        '<span class="wb-pair-part">text</span>'
        f"{_highlighted_segment(e, j, scale, e.text, first)}"
        '<span class="wb-pair-sep"></span><span class="wb-pair-part">pair</span>'
        f"{_highlighted_segment(e, j, scale, e.pair, second)}"
    )


def _highlighted_segment(e: Explanation, j: int, scale: float, text: str, indices: Iterable[int]) -> str:
    """One text with the spans of its tokens (`indices`, whose offsets point into it)."""
    parts, cursor = [], 0
    shown = sorted((i for i in indices if not e.special[i]), key=lambda i: e.offsets[i])
    for i in shown:
        start, end = e.offsets[i]
        start = max(start, cursor)  # tolerate overlapping offsets (byte-level BPE)
        if end <= start:
            continue
        parts.append(_esc(text[cursor:start]))
        span = _token_span(text[start:end], float(e.values[i, j]), e.labels[j], scale)
        if _in_entity(e, i):  # the explained entity: underlined, its type after its last piece
            assert e.entity is not None
            span = f'<span class="wb-entity" data-entity="{_esc(e.entity.label)}">{span}</span>'
            if end >= e.entity.end:
                span += f'<span class="wb-entity-type">{_esc(e.entity.label)}</span>'
        parts.append(span)
        cursor = end
    parts.append(_esc(text[cursor:]))
    return "".join(parts)


def _prediction_header(e: Explanation) -> str:
    p = e.prediction
    if e.entity is not None:  # a token model: the explained entity, not a sequence label
        x = e.entity
        return (
            '<div class="wb-prediction"><span>entity</span>'
            f'<span class="wb-label">{_esc(x.text)}</span><span class="wb-score wb-top" '
            f'data-label="{_esc(x.label)}">{_esc(x.label)} {x.score:.3f}</span>'
            f"<span class=\"wb-score\">[{x.start}, {x.end})</span></div>"
        )
    scores = []
    for name, score in sorted(p.scores.items(), key=lambda kv: -kv[1]):
        top = " wb-top" if name == p.label else ""
        width = 100 * min(max(score, 0.0), 1.0)
        scores.append(
            f'<span class="wb-score{top}" data-label="{_esc(name)}">{_esc(name)} '
            f'<span class="wb-score-bar"><span style="width:{width:.1f}%"></span></span>'
            f"{score:.3f}</span>"
        )
    return (
        '<div class="wb-prediction"><span>prediction</span>'
        f'<span class="wb-label">{_esc(p.label)}</span>{"".join(scores)}</div>'
    )


def _target_block(e: Explanation, j: int, scale: float) -> str:
    label = _esc(e.labels[j])
    caption = (
        f"why <b>{label}</b> · {_esc(e.explainer)}, {_esc(e.output)}: "
        f"base {e.base_values[j]:.4f} + attributions {_signed(float(e.values[:, j].sum()))} "
        f"= {e.output_values[j]:.4f}"
    )
    gradient = f"linear-gradient(to right, {_rgb(BLUE)}, #fff, {_rgb(RED)})"
    legend = (
        f'<div class="wb-legend"><span>{_number(-scale)} lowers {label}</span>'
        f'<span class="wb-legend-bar" style="background:{gradient}"></span>'
        f"<span>raises {label} {_number(scale)}</span></div>"
    )
    if e.explainer == "attention":  # a heat strip of rollout weights (all ≥ 0), not attributions
        caption = _esc(_attention_caption(e))
        legend = (
            '<div class="wb-legend"><span>0</span>'
            f'<span class="wb-legend-bar" style="background:linear-gradient(to right, #fff, {_rgb(RED)})"></span>'
            f"<span>{_number(scale)} attention weight</span></div>"
        )
    return (
        f'<div class="wb-target" data-label="{label}"><p class="wb-caption">{caption}</p>'
        f'<p class="wb-text">{_highlighted_text(e, j, scale)}</p>{legend}</div>'
    )


def html_fragment(explanations: Sequence[Explanation], shared_scale: bool = False) -> str:
    """One `<section>` per text: the prediction, then each explained label's highlighted text.

    With `shared_scale`, a colour means the same value in every text (for comparing texts);
    otherwise each text and label is scaled to its own largest attribution.
    """
    scales = [[_text_scale(e, j) for j in range(len(e.labels))] for e in explanations]
    if shared_scale:
        shared: dict[str, float] = {}
        for e, own in zip(explanations, scales, strict=True):
            for label, scale in zip(e.labels, own, strict=True):
                shared[label] = max(shared.get(label, 0.0), scale)
        scales = [[shared[label] for label in e.labels] for e in explanations]
    sections = []
    for e, own in zip(explanations, scales, strict=True):
        blocks = [_prediction_header(e)]
        for j, scale in enumerate(own):
            blocks.append(_target_block(e, j, scale))
        if e.prediction.truncated:
            blocks.append(
                f'<div class="wb-note">the text is longer than the model reads: it read the '
                f"first {e.prediction.token_count} tokens; the rest cannot change its output</div>"
            )
        if e.cached:
            blocks.append('<div class="wb-note">from the server\'s cache</div>')
        sections.append(f'<section class="wb-explanation">{"".join(blocks)}</section>')
    return "\n".join(sections)


def html(
    explanations: Sequence[Explanation] | Explanation,
    title: str = "whybert explanation",
    shared_scale: bool = False,
) -> str:
    """A self-contained HTML page (inline CSS, no scripts, no external assets).

    Each token is highlighted red (raises the label) or blue (lowers it), a legend gives the
    scale, and hovering a token shows its value.
    """
    items = [explanations] if isinstance(explanations, Explanation) else list(explanations)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{STYLE}"
        "body { margin: 16px; background: #f6f6f8; }</style></head>\n"
        f"<body>\n{html_fragment(items, shared_scale)}\n</body></html>\n"
    )


def write_html(
    explanations: Sequence[Explanation] | Explanation,
    path: str | os.PathLike[str],
    shared_scale: bool = False,
) -> None:
    """Write `html(explanations)` to a file (UTF-8)."""
    Path(path).write_text(html(explanations, shared_scale=shared_scale), encoding="utf-8")


# ---- PNG (matplotlib, the optional `whybert[plot]` extra) -------------------------------------


def _matplotlib_figure() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            'PNG charts need matplotlib, which is not installed: pip install "whybert[plot]"'
        ) from exc
    return Figure


def bar_chart(e: Explanation, label: str | None = None, top: int = 10) -> Any:
    """A matplotlib `Figure`: the `top` tokens by |attribution| for `label` (default: the
    predicted label when explained, else the first), largest at the top.

    Built on `matplotlib.figure.Figure`, not pyplot, so it needs no display and no global
    state and is safe to call from threads.
    """
    figure_cls = _matplotlib_figure()
    j = _label_index(e, label)
    ranked = e.top_tokens(e.labels[j], top)
    fig = figure_cls(figsize=(7.0, 1.3 + 0.38 * max(len(ranked), 1)), layout="constrained")
    ax = fig.add_subplot()
    draw_bars(ax, [tok for tok, _ in ranked], [val for _, val in ranked])
    p = e.prediction
    title = f"prediction: {p.label} ({p.scores.get(p.label, 0.0):.3f}) · why {e.labels[j]}"
    ax.set_title(title, loc="left", fontsize=11)
    ax.set_xlabel(
        "attention rollout weight (not an attribution)"
        if e.explainer == "attention"
        else f"attribution to {e.labels[j]} ({e.output}, {e.explainer})"
    )
    return fig


def draw_bars(
    ax: Any,
    names: Sequence[str],
    values: Sequence[float],
    notes: Sequence[str] | None = None,
    signs: Sequence[float] | None = None,
    value_text: Callable[[float], str] | None = None,
) -> None:
    """Horizontal bars, first at the top, red for positive and blue for negative values (or
    `signs`: a mean |value| bar coloured by the mean's direction), each labelled with its
    value (`value_text`, default signed) and its note (such as a count).

    A value that is not finite still gets its row: ±inf a hatched bar a little longer than
    the longest finite one, NaN no bar; both labelled `nan`/`+inf`/`-inf`. matplotlib
    itself cannot scale an axis to an infinite bar.
    """
    finite = [abs(v) for v in values if math.isfinite(v)]
    longest = max(finite, default=0.0) or 1.0
    widths = [v if math.isfinite(v) else (0.0 if math.isnan(v) else math.copysign(1.15 * longest, v)) for v in values]
    colours = [
        tuple(c / 255 for c in (GREY if math.isnan(s) else RED if s > 0 else BLUE))
        for s in (values if signs is None else signs)
    ]
    positions = list(range(len(values)))[::-1]
    bars = ax.barh(positions, widths, color=colours, height=0.7)
    for bar, v in zip(bars, values, strict=True):
        if math.isinf(v):
            bar.set_hatch("//")
    ax.set_yticks(positions, _unique_names(list(names)))
    write = value_text or _number
    texts = [write(v) + (f"  {n}" if n else "") for v, n in zip(values, notes or [""] * len(values), strict=True)]
    ax.bar_label(bars, labels=texts, padding=3, fontsize=8)
    ax.axvline(0.0, color="#8e8e98", linewidth=0.8)
    ax.margins(x=0.25)
    ax.spines[["top", "right"]].set_visible(False)


def _label_index(e: Explanation, label: str | None) -> int:
    """The named label's column; by default the predicted label's when it was explained."""
    if label is not None:
        return e.labels.index(label)
    return e.labels.index(e.prediction.label) if e.prediction.label in e.labels else 0


def _unique_names(tokens: list[str]) -> list[str]:
    """Repeated tokens (two "the"s) get a counter, so each bar has its own tick label."""
    seen: dict[str, int] = {}
    names = []
    for tok in tokens:
        seen[tok] = seen.get(tok, 0) + 1
        names.append(tok if seen[tok] == 1 else f"{tok} ({seen[tok]})")
    return names


def write_png(
    e: Explanation,
    path: str | os.PathLike[str],
    label: str | None = None,
    top: int = 10,
    dpi: int = 150,
) -> None:
    """Write `bar_chart(e)` as a PNG (needs `whybert[plot]`)."""
    bar_chart(e, label, top).savefig(path, format="png", dpi=dpi)
