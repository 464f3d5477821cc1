"""The page's dataset mode: uploaded CSVs and the jobs that run them through the server.

A dataset is parsed once, on upload, with the csv module (as `whybert evaluate` reads its
file) and kept in memory, a bounded number of them. A job works on one in a thread of its
own: a *predict* job sends every row through `Client.predict_stream` (in slices, so a
cancel is seen within a slice's next message) and ends with the figures of
`whybert.evaluation` on those predictions; an *explain* job explains a bounded sample of a
finished predict job's rows through `Client.explain_stream` and pools them per label with
`whybert.aggregate`. The page polls a job's status; a job nobody has polled for
`job_idle_seconds` (the page was closed) is cancelled, and at most `max_jobs` run at once.

A text-pair model reads each row's text with its pair text (a third column, `pair_column`);
token-classification models (entities) have no label per text and no dataset mode.
"""

from __future__ import annotations

import csv
import io
import random
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import numpy as np

from .._client import Client
from .._exceptions import InvalidArgumentError, WhybertError
from .._types import ModelInfo
from ..aggregate import aggregate
from ..evaluation import Evaluation
from .http import HTTPError, Limits

PREDICT_SLICE = 256  # texts per PredictStream call
EXPLAIN_SLICE = 16  # texts per ExplainStream call
TOP_WORDS = 10  # bars per label in the corpus charts
PREVIEW_ROWS = 5
FINISHED_JOBS_KEPT = 16


class Cancelled(Exception):
    """The job was cancelled (by the page, or because nobody asked about it any more)."""


# ---- datasets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """An uploaded CSV: its header and its data rows (each as long as the header)."""

    id: str
    name: str
    columns: list[str]
    rows: list[list[str]]
    size: int

    def column(self, name: str) -> list[str]:
        i = self.columns.index(name)
        return [row[i] for row in self.rows]

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "columns": self.columns,
            "rows": len(self.rows),
            "bytes": self.size,
            "preview": self.rows[:PREVIEW_ROWS],
        }


def parse_csv(data: bytes, name: str, limits: Limits) -> Dataset:
    """A CSV with a header row, checked: UTF-8, distinct column names, every row as long
    as the header, at most `limits.max_dataset_rows` rows."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HTTPError(HTTPStatus.BAD_REQUEST, f"{name}: the file is not UTF-8 text ({exc})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise HTTPError(HTTPStatus.BAD_REQUEST, f"{name}: the file is empty (no header row)")
        header = [h.strip() for h in header]
        duplicated = sorted({h for h in header if header.count(h) > 1})
        if duplicated:
            raise HTTPError(HTTPStatus.BAD_REQUEST, f"{name}: columns named twice: {', '.join(map(repr, duplicated))}")
        rows: list[list[str]] = []
        for row in reader:
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                raise HTTPError(
                    HTTPStatus.BAD_REQUEST,
                    f"{name}: row {len(rows) + 1} (line {reader.line_num}) has {len(row)} fields; "
                    f"the header has {len(header)}",
                )
            if len(rows) >= limits.max_dataset_rows:
                raise HTTPError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"{name}: more than {limits.max_dataset_rows} rows, the most this page takes "
                    "(--max-dataset-rows)",
                )
            rows.append(row)
    except csv.Error as exc:
        raise HTTPError(HTTPStatus.BAD_REQUEST, f"{name}: not a CSV file the csv module reads: {exc}") from None
    if not rows:
        raise HTTPError(HTTPStatus.BAD_REQUEST, f"{name}: no rows under the header")
    return Dataset(secrets.token_hex(8), name, header, rows, len(data))


class DatasetStore:
    """The uploaded datasets, the most recently used kept (a bounded number)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[str, Dataset] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, dataset: Dataset) -> None:
        with self._lock:
            self._items[dataset.id] = dataset
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def get(self, dataset_id: Any) -> Dataset:
        with self._lock:
            dataset = self._items.get(dataset_id) if isinstance(dataset_id, str) else None
            if dataset is None:
                raise HTTPError(HTTPStatus.NOT_FOUND, "no such dataset (load the file again)", "NOT_FOUND")
            self._items.move_to_end(dataset_id)
            return dataset


