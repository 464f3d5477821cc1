"""How `whybert.render` shows entities and text pairs, on hand-made predictions and
explanations: the terminal (ANSI and plain), the HTML (checked as markup, escaped) and the
PNG (the figure's own Text artists, their boxes and places, and the pixels written).
(Real explanations from a server: integration/test_render.py, test_cli_entities.py,
test_cli_pairs.py.)"""

from __future__ import annotations

import io
import itertools
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import whybert
from whybert import render
from whybert.render import blend, entity_colour

pytest.importorskip("matplotlib")

TEXT = 'Angela Merkel met <script>alert("x")</script> in Paris & $5 or $6'
ENTITIES = [
    whybert.Entity("Paris", "LOC", 49, 54, 0.81),  # out of order on purpose
    whybert.Entity("Angela Merkel", "PER", 0, 13, 0.93),
    whybert.Entity('<script>alert("x")</script>', "MISC", 18, 45, 0.55),
]
QUESTION, ANSWER = "where is <b>Paris</b>?", 'Paris is in "France" & more'
PAIR_LABELS = ["entailment", "neutral", "contradiction"]


def words(text: str) -> list[tuple[str, int, int]]:
    """Each word as a token: its text with the white space after it, and its offsets."""
    return [
        (text[m.start() : m.end()], m.start(), m.start() + len(m.group().rstrip()))
        for m in re.finditer(r"\S+\s*", text)
    ]


def token_explanation(
    text: str, label: str, values: list[float], pair: str | None = None, **extra: Any
) -> whybert.Explanation:
    """An explanation of `text` (and `pair`: its words are segment 1) with one value per
    word, [CLS] and [SEP]s around them as the server sends them."""
    tokens, offsets, special, segments = [""], [(0, 0)], [True], [0]
    for segment, source in enumerate([text] if pair is None else [text, pair]):
        for piece, start, end in words(source):
            tokens.append(piece)
            offsets.append((start, end))
            special.append(False)
            segments.append(segment)
        tokens.append("[SEP]" if segment == 0 and pair is not None else "")
        offsets.append((len(source), len(source)))
        special.append(True)
        segments.append(segment)
    column = iter(values)
    value = [0.0 if s else next(column) for s in special]
    labels = [label]
    prediction = (
        whybert.Prediction(label, {label: 0.7})
        if pair is None
        else whybert.Prediction("neutral", {"entailment": 0.2, "neutral": 0.5, "contradiction": 0.3})
    )
    return whybert.Explanation(
        text=text,
        tokens=tokens,
        offsets=offsets,
        special=special,
        values=np.asarray(value, dtype=np.float64).reshape(-1, 1),
        base_values=np.zeros(1),
        output_values=np.zeros(1),
        labels=labels,
        prediction=prediction,
        explainer="shap-partition",
        output="probability",
        pair=pair,
        segments=segments if pair is not None else [],
        **extra,
    )


def entity_explanation() -> whybert.Explanation:
    """The explanation of "Angela Merkel" (PER) in TEXT: eight words, the first two the entity."""
    values = [0.5, 0.2, -0.1, 0.05, -0.3, 0.02, 0.01, -0.04, 0.03, 0.06]
    return token_explanation(TEXT, "PER", values[: len(words(TEXT))], entity=ENTITIES[1], entity_index=0)


def pair_explanation() -> whybert.Explanation:
    n = len(words(QUESTION)) + len(words(ANSWER))
    values = [0.22, -0.1, 0.4, 0.3, -0.2, 0.1, -0.5, 0.05, -0.25][:n]
    return token_explanation(QUESTION, "neutral", values, pair=ANSWER)


