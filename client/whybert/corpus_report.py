"""The report of a corpus run (`whybert.corpus`), read back from explanations.jsonl a record
at a time, so that it costs a summary per row, not an explanation per row:

- words.json and words.csv: `whybert.aggregate` (lower-cased) over the first explainer's
  explanations; with several explainers, words.<explainer>.json/.csv for each other one;
- words_mean_abs.png, words_mean.png, words_count.png: `charts.aggregate_bars` by each
  measure; confidence.png: each row's predicted probability against its largest
  attribution to the predicted label, coloured by whether the prediction is right;
- rows.csv: per row, the prediction, its confidence, the true label, whether it is right,
  the largest attribution, the top words (a text pair's second-text words as
  `word (pair)`), and each explainer's faithfulness when computed;
- explainers.json (several explainers): each explainer's mean AOPC comprehensiveness
  (higher is better) and sufficiency (lower is better) over the rows, and each pair's mean
  Spearman correlation and top-k overlap on the rows' words (`whybert.agreement`, for the
  label both explained: the predicted one by default), with ranks;
- report.html: all of it in one self-contained page (inline CSS, the charts as data: URIs)
  with the highlighted explanations of the first `report_rows` rows (it says so when the
  corpus has more; rows.csv and explanations.jsonl have every row). Every text and name is
  escaped: the texts are data, never markup.
"""

from __future__ import annotations

import base64
import csv
import html
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._types import Explanation
from .aggregate import MEASURES, Aggregate, aggregate
from .agreement import agreement
from .render import STYLE, html_fragment, ranked_tokens

if TYPE_CHECKING:
    from .corpus import CorpusStore, Record

TOP_WORDS = 5  # per row, in rows.csv and the table
TABLE_WORDS = 10  # per label, in the report's word tables
CHART_WORDS = 15
EXCERPT = 140  # characters of a text in the report's table

_esc = html.escape


@dataclass(frozen=True)
class Report:
    """What `write_report` computed and wrote."""

    words: Aggregate
    accuracy: float | None
    ranking: dict[str, Any] | None
    shown_rows: int
    files: list[Path]


@dataclass(slots=True)
class RowSummary:
    """One row, as the table shows it (the first explainer's prediction and words)."""

    row: int
    label: str | None = None
    predicted: str = ""
    confidence: float = math.nan
    largest: float = math.nan
    top: str = ""
    faithfulness: dict[str, tuple[float, float]] = field(default_factory=dict)
    text: str | None = None  # kept only for the rows report.html shows
    pair: str | None = None  # a text pair's second text, likewise

    @property
    def correct(self) -> bool | None:
        return None if self.label is None or not self.predicted else self.label == self.predicted


def explained_label(e: Explanation) -> str:
    """The label a row is summarised by: the predicted one when explained, else the first."""
    return e.prediction.label if e.prediction.label in e.labels else e.labels[0]


def largest_attribution(e: Explanation, label: str) -> float:
    """The largest value any shown token gives `label`: the strongest single push."""
    column = e.values[~np.asarray(e.special, dtype=bool), e.labels.index(label)]
    return float(np.max(column)) if column.size else math.nan


def _top_words(e: Explanation, label: str) -> str:
    return ", ".join(f"{word} {value:+.3f}" for word, value in ranked_tokens(e, label, TOP_WORDS))