# ---- jobs ----------------------------------------------------------------------------------


@dataclass
class Job:
    """One run over a dataset; `done` of `total` rows, then a `result` or an `error`."""

    id: str
    kind: str
    total: int
    done: int = 0
    state: str = "running"  # running, done, failed, cancelled
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # running figures shown with progress
    data: dict[str, Any] = field(default_factory=dict)  # what a later job needs (texts, ...)
    began: float = field(default_factory=time.monotonic)
    ended: float | None = None
    seen: float = field(default_factory=time.monotonic)
    cancel_requested: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        """Raise `Cancelled` once the job should stop."""
        if self.cancel_requested.is_set():
            raise Cancelled

    def status(self) -> dict[str, Any]:
        end = self.ended if self.ended is not None else time.monotonic()
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "seconds": round(end - self.began, 3),
            "detail": dict(self.detail),
            "error": self.error,
        }


class JobManager:
    """Starts jobs (at most `limits.max_jobs` running), finds them by id, cancels them when
    asked or when nobody has asked about them for `limits.job_idle_seconds`."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="whybert-ui-jobs", daemon=True)
        self._reaper.start()

    def start(self, kind: str, total: int, work: Callable[[Job], dict[str, Any]]) -> Job:
        with self._lock:
            running = sum(j.state == "running" for j in self._jobs.values())
            if running >= self.limits.max_jobs:
                raise HTTPError(
                    HTTPStatus.TOO_MANY_REQUESTS,
                    f"{running} jobs are running, the most this page runs at once (--max-jobs): "
                    "cancel one or wait for it",
                    "TOO_MANY_JOBS",
                )
            job = Job(secrets.token_hex(8), kind, total)
            self._jobs[job.id] = job
            self._forget_old()
        threading.Thread(target=self._run, args=(job, work), name=f"whybert-ui-{kind}", daemon=True).start()
        return job

    def _run(self, job: Job, work: Callable[[Job], dict[str, Any]]) -> None:
        try:
            result = work(job)
        except Cancelled:
            job.state = "cancelled"
        except HTTPError as exc:
            job.error = {"code": exc.code, "message": exc.message, "field_violations": exc.field_violations}
            job.state = "failed"
        except WhybertError as exc:
            job.error = {"code": exc.code.name, "message": exc.message, "field_violations": exc.field_violations}
            job.state = "failed"
        except Exception as exc:  # a bug must still end the job, visibly
            job.error = {"code": "INTERNAL", "message": f"{type(exc).__name__}: {exc}", "field_violations": []}
            job.state = "failed"
        else:
            job.result = result
            job.state = "done"
        finally:
            job.ended = time.monotonic()

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise HTTPError(HTTPStatus.NOT_FOUND, "no such job (it ended long ago or never was)", "NOT_FOUND")
        job.seen = time.monotonic()
        return job

    def find(self, job_id: str) -> Job | None:
        """The job, without counting as the page asking about it (for inspection)."""
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        job.cancel_requested.set()
        return job

    def running(self) -> int:
        with self._lock:
            return sum(j.state == "running" for j in self._jobs.values())

    def _forget_old(self) -> None:
        """Keep the finished jobs last asked about, a bounded number (under the lock)."""
        finished = sorted((j for j in self._jobs.values() if j.state != "running"), key=lambda j: j.seen)
        for job in finished[: max(0, len(finished) - FINISHED_JOBS_KEPT)]:
            del self._jobs[job.id]

    def _reap(self) -> None:
        while not self._stop.wait(min(1.0, self.limits.job_idle_seconds / 4)):
            now = time.monotonic()
            with self._lock:
                jobs = list(self._jobs.values())
            for job in jobs:
                if job.state == "running" and now - job.seen > self.limits.job_idle_seconds:
                    job.cancel_requested.set()

    def close(self) -> None:
        """Cancel every job and stop the reaper (the page's server is closing)."""
        self._stop.set()
        with self._lock:
            for job in self._jobs.values():
                job.cancel_requested.set()
        self._reaper.join()


# ---- the work ----------------------------------------------------------------------------


def close(stream: Iterator[Any]) -> None:
    """Close a client stream (a generator): that cancels its call if it is still going."""
    closer = getattr(stream, "close", None)
    if closer is not None:
        closer()


def _slices(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def _rows_named(exc: InvalidArgumentError, rows: range | list[int]) -> HTTPError:
    """The server's complaint about `texts[i]` (or `pairs[i]`) of a slice, naming the
    dataset's row."""
    violations = []
    for name, description in exc.field_violations:
        for field_name, what in (("texts", ""), ("pairs", " (pair text)")):
            inner = name[len(field_name) + 1 : -1]
            if name.startswith(f"{field_name}[") and name.endswith("]") and inner.isdigit() and int(inner) < len(rows):
                name = f"row {rows[int(inner)] + 1}{what}"
                break
        violations.append((name, description))
    return HTTPError(HTTPStatus.BAD_REQUEST, exc.message, exc.code.name, violations)


def check_labelled(
    dataset: Dataset, text_column: Any, label_column: Any, info: ModelInfo
) -> tuple[list[str], list[str]]:
    """The texts and labels of two columns, checked before anything is sent: the columns
    exist, no text is empty and every label is one the model has (the others named, with
    how often and where first)."""
    for what, column in (("text", text_column), ("label", label_column)):
        if not isinstance(column, str) or column not in dataset.columns:
            raise HTTPError(HTTPStatus.BAD_REQUEST, f"choose the {what} column among {', '.join(dataset.columns)}")
    if text_column == label_column:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "the text and label columns must differ")
    texts = dataset.column(text_column)
    labels = [label.strip() for label in dataset.column(label_column)]
    unknown: dict[str, list[int]] = {}
    for n, label in enumerate(labels, start=1):
        if label not in info.labels:
            unknown.setdefault(label, [0, n])[0] += 1
    if unknown:
        found = "; ".join(
            f"{label!r} ({count} row{'s' if count > 1 else ''}, first row {first})"
            for label, (count, first) in unknown.items()
        )
        raise HTTPError(
            HTTPStatus.BAD_REQUEST,
            f"labels that model {info.name!r} does not have ({', '.join(info.labels)}): {found}",
        )
    _check_filled(texts, "text")
    return texts, labels


def _check_filled(texts: list[str], what: str) -> None:
    empty = [n for n, text in enumerate(texts, start=1) if not text.strip()]
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        raise HTTPError(HTTPStatus.BAD_REQUEST, f"empty {what} in row(s) {shown}")


def check_pairs(
    dataset: Dataset, pair_column: Any, info: ModelInfo, other_columns: tuple[Any, ...]
) -> list[str] | None:
    """The pair texts of a text-pair model (None for a single-text model), checked before
    anything is sent: the model reads what the dataset gives (a pair column for a pair
    model, none otherwise), the column exists, differs from the text and label columns, and
    no pair text is empty. Token-classification models have no dataset mode."""
    if info.kind == "token":
        raise HTTPError(
            HTTPStatus.BAD_REQUEST,
            f"model {info.name!r} finds entities (token classification): the dataset mode evaluates one "
            "label per text; choose a sequence or text-pair classifier",
        )
    if info.kind != "text-pair":
        if pair_column not in (None, ""):
            raise HTTPError(
                HTTPStatus.BAD_REQUEST,
                f"model {info.name!r} classifies single texts: it takes no pair column (choose a text-pair model)",
            )
        return None
    if not isinstance(pair_column, str) or pair_column not in dataset.columns:
        raise HTTPError(
            HTTPStatus.BAD_REQUEST,
            f"model {info.name!r} classifies text pairs: choose the pair column among {', '.join(dataset.columns)}",
        )
    if pair_column in other_columns:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "the pair column must differ from the text and label columns")
    pairs = dataset.column(pair_column)
    _check_filled(pairs, "pair text")
    return pairs


