"""`whybert.aggregate` on hand-made explanations: each figure against a hand computation, the
options, the orderings and the row formats."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
import whybert
from _explanations import CORPUS, explanation
from whybert.aggregate import COLUMNS


def by_word(agg: whybert.Aggregate, label: str) -> dict[str, whybert.WordStat]:
    return {w.word: w for w in agg.for_label(label)}


def test_each_occurrence_counts_once_as_in_shaps_cohort_mean() -> None:
    agg = whybert.aggregate(CORPUS)
    assert agg.explanations == {"pos": 3, "neg": 2}
    pos = by_word(agg, "pos")
    # Special tokens and the white-space token are not words; "Great" and "great" differ.
    assert set(pos) == {"Great", "great", "food", "service", "was"}
    assert pos["great"].count == 3 and pos["great"].texts == 2  # twice in the 2nd text, once in the 3rd
    assert pos["great"].mean == pytest.approx((0.5 - 0.1 - 0.3) / 3)
    assert pos["great"].mean_abs == pytest.approx((0.5 + 0.1 + 0.3) / 3)
    assert pos["food"].mean == pytest.approx((-0.2 + 0.0) / 2) and pos["food"].texts == 2
    neg = by_word(agg, "neg")
    assert neg["food"].mean_abs == pytest.approx((0.4 + 0.05) / 2)
    assert neg["great"].mean == pytest.approx(0.2) and neg["great"].count == 1
    assert "service" not in neg  # its text explained pos only


def test_lowercase_merges_spellings() -> None:
    pos = by_word(whybert.aggregate(CORPUS, lowercase=True), "pos")
    assert "Great" not in pos
    assert pos["great"].count == 4 and pos["great"].texts == 3
    assert pos["great"].mean == pytest.approx((0.3 + 0.5 - 0.1 - 0.3) / 4)


def test_top_words_by_each_measure() -> None:
    agg = whybert.aggregate(CORPUS, lowercase=True)
    assert [w.word for w in agg.top("pos", "mean_abs", 2)] == ["service", "great"]
    assert [w.word for w in agg.top("pos", "mean", 1)] == ["great"]
    assert [w.word for w in agg.top("pos", "mean", 1, ascending=True)] == ["service"]
    assert [w.word for w in agg.top("pos", "count", 2)] == ["great", "food"]
    assert [w.word for w in agg.top("pos", "mean_abs", 5, min_count=2)] == ["great", "food"]
    # Rows come per label, largest mean |value| first.
    assert [w.word for w in agg.for_label("pos")] == [w.word for w in agg.top("pos", "mean_abs", 99)]
    with pytest.raises(ValueError, match="by must be"):
        agg.top("pos", "median", 3)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="'joy'"):
        agg.top("joy")


def test_rows_as_json_and_csv() -> None:
    agg = whybert.aggregate(CORPUS)
    rows = list(csv.DictReader(io.StringIO(agg.to_csv())))
    assert tuple(rows[0]) == COLUMNS and len(rows) == len(agg.words)
    for row, w in zip(rows, agg.words, strict=True):
        assert (row["label"], row["word"], int(row["count"])) == (w.label, w.word, w.count)
        assert float(row["mean"]) == w.mean
    data = json.loads(agg.to_json())
    assert data["explanations"] == agg.explanations and data["output"] == "probability"
    assert data["words"] == agg.rows()


def test_non_finite_values_show_in_the_means() -> None:
    bad = explanation(["[CLS]", "odd ", "odd ", "fine", "[SEP]"],
                      [[0], [math.inf], [-math.inf], [math.nan], [0]], ["pos"])
    agg = whybert.aggregate([*CORPUS, bad])
    pos = by_word(agg, "pos")
    assert pos["odd"].mean_abs == math.inf and math.isnan(pos["odd"].mean)
    assert math.isnan(pos["fine"].mean_abs)
    assert agg.for_label("pos")[-1].word == "fine"  # NaN sorts last
    words = {w["word"]: w for w in json.loads(agg.to_json())["words"] if w["label"] == "pos"}
    assert words["odd"]["mean"] is None and words["fine"]["mean_abs"] is None  # valid JSON
    assert "inf" in agg.to_csv() and "nan" in agg.to_csv()


def test_mixed_output_spaces_are_refused() -> None:
    logit = explanation(["[CLS]", "x", "[SEP]"], [[0], [1], [0]], ["pos"], output="logit")
    with pytest.raises(ValueError, match="logit/shap-partition, probability/shap-partition"):
        whybert.aggregate([*CORPUS, logit])
    empty = whybert.aggregate([])
    assert empty.words == [] and empty.labels == []
