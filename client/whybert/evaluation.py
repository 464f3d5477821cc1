"""Evaluate a served classifier on labelled texts: accuracy, per-label precision, recall, F1
and support, their macro and weighted averages, and the confusion matrix.

The figures are computed here in numpy and equal scikit-learn's
`classification_report(y_true, y_pred, output_dict=True, zero_division=0)` and
`confusion_matrix(y_true, y_pred, labels=...)` on the same predictions (the tests check
both), without making scikit-learn a dependency. As there, the report covers the labels that
occur as true or predicted labels; a model label that does neither is left out, so it cannot
pull the macro average down. Entity (token-classification) models are scored by
`entity_evaluation` instead (seqeval's span figures).

`evaluate` sends Predict requests of at most the server's texts-per-request limit, several
in flight at once (bounded), and consumes its input lazily, so a large file is read as it
is evaluated; `EvalCSV` reads and checks such a file (stdlib csv) for the `whybert evaluate`
command. A text-pair model's rows carry their second text (`pairs=`, the CSV's pair column,
`pair` by default); a row of a single-text model never does.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ._client import Client
from ._core import USE_CLIENT_DEFAULT
from ._exceptions import InvalidArgumentError
from ._types import ModelInfo, Prediction

DEFAULT_BATCH = 64  # the server's default --max-texts-per-request
PAIR_COLUMN = "pair"  # the CSV column of a text pair's second texts, unless named otherwise
DEFAULT_CONCURRENCY = 4
_LIMIT = re.compile(r"at most (\d+) per request")
_ROW_FIELD = re.compile(r"texts\[(\d+)\]")
_PAIR_FIELD = re.compile(r"pairs\[(\d+)\]")

Report = dict[str, Any]
# A labelled row: (text, true label), or (text, true label, pair text) for a text-pair model.
Row = tuple[str, str] | tuple[str, str, str]


# ---- the figures ---------------------------------------------------------------------------


def confusion_matrix(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Counts of each true label (rows) predicted as each label (columns), in `labels`' order."""
    index = {label: i for i, label in enumerate(labels)}
    missing = sorted({y for y in (*y_true, *y_pred) if y not in index})
    if missing:
        raise ValueError(f"labels not in the label list: {', '.join(map(repr, missing))}")
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    n = len(labels)
    codes = np.fromiter((index[t] * n + index[p] for t, p in zip(y_true, y_pred, strict=True)), dtype=np.int64)
    return np.bincount(codes, minlength=n * n).reshape(n, n)


def classification_report(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None) -> Report:
    """scikit-learn's `classification_report(..., output_dict=True, zero_division=0)`:
    per label `precision`, `recall`, `f1-score`, `support`, then `accuracy`, `macro avg` and
    `weighted avg`. `labels` (default: those that occur, sorted, as scikit-learn) must cover
    every label that occurs. Supports are ints (scikit-learn writes them as floats)."""
    if not len(y_true):
        raise ValueError("no rows to evaluate")
    names = sorted(set(y_true) | set(y_pred)) if labels is None else list(labels)
    matrix = confusion_matrix(y_true, y_pred, names)
    return _report(matrix, names)


def _report(matrix: np.ndarray, names: Sequence[str]) -> Report:
    """The report from a confusion matrix, with scikit-learn's arithmetic (the same
    divisions in the same order, so the floats are equal, not merely close)."""
    tp = np.diag(matrix).astype(np.float64)
    true_sum = matrix.sum(axis=1)
    pred_sum = matrix.sum(axis=0)
    precision = _divide(tp, pred_sum)
    recall = _divide(tp, true_sum)
    f1 = _divide(2.0 * tp, true_sum.astype(np.float64) + pred_sum)
    report: Report = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1-score": float(f1[i]),
            "support": int(true_sum[i]),
        }
        for i, name in enumerate(names)
    }
    total = int(true_sum.sum())
    report["accuracy"] = float(tp.sum() / total) if total else 0.0
    for name, weights in (("macro avg", None), ("weighted avg", true_sum)):
        if weights is not None and not weights.sum():
            averages = [0.0, 0.0, 0.0]
        else:
            averages = [float(np.average(m, weights=weights)) for m in (precision, recall, f1)]
        report[name] = {**dict(zip(("precision", "recall", "f1-score"), averages, strict=True)), "support": total}
    return report


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