def _row_pairs(pairs: list[str] | None, rows: range | list[int]) -> dict[str, Any]:
    """The `pairs` argument of a call on these rows: none for a single-text model."""
    return {} if pairs is None else {"pairs": [pairs[r] for r in rows]}


def predict_rows(
    client: Client, info: ModelInfo, texts: list[str], labels: list[str], pairs: list[str] | None = None
) -> Callable[[Job], dict[str, Any]]:
    """A predict job's work: every row (with its pair text for a pair model) through
    PredictStream, then the figures."""

    def work(job: Job) -> dict[str, Any]:
        index = {label: i for i, label in enumerate(info.labels)}
        n, k = len(texts), len(info.labels)
        true = np.asarray([index[label] for label in labels], dtype=np.int64)
        predicted = np.full(n, -1, dtype=np.int64)
        scores = np.full((n, k), np.nan)
        truncated = np.zeros(n, dtype=bool)
        correct = 0
        for rows in _slices(n, PREDICT_SLICE):
            job.check()
            stream = client.predict_stream([texts[r] for r in rows], model=info.name, **_row_pairs(pairs, rows))
            try:
                for i, p in stream:
                    job.check()
                    r = rows[i]
                    predicted[r] = index[p.label]
                    scores[r] = [p.scores.get(label, np.nan) for label in info.labels]
                    truncated[r] = p.truncated
                    correct += int(predicted[r] == true[r])
                    job.done += 1
                    job.detail = {"correct": correct}
            except InvalidArgumentError as exc:
                raise _rows_named(exc, rows) from exc
            finally:
                close(stream)  # cancels the call when the job stopped in its middle
        evaluation = Evaluation(
            model=info.name,
            model_labels=list(info.labels),
            true=true,
            predicted=predicted,
            scores=scores,
            truncated=truncated,
            seconds=time.monotonic() - job.began,
        )
        job.data = {"texts": texts, "model": info.name, "pairs": pairs}
        confidence = evaluation.confidence
        result: dict[str, Any] = {
            "metrics": evaluation.metrics(),
            # per row: text, true label, predicted label, confidence (the predicted label's probability)
            "rows": [
                [texts[r], labels[r], info.labels[predicted[r]], float(confidence[r])] for r in range(n)
            ],
        }
        if pairs is not None:
            result["pairs"] = pairs  # per row: its pair text
        return result

    return work


