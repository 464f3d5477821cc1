"""Showing explanations and predictions to people: coloured terminal text, a self-contained
HTML page and a PNG (a bar chart, and the text drawn).

Colours follow shap's convention: red pushes the explained label's output up, blue pushes
it down; the stronger the colour, the larger the attribution relative to the text's largest.
A value that is not finite (a broken model can give NaN or ±inf) is shown as such: `nan` in
grey, `±inf` in the full colour; the scale comes from the finite values only.

Entities and text pairs, everywhere: a token model's prediction shows its text with each
entity marked and typed (`mark_entities`, `prediction_fragment`, `prediction_chart`); an
entity's explanation names the entity (text, type, span) and marks it in the text; a text
pair's two texts are two rows, each token placed by its offsets into its own text, and a
list of tokens names the second text's `word (pair)` (`ranked_tokens`). Text is data: it is
escaped in HTML, drawn without mathtext in PNGs, and its escape characters are neutralised
in the terminal.

HTML needs only the standard library; the PNG needs matplotlib (`whybert[plot]`).
"""

from __future__ import annotations

import html as html_lib
import math
import os
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ._types import Entity, Explanation, Prediction

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
    """The text with each token's background coloured by its attribution, and the top tokens.

    An entity's explanation names the entity (text, type, span) on its first line and marks
    it in the text: underlined with its type after it (`«Angela[+0.120] Merkel[+0.080]»[PER]`
    without colour). A text pair's two texts are two lines, `text:` and `‖ pair:`, each
    from its own tokens; the top tokens of the second text are named `word (pair)`.
    """
    j = e.labels.index(label) if label is not None else 0
    column = e.values[:, j]
    scale = _text_scale(e, j)
    rows = []
    for name, indices in _segment_rows(e):
        parts = [] if name is None else [f"\x1b[1m{name}:\x1b[0m " if colour else f"{name}: "]
        ends = _entity_ends(e, indices)
        for i in indices:
            parts.append(_terminal_token(e, i, float(column[i]), scale, colour, ends))
        rows.append("".join(parts).rstrip())
    scores = ", ".join(f"{k} {v:.3f}" for k, v in e.prediction.scores.items())
    lines = [
        f"prediction: {e.prediction.label} ({scores})" if e.entity is None else _entity_line(e),
        _attention_caption(e)
        if e.explainer == "attention"
        else f"explaining {e.labels[j]!r} ({e.output}, {e.explainer}): base {_signed(float(e.base_values[j]))} "
        f"+ attributions {_signed(float(column.sum()))} = {_signed(float(e.output_values[j]))}",
        *rows,
    ]
    ranked = ranked_tokens(e, e.labels[j], top)
    if ranked:
        lines.append("top: " + ", ".join(f"{tok} {_signed(val, 3)}" for tok, val in ranked))
    return "\n".join(lines)