# ---- the run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """One answered request, handed to `evaluate`'s `on_batch` in input order."""

    start: int  # the index of its first text in the input
    texts: list[str]
    labels: list[str]
    predictions: list[Prediction]
    pairs: list[str] | None = None  # a text-pair model's second texts


@dataclass(frozen=True)
class Evaluation:
    """The result of `evaluate`: the predictions (label codes and probabilities, not the texts,
    so a large corpus costs little memory) and the figures computed from them."""

    model: str
    model_labels: list[str]  # the model's labels, in its order: the columns of `scores`
    true: np.ndarray  # per text, the index of its true label in model_labels
    predicted: np.ndarray  # per text, the index of the predicted label
    scores: np.ndarray  # texts × model_labels: the probabilities
    truncated: np.ndarray  # per text: longer than the model reads
    seconds: float

    @property
    def labels(self) -> list[str]:
        """The report's labels: those that occur as true or predicted, in the model's order."""
        present = set(self.true.tolist()) | set(self.predicted.tolist())
        return [label for i, label in enumerate(self.model_labels) if i in present]

    @property
    def y_true(self) -> list[str]:
        return [self.model_labels[i] for i in self.true]

    @property
    def y_pred(self) -> list[str]:
        return [self.model_labels[i] for i in self.predicted]

    @property
    def confidence(self) -> np.ndarray:
        """The probability of each predicted label."""
        return self.scores[np.arange(len(self.predicted)), self.predicted]

    @property
    def confusion(self) -> np.ndarray:
        """Rows: true labels, columns: predicted, both in `labels`' order."""
        keep = [self.model_labels.index(label) for label in self.labels]
        full = np.bincount(
            self.true * len(self.model_labels) + self.predicted, minlength=len(self.model_labels) ** 2
        ).reshape(len(self.model_labels), -1)
        return full[np.ix_(keep, keep)]

    @property
    def report(self) -> Report:
        """Equal to scikit-learn's `classification_report(output_dict=True, zero_division=0)`."""
        return _report(self.confusion, self.labels)

    @property
    def accuracy(self) -> float:
        return float(self.report["accuracy"])

    def misclassified(self) -> np.ndarray:
        """The indices of the texts whose prediction is wrong."""
        return np.flatnonzero(self.true != self.predicted)

    def metrics(self) -> dict[str, Any]:
        """Everything `metrics.json` holds: the report, the confusion matrix and the run."""
        return {
            "model": self.model,
            "rows": len(self.true),
            "accuracy": self.accuracy,
            "labels": self.labels,
            "model_labels": self.model_labels,
            "report": self.report,
            "confusion_matrix": self.confusion.tolist(),
            "misclassified": len(self.misclassified()),
            "truncated": int(self.truncated.sum()),
            "seconds": round(self.seconds, 3),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.metrics(), indent=indent)


def model_info(client: Client, model: str | None, timeout: Any = USE_CLIENT_DEFAULT) -> ModelInfo:
    """The served model named `model` (None: the server's default), with its labels."""
    models = client.list_models(timeout=timeout)
    for m in models:
        if (m.name == model) if model else m.is_default:
            return m
    served = ", ".join(m.name for m in models) or "none"
    wanted = f"model {model!r}" if model else "default model"
    raise ValueError(f"the server has no {wanted}; it serves: {served}")


def evaluate(
    client: Client,
    texts: Iterable[str],
    labels: Iterable[str],
    *,
    pairs: Iterable[str] | None = None,
    model: str | None = None,
    batch_size: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: bool | TextIO = False,
    total: int | None = None,
    on_batch: Callable[[Batch], None] | None = None,
    timeout: Any = USE_CLIENT_DEFAULT,
) -> Evaluation:
    """Predict every text through the server and score the predictions against `labels`
    (names of the model's labels; `model` None: the server's default model). A text-pair
    model needs `pairs`, one second text per text; a single-text model takes none.

    Requests carry at most `batch_size` texts (default 64, the server's default limit; a
    server with a lower limit says so in its first answer and the batches shrink to it), and
    at most `concurrency` are in flight at once. `texts` and `labels` are read lazily, in
    step, and checked as they are read (a label the model lacks stops the run, naming its
    row); `on_batch` sees each answered batch in input order (the CLI writes its CSVs so).
    `progress` shows a tqdm bar on stderr or the given stream (with an ETA when the total is
    known: `total`, or len(texts)), and nothing when tqdm is not installed.
    """
    if total is None and isinstance(texts, Sized):
        total = len(texts)
    info = model_info(client, model, timeout)
    return evaluate_rows(
        client, info, labelled_rows(texts, labels, pairs), batch_size=batch_size, concurrency=concurrency,
        progress=progress, total=total, on_batch=on_batch, timeout=timeout,
    )


