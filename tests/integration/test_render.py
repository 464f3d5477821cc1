"""Pictures of real explanations: the HTML page (checked as markup) and the PNG bar chart,
and the CLI flags that write them. (The page as Chromium draws it:
system/test_render_chromium.py.)"""

from __future__ import annotations

import io
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import whybert
from whybert import cli, render
from whybert.render import BLUE, RED, blend

TEXTS = [
    "The food was unbelievably great, but the service was slow.",
    'Rude staff & a "cosy" <b>place</b>!',
]


@pytest.fixture(scope="module")
def explanations(target: str) -> list[whybert.Explanation]:
    """Real SHAP explanations of every label, from the tiny model over gRPC."""
    with whybert.Client(target) as client:
        return client.explain(TEXTS, model="tiny", targets="all", max_evals=100)


class Spans(HTMLParser):
    """Collects each explained label's highlighted text: the visible text and its token spans."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[dict[str, Any]] = []
        self.in_text = 0
        self.span: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "div" and a.get("class") == "wb-target":
            self.blocks.append({"label": a["data-label"], "text": "", "spans": []})
        elif tag == "p" and a.get("class") == "wb-text":
            self.in_text = 1
        elif tag == "span" and self.in_text and a.get("class") == "wb-tok":
            self.span = {**a, "piece": ""}

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self.span is not None:
            self.blocks[-1]["spans"].append(self.span)
            self.span = None
        elif tag == "p" and self.in_text:
            self.in_text = 0

    def handle_data(self, data: str) -> None:
        if self.in_text:
            self.blocks[-1]["text"] += data
            if self.span is not None:
                self.span["piece"] += data


def test_html_highlights_each_token_by_its_attribution(
    explanations: list[whybert.Explanation],
) -> None:
    page = render.html(explanations)
    parser = Spans()
    parser.feed(page)
    assert len(parser.blocks) == sum(len(e.labels) for e in explanations)
    blocks = iter(parser.blocks)
    for e in explanations:
        visible = [i for i, special in enumerate(e.special) if not special]
        pieces = [e.text[slice(*e.offsets[i])] for i in visible]
        for j, label in enumerate(e.labels):
            block = next(blocks)
            assert block["label"] == label
            # The page shows the original text (case, spaces, markup characters) exactly.
            assert block["text"] == e.text
            assert [s["piece"] for s in block["spans"]] == pieces
            scale = float(np.max(np.abs(e.values[visible, j])))
            for span, i in zip(block["spans"], visible, strict=True):
                assert float(span["data-value"]) == e.values[i, j]
                colour = "background:rgb({}, {}, {})".format(*blend(e.values[i, j], scale))
                assert colour in span["style"]
                assert render._number(e.values[i, j]) in span["title"]  # the hover text
    # The prediction is on top of each text, with every label's probability.
    for e in explanations:
        assert f'<span class="wb-label">{e.prediction.label}</span>' in page
        for score in e.prediction.scores.values():
            assert f"{score:.3f}</span>" in page


def test_html_is_self_contained_and_escaped(explanations: list[whybert.Explanation]) -> None:
    page = render.html(explanations)
    for external in ("http://", "https://", "<script", "<link", "@import", "url(", "src="):
        assert external not in page
    assert "<b>place" not in page
    assert all(escaped in page for escaped in ("&lt;", "&gt;", "&amp;", "&quot;"))
    assert page.count('class="wb-legend-bar"') == sum(len(e.labels) for e in explanations)


def _png_pixels(data: bytes) -> np.ndarray:
    from matplotlib import image

    rgb = image.imread(io.BytesIO(data), format="png")[..., :3]
    return np.rint(rgb * 255).astype(int)


def test_png_bar_chart_of_top_tokens(
    explanations: list[whybert.Explanation], tmp_path: Path
) -> None:
    e = explanations[0]
    label = e.prediction.label
    fig = render.bar_chart(e, top=6)
    ax = fig.axes[0]
    ranked = e.top_tokens(label, 6)
    bars = sorted(ax.patches, key=lambda p: -p.get_y())  # top bar first
    assert [p.get_width() for p in bars] == pytest.approx([v for _, v in ranked])
    by_height = sorted(zip(ax.get_yticks(), ax.get_yticklabels(), strict=True), key=lambda t: -t[0])
    ticks = [label.get_text().split(" (")[0] for _, label in by_height]
    assert ticks == [t for t, _ in ranked]
    for bar, (_, value) in zip(bars, ranked, strict=True):
        rgb = tuple(round(c * 255) for c in bar.get_facecolor()[:3])
        assert rgb == (RED if value > 0 else BLUE)
    assert label in ax.get_title(loc="left") and e.explainer in ax.get_xlabel()

    path = tmp_path / "top.png"
    render.write_png(e, path, top=6, dpi=100)
    pixels = _png_pixels(path.read_bytes())
    width, height = fig.get_size_inches() * 100
    assert pixels.shape[:2] == (round(height), round(width))
    for colour in {RED if v > 0 else BLUE for _, v in ranked}:
        assert np.any(np.all(np.abs(pixels - np.array(colour)) <= 2, axis=-1))


def test_png_without_matplotlib_says_which_extra(
    explanations: list[whybert.Explanation], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"whybert\[plot\]"):
        render.write_png(explanations[0], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cli_explain_writes_html_and_png(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    html_out, png_out = tmp_path / "out.html", tmp_path / "out.png"
    args = ["explain", TEXTS[0], "--model", "tiny", "--target", target, "--max-evals", "60"]
    assert cli.main([*args, "--html", str(html_out), "--png", str(png_out)]) == 0
    parser = Spans()
    parser.feed(html_out.read_text(encoding="utf-8"))
    assert [b["text"] for b in parser.blocks] == [TEXTS[0]]
    assert png_out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "prediction:" in capsys.readouterr().out

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert cli.main([*args, "--png", str(tmp_path / "no.png")]) == 2
    assert "whybert[plot]" in capsys.readouterr().err


def test_html_says_when_the_text_was_cut(
    target: str, explanations: list[whybert.Explanation]
) -> None:
    long_text = " ".join(["the food was great but the service was slow"] * 16)
    with whybert.Client(target) as client:
        (e,) = client.explain(long_text, model="tiny", max_evals=20)
    assert e.prediction.truncated
    assert f"it read the first {e.prediction.token_count} tokens" in render.html(e)
    assert "longer than the model reads" not in render.html(explanations)
