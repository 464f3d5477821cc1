"""How an `attention` explanation is drawn: a heat strip of rollout weights that says it is
not an attribution (terminal, HTML, PNG), and the layer × head grid of raw maps."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import whybert
from _explanations import explanation
from PIL import Image
from whybert import charts, render

pytest.importorskip("matplotlib")

TOKENS = ["[CLS]", "the ", "food ", "was ", "great", "[SEP]"]
ROLLOUT = np.array([0.4, 0.05, 0.3, 0.05, 0.1, 0.1])


def attention_explanation(layers: list[int], heads: list[int]) -> whybert.Explanation:
    base = explanation(TOKENS, [[v] for v in ROLLOUT], ["pos"])
    rng = np.random.default_rng(0)
    weights = rng.random((len(layers), len(heads), len(TOKENS), len(TOKENS))).astype(np.float32)
    weights /= weights.sum(axis=-1, keepdims=True)
    return dataclasses.replace(
        base,
        explainer="attention",
        additivity_error=float("nan"),
        attention_position=0,
        attention=whybert.AttentionMaps(layers, heads, weights),
    )


def test_terminal_says_what_the_numbers_are() -> None:
    e = attention_explanation([0], [0])
    text = render.terminal(e, colour=False)
    assert "attention rollout read at token 0" in text and "not an attribution" in text
    assert "base" not in text  # no additive caption
    assert "food[+0.300]" in text  # each token with its weight


def test_html_heat_strip_has_a_weight_legend() -> None:
    e = attention_explanation([0], [0])
    page = render.html_fragment([e])
    assert "not an attribution" in page and "attention weight" in page and "lowers" not in page
    # The heaviest visible token ("food ") is the fullest colour: red at full strength.
    full = f'style="background:{render._rgb(render.RED)};'
    assert page.count(full) == 1 and page.index(full) < page.index(">food <") < page.index(full) + 200


def test_attention_grid_draws_one_heat_map_per_layer_and_head(tmp_path: Path) -> None:
    e = attention_explanation([0, 3], [1, 2, 5])
    figure = charts.attention_grid(e)
    maps = [ax for ax in figure.axes if ax.images]
    assert len(maps) == 6
    titles = sorted(ax.get_title() for ax in maps)
    assert titles == sorted(f"layer {layer}, head {head}" for layer in (0, 3) for head in (1, 2, 5))
    first = next(ax for ax in maps if ax.get_title() == "layer 3, head 2")
    np.testing.assert_array_equal(first.images[0].get_array(), e.attention.weights[1, 1])  # type: ignore[union-attr]
    path = tmp_path / "grid.png"
    charts.save_png(figure, path, dpi=50)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > image.size[1]  # three heads across, two layers down


def test_attention_grid_refuses_what_it_cannot_draw() -> None:
    with pytest.raises(ValueError, match="no raw attention maps"):
        charts.attention_grid(explanation(TOKENS, [[v] for v in ROLLOUT], ["pos"]))
    with pytest.raises(ValueError, match="heat maps"):
        charts.attention_grid(attention_explanation(list(range(12)), list(range(12))))


def test_to_shap_keeps_the_rollout_as_values() -> None:
    pytest.importorskip("shap")
    e = attention_explanation([0], [0])
    np.testing.assert_array_equal(e.to_shap().values, e.values)