def _terminal_token(
    e: Explanation, i: int, value: float, scale: float, colour: bool, ends: tuple[int, int] | None
) -> str:
    """One token as `terminal` shows it; the explained entity's pieces (`ends`: its first
    and last) marked, its type after its last piece."""
    token = _printable(e.tokens[i])
    inside = _in_entity(e, i)
    tag = e.entity.label if ends is not None and i == ends[1] and e.entity is not None else None
    if not colour:
        first = ends is not None and i == ends[0]
        shown = f"{'«' if first else ''}{token.strip()}[{_signed(value, 3)}]"
        return shown + (f"»[{_printable(tag)}] " if tag is not None else " ")
    r, g, b = blend(value, scale)
    underline = "\x1b[4m" if inside else ""  # the explained entity
    core = token.rstrip() if tag is not None else token
    shown = f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{underline}{core}\x1b[0m"
    if tag is not None:
        shown += f"\x1b[2m[{_printable(tag)}]\x1b[0m" + token[len(core) :]
    return shown


PAIR_ROW = "‖ pair"  # how the terminal names a pair's second text


def _segment_rows(e: Explanation) -> list[tuple[str | None, list[int]]]:
    """The visible tokens by line: one unnamed line of a single text; `text` and `‖ pair`,
    each its own tokens in order, of a text pair."""
    visible = _visible(e)
    if e.pair is None or not e.segments:
        return [(None, visible)]
    first, second = ([i for i in visible if e.segments[i] == k] for k in (0, 1))
    return [("text", first), (PAIR_ROW, second)]


def _entity_ends(e: Explanation, indices: Sequence[int]) -> tuple[int, int] | None:
    """The first and last of `indices` inside the explained entity (its type goes after
    the last), or None."""
    inside = [i for i in indices if _in_entity(e, i)]
    return (inside[0], inside[-1]) if inside else None


def _printable(text: str) -> str:
    """Text for a terminal: an escape character in the data shows as ␛ and cannot recolour
    or move anything."""
    return text.replace("\x1b", "␛")


def token_name(e: Explanation, i: int) -> str:
    """Token i's text without its white space; `word (pair)` for a text pair's second text."""
    name = e.tokens[i].strip()
    return f"{name} (pair)" if e.pair is not None and e.segments and e.segments[i] == 1 else name


def ranked_tokens(e: Explanation, label: str | None = None, k: int = 10) -> list[tuple[str, float]]:
    """`Explanation.top_tokens`, with the tokens named by `token_name` (a pair's second
    text says so)."""
    if e.pair is None or not e.segments:
        return e.top_tokens(label, k)
    j = e.labels.index(label) if label is not None else 0
    order = np.argsort(-np.abs(e.values[:, j]))
    picked = [i for i in order if not e.special[i]][:k]
    return [(token_name(e, int(i)), float(e.values[i, j])) for i in picked]


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


def mark_entities(
    text: str, entities: Sequence[Entity], stream: TextIO | None = None, *, colour: bool | None = None
) -> str:
    """The text with each entity marked and typed: underlined with its type after it
    (`Angela Merkel[PER]`, the name underlined, the type dim) where `stream` takes colour
    (or `colour`), `[Angela Merkel]PER` otherwise. Overlapping entities: the first one."""
    if colour is None:
        colour = stream is not None and _wants_colour(stream)
    parts, cursor = [], 0
    for entity in sorted(entities, key=lambda x: x.start):
        if entity.start < cursor:
            continue
        parts.append(_printable(text[cursor : entity.start]))
        inner, label = _printable(text[entity.start : entity.end]), _printable(entity.label)
        parts.append(f"\x1b[4m{inner}\x1b[0m\x1b[2m[{label}]\x1b[0m" if colour else f"[{inner}]{label}")
        cursor = entity.end
    parts.append(_printable(text[cursor:]))
    return "".join(parts)


def prediction_terminal(text: str, p: Prediction, pair: str | None = None, colour: bool = False) -> str:
    """A prediction as text: a token model's text with its entities marked (`mark_entities`)
    and one line per entity (index, span, type, score, text); otherwise the label and every
    score, then the text, or a pair's two texts as two lines (`text:` and `‖ pair:`)."""
    cut = " (truncated)" if p.truncated else ""
    if p.entities or not p.scores:  # a token model
        lines = [mark_entities(text, p.entities, colour=colour) + cut]
        if not p.entities:
            lines.append("  (no entities)")
        for i, x in enumerate(p.entities):
            span = f"[{x.start}, {x.end})"
            lines.append(f"  {i:>3}  {span}  {_printable(x.label):<8} {x.score:.3f}  {_printable(x.text)}")
        return "\n".join(lines)
    scores = ", ".join(f"{k} {v:.3f}" for k, v in p.scores.items())
    lines = [f"prediction: {_printable(p.label)} ({scores}){cut}"]
    if pair is None:
        return "\n".join([*lines, _printable(text)])
    on, off = ("\x1b[1m", "\x1b[0m") if colour else ("", "")
    return "\n".join([*lines, f"{on}text:{off} {_printable(text)}", f"{on}{PAIR_ROW}:{off} {_printable(pair)}"])


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
.wb-segment { display: block; }
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
.wb-ent { background: none; color: inherit; border: 2px solid; border-radius: 4px; padding: 0 2px;
  box-decoration-break: clone; -webkit-box-decoration-break: clone; }
.wb-ent .wb-entity-type { vertical-align: baseline; margin-left: 3px; }
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
    return _pair_rows(
        _highlighted_segment(e, j, scale, e.text, first), _highlighted_segment(e, j, scale, e.pair, second)
    )


def _pair_rows(first: str, second: str) -> str:
    """A text pair's two texts (markup already) as two rows, named and apart."""
    return (
        f'<span class="wb-segment" data-segment="0"><span class="wb-pair-part">text</span>{first}</span>'
        '<span class="wb-pair-sep"></span>'
        f'<span class="wb-segment" data-segment="1"><span class="wb-pair-part">pair</span>{second}</span>'
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
    return _scores_header(p)


def _scores_header(p: Prediction) -> str:
    """A sequence or pair model's prediction: its label, then every label's probability."""
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
    about = ""
    if e.entity is not None:  # the explained entity: which one, where
        about = f" for <b>{_esc(e.entity.text)}</b> [{e.entity.start}, {e.entity.end})"
    caption = (
        f"why <b>{label}</b>{about} · {_esc(e.explainer)}, {_esc(e.output)}: "
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
    return _page(title, html_fragment(items, shared_scale))


def _page(title: str, body: str) -> str:
    """A self-contained page around a fragment of this module's markup."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{STYLE}"
        "body { margin: 16px; background: #f6f6f8; }</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def write_html(
    explanations: Sequence[Explanation] | Explanation,
    path: str | os.PathLike[str],
    shared_scale: bool = False,
) -> None:
    """Write `html(explanations)` to a file (UTF-8)."""
    Path(path).write_text(html(explanations, shared_scale=shared_scale), encoding="utf-8")


# ---- predictions: entities marked, pairs in two rows ------------------------------------------

#: The colours of the usual entity types; any other type gets one of PALETTE, chosen by its name.
ENTITY_COLOURS = {"PER": (213, 94, 0), "ORG": (117, 76, 170), "LOC": (0, 140, 96), "MISC": (0, 114, 178)}
PALETTE = [(204, 121, 167), (86, 150, 210), (160, 120, 20), (90, 90, 100), (200, 60, 60), (40, 150, 150)]


def entity_colour(label: str) -> tuple[int, int, int]:
    """An entity type's colour: the same in every rendering and every run."""
    return ENTITY_COLOURS.get(label.upper()) or PALETTE[zlib.crc32(label.encode()) % len(PALETTE)]


def _entity_spans(text: str, entities: Sequence[Entity]) -> list[tuple[int, int, Entity | None]]:
    """The text cut at its entities: (start, end, entity or None for the text between),
    in order; an entity overlapping an earlier one is left out."""
    spans: list[tuple[int, int, Entity | None]] = []
    cursor = 0
    for x in sorted(entities, key=lambda x: x.start):
        start, end = max(0, min(x.start, len(text))), max(0, min(x.end, len(text)))
        if start < cursor or end <= start:
            continue
        if start > cursor:
            spans.append((cursor, start, None))
        spans.append((start, end, x))
        cursor = end
    if cursor < len(text) or not spans:
        spans.append((cursor, len(text), None))
    return spans


def _marked_entities(text: str, entities: Sequence[Entity]) -> str:
    """The text as markup, each entity boxed in its type's colour with the type after it."""
    parts = []
    for start, end, x in _entity_spans(text, entities):
        if x is None:
            parts.append(_esc(text[start:end]))
            continue
        colour = _rgb(entity_colour(x.label))
        tip = _esc(f"{x.label} {x.score:.3f} [{x.start}, {x.end})")
        parts.append(
            f'<mark class="wb-ent" style="border-color:{colour}" data-label="{_esc(x.label)}" '
            f'data-start="{x.start}" data-end="{x.end}" data-score="{_data_number(x.score)}" title="{tip}">'
            f'{_esc(text[start:end])}<span class="wb-entity-type" style="color:{colour}">{_esc(x.label)}</span></mark>'
        )
    return "".join(parts)


def prediction_fragment(text: str, p: Prediction, pair: str | None = None) -> str:
    """One prediction as a `<section>`: a token model's text with each entity boxed and
    typed (its score and span on hover); otherwise the label and every probability over the
    text, or over a text pair's two texts in two rows."""
    if p.entities or not p.scores:  # a token model
        kinds = "".join(
            f'<span class="wb-score" data-label="{_esc(t)}"><span class="wb-entity-type" '
            f'style="color:{_rgb(entity_colour(t))}">{_esc(t)}</span></span>'
            for t in sorted({x.label for x in p.entities})
        )
        head = (
            '<div class="wb-prediction"><span>entities</span>'
            f'<span class="wb-label">{len(p.entities)}</span>{kinds}</div>'
        )
        body = f'<p class="wb-text">{_marked_entities(text, p.entities)}</p>'
        if not p.entities:
            body += '<div class="wb-note">no entities</div>'
    else:
        head = _scores_header(p)
        shown = _esc(text) if pair is None else _pair_rows(_esc(text), _esc(pair))
        body = f'<p class="wb-text">{shown}</p>'
    if p.truncated:
        body += (
            f'<div class="wb-note">the text is longer than the model reads: it read the first '
            f"{p.token_count} tokens</div>"
        )
    return f'<section class="wb-explanation" data-kind="prediction">{head}{body}</section>'


def predictions_html(
    texts: Sequence[str] | str,
    predictions: Sequence[Prediction] | Prediction,
    pairs: Sequence[str] | None = None,
    title: str = "whybert prediction",
) -> str:
    """A self-contained page (inline CSS, no scripts) of predictions: `prediction_fragment`
    of each text (and its pair: `pairs` holds one second text per text)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    items = [predictions] if isinstance(predictions, Prediction) else list(predictions)
    seconds: list[str | None] = list(pairs) if pairs is not None else [None] * len(texts)
    if not len(texts) == len(items) == len(seconds):
        raise ValueError(f"{len(texts)} texts, {len(items)} predictions and {len(seconds)} pairs")
    fragments = [prediction_fragment(t, p, q) for t, p, q in zip(texts, items, seconds, strict=True)]
    return _page(title, "\n".join(fragments))


def write_predictions_html(
    texts: Sequence[str] | str,
    predictions: Sequence[Prediction] | Prediction,
    path: str | os.PathLike[str],
    pairs: Sequence[str] | None = None,
) -> None:
    """Write `predictions_html(...)` to a file (UTF-8)."""
    Path(path).write_text(predictions_html(texts, predictions, pairs), encoding="utf-8")


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

    An entity's explanation names the entity in the title, and a text pair's names the
    second text's tokens `word (pair)`; both get the text drawn above the bars (`fig.axes[1]`),
    each token on its colour: the entity boxed with its type after it, a pair's two texts
    as two rows.

    Built on `matplotlib.figure.Figure`, not pyplot, so it needs no display and no global
    state and is safe to call from threads.
    """
    figure_cls = _matplotlib_figure()
    j = _label_index(e, label)
    ranked = ranked_tokens(e, e.labels[j], top)
    bars_height = 1.3 + 0.38 * max(len(ranked), 1)
    lines = _wrap_rows(_explanation_rows(e, j)) if e.entity is not None or e.pair is not None else []
    panel = _panel_inches(len(lines)) if lines else 0.0
    fig = figure_cls(figsize=(7.0, bars_height + panel), layout="constrained")
    if lines:
        grid = fig.add_gridspec(2, 1, height_ratios=[panel, bars_height])
        ax = fig.add_subplot(grid[1])  # the bars stay the first axes
        _draw_lines(fig.add_subplot(grid[0]), lines)
    else:
        ax = fig.add_subplot()
    draw_bars(ax, [tok for tok, _ in ranked], [val for _, val in ranked])
    p = e.prediction
    if e.entity is not None:
        x = e.entity
        head = _plain(f"entity {e.entity_index}: {x.text!r} {x.label} [{x.start}, {x.end}) ({x.score:.3f})")
    else:
        head = f"prediction: {p.label} ({p.scores.get(p.label, 0.0):.3f})"
    title = f"{head} · why {e.labels[j]}"
    ax.set_title(title, loc="left", fontsize=11)
    ax.set_xlabel(
        "attention rollout weight (not an attribution)"
        if e.explainer == "attention"
        else f"attribution to {e.labels[j]} ({e.output}, {e.explainer})"
    )
    return fig


# A text drawn in a figure: pieces (a token, the text between, an entity, its type), each
# its own matplotlib Text, laid one after the other and wrapped into lines.
TEXT_FONT = 9.0
LINE_CHARS = 84  # characters a line holds at TEXT_FONT on a 7-inch figure, with room to spare
LINE_POINTS = 20.0


@dataclass(frozen=True)
class Piece:
    """A piece of drawn text; `kind` (its Text's gid) says what it is: `gap` (text between
    tokens or entities), `token`, `entity` (boxed in `edge`), `type` (an entity's type),
    `row` (the name of a pair's row)."""

    text: str
    kind: str
    fill: tuple[int, int, int] | None = None
    edge: tuple[int, int, int] | None = None
    ink: tuple[int, int, int] = (29, 29, 31)
    size: float = TEXT_FONT
    bold: bool = False


def _gap(text: str) -> list[Piece]:
    """Text between marks, a word at a time (so that it wraps)."""
    return [Piece(w, "gap") for w in re.findall(r"\S+\s*|\s+", text)]


def _row_name(name: str) -> Piece:
    return Piece(f"{name}: ", "row", ink=(110, 110, 120), bold=True)


def _explanation_rows(e: Explanation, j: int) -> list[list[Piece]]:
    """The explained text(s) as pieces: each token on its colour (from its offsets, so the
    text keeps its spaces), the explained entity's tokens boxed with its type after them;
    a pair's two texts as two rows, each named."""
    scale = _text_scale(e, j)
    rows = []
    for name, indices in _segment_rows(e):
        second = name == PAIR_ROW and e.pair is not None
        text = e.pair if second and e.pair is not None else e.text
        pieces = [] if name is None else [_row_name("pair" if second else "text")]
        ends = _entity_ends(e, indices)
        cursor = 0
        for i in sorted(indices, key=lambda i: e.offsets[i]):
            start, end = e.offsets[i]
            start = max(start, cursor)
            if end <= start:
                continue
            pieces += _gap(text[cursor:start])
            inside = ends is not None and _in_entity(e, i)
            fill, edge = blend(float(e.values[i, j]), scale), (29, 29, 31) if inside else None
            pieces.append(Piece(text[start:end], "entity" if inside else "token", fill=fill, edge=edge))
            if ends is not None and i == ends[1] and e.entity is not None:
                pieces.append(Piece(f" {e.entity.label} ", "type", size=TEXT_FONT - 2, bold=True))
            cursor = end
        pieces += _gap(text[cursor:])
        rows.append(pieces)
    return rows


def _prediction_rows(text: str, p: Prediction, pair: str | None) -> list[list[Piece]]:
    """A prediction's text(s) as pieces: entities boxed in their type's colour with the type
    after them; a pair's two texts as two named rows."""
    if pair is not None:
        return [[_row_name("text"), *_gap(text)], [_row_name("pair"), *_gap(pair)]]
    pieces: list[Piece] = []
    for start, end, x in _entity_spans(text, p.entities):
        if x is None:
            pieces += _gap(text[start:end])
            continue
        colour = entity_colour(x.label)
        light = tuple(round(255 + (c - 255) * 0.2) for c in colour)
        pieces.append(Piece(text[start:end], "entity", fill=light, edge=colour))  # type: ignore[arg-type]
        pieces.append(Piece(f" {x.label} ", "type", ink=colour, size=TEXT_FONT - 2, bold=True))
    return [pieces]


def _wrap_rows(rows: Sequence[Sequence[Piece]], width: int = LINE_CHARS) -> list[list[Piece]]:
    """Rows of pieces as lines of at most about `width` characters (a piece is never cut;
    each row starts a line; a line does not start with white space)."""
    lines: list[list[Piece]] = []
    for row in rows:
        line: list[Piece] = []
        used = 0
        for piece in row:
            if line and used + len(piece.text) > width and piece.kind != "type":
                lines.append(line)
                line, used = [], 0
            if not line and piece.kind == "gap" and not piece.text.strip():
                continue
            line.append(piece)
            used += len(piece.text)
        lines.append(line)
    return lines


def _panel_inches(lines: int) -> float:
    return 0.12 + LINE_POINTS / 72 * max(lines, 1)


def _draw_lines(ax: Any, lines: Sequence[Sequence[Piece]]) -> None:
    """Draw the lines down from the top of `ax` (its axis hidden), from the figure's left
    edge: each piece a Text (or an Annotation placed at the end of the one before), its
    `gid` its kind; white space and `$` are drawn as they are (no mathtext)."""
    from matplotlib.transforms import blended_transform_factory, offset_copy

    ax.set_axis_off()
    figure = ax.get_figure()
    left_top = blended_transform_factory(figure.transFigure, ax.transAxes)
    for k, line in enumerate(lines):
        where = offset_copy(left_top, fig=figure, y=-(k + 1) * LINE_POINTS, units="points")
        previous = None
        for piece in line:
            style: dict[str, Any] = {
                "fontsize": piece.size,
                "color": _unit(piece.ink),
                "fontweight": "bold" if piece.bold else "normal",
                "va": "bottom",
                "ha": "left",
                "parse_math": False,
                "gid": piece.kind,
            }
            if piece.fill is not None or piece.edge is not None:
                style["bbox"] = {
                    "boxstyle": "square,pad=0.15",
                    "facecolor": "none" if piece.fill is None else _unit(piece.fill),
                    "edgecolor": "none" if piece.edge is None else _unit(piece.edge),
                    "linewidth": 1.2 if piece.edge is not None else 0.0,
                }
            shown = re.sub(r"[\r\n\t\v\f]", " ", piece.text)
            if previous is None:
                text = ax.text(0.015, 1.0, shown, transform=where, **style)
            else:
                text = ax.annotate(shown, xy=(1.0, 0.0), xycoords=previous, **style)
            text.set_in_layout(False)
            previous = text


def _plain(text: str) -> str:
    """Data in a matplotlib title, drawn as it is: `$` would start mathtext there."""
    return text.replace("$", r"\$")


def _unit(colour: tuple[int, int, int]) -> tuple[float, ...]:
    return tuple(c / 255 for c in colour)


def prediction_chart(
    texts: Sequence[str] | str,
    predictions: Sequence[Prediction] | Prediction,
    pairs: Sequence[str] | None = None,
) -> Any:
    """A matplotlib `Figure` of predictions, one panel per text (`fig.axes[i]`): a token
    model's text with each entity boxed in its type's colour and the type after it (the
    title counts them); otherwise the title gives the label and its probability, over the
    text or a text pair's two texts in two rows."""
    figure_cls = _matplotlib_figure()
    texts = [texts] if isinstance(texts, str) else list(texts)
    items = [predictions] if isinstance(predictions, Prediction) else list(predictions)
    seconds: list[str | None] = list(pairs) if pairs is not None else [None] * len(texts)
    if not len(texts) == len(items) == len(seconds) or not texts:
        raise ValueError(f"{len(texts)} texts, {len(items)} predictions and {len(seconds)} pairs: nothing to draw")
    panels = [_wrap_rows(_prediction_rows(t, p, q)) for t, p, q in zip(texts, items, seconds, strict=True)]
    heights = [0.35 + _panel_inches(len(lines)) for lines in panels]
    fig = figure_cls(figsize=(7.0, sum(heights)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for n, (ax, lines, p) in enumerate(zip(axes, panels, items, strict=True), start=1):
        _draw_lines(ax, lines)
        if p.entities or not p.scores:
            kinds = ", ".join(sorted({x.label for x in p.entities}))
            head = f"{len(p.entities)} entit{'y' if len(p.entities) == 1 else 'ies'}" + (f": {kinds}" if kinds else "")
        else:
            head = f"prediction: {p.label} ({p.scores.get(p.label, 0.0):.3f})"
        cut = " (truncated)" if p.truncated else ""
        ax.set_title(f"text {n} · {head}{cut}", loc="left", fontsize=10)
    return fig


def write_prediction_png(
    texts: Sequence[str] | str,
    predictions: Sequence[Prediction] | Prediction,
    path: str | os.PathLike[str],
    pairs: Sequence[str] | None = None,
    dpi: int = 150,
) -> None:
    """Write `prediction_chart(...)` as a PNG (needs `whybert[plot]`)."""
    prediction_chart(texts, predictions, pairs).savefig(path, format="png", dpi=dpi)


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