def labelled_pairs(texts: Iterable[str], labels: Iterable[str]) -> Iterator[tuple[str, str]]:
    """zip(texts, labels, strict=True), saying which is short in words."""
    labels_iter = iter(labels)
    for n, text in enumerate(texts, start=1):
        label = next(labels_iter, None)
        if label is None:
            raise ValueError(f"fewer labels than texts: none for row {n}")
        yield text, label
    if next(labels_iter, None) is not None:
        raise ValueError("more labels than texts")


def labelled_rows(texts: Iterable[str], labels: Iterable[str], pairs: Iterable[str] | None = None) -> Iterator[Row]:
    """`labelled_pairs`, each with its pair text when `pairs` are given (zip, strict)."""
    rows = labelled_pairs(texts, labels)
    yield from rows if pairs is None else with_pairs(rows, pairs)


def with_pairs(rows: Iterable[Sequence[Any]], pairs: Iterable[str]) -> Iterator[tuple[Any, Any, str]]:
    """Each (text, label) row with its pair text (zip, strict: a count that differs is an
    error naming the row)."""
    seconds = iter(pairs)
    for n, (text, label, *_) in enumerate(rows, start=1):
        pair = next(seconds, None)
        if pair is None:
            raise ValueError(f"fewer pairs than texts: none for row {n}")
        yield text, label, pair
    if next(seconds, None) is not None:
        raise ValueError("more pairs than texts")


def takes_pairs(model: ModelInfo) -> bool | None:
    """Whether the model classifies text pairs (True) or single texts (False); None for a
    server too old to say."""
    return None if model.kind == "unknown" else model.kind == "text-pair"


def same_pairing(paired: bool | None, pair: str | None, n: int) -> bool:
    """Whether the rows hold pair texts, as row 1 says (`paired`, None before it): a row
    unlike row 1 stops the run naming it."""
    has = pair is not None
    if paired is not None and paired != has:
        raise ValueError(f"row {n} {'has no' if paired else 'has a'} pair text, unlike row 1")
    return has


def split_row(row: Sequence[Any], n: int, model: ModelInfo) -> tuple[Any, Any, str | None]:
    """(text, label, pair or None) of row `n` (from 1), checked against the model: a
    text-pair model's row must hold a pair text, a single-text model's must not."""
    text, label, *rest = row
    pair = rest[0] if rest else None
    wants = takes_pairs(model)
    if wants and pair is None:
        raise ValueError(
            f"model {model.name!r} classifies text pairs: row {n} has no pair text (give pairs=, or the CSV's "
            f"pair column: --pair-column, default {PAIR_COLUMN!r})"
        )
    if wants is False and pair is not None:
        raise ValueError(
            f"model {model.name!r} classifies single texts: row {n} has a pair text; leave the pairs out, "
            "or choose a text-pair model"
        )
    if pair is not None and not pair.strip():
        raise ValueError(f"row {n}: the pair text is empty")
    return text, label, pair


