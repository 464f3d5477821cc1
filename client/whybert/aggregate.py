"""What drives a classifier over a corpus: per label, each word's attributions pooled over
many explanations.

This follows what `shap.plots.bar` shows for a cohort of text explanations,
`shap.plots.bar(shap_values[:, :, label].abs.mean(0))`: shap's `Explanation.mean(0)` on
texts of different lengths (`_flatten_feature_names`) pools every *occurrence* of a feature
name over all texts and takes the plain mean of those values, so a word that appears twice
in one text counts twice, and a text weighs by how often it holds the word; `.abs` is taken
per occurrence, before the mean. whybert does the same, per explained label, with these
differences, each said where it applies:

- a word is a token's text stripped of white space (shap keys on the token text as
  given, trailing space included, so `"great "` and `"great"` would be two words), lower-cased
  with `lowercase=True`; word pieces stay separate words, as in shap;
- special tokens ([CLS], [SEP]; shap's empty feature names) and tokens that are only white
  space are left out;
- beside the mean |value| (shap's bar) come the mean signed value (`.mean(0)` without
  `.abs`: the direction) and how often the word occurs (`count`, occurrences; `texts`,
  explanations holding it), which shap does not show and which tells a word seen once
  from one seen a thousand times;
- a label's figures use only the explanations that explained that label (with the default
  `targets="predicted"`, the texts predicted as it).

NaN and ±inf values are kept: they make the word's means NaN or ±inf, so a broken value is
seen rather than hidden.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from ._types import Explanation

Measure = Literal["mean_abs", "mean", "count"]
MEASURES: tuple[Measure, ...] = ("mean_abs", "mean", "count")
COLUMNS = ("label", "word", "mean_abs", "mean", "count", "texts")


@dataclass(frozen=True)
class WordStat:
    """One word's attributions to one label over a corpus."""

    label: str
    word: str
    mean_abs: float  # mean |value| over its occurrences (shap's cohort bar)
    mean: float  # mean signed value: > 0 raises the label on average
    count: int  # occurrences over all explanations of the label
    texts: int  # explanations of the label that hold the word


@dataclass(frozen=True)
class Aggregate:
    """Per-label word statistics over many explanations (see the module's docstring)."""

    words: list[WordStat]  # by label (in first-seen order), then by mean |value|, largest first
    explanations: dict[str, int]  # per label: how many explanations explained it
    output: str
    explainer: str
    lowercase: bool

    @property
    def labels(self) -> list[str]:
        return list(self.explanations)

    def for_label(self, label: str) -> list[WordStat]:
        if label not in self.explanations:
            raise KeyError(f"no explanation explained {label!r}; labels: {', '.join(self.explanations)}")
        return [w for w in self.words if w.label == label]

    def top(
        self, label: str, by: Measure = "mean_abs", k: int = 10, *, ascending: bool = False, min_count: int = 1
    ) -> list[WordStat]:
        """The k words of `label` with the largest `by` (`ascending`: the smallest, e.g. the
        most negative mean), among words seen at least `min_count` times: rare words have
        noisy means. Ties go alphabetically; NaN means come last."""
        if by not in MEASURES:
            raise ValueError(f"by must be one of {', '.join(MEASURES)}, not {by!r}")
        pool = [w for w in self.for_label(label) if w.count >= min_count]
        return sorted(pool, key=_order(by, ascending))[:k]

    def rows(self) -> list[dict[str, str | int | float]]:
        """One plain dict per (label, word), with the keys of `COLUMNS`."""
        return [asdict(w) for w in self.words]

    def to_json(self, indent: int | None = 2) -> str:
        """The statistics as JSON; NaN and ±inf are written as null (JSON has no such
        numbers), so any JSON reader takes the file."""
        data = {
            "output": self.output,
            "explainer": self.explainer,
            "lowercase": self.lowercase,
            "explanations": self.explanations,
            "words": [{k: _json_number(v) for k, v in row.items()} for row in self.rows()],
        }
        return json.dumps(data, indent=indent, allow_nan=False)

    def to_csv(self) -> str:
        """The rows as CSV with a header (`COLUMNS`); floats as Python writes them (`nan`, `inf`)."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        return out.getvalue()


def _order(by: Measure, ascending: bool) -> Callable[[WordStat], tuple[bool, float, str]]:
    """A sort key: by the measure, NaN last, ties alphabetically (so the order is stable)."""
    sign = 1.0 if ascending else -1.0

    def key(w: WordStat) -> tuple[bool, float, str]:
        value = float(getattr(w, by))
        return (math.isnan(value), 0.0 if math.isnan(value) else sign * value, w.word)

    return key


def _json_number(value: str | int | float) -> str | int | float | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def aggregate(explanations: Iterable[Explanation], *, lowercase: bool = False) -> Aggregate:
    """Pool many explanations into per-label word statistics, as shap's bar plot does over a
    cohort (see the module's docstring for what is followed and what differs).

    All explanations must share an output space and explainer: a probability and a logit, or
    a SHAP and a LIME value, do not average into anything meaningful.
    """
    # label -> word -> (values of every occurrence, indices of the explanations holding it)
    pooled: dict[str, dict[str, tuple[list[float], set[int]]]] = {}
    counts: dict[str, int] = {}
    kinds: set[tuple[str, str]] = set()
    for n, e in enumerate(explanations):
        kinds.add((e.output, e.explainer))
        if len(kinds) > 1:
            found = ", ".join(f"{o}/{x}" for o, x in sorted(kinds))
            raise ValueError(f"explanations mix output spaces or explainers ({found}); aggregate each apart")
        words = [t.strip().lower() if lowercase else t.strip() for t in e.tokens]
        for j, label in enumerate(e.labels):
            counts[label] = counts.get(label, 0) + 1
            table = pooled.setdefault(label, {})
            for i, word in enumerate(words):
                if e.special[i] or not word:
                    continue
                values, holders = table.setdefault(word, ([], set()))
                values.append(float(e.values[i, j]))
                holders.add(n)
    output, explainer = kinds.pop() if kinds else ("", "")
    stats: list[WordStat] = []
    with np.errstate(invalid="ignore"):  # inf - inf in a mean is NaN, on purpose
        for label, table in pooled.items():
            rows = [
                WordStat(
                    label=label,
                    word=word,
                    mean_abs=float(np.mean(np.abs(values))),
                    mean=float(np.mean(values)),
                    count=len(values),
                    texts=len(holders),
                )
                for word, (values, holders) in table.items()
            ]
            stats.extend(sorted(rows, key=_order("mean_abs", ascending=False)))
    return Aggregate(words=stats, explanations=counts, output=output, explainer=explainer, lowercase=lowercase)