class _Comparison:
    """The explainers' faithfulness over the rows and their agreement on each row that all
    of them explained."""

    def __init__(self, explainers: Sequence[str], k: int) -> None:
        self.explainers = list(explainers)
        self.k = k
        self.pairs = list(itertools.combinations(self.explainers, 2))
        self.faithfulness: dict[str, list[tuple[float, float]]] = {x: [] for x in self.explainers}
        self.spearman: dict[tuple[str, str], list[float]] = {p: [] for p in self.pairs}
        self.overlap: dict[tuple[str, str], list[float]] = {p: [] for p in self.pairs}
        self.compared = 0

    def add(self, have: dict[str, Record]) -> None:
        """One row's records."""
        for x, record in have.items():
            f = record.explanation.faithfulness
            if f is not None:
                self.faithfulness[x].append((f.comprehensiveness, f.sufficiency))
        if len(have) < len(self.explainers):
            return
        self.compared += 1
        for a, b in self.pairs:
            ea, eb = have[a].explanation, have[b].explanation
            label = shared_label(ea, eb)
            if label is None:
                continue
            result = agreement(ea, eb, label, self.k)
            self.spearman[(a, b)].append(result.spearman)
            self.overlap[(a, b)].append(result.top_k_overlap)

    def ranking(self, model: str) -> dict[str, Any]:
        pairs: list[dict[str, Any]] = [
            {
                "explainers": [a, b],
                "rows": len(self.spearman[(a, b)]),
                "spearman": _mean(self.spearman[(a, b)]),
                "spearman_undefined": int(np.isnan(self.spearman[(a, b)]).sum()) if self.spearman[(a, b)] else 0,
                "top_k_overlap": _mean(self.overlap[(a, b)]),
            }
            for a, b in self.pairs
        ]
        per: list[dict[str, Any]] = []
        for x in self.explainers:
            scores = self.faithfulness[x]
            mine = [p for p in pairs if x in p["explainers"]]
            per.append({
                "explainer": x,
                "rows": len(scores),
                "comprehensiveness": _mean([c for c, _ in scores]),
                "sufficiency": _mean([s for _, s in scores]),
                "spearman": _mean([p["spearman"] for p in mine if p["spearman"] is not None]),
                "top_k_overlap": _mean([p["top_k_overlap"] for p in mine if p["top_k_overlap"] is not None]),
            })
        for measure, higher in (("comprehensiveness", True), ("sufficiency", False), ("spearman", True)):
            for item, rank in zip(per, _ranks([p[measure] for p in per], higher), strict=True):
                item[f"{measure}_rank"] = rank
        return {
            "model": model,
            "rows": self.compared,
            "k": self.k,
            "label": "the predicted label when both explained it, else the first label both explained",
            "explainers": per,
            "pairs": pairs,
        }


def shared_label(a: Explanation, b: Explanation) -> str | None:
    """The label two explanations of a row are compared on."""
    first = explained_label(a)
    if first in b.labels:
        return first
    return next((label for label in a.labels if label in b.labels), None)


