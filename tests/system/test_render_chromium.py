"""The HTML page of a real explanation as a browser draws it (Debian's headless Chromium,
driven by Playwright): colours, hover values, no network, and a screenshot. (The page's
markup and the PNG chart: integration/test_render.py.)"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import whybert
from playwright.sync_api import Page, expect
from whybert import render
from whybert.render import BLUE, RED

TEXT = "The food was unbelievably great, but the service was slow."


def strongest(e: whybert.Explanation, j: int) -> int:
    """Index of the visible token with the largest |value| for label j."""
    visible = [i for i, special in enumerate(e.special) if not special]
    return max(visible, key=lambda i: abs(e.values[i, j]))


def png_pixels(data: bytes) -> np.ndarray:
    from matplotlib import image

    rgb = image.imread(io.BytesIO(data), format="png")[..., :3]
    return np.rint(rgb * 255).astype(int)


def test_html_in_headless_chromium(page: Page, target: str, tmp_path: Path) -> None:
    """The page as a browser draws it: colours, hover values, no network, and a screenshot."""
    with whybert.Client(target) as client:
        (e,) = client.explain([TEXT], model="tiny", targets="all", max_evals=100)
    path = tmp_path / "explanation.html"
    render.write_html(e, path)
    j = e.labels.index(e.prediction.label)
    top = strongest(e, j)
    top_colour = RED if e.values[top, j] > 0 else BLUE
    visible = sum(not s for s in e.special)
    k = [i for i, special in enumerate(e.special) if not special].index(top)
    page.set_viewport_size({"width": 1000, "height": 800})
    page.goto(path.as_uri())
    expect(page.locator(".wb-tok")).to_have_count(visible * len(e.labels))
    assert page.evaluate("performance.getEntriesByType('resource').length") == 0  # no assets
    token = page.locator(".wb-target").nth(j).locator(".wb-tok").nth(k)
    expect(token).to_have_css("background-color", "rgb({}, {}, {})".format(*top_colour))
    # Hovering a token shows its value.
    token.hover()
    assert token.evaluate("t => t.matches(':hover')")
    tip = token.evaluate("t => getComputedStyle(t, '::after').content")
    assert render._number(e.values[top, j]) in tip
    shot = page.locator(".wb-explanation").first.screenshot()
    pixels = png_pixels(shot)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 300
    # The strongest token's full colour is on screen, and the page is not blank.
    assert np.any(np.all(np.abs(pixels - np.array(top_colour)) <= 2, axis=-1))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


ENTITY_TEXT = 'Angela Merkel met <script>alert("x")</script> in Paris'


def test_entities_and_pairs_in_headless_chromium(page: Page, tmp_path: Path) -> None:
    """A token model's entities boxed in their type's colour with the type after them, and a
    text pair's two texts on two rows, as a browser draws them; no script in the data runs."""
    entities = [
        whybert.Entity("Angela Merkel", "PER", 0, 13, 0.93),
        whybert.Entity('<script>alert("x")</script>', "MISC", 18, 45, 0.55),
        whybert.Entity("Paris", "LOC", 49, 54, 0.81),
    ]
    path = tmp_path / "entities.html"
    render.write_predictions_html([ENTITY_TEXT], [whybert.Prediction("", {}, entities=entities)], path)
    page.add_init_script("window.alerted = false; window.alert = () => { window.alerted = true; };")
    page.goto(path.as_uri())
    marks = page.locator("mark.wb-ent")
    expect(marks).to_have_count(3)
    for i, x in enumerate(entities):
        mark = marks.nth(i)
        expect(mark.locator(".wb-entity-type")).to_have_text(x.label)
        expect(mark).to_have_css("border-top-color", "rgb({}, {}, {})".format(*render.entity_colour(x.label)))
        assert mark.evaluate("m => m.firstChild.textContent") == x.text
    assert page.evaluate("window.alerted") is False and page.locator("script").count() == 0
    shot = png_pixels(marks.first.screenshot())
    assert np.any(np.all(np.abs(shot - np.array(render.entity_colour("PER"))) <= 2, axis=-1))

    pair = whybert.Prediction("neutral", {"entailment": 0.2, "neutral": 0.5, "contradiction": 0.3})
    path = tmp_path / "pair.html"
    render.write_predictions_html(["where is Paris?"], [pair], path, pairs=["Paris is in France"])
    page.goto(path.as_uri())
    rows = page.locator(".wb-segment")
    expect(rows).to_have_text(["textwhere is Paris?", "pairParis is in France"])
    first, second = (rows.nth(k).bounding_box() for k in (0, 1))
    assert first is not None and second is not None
    assert second["y"] >= first["y"] + first["height"]  # one row below the other
