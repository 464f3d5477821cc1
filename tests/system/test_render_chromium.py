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