# ---- the terminal -----------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_entities_are_underlined_with_their_type_after_them_in_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "Angela Merkel visited Paris"
    found = [whybert.Entity("Paris", "LOC", 22, 27, 0.8), whybert.Entity("Angela Merkel", "PER", 0, 13, 0.9)]
    coloured = "\x1b[4mAngela Merkel\x1b[0m\x1b[2m[PER]\x1b[0m visited \x1b[4mParis\x1b[0m\x1b[2m[LOC]\x1b[0m"
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert render.mark_entities(text, found, Terminal()) == coloured
    assert render.mark_entities(text, found, colour=True) == coloured
    # Without a terminal, or with NO_COLOR: plain marks.
    assert render.mark_entities(text, found, io.StringIO()) == "[Angela Merkel]PER visited [Paris]LOC"
    monkeypatch.setenv("NO_COLOR", "1")
    assert render.mark_entities(text, found, Terminal()) == "[Angela Merkel]PER visited [Paris]LOC"
    # An escape character in the data cannot recolour the terminal.
    hostile = "\x1b[31mred Paris"
    shown = render.mark_entities(hostile, [whybert.Entity("Paris", "LOC", 9, 14, 0.5)], colour=True)
    assert "\x1b[31m" not in shown and shown.startswith("␛[31mred ")


def test_prediction_terminal_lists_entities_or_the_pairs_two_texts() -> None:
    p = whybert.Prediction("", {}, entities=ENTITIES, truncated=True)
    first, *lines = render.prediction_terminal(TEXT, p).splitlines()
    assert first == render.mark_entities(TEXT, ENTITIES) + " (truncated)"
    assert first.startswith("[Angela Merkel]PER met [<script>") and "[Paris]LOC & $5" in first
    by_start = sorted(ENTITIES, key=lambda x: x.start)
    assert [line.split()[0] for line in lines] == ["0", "1", "2"]
    for line, x in zip(lines, ENTITIES, strict=True):  # the server's order, with span, type, score, text
        assert f"[{x.start}, {x.end})" in line and f" {x.label} " in line and f"{x.score:.3f}" in line
        assert line.endswith(x.text)
    assert by_start[0].text in first
    assert render.prediction_terminal("nobody", whybert.Prediction("", {})).splitlines() == [
        "nobody",
        "  (no entities)",
    ]

    q = whybert.Prediction("neutral", {"entailment": 0.2, "neutral": 0.5})
    assert render.prediction_terminal(QUESTION, q, pair=ANSWER).splitlines() == [
        "prediction: neutral (entailment 0.200, neutral 0.500)",
        f"text: {QUESTION}",
        f"‖ pair: {ANSWER}",
    ]


def test_terminal_names_and_marks_the_explained_entity() -> None:
    e = entity_explanation()
    plain = render.terminal(e, colour=False).splitlines()
    assert plain[0] == "entity 0: 'Angela Merkel' PER [0, 13) score 0.930"
    assert plain[2].startswith("«Angela[+0.500] Merkel[+0.200]»[PER] met[-0.100] <script>alert(")
    assert plain[2].count("«") == plain[2].count("»") == 1
    coloured = render.terminal(e, colour=True)
    assert coloured.count("\x1b[4m") == 2  # its two pieces underlined, nothing else
    # The type comes right after the entity's last piece, before the space that follows it.
    assert re.search(r"\x1b\[4mMerkel\x1b\[0m\x1b\[2m\[PER\]\x1b\[0m \x1b\[48", coloured)
    assert "\x1b[4mmet" not in coloured


def test_terminal_shows_a_pair_as_two_lines_each_of_its_own_tokens() -> None:
    e = pair_explanation()
    for colour in (False, True):
        lines = render.terminal(e, colour=colour).splitlines()
        text_line, pair_line = lines[2], lines[3]
        assert re.sub(r"\x1b\[[0-9;]*m", "", text_line).startswith("text: ")
        assert re.sub(r"\x1b\[[0-9;]*m", "", pair_line).startswith("‖ pair: ")
        assert "France" in pair_line and "France" not in text_line and "where" in text_line
    plain = render.terminal(e, colour=False).splitlines()
    assert plain[2] == "text: where[+0.220] is[-0.100] <b>Paris</b>?[+0.400]"
    assert plain[3] == '‖ pair: Paris[+0.300] is[-0.200] in[+0.100] "France"[-0.500] &[+0.050] more[-0.250]'
    # The top tokens say which text each is of.
    assert (
        plain[4] == 'top: "France" (pair) -0.500, <b>Paris</b>? +0.400, Paris (pair) +0.300, more (pair) -0.250, '
        "where +0.220"
    )


