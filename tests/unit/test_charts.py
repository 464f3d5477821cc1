"""The PNG charts (`whybert.charts`) and the renderings of `whybert.render` on hand-made
explanations, including values that are NaN or ±inf."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import whybert
from _explanations import CORPUS, explanation
from PIL import Image
from whybert import charts, render

BROKEN = explanation(
    ["[CLS]", "the ", "food ", "was ", "great", "[SEP]"],
    [[0, 0], [math.nan, 0.1], [math.inf, -0.2], [0.3, -math.inf], [-0.05, math.nan], [0, 0]],
    ["pos", "neg"],
)


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, after checking that it decodes."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        return image.size


def assert_size(path: Path, figure: object, dpi: int) -> None:
    """The PNG is the figure's size × dpi (matplotlib truncates the product to whole pixels)."""
    expected = figure.get_size_inches() * dpi  # type: ignore[attr-defined]
    assert np.all(np.abs(np.array(png_size(path)) - expected) < 1), (png_size(path), expected)


def bar_values(ax: object) -> list[float]:
    """The bars' widths, top bar first."""
    return [p.get_width() for p in sorted(ax.patches, key=lambda p: -p.get_y())]  # type: ignore[attr-defined]


def test_token_bars_one_panel_per_label_predicted_first(tmp_path: Path) -> None:
    e = CORPUS[2]  # explains neg and pos; predicted neg
    fig = charts.token_bars(e, top=2)
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["why neg", "why pos"]
    for ax, label in zip(fig.axes, ["neg", "pos"], strict=True):
        assert bar_values(ax) == pytest.approx([v for _, v in e.top_tokens(label, 2)])
    path = tmp_path / "bars.png"
    charts.save_png(fig, path, dpi=80)
    assert_size(path, fig, 80)


def test_more_bars_make_a_taller_chart() -> None:
    short = charts.token_bars(CORPUS[2], top=1).get_size_inches()
    tall = charts.token_bars(CORPUS[2], top=3).get_size_inches()
    assert tall[1] > short[1] and tall[0] == short[0]


def test_histogram_pools_texts_per_label(tmp_path: Path) -> None:
    fig = charts.value_histogram(CORPUS, bins=5)
    assert [ax.get_title(loc="left").split(":")[0] for ax in fig.axes] == ["pos", "neg"]
    # Every non-special token value of the label is in one bin: 2 + 4 + 3 for pos.
    counts = [sum(p.get_height() for p in ax.patches) for ax in fig.axes]
    assert counts == [9, 5]
    path = tmp_path / "hist.png"
    charts.save_png(fig, path, dpi=60)
    assert_size(path, fig, 60)


def test_aggregate_bars_show_the_top_words_with_their_counts(tmp_path: Path) -> None:
    agg = whybert.aggregate(CORPUS, lowercase=True)
    fig = charts.aggregate_bars(agg, top=3)
    assert len(fig.axes) == 2
    pos = fig.axes[0]
    assert bar_values(pos) == pytest.approx([w.mean_abs for w in agg.top("pos", k=3)])
    ticks = [t.get_text() for t in sorted(pos.get_yticklabels(), key=lambda t: -t.get_position()[1])]
    assert ticks == [w.word for w in agg.top("pos", k=3)]
    assert "×4" in " ".join(t.get_text() for t in pos.texts)  # "great" occurs 4 times
    path = tmp_path / "words.png"
    charts.save_png(charts.aggregate_bars(agg, by="count"), path, dpi=50)
    assert png_size(path)[0] == round(charts.WIDTH * 50)


def test_confusion_matrix_chart_writes_each_count() -> None:
    matrix = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])
    fig = charts.confusion_matrix_chart(matrix, ["a", "b", "c"], "title")
    numbers = sorted(int(t.get_text()) for t in fig.axes[0].texts)
    assert numbers == sorted(matrix.ravel().tolist())
    with pytest.raises(ValueError, match="3×3"):
        charts.confusion_matrix_chart(matrix[:2], ["a", "b", "c"])


def test_non_finite_values_are_drawn_as_such(tmp_path: Path) -> None:
    fig = charts.token_bars(BROKEN, top=4)
    for ax in fig.axes:
        notes = {t.get_text() for t in ax.texts}
        widths = bar_values(ax)
        assert all(math.isfinite(w) for w in widths)
        assert "nan" in notes and ({"+inf", "-inf"} & notes)
    hist = charts.value_histogram(BROKEN)
    titles = [ax.get_title(loc="left") for ax in hist.axes]
    assert titles == ["pos: 2 values (not shown: 1 nan, 1 +inf)", "neg: 2 values (not shown: 1 nan, 1 -inf)"]
    agg = whybert.aggregate([BROKEN])
    for name, figure in [
        ("bars", fig), ("hist", hist), ("agg", charts.aggregate_bars(agg)), ("render", render.bar_chart(BROKEN)),
    ]:
        path = tmp_path / f"{name}.png"
        charts.save_png(figure, path, dpi=40)
        assert_size(path, figure, 40)


def test_html_and_terminal_show_nan_and_inf() -> None:
    page = render.html(BROKEN)
    for data in ('data-value="NaN"', 'data-value="Infinity"', 'data-value="-Infinity"'):
        assert data in page
    grey = "background:rgb({}, {}, {})".format(*render.GREY)
    red = "background:rgb({}, {}, {})".format(*render.RED)
    assert grey in page and red in page
    # The scale comes from the finite values: the largest finite one gets the full colour.
    assert page.count(red) == 2  # +inf and 0.3 for pos
    text = render.terminal(BROKEN, "pos", colour=False)
    assert "the[nan]" in text and "food[+inf]" in text and "attributions nan" in text
    assert "was[-inf]" in render.terminal(BROKEN, "neg", colour=False)
    assert "\x1b[48;2;{};{};{}m".format(*render.GREY) in render.terminal(BROKEN, "pos", colour=True)
    assert render.blend(math.nan, 1.0) == render.GREY and render.blend(-math.inf, 0.0) == render.BLUE


def test_charts_without_matplotlib_say_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"whybert\[plot\]"):
        charts.token_bars(CORPUS[0])


def test_token_bars_name_a_pairs_second_text_and_the_explained_entity(tmp_path: Path) -> None:
    tokens = ["[CLS]", "is ", "it", "[SEP]", "yes ", "it ", "is", "[SEP]"]
    base = explanation(tokens, [[0], [0.3], [-0.1], [0], [0.5], [0.2], [-0.4], [0]], ["neutral"])
    pair = dataclasses.replace(base, pair="yes it is", segments=[0, 0, 0, 0, 1, 1, 1, 1])
    ax = charts.token_bars(pair, top=4).axes[0]
    ticks = [t.get_text() for _, t in sorted(zip(ax.get_yticks(), ax.get_yticklabels(), strict=True),
                                             key=lambda x: -x[0])]
    assert ticks == ["yes (pair)", "is (pair)", "is", "it (pair)"]  # the two "is" apart by their text
    assert bar_values(ax) == pytest.approx([0.5, -0.4, 0.3, 0.2])

    entity = whybert.Entity("$5 or $6", "MONEY", 0, 8, 0.875)
    figure = charts.token_bars(dataclasses.replace(CORPUS[0], entity=entity, entity_index=2), top=2)
    assert figure.texts[0].get_text() == r"entity 2: '\$5 or \$6' MONEY [0, 8) (0.875)"  # `$` is no mathtext
    charts.save_png(figure, tmp_path / "entity.png", dpi=50)
    assert png_size(tmp_path / "entity.png")[0] == round(charts.WIDTH * 50)
