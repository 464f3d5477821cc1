"""Corpus statistics and charts of real explanations from a tiny-model server:
`whybert.aggregate` against a hand computation and against shap's own cohort mean, and the
PNGs `whybert explain --bar-png/--hist-png` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shap
import whybert
from PIL import Image
from whybert import charts, cli

TEXTS = [
    "Great food, great prices, but the service was slow.",
    "the service was great",
    "Slow, rude and not great at all",
    "great great great",
]


@pytest.fixture(scope="module")
def explanations(target: str) -> list[whybert.Explanation]:
    """SHAP explanations of every label of three texts, and of only the predicted label of a
    fourth (so the labels' corpora differ)."""
    with whybert.Client(target) as client:
        every = client.explain(TEXTS[:3], model="tiny", targets="all", max_evals=120)
        predicted = client.explain(TEXTS[3], model="tiny", max_evals=120)
    return [*every, *predicted]


def occurrences(explanations: list[whybert.Explanation], label: str, word: str) -> tuple[list[float], int]:
    """By hand: every value the word's tokens got for the label, and in how many texts."""
    values, texts = [], 0
    for e in explanations:
        if label not in e.labels:
            continue
        j = e.labels.index(label)
        at = [i for i, t in enumerate(e.tokens) if not e.special[i] and t.strip().lower() == word]
        found = [float(e.values[i, j]) for i in at]
        values += found
        texts += bool(found)
    return values, texts


def test_word_figures_equal_a_hand_computation(explanations: list[whybert.Explanation]) -> None:
    agg = whybert.aggregate(explanations, lowercase=True)
    assert agg.output == "probability" and agg.explainer == "shap-partition"
    predicted = explanations[3].prediction.label
    assert agg.explanations == {
        label: 3 + (label == predicted) for label in ["negative", "neutral", "positive"]
    }
    for label in agg.labels:
        stats = {w.word: w for w in agg.for_label(label)}
        for word in ("great", "service", "slow", "the"):
            values, texts = occurrences(explanations, label, word)
            w = stats[word]
            assert w.count == len(values) and w.texts == texts
            assert w.mean == pytest.approx(sum(values) / len(values), abs=1e-15)
            assert w.mean_abs == pytest.approx(sum(abs(v) for v in values) / len(values), abs=1e-15)
    # "great" is in every text (4 times in the last, which explained only its prediction).
    great = {w.label: w for w in agg.words if w.word == "great"}
    assert great[predicted].count == 2 + 1 + 1 + 3 and great[predicted].texts == 4


def test_means_equal_shaps_cohort_mean(explanations: list[whybert.Explanation]) -> None:
    """shap.plots.bar over a cohort shows `values.abs.mean(0)`; shap pools by feature name."""
    agg = whybert.aggregate(explanations)
    for label in agg.labels:
        cohort = [e for e in explanations if label in e.labels]
        values = np.empty(len(cohort), dtype=object)
        names = np.empty(len(cohort), dtype=object)
        for n, e in enumerate(cohort):
            keep = [i for i, t in enumerate(e.tokens) if not e.special[i] and t.strip()]
            values[n] = e.values[keep, e.labels.index(label)]
            names[n] = np.array([e.tokens[i].strip() for i in keep])
        explanation = shap.Explanation(values=values, feature_names=names)
        ours = {w.word: w for w in agg.for_label(label)}
        for measure, theirs in (("mean_abs", explanation.abs.mean(0)), ("mean", explanation.mean(0))):
            assert sorted(theirs.feature_names) == sorted(ours)
            for word, value in zip(theirs.feature_names, theirs.values, strict=True):
                assert getattr(ours[word], measure) == pytest.approx(value, rel=1e-12, abs=1e-15)


def test_csv_and_json_rows_round_trip(explanations: list[whybert.Explanation]) -> None:
    agg = whybert.aggregate(explanations)
    lines = agg.to_csv().splitlines()
    assert lines[0] == "label,word,mean_abs,mean,count,texts" and len(lines) == 1 + len(agg.words)


def png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        return image.size


def test_charts_of_real_explanations(explanations: list[whybert.Explanation]) -> None:
    e = explanations[0]
    fig = charts.token_bars(e, top=5)
    assert len(fig.axes) == len(e.labels)
    for ax in fig.axes:
        label = ax.get_title(loc="left").removeprefix("why ")
        widths = [p.get_width() for p in sorted(ax.patches, key=lambda p: -p.get_y())]
        assert widths == pytest.approx([v for _, v in e.top_tokens(label, 5)])
    hist = charts.value_histogram(explanations)
    for ax, label in zip(hist.axes, ["negative", "neutral", "positive"], strict=True):
        n = sum(int((~np.asarray(x.special)).sum()) for x in explanations if label in x.labels)
        assert sum(p.get_height() for p in ax.patches) == n


@pytest.mark.parametrize("texts", [TEXTS[:1], TEXTS[:3]])
def test_cli_writes_the_bar_and_histogram_pngs(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], texts: list[str]
) -> None:
    bar, hist = tmp_path / "bar.png", tmp_path / "hist.png"
    argv = ["explain", *texts, "--model", "tiny", "--targets", "all", "--max-evals", "60", "--target", target]
    assert cli.main([*argv, "--bar-png", str(bar), "--hist-png", str(hist)]) == 0
    assert "prediction:" in capsys.readouterr().out
    # Seven inches wide at 150 dpi; tall enough for a panel per label.
    for path in (bar, hist):
        width, height = png(path)
        assert width == 7 * 150 and height > 3 * 150