# ---- HTML -------------------------------------------------------------------------------------


class Marks(HTMLParser):
    """The page's entity marks (`mark.wb-ent`: label, span, text, type label), its pair rows
    (`.wb-segment`: their text) and all its visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[dict[str, str]] = []
        self.rows: list[dict[str, str]] = []
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.stack.append((tag, a))
        if tag == "mark" and a.get("class") == "wb-ent":
            self.marks.append({**a, "inner": "", "type": ""})
        if a.get("class") == "wb-segment":
            self.rows.append({**a, "text": ""})

    def handle_endtag(self, tag: str) -> None:
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text += data
        classes = [a.get("class", "") for _, a in self.stack]
        if "wb-segment" in classes:
            self.rows[-1]["text"] += data
        if "wb-ent" in classes:
            self.marks[-1]["type" if classes[-1] == "wb-entity-type" else "inner"] += data


def test_prediction_html_boxes_each_entity_with_its_type_escaped() -> None:
    p = whybert.Prediction("", {}, entities=ENTITIES)
    page = render.predictions_html([TEXT], [p])
    for external in ("<script", "http://", "https://", "src=", "<link"):
        assert external not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page and "&amp; $5" in page
    parser = Marks()
    parser.feed(page)
    by_start = sorted(ENTITIES, key=lambda x: x.start)
    assert [(m["data-label"], m["inner"], m["type"]) for m in parser.marks] == [
        (x.label, x.text, x.label) for x in by_start
    ]
    assert [(int(m["data-start"]), int(m["data-end"])) for m in parser.marks] == [(x.start, x.end) for x in by_start]
    for m, x in zip(parser.marks, by_start, strict=True):
        assert "border-color:rgb({}, {}, {})".format(*entity_colour(x.label)) in m["style"]
        assert f"{x.score:.3f}" in m["title"]
    # The text is all there, in order, with the type labels after the entities.
    assert 'PER met <script>alert("x")</script>MISC in ParisLOC & $5 or $6' in parser.text


def test_prediction_html_of_a_pair_is_two_rows_and_no_entities_says_so() -> None:
    q = whybert.Prediction("neutral", {"entailment": 0.2, "neutral": 0.5, "contradiction": 0.3}, truncated=True)
    page = render.predictions_html(QUESTION, q, pairs=[ANSWER])
    parser = Marks()
    parser.feed(page)
    assert [(r["data-segment"], r["text"]) for r in parser.rows] == [("0", "text" + QUESTION), ("1", "pair" + ANSWER)]
    assert '<span class="wb-label">neutral</span>' in page and "0.500</span>" in page and "longer than" in page
    assert "<b>Paris" not in page and "&lt;b&gt;Paris&lt;/b&gt;" in page
    empty = render.predictions_html(["nobody here"], [whybert.Prediction("", {})])
    assert '<span class="wb-label">0</span>' in empty and "no entities" in empty
    with pytest.raises(ValueError, match="2 texts, 1 predictions and 2 pairs"):
        render.predictions_html(["a", "b"], [q], pairs=["c", "d"])


def test_html_of_an_entity_explanation_names_and_marks_the_entity() -> None:
    e = entity_explanation()
    page = render.html(e)
    assert '<span>entity</span><span class="wb-label">Angela Merkel</span>' in page
    assert "why <b>PER</b> for <b>Angela Merkel</b> [0, 13)" in page and "[0, 13)</span>" in page
    marked = re.findall(r'<span class="wb-entity" data-entity="PER"><span class="wb-tok"[^>]*>([^<]*)</span>', page)
    assert marked == ["Angela", "Merkel"]
    assert page.count('<span class="wb-entity-type">PER</span>') == 1
    assert page.index('Merkel</span></span><span class="wb-entity-type">PER</span>') < page.index(">met<")
    assert "<script" not in page and "&lt;script&gt;" in page


def test_html_of_a_pair_explanation_is_two_rows_each_from_its_own_offsets() -> None:
    e = pair_explanation()
    page = render.html(e)
    parser = Marks()
    parser.feed(page)
    assert [(r["data-segment"], r["text"]) for r in parser.rows] == [("0", "text" + QUESTION), ("1", "pair" + ANSWER)]
    assert page.count('class="wb-pair-sep"') == 1 and "<b>Paris" not in page
    # Each row's token spans are the slices of its own text, with their values.
    spans = re.findall(r'data-segment="(\d)">|<span class="wb-tok"[^>]*data-value="([^"]+)"[^>]*>([^<]*)</span>', page)
    segment, seen = "0", {"0": [], "1": []}
    for row, value, piece in spans:
        segment = row or segment
        if not row:
            seen[segment].append((piece, float(value)))
    visible = [i for i, s in enumerate(e.special) if not s]
    for k, source in (("0", QUESTION), ("1", ANSWER)):
        mine = [i for i in visible if e.segments[i] == int(k)]
        expected = [(render._esc(source[slice(*e.offsets[i])]), e.values[i, 0]) for i in mine]
        assert seen[k] == expected


# ---- PNG --------------------------------------------------------------------------------------


def drawn(fig: Any) -> Any:
    """Draw the figure on an Agg canvas, so that the texts have their places."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def colour_of(patch_colour: Any) -> tuple[int, ...]:
    return tuple(round(c * 255) for c in patch_colour[:3])