def evaluate_rows(
    client: Client,
    info: ModelInfo,
    rows: Iterable[Row],
    *,
    batch_size: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: bool | TextIO = False,
    total: int | None = None,
    on_batch: Callable[[Batch], None] | None = None,
    timeout: Any = USE_CLIENT_DEFAULT,
) -> Evaluation:
    """`evaluate` on (text, label) rows, (text, label, pair) for a text-pair model, for a
    model already looked up (`model_info`)."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if batch_size is not None and batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    index = {label: i for i, label in enumerate(info.labels)}
    checked = _checked_rows(rows, index, info)
    size = batch_size or DEFAULT_BATCH
    true: list[int] = []
    predicted: list[int] = []
    scores: list[list[float]] = []
    truncated: list[bool] = []
    bar = _progress_bar(progress, total)
    began = time.perf_counter()

    def take(buffer: deque[_Checked], n: int) -> list[_Checked]:
        chunk = [buffer.popleft() for _ in range(min(n, len(buffer)))]
        chunk.extend(_islice(checked, n - len(chunk)))
        return chunk

    def send(chunk: list[_Checked]) -> list[Prediction]:
        pairs = _pairs_of(chunk)
        extra = {} if pairs is None else {"pairs": pairs}  # single texts: the call as it always was
        return client.predict([t for t, _, _ in chunk], model=info.name, timeout=timeout, **extra)

    def accept(start: int, chunk: list[_Checked], predictions: list[Prediction]) -> None:
        for (_, label, _), p in zip(chunk, predictions, strict=True):
            true.append(index[label])
            predicted.append(index[p.label])
            scores.append([p.scores.get(name, math.nan) for name in info.labels])
            truncated.append(p.truncated)
        if on_batch is not None:
            texts, labels = [t for t, _, _ in chunk], [lb for _, lb, _ in chunk]
            on_batch(Batch(start, texts, labels, predictions, _pairs_of(chunk)))
        if bar is not None:
            bar.update(len(chunk))

    pending: deque[_Checked] = deque()
    try:
        # The first request goes alone: if the server's limit is lower, its answer says so
        # before anything else is sent.
        first = take(pending, size)
        if not first:
            raise ValueError("no rows to evaluate")
        while True:
            try:
                predictions = _rows_named(send, first, 0)
                break
            except _LimitError as exc:
                if exc.limit >= len(first):
                    raise
                size = exc.limit
                pending.extendleft(reversed(first[size:]))
                first = first[:size]
        accept(0, first, predictions)
        start = len(first)
        window: deque[tuple[int, list[_Checked], Future[list[Prediction]]]] = deque()
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="whybert-evaluate")
        finished = False
        try:
            while True:
                while len(window) < concurrency and (chunk := take(pending, size)):
                    window.append((start, chunk, pool.submit(_rows_named, send, chunk, start)))
                    start += len(chunk)
                if not window:
                    break
                at, chunk, future = window.popleft()
                accept(at, chunk, future.result())
            finished = True
        finally:
            # After a failure or an interrupt (Ctrl-C), send nothing more and wait for no call
            # in flight: closing the client's channel ends them.
            pool.shutdown(wait=finished, cancel_futures=True)
    finally:
        if bar is not None:
            bar.close()
    k = len(info.labels)
    return Evaluation(
        model=info.name,
        model_labels=list(info.labels),
        true=np.asarray(true, dtype=np.int64),
        predicted=np.asarray(predicted, dtype=np.int64),
        scores=np.asarray(scores, dtype=np.float64).reshape(-1, k),
        truncated=np.asarray(truncated, dtype=bool),
        seconds=time.perf_counter() - began,
    )


class _LimitError(ValueError):
    def __init__(self, limit: int, message: str) -> None:
        super().__init__(message)
        self.limit = limit


# A row as evaluate_rows sends it: (text, label, pair text or None).
_Checked = tuple[str, str, str | None]


def _pairs_of(chunk: Sequence[_Checked]) -> list[str] | None:
    """The chunk's pair texts, or None for single texts (`split_row` makes rows all one or the other)."""
    pairs = [q for _, _, q in chunk if q is not None]
    return pairs if pairs else None


def _rows_named(
    send: Callable[[list[_Checked]], list[Prediction]], chunk: list[_Checked], start: int
) -> list[Prediction]:
    """Send a chunk; the server's complaints about `texts[i]` come back naming the row
    (`start + i + 1`, counting from 1), which is what a person can find in the file."""
    try:
        return send(chunk)
    except InvalidArgumentError as exc:
        problems = []
        for field, description in exc.field_violations:
            if field == "texts" and (limit := _LIMIT.search(description)):
                raise _LimitError(int(limit.group(1)), description) from exc
            at = _ROW_FIELD.fullmatch(field) or _PAIR_FIELD.fullmatch(field)
            problems.append(f"row {start + int(at.group(1)) + 1}: {description}" if at else f"{field}: {description}")
        raise ValueError("the server refused the texts: " + "; ".join(problems or [exc.message])) from exc


def _islice(rows: Iterator[_Checked], n: int) -> list[_Checked]:
    out: list[_Checked] = []
    for row in rows:
        out.append(row)
        if len(out) >= n:
            break
    return out


def _checked_rows(rows: Iterable[Row], index: dict[str, int], info: ModelInfo) -> Iterator[_Checked]:
    """The rows, checked as they are read: a label the model does not have, a text the
    server would refuse as empty, or a pair text missing (a text-pair model) or there (a
    single-text model) stops the run naming its row, before any request."""
    paired: bool | None = None
    for n, row in enumerate(rows, start=1):
        text, label, pair = split_row(row, n, info)
        paired = same_pairing(paired, pair, n)
        if label not in index:
            known = ", ".join(info.labels)
            raise ValueError(f"row {n}: label {label!r} is not a label of model {info.name!r} ({known})")
        if not text.strip():
            raise ValueError(f"row {n}: the text is empty")
        yield text, label, pair