def _mean(values: Iterable[float]) -> float | None:
    """The mean of the values that are numbers (NaN ones, such as a Spearman correlation
    of constant values, left out); None when there is none."""
    a = np.asarray(list(values), dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(np.mean(a)) if a.size else None


def _ranks(values: Sequence[float | None], higher: bool) -> list[int | None]:
    """1 for the best; equal values share a rank; no value, no rank."""
    known = sorted({v for v in values if v is not None}, reverse=higher)
    return [None if v is None else 1 + sum(1 for w in known if (w > v if higher else w < v)) for v in values]


def write_report(
    store: CorpusStore,
    *,
    model: str,
    explainers: Sequence[str],
    rows: int,
    report_rows: int,
    agreement_k: int = 5,
    charts: bool = True,
) -> Report:
    """Write the report's files into the store's directory (see the module's docstring)."""
    out = store.dir
    primary = explainers[0]
    files: list[Path] = []

    index = store.index()  # everything below reads the records in row order
    aggregates: dict[str, Aggregate] = {}
    for x in explainers:
        agg = aggregate((have[x].explanation for have in store.by_row(index, [x])), lowercase=True)
        aggregates[x] = agg
        stem = "words" if x == primary else f"words.{x}"
        (out / f"{stem}.json").write_text(agg.to_json() + "\n", encoding="utf-8")
        (out / f"{stem}.csv").write_text(agg.to_csv(), encoding="utf-8")
        files += [out / f"{stem}.json", out / f"{stem}.csv"]
    words = aggregates[primary]

    ordered: list[RowSummary] = []
    fragments: dict[int, dict[str, str]] = {}
    comparison = _Comparison(explainers, agreement_k) if len(explainers) > 1 else None
    for have in store.by_row(index, explainers):
        some = next(iter(have.values()))
        summary = RowSummary(some.row, some.label)
        ordered.append(summary)
        for x, record in have.items():
            e = record.explanation
            if e.faithfulness is not None:
                summary.faithfulness[x] = (e.faithfulness.comprehensiveness, e.faithfulness.sufficiency)
            if x == primary:
                label = explained_label(e)
                summary.predicted = e.prediction.label
                summary.confidence = e.prediction.scores.get(e.prediction.label, math.nan)
                summary.largest = largest_attribution(e, label)
                summary.top = _top_words(e, label)
            if record.row <= report_rows:
                summary.text, summary.pair = e.text, e.pair
                fragments.setdefault(record.row, {})[x] = html_fragment([e])
        if comparison is not None:
            comparison.add(have)
    flags = [s.correct for s in ordered if s.correct is not None]
    accuracy = sum(flags) / len(flags) if flags else None

    faithful = [x for x in explainers if any(x in s.faithfulness for s in ordered)]
    files.append(_write_rows(out / "rows.csv", ordered, faithful))

    ranking = None
    if comparison is not None:
        ranking = comparison.ranking(model)
        (out / "explainers.json").write_text(json.dumps(ranking, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        files.append(out / "explainers.json")

    pictures: list[tuple[str, Path]] = []
    if charts and ordered:
        pictures = _draw(out, words, ordered, primary)
        files += [path for _, path in pictures]

    shown = min(report_rows, rows)
    page = _page(
        model=model, explainers=list(explainers), rows=rows, shown=shown, accuracy=accuracy, words=words,
        ordered=ordered, fragments=fragments, faithful=faithful, ranking=ranking, pictures=pictures,
    )
    (out / "report.html").write_text(page, encoding="utf-8")
    files.append(out / "report.html")
    return Report(words=words, accuracy=accuracy, ranking=ranking, shown_rows=shown, files=files)


def _number(value: float | None, digits: int = 4) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _csv_number(value: float) -> str:
    """Six significant digits, as `whybert evaluate` writes its CSVs; empty for NaN."""
    return "" if math.isnan(value) else f"{value:.6g}"


def _write_rows(path: Path, ordered: Sequence[RowSummary], faithful: Sequence[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        extra = [f"{x}_{m}" for x in faithful for m in ("comprehensiveness", "sufficiency")]
        writer.writerow(["row", "true_label", "predicted_label", "confidence", "correct",
                         "largest_attribution", "top_words", *extra])
        for s in ordered:
            correct = "" if s.correct is None else int(s.correct)
            scores = [
                _csv_number(v) for x in faithful for v in s.faithfulness.get(x, (math.nan, math.nan))
            ]
            writer.writerow([s.row, s.label or "", s.predicted, _csv_number(s.confidence), correct,
                             _csv_number(s.largest), s.top, *scores])
    return path


def _draw(out: Path, words: Aggregate, ordered: Sequence[RowSummary], primary: str) -> list[tuple[str, Path]]:
    from .charts import aggregate_bars, confidence_scatter, save_png

    pictures: list[tuple[str, Path]] = []
    titles = {"mean_abs": "mean |value|", "mean": "mean signed value", "count": "occurrences"}
    if words.labels:
        for measure in MEASURES:
            path = out / f"words_{measure}.png"
            save_png(aggregate_bars(words, by=measure, top=CHART_WORDS), path)
            pictures.append((f"top words by {titles[measure]}, per label ({primary})", path))
    path = out / "confidence.png"
    figure = confidence_scatter(
        [s.confidence for s in ordered], [s.largest for s in ordered], [s.correct for s in ordered],
        ylabel=f"largest attribution to the predicted label ({primary})",
    )
    save_png(figure, path)
    pictures.append(("confidence against the largest attribution", path))
    return pictures


# ---- the page -------------------------------------------------------------------------------

PAGE_STYLE = """
body { margin: 24px; background: #f6f6f8; color: #1d1d1f;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; }
h1 { font-size: 1.5em; margin: 0 0 4px; } h2 { margin: 28px 0 10px; font-size: 1.2em; }
.wb-meta { color: #555; margin: 0 0 12px; }
.wb-table { border-collapse: collapse; background: #fff; margin: 0 0 16px; font-size: .9em; }
.wb-table th, .wb-table td { border: 1px solid #d8d8de; padding: 4px 8px; text-align: left;
  vertical-align: top; }
.wb-table th { background: #ececf0; }
.wb-table td.num { text-align: right; font-variant-numeric: tabular-nums; }
.wb-wrong { color: #b3261e; font-weight: 600; } .wb-right { color: #2a7d4f; }
.wb-figure { background: #fff; border: 1px solid #d8d8de; border-radius: 8px; padding: 8px;
  margin: 0 0 16px; max-width: 60em; }
.wb-figure img { max-width: 100%; height: auto; display: block; }
.wb-figure figcaption { font-size: .85em; color: #555; }
.wb-row h3 { font-size: 1em; margin: 18px 0 6px; }
.wb-explainer { font-size: .85em; color: #555; margin: 4px 0; }
.wb-words { display: flex; flex-wrap: wrap; gap: 16px; }
"""


def _page(
    *,
    model: str,
    explainers: list[str],
    rows: int,
    shown: int,
    accuracy: float | None,
    words: Aggregate,
    ordered: Sequence[RowSummary],
    fragments: dict[int, dict[str, str]],
    faithful: Sequence[str],
    ranking: dict[str, Any] | None,
    pictures: Sequence[tuple[str, Path]],
) -> str:
    head = (
        f"model <b>{_esc(model)}</b> · {rows} rows · explainer{'s' if len(explainers) > 1 else ''} "
        f"{_esc(', '.join(explainers))} · values in {_esc(words.output or '?')} space"
        + (f" · accuracy <b>{accuracy:.4f}</b>" if accuracy is not None else "")
    )
    parts = [
        "<!DOCTYPE html>\n",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>whybert corpus report: {_esc(model)}</title>",
        f"<style>{STYLE}{PAGE_STYLE}</style></head>\n<body>\n",
        "<h1>Corpus explanations</h1>",
        f'<p class="wb-meta">{head}</p>',
    ]
    if ranking is not None:
        parts.append(_ranking_html(ranking))
    parts.append(_words_html(words, explainers[0]))
    for caption, path in pictures:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(
            f'<figure class="wb-figure"><img alt="{_esc(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_esc(caption)} ({_esc(path.name)})</figcaption></figure>"
        )
    parts.append(_rows_html(ordered[:shown], rows, faithful, explainers[0]))
    parts.append(_explanations_html(fragments, shown, rows, explainers))
    parts.append("</body></html>\n")
    return "".join(parts)


def _ranking_html(ranking: dict[str, Any]) -> str:
    lines = [
        "<h2>Explainers</h2>",
        f'<p class="wb-meta">{ranking["rows"]} rows explained by every explainer, with faithfulness '
        "(ERASER AOPC: comprehensiveness, higher is better; sufficiency, lower is better) and agreement "
        f"on the rows' words (Spearman's rank correlation and top-{ranking['k']} overlap, mean over the "
        "other explainers); rank 1 is the best.</p>",
        '<table class="wb-table"><tr><th>explainer</th><th>rows</th><th>comprehensiveness</th><th>rank</th>'
        "<th>sufficiency</th><th>rank</th><th>Spearman with the others</th><th>rank</th>"
        f"<th>top-{ranking['k']} overlap with the others</th></tr>",
    ]
    for item in ranking["explainers"]:
        lines.append(
            f"<tr><td>{_esc(item['explainer'])}</td><td class=num>{item['rows']}</td>"
            f"<td class=num>{_number(item['comprehensiveness'])}</td>"
            f"<td class=num>{item['comprehensiveness_rank'] or ''}</td>"
            f"<td class=num>{_number(item['sufficiency'])}</td><td class=num>{item['sufficiency_rank'] or ''}</td>"
            f"<td class=num>{_number(item['spearman'])}</td><td class=num>{item['spearman_rank'] or ''}</td>"
            f"<td class=num>{_number(item['top_k_overlap'])}</td></tr>"
        )
    lines.append("</table>")
    lines.append(
        '<table class="wb-table"><tr><th>pair</th><th>rows</th><th>mean Spearman</th>'
        f"<th>rows without a Spearman (constant values)</th><th>mean top-{ranking['k']} overlap</th></tr>"
    )
    for pair in ranking["pairs"]:
        a, b = pair["explainers"]
        lines.append(
            f"<tr><td>{_esc(a)} · {_esc(b)}</td><td class=num>{pair['rows']}</td>"
            f"<td class=num>{_number(pair['spearman'])}</td><td class=num>{pair['spearman_undefined']}</td>"
            f"<td class=num>{_number(pair['top_k_overlap'])}</td></tr>"
        )
    lines.append("</table>")
    return "".join(lines)


def _words_html(words: Aggregate, explainer: str) -> str:
    lines = [
        "<h2>Words</h2>",
        f'<p class="wb-meta">per label, the words with the largest mean |value| over the rows that '
        f"explained it ({_esc(explainer)}; all words in words.csv)</p><div class=wb-words>",
    ]
    for label in words.labels:
        lines.append(
            f'<table class="wb-table"><tr><th colspan=4>{_esc(label)}: {words.explanations[label]} rows</th></tr>'
            "<tr><th>word</th><th>mean |value|</th><th>mean</th><th>count</th></tr>"
        )
        for w in words.top(label, "mean_abs", TABLE_WORDS):
            lines.append(
                f"<tr><td>{_esc(w.word)}</td><td class=num>{_number(w.mean_abs)}</td>"
                f"<td class=num>{_number(w.mean)}</td><td class=num>{w.count}</td></tr>"
            )
        lines.append("</table>")
    lines.append("</div>")
    return "".join(lines)


def _excerpt(text: str | None) -> str:
    if text is None:
        return ""
    return text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"


def _text_cell(s: RowSummary) -> str:
    """The row's text in the table; a text pair's second text below it, named."""
    if s.pair is None:
        return _esc(_excerpt(s.text))
    return (
        f'<span class="wb-segment" data-segment="0">{_esc(_excerpt(s.text))}</span>'
        f'<span class="wb-segment" data-segment="1"><span class="wb-pair-part">pair</span>'
        f"{_esc(_excerpt(s.pair))}</span>"
    )


def _rows_html(shown: Sequence[RowSummary], rows: int, faithful: Sequence[str], primary: str) -> str:
    note = (
        f"the first {len(shown)} of {rows} rows (all of them are in rows.csv and explanations.jsonl)"
        if len(shown) < rows
        else f"all {rows} rows"
    )
    extra = "".join(f"<th>{_esc(x)} comprehensiveness</th><th>{_esc(x)} sufficiency</th>" for x in faithful)
    lines = [
        "<h2>Rows</h2>",
        f'<p class="wb-meta">{_esc(note)}; top words by |value| to the predicted label ({_esc(primary)})</p>',
        '<table class="wb-table"><tr><th>row</th><th>text</th><th>prediction</th><th>confidence</th>'
        f"<th>true label</th><th>correct</th><th>top words</th>{extra}</tr>",
    ]
    for s in shown:
        correct = {None: "", True: '<span class="wb-right">yes</span>', False: '<span class="wb-wrong">no</span>'}[
            s.correct
        ]
        scores = "".join(
            f"<td class=num>{_number(v)}</td>" for x in faithful for v in s.faithfulness.get(x, (math.nan, math.nan))
        )
        lines.append(
            f'<tr><td class=num><a href="#row-{s.row}">{s.row}</a></td><td>{_text_cell(s)}</td>'
            f"<td>{_esc(s.predicted)}</td><td class=num>{_number(s.confidence, 3)}</td>"
            f"<td>{_esc(s.label or '')}</td><td>{correct}</td><td>{_esc(s.top)}</td>{scores}</tr>"
        )
    lines.append("</table>")
    return "".join(lines)


def _explanations_html(
    fragments: dict[int, dict[str, str]], shown: int, rows: int, explainers: Sequence[str]
) -> str:
    note = (
        f"the first {shown} rows of {rows}: the others are in explanations.jsonl"
        if shown < rows
        else f"all {rows} rows"
    )
    lines = ["<h2>Explanations</h2>", f'<p class="wb-meta">{_esc(note)}; red raises the label, blue lowers it</p>']
    for row in sorted(fragments):
        lines.append(f'<div class="wb-row" id="row-{row}"><h3>row {row}</h3>')
        for x in explainers:
            fragment = fragments[row].get(x)
            if fragment is None:
                continue
            if len(explainers) > 1:
                lines.append(f'<p class="wb-explainer">{_esc(x)}</p>')
            lines.append(fragment)
        lines.append("</div>")
    return "".join(lines)