def pixels(path: Path) -> np.ndarray:
    from matplotlib import image

    return np.rint(image.imread(str(path))[..., :3] * 255).astype(int)


def has_colour(image: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool(np.any(np.all(np.abs(image - np.array(colour)) <= 2, axis=-1)))


def test_prediction_png_boxes_each_entity_in_its_types_colour(tmp_path: Path) -> None:
    p = whybert.Prediction("", {}, entities=ENTITIES)
    long_text = TEXT + " and then " + " ".join(["Angela Merkel met people in Paris"] * 4)
    fig = render.prediction_chart([TEXT, long_text], [p, p])
    ax = fig.axes[0]
    assert ax.get_title(loc="left") == "text 1 · 3 entities: LOC, MISC, PER"
    texts = ax.texts
    kinds = [t.get_gid() for t in texts]
    boxes = [t for t in texts if t.get_gid() == "entity"]
    by_start = sorted(ENTITIES, key=lambda x: x.start)
    assert [t.get_text() for t in boxes] == [x.text for x in by_start]  # `<script>` and `$` drawn as they are
    for t, x in zip(boxes, by_start, strict=True):
        patch = t.get_bbox_patch()
        assert colour_of(patch.get_edgecolor()) == entity_colour(x.label) and patch.get_linewidth() > 0
        after = texts[texts.index(t) + 1]
        assert after.get_gid() == "type" and after.get_text().strip() == x.label
        assert colour_of(after.get_color()) == entity_colour(x.label)
    shown = "".join(t.get_text() for t, k in zip(texts, kinds, strict=True) if k in ("gap", "entity"))
    assert re.sub(r"\s", "", shown) == re.sub(r"\s", "", TEXT)

    # Drawn: each line left to right, lines top to bottom, inside the figure's width.
    renderer = drawn(fig)
    width = fig.get_size_inches()[0] * fig.dpi
    long_texts = fig.axes[1].texts
    boxes_of = [t.get_window_extent(renderer) for t in long_texts]
    assert all(b.x0 >= 0 and b.x1 <= width for b in boxes_of)
    tops = sorted({round(b.y0) for b in boxes_of}, reverse=True)
    assert len(tops) >= 2  # the long text wraps
    for a, b in itertools.pairwise(boxes_of):
        assert b.x0 >= a.x1 - 1 or round(b.y0) < round(a.y0)

    path = tmp_path / "entities.png"
    render.write_prediction_png([TEXT], [p], path, dpi=80)
    image = pixels(path)
    assert image.shape[1] == round(7.0 * 80)
    for x in ENTITIES:
        assert has_colour(image, entity_colour(x.label)), x.label


def test_prediction_png_of_a_pair_has_two_named_rows() -> None:
    q = whybert.Prediction("neutral", {"entailment": 0.2, "neutral": 0.5, "contradiction": 0.3})
    fig = render.prediction_chart([QUESTION], [q], pairs=[ANSWER])
    ax = fig.axes[0]
    assert ax.get_title(loc="left") == "text 1 · prediction: neutral (0.500)"
    rows = [t for t in ax.texts if t.get_gid() == "row"]
    assert [t.get_text() for t in rows] == ["text: ", "pair: "]
    renderer = drawn(fig)
    first, second = (t.get_window_extent(renderer) for t in rows)
    assert second.y1 <= first.y0 + 1 and abs(first.x0 - second.x0) < 1
    after = ax.texts[ax.texts.index(rows[1]) :]
    assert "".join(t.get_text() for t in after[1:]) == ANSWER


def test_png_of_an_entity_explanation_names_and_boxes_the_entity() -> None:
    e = entity_explanation()
    fig = render.bar_chart(e, top=4)
    bars, panel = fig.axes
    assert bars.get_title(loc="left") == r"entity 0: 'Angela Merkel' PER [0, 13) (0.930) · why PER"
    assert [p.get_width() for p in sorted(bars.patches, key=lambda p: -p.get_y())] == pytest.approx(
        [v for _, v in e.top_tokens("PER", 4)]
    )
    texts = panel.texts
    boxed = [t for t in texts if t.get_gid() == "entity"]
    assert [t.get_text() for t in boxed] == ["Angela", "Merkel"]
    scale = 0.5
    for t, value in zip(boxed, [0.5, 0.2], strict=True):
        patch = t.get_bbox_patch()
        assert colour_of(patch.get_facecolor()) == blend(value, scale)
        assert colour_of(patch.get_edgecolor()) == (29, 29, 31) and patch.get_linewidth() > 0
    tag = texts[texts.index(boxed[-1]) + 1]
    assert tag.get_gid() == "type" and tag.get_text().strip() == "PER"
    plain = [t for t in texts if t.get_gid() == "token"]
    assert plain and all(t.get_bbox_patch().get_linewidth() == 0 for t in plain)
    drawn(fig)  # `$5` and `<script>` in the text: drawn, no mathtext error


def test_png_of_a_pair_explanation_draws_both_texts_as_rows(tmp_path: Path) -> None:
    e = pair_explanation()
    fig = render.bar_chart(e, top=5)
    bars, panel = fig.axes
    ticks = [
        t.get_text()
        for _, t in sorted(zip(bars.get_yticks(), bars.get_yticklabels(), strict=True), key=lambda x: -x[0])
    ]
    assert ticks == ['"France" (pair)', "<b>Paris</b>?", "Paris (pair)", "more (pair)", "where"]
    texts = panel.texts
    rows = [t for t in texts if t.get_gid() == "row"]
    assert [t.get_text() for t in rows] == ["text: ", "pair: "]
    second = texts.index(rows[1])
    first_tokens = [t.get_text() for t in texts[:second] if t.get_gid() == "token"]
    second_tokens = [t.get_text() for t in texts[second:] if t.get_gid() == "token"]
    assert first_tokens == ["where", "is", "<b>Paris</b>?"]
    assert second_tokens == ["Paris", "is", "in", '"France"', "&", "more"]
    values = [e.values[i, 0] for i, s in enumerate(e.special) if not s]
    tokens = [t for t in texts if t.get_gid() == "token"]
    for t, value in zip(tokens, values, strict=True):
        assert colour_of(t.get_bbox_patch().get_facecolor()) == blend(value, 0.5)
    renderer = drawn(fig)
    top_row = max(t.get_window_extent(renderer).y0 for t in texts[second:])
    assert top_row < min(t.get_window_extent(renderer).y0 for t in texts[:second])  # the pair's row is below
    path = tmp_path / "pair.png"
    render.write_png(e, path, top=5, dpi=80)
    assert has_colour(pixels(path), blend(-0.5, 0.5))  # "France": full blue, in the text and its bar