def _progress_bar(progress: bool | TextIO, total: int | None) -> Any:
    """A tqdm bar, or None when none is asked for or tqdm (an optional extra) is missing."""
    if progress is False:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    stream = sys.stderr if progress is True else progress
    return tqdm(total=total, unit="text", desc="evaluate", file=stream, dynamic_ncols=True)


# ---- the CSV and the files of `whybert evaluate` -------------------------------------------


@dataclass(frozen=True)
class EvalCSV:
    """A CSV of labelled texts, checked in one streaming pass before anything is sent: its
    columns, that it has rows, and that every label is one the model has (all unknown
    labels are named at once, with where they first occur). The pass also counts the rows,
    which gives the progress bar its ETA.

    A text-pair model's file holds each row's second text in `pair_column` (`pair` unless
    named), and iterating gives (text, label, pair); a single-text model's file has no such
    column (see `csv_pair_column`)."""

    path: Path
    text_column: str
    label_column: str
    rows: int
    pair_column: str | None = None

    @classmethod
    def check(
        cls,
        path: str | os.PathLike[str],
        text_column: str,
        label_column: str,
        model: ModelInfo,
        pair_column: str | None = None,
    ) -> EvalCSV:
        path = Path(path)
        pairs = csv_pair_column(path, model, pair_column)
        unknown: dict[str, list[int]] = {}  # label -> [rows, first row]
        empty: list[int] = []
        n = 0
        for n, row in enumerate(_read(path, text_column, label_column, pairs), start=1):
            text, label, *pair = row
            if label not in model.labels:
                seen = unknown.setdefault(label, [0, n])
                seen[0] += 1
            if not text.strip() or (pair and not pair[0].strip()):
                empty.append(n)
        if n == 0:
            raise ValueError(f"{path}: no rows under the header")
        if unknown:
            found = "; ".join(
                f"{label!r} ({count} row{'s' if count > 1 else ''}, first row {first})"
                for label, (count, first) in unknown.items()
            )
            raise ValueError(
                f"{path}: labels that model {model.name!r} does not have ({', '.join(model.labels)}): {found}"
            )
        if empty:
            shown = ", ".join(map(str, empty[:10])) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
            what = "empty text or pair text" if pairs else "empty text"
            raise ValueError(f"{path}: {what} in row(s) {shown}")
        return cls(path, text_column, label_column, n, pairs)

    def __iter__(self) -> Iterator[Row]:
        return _read(self.path, self.text_column, self.label_column, self.pair_column)  # type: ignore[return-value]


def csv_header(path: Path) -> list[str]:
    """A CSV's column names (its first row)."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        try:
            header = csv.DictReader(f).fieldnames
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, exc) from None
    if not header:
        raise ValueError(f"{path}: the file is empty (no header row)")
    return list(header)


def csv_pair_column(path: str | os.PathLike[str], model: ModelInfo, pair_column: str | None = None) -> str | None:
    """The column of a CSV that holds the second texts of a text-pair model's rows:
    `pair_column`, or `pair` when not named, which the file must have; None for a
    single-text model, whose file must have no pair column (the one named, or `pair`):
    a pair text that would be dropped is refused, naming the column and the model."""
    path = Path(path)
    header = csv_header(path)
    wanted = pair_column or PAIR_COLUMN
    wants = takes_pairs(model)
    columns = ", ".join(map(repr, header))
    if wants:
        if wanted not in header:
            raise ValueError(
                f"{path}: model {model.name!r} classifies text pairs, but the file has no pair column {wanted!r} "
                f"(--pair-column names the column of the second texts); its columns: {columns}"
            )
        return wanted
    if wants is None:  # a server too old to say: only a named column is read
        if pair_column is not None and pair_column not in header:
            raise ValueError(f"{path}: no pair column {pair_column!r}; its columns: {columns}")
        return pair_column
    if pair_column is not None or wanted in header:
        raise ValueError(
            f"{path}: a pair column ({wanted!r}) holds the second texts of text pairs, but model {model.name!r} "
            "classifies single texts: choose a text-pair model, or leave the pair column out"
        )
    return None


def _read(path: Path, text_column: str, label_column: str, pair_column: str | None = None) -> Iterator[tuple[str, ...]]:
    """(text, label) per data row, (text, label, pair) with a pair column, read as the file is read."""
    try:
        yield from _read_utf8(path, text_column, label_column, pair_column)
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> ValueError:
    """The decoder's message alone does not say which file."""
    return ValueError(f"{path}: not UTF-8 text ({exc.reason}); save it as UTF-8")