def sample_rows(n: int, size: int) -> list[int]:
    """A fixed sample of `size` row indices out of `n` (all of them when `size >= n`), the
    same each time so that a rerun explains the same rows (and finds them cached)."""
    if size >= n:
        return list(range(n))
    return sorted(random.Random(0).sample(range(n), size))


def explain_rows(
    client: Client,
    model: str,
    texts: list[str],
    rows: list[int],
    explainer: str,
    options: dict[str, Any],
    pairs: list[str] | None = None,
) -> Callable[[Job], dict[str, Any]]:
    """An explain job's work: the sampled rows (with their pair texts for a pair model)
    through ExplainStream (every label), then each label's words by mean |value|
    (`whybert.aggregate`, over the words of both texts of a pair)."""

    def work(job: Job) -> dict[str, Any]:
        explanations = []
        for at in _slices(len(rows), EXPLAIN_SLICE):
            job.check()
            chunk = [rows[i] for i in at]
            stream = client.explain_stream(
                [texts[r] for r in chunk],
                model=model,
                explainer=explainer,
                targets="all",
                **options,
                **_row_pairs(pairs, chunk),
            )
            try:
                for _, e in stream:
                    job.check()
                    explanations.append(e)
                    job.done += 1
            except InvalidArgumentError as exc:
                raise _rows_named(exc, chunk) from exc
            finally:
                close(stream)
        pooled = aggregate(explanations, lowercase=True)
        return {
            "explainer": explainer,
            "rows": [r + 1 for r in rows],
            "labels": pooled.labels,
            "explanations": pooled.explanations,
            "output": pooled.output,
            "top": {
                label: [
                    {"word": w.word, "mean_abs": w.mean_abs, "mean": w.mean, "count": w.count, "texts": w.texts}
                    for w in pooled.top(label, k=TOP_WORDS)
                ]
                for label in pooled.labels
            },
        }

    return work


__all__ = [
    "Cancelled",
    "Dataset",
    "DatasetStore",
    "Job",
    "JobManager",
    "check_labelled",
    "check_pairs",
    "explain_rows",
    "parse_csv",
    "predict_rows",
    "sample_rows",
]