def _read_utf8(path: Path, text_column: str, label_column: str, pair_column: str | None) -> Iterator[tuple[str, ...]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        if not header:
            raise ValueError(f"{path}: the file is empty (no header row)")
        duplicated = sorted({h for h in header if h and header.count(h) > 1})
        if duplicated:  # which of them holds the texts? Refused, as the page refuses it
            raise ValueError(f"{path}: columns named twice: {', '.join(map(repr, duplicated))}")
        columns = (text_column, label_column) if pair_column is None else (text_column, label_column, pair_column)
        missing = [c for c in dict.fromkeys(columns) if c not in header]
        if missing:
            raise ValueError(
                f"{path}: no column {' or '.join(map(repr, missing))}; its columns: {', '.join(map(repr, header))}"
            )
        for n, row in enumerate(reader, start=1):
            values = [row[c] for c in columns]
            if any(v is None for v in values):
                raise ValueError(f"{path}: row {n} (line {reader.line_num}) has fewer fields than the header")
            if any(extra.strip() for extra in row.get(None) or ()):
                raise ValueError(f"{path}: row {n} (line {reader.line_num}) has more fields than the header")
            text, label, *pair = values
            assert text is not None and label is not None  # checked above
            yield (text, label.strip(), *(p for p in pair if p is not None))


PREDICTION_COLUMNS = ("row", "text", "true_label", "predicted_label", "confidence")


class OutputFiles:
    """The files `whybert evaluate --out DIR` writes: `predictions.csv` and
    `misclassified.csv` row by row as batches are answered, then `metrics.json` and
    `confusion_matrix.png`. `row` counts data rows from 1 (the header is not a row); with
    `pairs` (a text-pair model), a `pair` column after `text` holds each row's second text."""

    def __init__(self, out: str | os.PathLike[str], model_labels: Sequence[str], pairs: bool = False) -> None:
        self.dir = Path(out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.model_labels = list(model_labels)
        self.pairs = pairs
        self._files = [
            (self.dir / name).open("w", newline="", encoding="utf-8")
            for name in ("predictions.csv", "misclassified.csv")
        ]
        self._all, self._wrong = (csv.writer(f) for f in self._files)
        columns = list(PREDICTION_COLUMNS)
        if pairs:
            columns.insert(2, "pair")
        self._all.writerow([*columns, "truncated", *(f"p_{label}" for label in self.model_labels)])
        self._wrong.writerow(columns)

    def batch(self, batch: Batch) -> None:
        if self.pairs and batch.pairs is None:
            raise ValueError("the files have a pair column, but the batch has no pair texts")
        seconds: list[str | None] = list(batch.pairs) if batch.pairs is not None else [None] * len(batch.texts)
        for i, (text, label, p) in enumerate(zip(batch.texts, batch.labels, batch.predictions, strict=True)):
            row = [batch.start + i + 1, text, label, p.label, _float(p.scores.get(p.label, math.nan))]
            if self.pairs:
                row.insert(2, seconds[i])
            probabilities = (_float(p.scores.get(k, math.nan)) for k in self.model_labels)
            self._all.writerow([*row, int(p.truncated), *probabilities])
            if p.label != label:
                self._wrong.writerow(row)

    def close(self) -> None:
        for f in self._files:
            f.close()

    def finish(self, result: Evaluation, chart: bool = True) -> list[Path]:
        """Write metrics.json, and the confusion matrix's PNG when `chart` (needs matplotlib)."""
        self.close()
        written = [self.dir / "predictions.csv", self.dir / "misclassified.csv", self.dir / "metrics.json"]
        written[2].write_text(result.to_json() + "\n", encoding="utf-8")
        if chart:
            from .charts import confusion_matrix_chart, save_png

            title = f"{result.model}: accuracy {result.accuracy:.3f} on {len(result.true)} rows"
            png = self.dir / "confusion_matrix.png"
            save_png(confusion_matrix_chart(result.confusion, result.labels, title), png)
            written.append(png)
        return written


def _float(value: float) -> str:
    return f"{value:.6g}"
