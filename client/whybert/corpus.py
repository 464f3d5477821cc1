"""Explanations of a whole corpus, kept on disk as they arrive.

`explain_corpus` sends the texts through `Client.explain_stream` a chunk at a time and
appends each explanation to DIR/explanations.jsonl the moment it arrives: one JSON object
per row and explainer, `{"row", "explainer", "label", "explanation"}`, the explanation
written by `explanation_to_dict`, which `explanation_from_dict` reads back exactly. Nothing
is held beyond the chunk in flight, so memory does not grow with the corpus, and a run that
stops (a crash, Ctrl-C, a deadline) loses at most the rows in flight.

A text-pair model's rows carry their second text (`pairs=`, the CSV's pair column): each
record's explanation holds it (`pair`) and says which text each token is of (`segments`).

Running it again on the same DIR resumes: every (row, explainer) already in the file is
skipped. Before that, the run's settings recorded in DIR/run.json (the model, its weights'
digest, the explainers, the explain options, the pair column) must equal the new call's,
and each row must have the text, pair text and true label it was explained with (a digest
per row), else the call is refused: mixing two runs in one report would be silently wrong. A line half-written when a
process died (the last one, without its newline) is cut off and its row redone.

At the end `corpus_report.write_report` reads the file back, a record at a time, to write
the word statistics, the charts, the table of rows, the explainers' ranking and report.html.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import re
import sys
import time
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

import numpy as np

from ._client import Client
from ._core import EXPLAIN_OPTIONS, USE_CLIENT_DEFAULT
from ._exceptions import InvalidArgumentError
from ._types import (
    EXPLAINER_ALIASES,
    EXPLAINER_KINDS,
    AttentionMaps,
    Entity,
    Explanation,
    Faithfulness,
    ModelInfo,
    Prediction,
)
from .aggregate import Aggregate
from .evaluation import (
    EvalCSV,
    _read,
    csv_pair_column,
    labelled_pairs,
    model_info,
    same_pairing,
    split_row,
    takes_pairs,
    with_pairs,
)

try:  # advisory lock: two runs appending to one file would interleave their rows
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

FORMAT = "whybert-corpus/1"
RECORDS = "explanations.jsonl"
RUN = "run.json"
DEFAULT_CHUNK = 64  # texts per stream: a few seconds to minutes of work, the server's default per-request limit
DEFAULT_REPORT_ROWS = 2000
SETTINGS_KEYS = ("format", "model", "weights_sha256", "explainers", "options", "pairs")
_STREAM_LIMIT = re.compile(r"at most (\d+) per stream")
_ROW_FIELD = re.compile(r"(?:texts|pairs)\[(\d+)\]")
# A corpus row: (text, true label or None), or (text, true label or None, pair text) for a
# text-pair model; and as checked, (text, true label or None, pair text or None).
CorpusRow = tuple[str, str | None] | tuple[str, str | None, str]
_Row = tuple[str, str | None, str | None]


# ---- one explanation as JSON, and back ------------------------------------------------------


def _json_float(value: float) -> float | str:
    """A float JSON can hold: finite ones as themselves (Python writes the shortest repr,
    which reads back to the same double); NaN and ±inf as protobuf's JSON mapping writes
    them, as strings, so any JSON reader takes the file."""
    value = float(value)
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _json_array(array: np.ndarray) -> list[Any]:
    a = np.asarray(array, dtype=np.float64)
    if np.isfinite(a).all():
        return list(a.tolist())
    return [_json_array(v) if a.ndim > 1 else _json_float(v) for v in a]


def _array(values: Sequence[Any], columns: int | None = None) -> np.ndarray:
    """float64 from `_json_array`'s lists ("NaN"/"Infinity" strings included); an empty
    matrix gets its `columns` back (JSON's `[]` has no shape)."""
    a = np.asarray(values, dtype=np.float64)
    if columns is not None and a.ndim != 2:
        a = a.reshape(0, columns)
    return a


def _json_scores(scores: Mapping[str, float]) -> dict[str, float | str]:
    return {label: _json_float(v) for label, v in scores.items()}


def explanation_to_dict(e: Explanation) -> dict[str, Any]:
    """Every field of the explanation as plain JSON values; `explanation_from_dict` gives
    back an equal explanation (arrays as float64, NaN and ±inf included)."""
    p = e.prediction
    return {
        "text": e.text,
        "tokens": list(e.tokens),
        "offsets": [[int(s), int(t)] for s, t in e.offsets],
        "special": [bool(s) for s in e.special],
        "values": _json_array(e.values),
        "base_values": _json_array(e.base_values),
        "output_values": _json_array(e.output_values),
        "labels": list(e.labels),
        "prediction": {
            "label": p.label,
            "scores": _json_scores(p.scores),
            "logits": _json_scores(p.logits),
            "truncated": p.truncated,
            "token_count": p.token_count,
        },
        "explainer": e.explainer,
        "output": e.output,
        "additivity_error": _json_float(e.additivity_error),
        "model_rows": e.model_rows,
        "queue_seconds": _json_float(e.queue_seconds),
        "compute_seconds": _json_float(e.compute_seconds),
        "cached": e.cached,
        "convergence_delta": None if e.convergence_delta is None else _json_array(e.convergence_delta),
        "faithfulness": None
        if e.faithfulness is None
        else {
            "comprehensiveness": _json_float(e.faithfulness.comprehensiveness),
            "sufficiency": _json_float(e.faithfulness.sufficiency),
        },
        "truncated": e.truncated,
        "explained_chars": e.explained_chars,
        "entity": None if e.entity is None else dataclasses.asdict(e.entity),
        "entity_index": e.entity_index,
        "text_index": e.text_index,
        "entity_position": e.entity_position,
        "attention_position": e.attention_position,
        "attention": None
        if e.attention is None
        else {
            "layers": list(e.attention.layers),
            "heads": list(e.attention.heads),
            "weights": _json_array(e.attention.weights),
        },
        "pair": e.pair,
        "segments": [int(s) for s in e.segments],
        "explained_pair_chars": e.explained_pair_chars,
    }


def explanation_from_dict(data: Mapping[str, Any]) -> Explanation:
    """The explanation `explanation_to_dict` wrote."""
    try:
        p = data["prediction"]
        faith = data["faithfulness"]
        delta = data["convergence_delta"]
        return Explanation(
            text=data["text"],
            tokens=list(data["tokens"]),
            offsets=[(int(s), int(t)) for s, t in data["offsets"]],
            special=[bool(s) for s in data["special"]],
            values=_array(data["values"], columns=len(data["labels"])),
            base_values=_array(data["base_values"]),
            output_values=_array(data["output_values"]),
            labels=list(data["labels"]),
            prediction=Prediction(
                label=p["label"],
                scores={k: float(v) for k, v in p["scores"].items()},
                logits={k: float(v) for k, v in p["logits"].items()},
                truncated=bool(p["truncated"]),
                token_count=int(p["token_count"]),
            ),
            explainer=data["explainer"],
            output=data["output"],
            additivity_error=float(data["additivity_error"]),
            model_rows=int(data["model_rows"]),
            queue_seconds=float(data["queue_seconds"]),
            compute_seconds=float(data["compute_seconds"]),
            cached=bool(data["cached"]),
            convergence_delta=None if delta is None else _array(delta),
            faithfulness=None
            if faith is None
            else Faithfulness(float(faith["comprehensiveness"]), float(faith["sufficiency"])),
            truncated=bool(data["truncated"]),
            explained_chars=int(data["explained_chars"]),
            # records written before entities had none of these
            entity=None if data.get("entity") is None else Entity(**data["entity"]),
            entity_index=int(data.get("entity_index", 0)),
            text_index=int(data.get("text_index", 0)),
            entity_position=int(data.get("entity_position", 0)),
            # nor, before attention and text pairs, these
            attention_position=int(data.get("attention_position", 0)),
            attention=_attention_from_dict(data.get("attention")),
            pair=data.get("pair"),
            segments=[int(s) for s in data.get("segments", [])],
            explained_pair_chars=int(data.get("explained_pair_chars", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not an explanation written by explanation_to_dict: {exc!r}") from exc


def _attention_from_dict(data: Mapping[str, Any] | None) -> AttentionMaps | None:
    if data is None:
        return None
    layers, heads = [int(x) for x in data["layers"]], [int(x) for x in data["heads"]]
    weights = _array(data["weights"]).astype(np.float32)
    if weights.ndim != 4 or weights.shape[:2] != (len(layers), len(heads)):
        raise ValueError(f"attention weights of shape {weights.shape} for {len(layers)} layers × {len(heads)} heads")
    return AttentionMaps(layers, heads, weights)


# ---- the records: explanations.jsonl -------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One line of explanations.jsonl: a row's explanation by one explainer."""

    row: int  # data rows counted from 1, as `whybert evaluate` counts them
    explainer: str
    label: str | None  # the row's true label, when the data has one
    explanation: Explanation


def record_line(record: Record) -> str:
    """The record as one line of JSON (UTF-8 text, its newline included)."""
    item = {
        "row": record.row,
        "explainer": record.explainer,
        "label": record.label,
        "explanation": explanation_to_dict(record.explanation),
    }
    return json.dumps(item, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n"


def parse_record(line: str | bytes) -> Record:
    """The record of one line `record_line` wrote."""
    return _record(json.loads(line))


def _record(item: Mapping[str, Any]) -> Record:
    return Record(item["row"], item["explainer"], item["label"], explanation_from_dict(item["explanation"]))


def row_digest(text: str, label: str | None, pair: str | None = None) -> str:
    """What a resumed run checks a row against: its text, true label and pair text (a
    text-pair model's), as explained."""
    fields = [text, label] if pair is None else [text, label, pair]
    return hashlib.blake2b(json.dumps(fields).encode(), digest_size=8).hexdigest()


@dataclass
class Done:
    """What explanations.jsonl holds already (read by `scan`)."""

    rows: dict[str, set[int]] = field(default_factory=dict)  # explainer -> rows explained
    digests: dict[int, str] = field(default_factory=dict)  # row -> row_digest of its text and label
    records: int = 0
    dropped_tail: bool = False  # a half-written last line was cut off

    @property
    def last_row(self) -> int:
        return max(self.digests, default=0)

    def has(self, row: int, explainer: str) -> bool:
        return row in self.rows.get(explainer, ())


def scan(path: str | os.PathLike[str], explainers: Sequence[str] | None = None) -> Done:
    """Read what a records file holds, and cut off a last line that a stopped process left
    half-written (one without its newline), so that its row is redone. Any other line that
    is not a record, a record of an explainer outside `explainers`, a (row, explainer) seen
    twice, or two texts for one row mean the file is not what this module wrote: refused."""
    path = Path(path)
    done = Done()
    good = 0  # bytes up to the end of the last whole line
    with path.open("r+b") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                done.dropped_tail = True
                break
            try:
                item = json.loads(line)
                row, explainer, label = item["row"], item["explainer"], item["label"]
                text, pair = item["explanation"]["text"], item["explanation"].get("pair")
                if not (isinstance(row, int) and row >= 1 and isinstance(explainer, str) and isinstance(text, str)):
                    raise ValueError("row, explainer or text of the wrong type")
                if pair is not None and not isinstance(pair, str):
                    raise ValueError("a pair text of the wrong type")
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{path}: line {number} is not an explanation record ({exc}); "
                    "it was not written by whybert: restart=True (--restart) starts the run over"
                ) from exc
            if explainers is not None and explainer not in explainers:
                raise ValueError(f"{path}: line {number} is of explainer {explainer!r}, not of this run's")
            rows = done.rows.setdefault(explainer, set())
            if row in rows:
                raise ValueError(f"{path}: row {row} of {explainer} is there twice (line {number})")
            digest = row_digest(text, label, pair)
            if done.digests.setdefault(row, digest) != digest:
                raise ValueError(f"{path}: row {row} holds two different texts or labels (line {number})")
            rows.add(row)
            done.records += 1
            good += len(line)
        if done.dropped_tail:
            f.truncate(good)
    return done


def _normal_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The explain options as run.json records them: those that change nothing (None, False,
    targets "predicted") left out, so equal requests give equal settings."""
    unknown = sorted(set(options) - set(EXPLAIN_OPTIONS))
    if unknown:
        raise TypeError(f"unknown explain option(s): {', '.join(unknown)}; known: {', '.join(EXPLAIN_OPTIONS)}")
    out: dict[str, Any] = {}
    for name in sorted(options):
        value = options[name]
        if value is None or value is False or (name == "targets" and value == "predicted"):
            continue
        if name == "targets" and not isinstance(value, str):
            value = list(value)
        out[name] = value
    return out


def _explainer_name(name: str) -> str:
    canonical = EXPLAINER_ALIASES.get(name, name)
    if canonical not in EXPLAINER_KINDS:
        known = ", ".join([*EXPLAINER_KINDS, *EXPLAINER_ALIASES])
        raise ValueError(f"unknown explainer {name!r}; known: {known}")
    return canonical


class CorpusStore:
    """A run's directory: run.json (its settings) and explanations.jsonl (its records),
    appended to a line at a time, and read back a record at a time."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(out_dir)
        self.records_path = self.dir / RECORDS
        self.run_path = self.dir / RUN
        self._file: IO[str] | None = None
        self._lock_file: IO[str] | None = None

    def settings(self) -> dict[str, Any] | None:
        """What run.json recorded, or None for a directory without a run."""
        if not self.run_path.exists():
            return None
        try:
            recorded = json.loads(self.run_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{self.run_path} is not a run's settings ({exc}); restart=True (--restart) "
                             "starts the run over") from exc
        if not isinstance(recorded, dict):
            raise ValueError(f"{self.run_path} is not a run's settings; restart=True (--restart) starts over")
        return recorded

    def open(
        self, settings: Mapping[str, Any], *, restart: bool = False, extra: Mapping[str, Any] | None = None
    ) -> Done:
        """Start or resume the run of `settings` (the keys of SETTINGS_KEYS; `extra` is
        recorded beside them, for people, and not checked), and say what is done already."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            if restart:
                self._clear()
            recorded = self.settings()
            if recorded is None:
                if self.records_path.exists() and self.records_path.stat().st_size:
                    raise ValueError(
                        f"{self.records_path} exists but {self.run_path} does not: it is not a run this "
                        "module can resume; restart=True (--restart) starts over, or choose another directory"
                    )
                self._write_settings({**settings, **(extra or {})})
                self.records_path.write_bytes(b"")
                done = Done()
            else:
                differences = settings_differences(recorded, settings)
                if differences:
                    raise ValueError(
                        f"{self.dir} holds a run with other settings ({'; '.join(differences)}): give the "
                        "same ones to resume it, restart=True (--restart) to discard it, or choose another "
                        "directory"
                    )
                if not self.records_path.exists():
                    self.records_path.write_bytes(b"")
                done = scan(self.records_path, list(settings["explainers"]))
        except BaseException:
            self.close()
            raise
        self._file = self.records_path.open("a", encoding="utf-8")
        return done

    def _lock(self) -> None:
        """Hold the directory's lock (DIR/.lock) for as long as this store is open: a second
        run on the same directory is refused instead of appending rows between this one's."""
        lock_path = self.dir / ".lock"
        self._lock_file = lock_path.open("a")
        if fcntl is not None:
            try:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                self._lock_file.close()
                self._lock_file = None
                raise ValueError(f"another run is writing to {self.dir} right now") from exc

    def _write_settings(self, settings: Mapping[str, Any]) -> None:
        partial = self.run_path.with_suffix(".json.partial")
        partial.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        partial.replace(self.run_path)  # whole or not at all

    def _clear(self) -> None:
        """Remove the files of a run (this module's names only: the directory may hold others)."""
        for path in [self.records_path, self.run_path, *_written_files(self.dir)]:
            path.unlink(missing_ok=True)

    def append(self, record: Record) -> None:
        """Write one record, flushed to the OS at once: a process that dies loses none
        already returned from here."""
        if self._file is None:
            raise ValueError("the store is not open")
        self._file.write(record_line(record))
        self._file.flush()

    def sync(self) -> None:
        """Push the records to the disk (a chunk's worth at a time)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock
            self._lock_file = None

    def records(self, explainer: str | None = None) -> Iterator[Record]:
        """The records in file order (arrival order, not row order), one at a time; those
        of one explainer only when named."""
        with self.records_path.open("rb") as f:
            for line in f:
                item = json.loads(line)
                if explainer is None or item["explainer"] == explainer:
                    yield _record(item)

    def index(self) -> dict[str, array[int]]:
        """Where each record starts in the file, per explainer, indexed by row (-1: none):
        8 bytes per row, so the report can read the records in row order, whatever order
        they arrived in, without holding them."""
        index: dict[str, array[int]] = {}
        with self.records_path.open("rb") as f:
            at = 0
            for line in f:
                head = _HEAD.match(line)
                row, explainer = (int(head[1]), head[2].decode()) if head else _row_and_explainer(line)
                offsets = index.setdefault(explainer, array("q"))
                if len(offsets) <= row:
                    offsets.extend([-1] * (row + 1 - len(offsets)))
                offsets[row] = at
                at += len(line)
        return index

    def by_row(self, index: Mapping[str, array[int]], explainers: Sequence[str]) -> Iterator[dict[str, Record]]:
        """Each row's records of `explainers` (those it has), in row order (see `index`)."""
        last = max((len(index[x]) for x in explainers if x in index), default=0)
        with self.records_path.open("rb") as f:
            for row in range(1, last):
                have: dict[str, Record] = {}
                for x in explainers:
                    offsets = index.get(x)
                    if offsets is not None and row < len(offsets) and offsets[row] >= 0:
                        f.seek(offsets[row])
                        have[x] = parse_record(f.readline())
                if have:
                    yield have


# `record_line` writes these two keys first; other writers' lines are parsed whole.
_HEAD = re.compile(rb'\{"row":(\d+),"explainer":"([a-z-]+)"')


def _row_and_explainer(line: bytes) -> tuple[int, str]:
    item = json.loads(line)
    return int(item["row"]), str(item["explainer"])


def settings_differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Each setting that differs, as `name: recorded there, wanted now`."""
    return [
        f"{key}: {json.dumps(recorded.get(key))} there, {json.dumps(wanted.get(key))} now"
        for key in SETTINGS_KEYS
        if recorded.get(key) != json.loads(json.dumps(wanted.get(key)))
    ]


def _written_files(out: Path) -> list[Path]:
    """The report's files in a run's directory (see corpus_report)."""
    names = ["words.json", "words.csv", "rows.csv", "explainers.json", "report.html", "confidence.png"]
    return [out / n for n in names] + sorted(out.glob("words_*.png")) + sorted(out.glob("words.*.json")) + sorted(
        out.glob("words.*.csv")
    )


# ---- the run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusResult:
    """What `explain_corpus` did and wrote."""

    out_dir: Path
    model: str
    explainers: list[str]  # the first one's explanations make the words, charts and table
    rows: int
    explained: int  # explanations made by this call
    resumed: int  # explanations found in out_dir and kept
    seconds: float
    words: Aggregate  # the first explainer's word statistics, as in words.json
    accuracy: float | None  # of the predictions, when the rows have true labels
    ranking: dict[str, Any] | None  # explainers.json, when several explainers were compared
    shown_rows: int  # rows whose explanations report.html shows (the first ones)
    files: list[Path]
    # Rows of an entity model with fewer entities than the entity index asked for: nothing
    # to explain there, so they are left out (and looked at again by a resumed run).
    skipped_rows: list[int] = dataclasses.field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "model": self.model,
            "explainers": self.explainers,
            "rows": self.rows,
            "explained": self.explained,
            "resumed": self.resumed,
            "seconds": round(self.seconds, 3),
            "accuracy": self.accuracy,
            "shown_rows": self.shown_rows,
            "files": [str(p) for p in self.files],
            "ranking": self.ranking,
            "skipped_rows": self.skipped_rows,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.summary(), indent=indent)


def explain_corpus(
    client: Client,
    texts: Iterable[str],
    labels: Iterable[str] | None = None,
    *,
    pairs: Iterable[str] | None = None,
    out_dir: str | os.PathLike[str],
    model: str | None = None,
    explainer: str = "shap-partition",
    compare_explainers: Sequence[str] | None = None,
    restart: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    report_rows: int = DEFAULT_REPORT_ROWS,
    agreement_k: int = 5,
    charts: bool = True,
    progress: bool | TextIO = False,
    total: int | None = None,
    timeout: Any = USE_CLIENT_DEFAULT,
    source: Mapping[str, Any] | None = None,
    **options: Any,
) -> CorpusResult:
    """Explain every text into `out_dir` (explanations.jsonl, resumable: see the module's
    docstring) and write the corpus's report there: words.json and words.csv (the word
    statistics of `whybert.aggregate`, lower-cased), bar charts of the top words by each
    measure and a scatter of confidence against the largest attribution (with `charts`,
    which needs matplotlib), rows.csv and report.html.

    `labels` (the true labels, names of the model's labels) add correctness to the table and
    the scatter. A text-pair model needs `pairs`, one second text per text (a single-text
    model takes none); the words then pool both texts' tokens, and the per-token outputs
    (the records' `segments`, the top words `word (pair)`) say which text.
    `compare_explainers` (two or more names) explains each text with each, with
    `faithfulness=True`, and ranks them (explainers.json). `options` are those of
    `Client.explain`. Texts are read lazily, `chunk_size` per stream; `timeout` is per text
    (a stream of k texts gets k times it). `progress` shows a tqdm bar with an ETA (the
    total: `total`, or len(texts)) when tqdm is installed.
    """
    if total is None and isinstance(texts, Sized):
        total = len(texts)
    info = model_info(client, model, timeout)
    rows: Iterable[CorpusRow] = ((t, None) for t in texts) if labels is None else labelled_pairs(texts, labels)
    if pairs is not None:
        rows = with_pairs(rows, pairs)
    return explain_corpus_rows(
        client, info, rows, out_dir=out_dir, explainer=explainer, compare_explainers=compare_explainers,
        restart=restart, chunk_size=chunk_size, report_rows=report_rows, agreement_k=agreement_k, charts=charts,
        progress=progress, total=total, timeout=timeout, source=source, **options,
    )


def explain_corpus_rows(
    client: Client,
    info: ModelInfo,
    rows: Iterable[CorpusRow],
    *,
    out_dir: str | os.PathLike[str],
    explainer: str = "shap-partition",
    compare_explainers: Sequence[str] | None = None,
    restart: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    report_rows: int = DEFAULT_REPORT_ROWS,
    agreement_k: int = 5,
    charts: bool = True,
    progress: bool | TextIO = False,
    total: int | None = None,
    timeout: Any = USE_CLIENT_DEFAULT,
    source: Mapping[str, Any] | None = None,
    pair_column: str | None = None,
    **options: Any,
) -> CorpusResult:
    """`explain_corpus` on (text, true label or None) rows, (text, true label or None, pair
    text) for a text-pair model, for a model already looked up. `pair_column` names where
    the pair texts come from (a CSV's column): run.json records it, and a resumed run must
    name the same."""
    from .corpus_report import write_report

    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    if report_rows < 0:
        raise ValueError("report_rows must be at least 0")
    if charts and importlib.util.find_spec("matplotlib") is None:  # say so now, not after hours of work
        raise ImportError('the charts need matplotlib, which is not installed: pip install "whybert[evaluate]", '
                          "or charts=False")
    if options.get("pairs") is not None:
        raise TypeError("a corpus's pair texts go with its rows (pairs=, or (text, label, pair) rows), not in options")
    options = {k: v for k, v in options.items() if k != "pairs"}
    if compare_explainers is not None:
        explainers = list(dict.fromkeys(_explainer_name(x) for x in compare_explainers))
        if len(explainers) < 2:
            raise ValueError("compare_explainers needs at least two different explainers")
        options = {**options, "faithfulness": True}
    else:
        explainers = [_explainer_name(explainer)]
    normal = _normal_options(options)
    settings: dict[str, Any] = {
        "format": FORMAT,
        "model": info.name,
        "weights_sha256": info.weights_sha256,
        "explainers": explainers,
        "options": normal,
    }
    if takes_pairs(info) or pair_column is not None:  # rows with pair texts: from which column
        settings["pairs"] = pair_column or True
    store = CorpusStore(out_dir)
    done = store.open(settings, restart=restart, extra={"source": dict(source or {})})
    began = time.perf_counter()
    try:
        if total is not None and done.last_row > total:
            raise _shrunk(store.dir, done.last_row, total)
        run = _Run(client, info, store, explainers, options, chunk_size, timeout)
        bar = _progress_bar(progress, None if total is None else total * len(explainers), done.records)
        run.bar = bar
        try:
            n = run.all(_checked_rows(rows, info), done)
        finally:
            if bar is not None:
                bar.close()
        if n == 0:
            raise ValueError("no rows to explain")
        if done.last_row > n:
            raise _shrunk(store.dir, done.last_row, n)
    finally:
        store.close()
    seconds = time.perf_counter() - began
    report = write_report(
        store, model=info.name, explainers=explainers, rows=n, report_rows=report_rows,
        agreement_k=agreement_k, charts=charts,
    )
    return CorpusResult(
        out_dir=store.dir,
        model=info.name,
        explainers=explainers,
        rows=n,
        explained=run.explained,
        resumed=done.records,
        seconds=seconds,
        words=report.words,
        accuracy=report.accuracy,
        ranking=report.ranking,
        shown_rows=report.shown_rows,
        files=[store.run_path, store.records_path, *report.files],
        skipped_rows=list(run.skipped),
    )


def _shrunk(out: Path, last: int, rows: int) -> ValueError:
    return ValueError(
        f"{out} holds explanations up to row {last} but the data has {rows} rows: it is not the data of "
        "that run; restart=True (--restart) starts over, or choose another directory"
    )


def _checked_rows(rows: Iterable[CorpusRow], info: ModelInfo) -> Iterator[_Row]:
    """The rows, checked as they are read: an empty text (the server refuses it), a label
    the model does not have (nothing could be right), or a pair text missing (a text-pair
    model) or there (a single-text model) stops the run naming its row."""
    paired: bool | None = None
    for n, row in enumerate(rows, start=1):
        text, label, pair = split_row(row, n, info)
        paired = same_pairing(paired, pair, n)
        if not text.strip():
            raise ValueError(f"row {n}: the text is empty")
        if label is not None and label not in info.labels:
            raise ValueError(
                f"row {n}: label {label!r} is not a label of model {info.name!r} ({', '.join(info.labels)})"
            )
        yield text, label, pair


@dataclass
class _Todo:
    row: int
    text: str
    label: str | None
    explainers: list[str]  # those still to explain it
    pair: str | None = None  # a text-pair model's second text


class _Run:
    """The chunks of one call: rows not yet done, `chunk_size` at a time, each explainer's
    stream in turn, each explanation written as it arrives."""

    def __init__(
        self, client: Client, info: ModelInfo, store: CorpusStore, explainers: list[str],
        options: Mapping[str, Any], chunk_size: int, timeout: Any,
    ) -> None:
        self.client = client
        self.info = info
        self.store = store
        self.explainers = explainers
        self.options = dict(options)
        self.chunk_size = chunk_size
        self.timeout = timeout
        self.explained = 0
        self.skipped: dict[int, None] = {}  # rows without the entity asked for, in order
        self.bar: Any = None

    def all(self, rows: Iterable[_Row], done: Done) -> int:
        """Explain what `done` lacks; the number of rows read."""
        chunk: list[_Todo] = []
        n = 0
        for n, (text, label, pair) in enumerate(rows, start=1):
            recorded = done.digests.get(n)
            if recorded is not None and recorded != row_digest(text, label, pair):
                what = "text, pair text" if pair is not None else "text"
                raise ValueError(
                    f"row {n}'s {what} or true label is not the one explained in {self.store.dir}: the data "
                    "changed; restart=True (--restart) starts over, or choose another directory"
                )
            missing = [x for x in self.explainers if not done.has(n, x)]
            if missing:
                chunk.append(_Todo(n, text, label, missing, pair))
            if len(chunk) >= self.chunk_size:
                self.chunk(chunk)
                chunk = []
        if chunk:
            self.chunk(chunk)
        return n

    def chunk(self, chunk: list[_Todo]) -> None:
        chunk = self.with_entity(chunk)
        for explainer in self.explainers:
            todo = [t for t in chunk if explainer in t.explainers]
            while todo:
                part = todo[: self.chunk_size]
                try:
                    self.stream(explainer, part)
                except _StreamLimit as exc:  # the server takes fewer texts per stream
                    if exc.limit >= len(part):
                        raise ValueError(str(exc)) from None
                    self.chunk_size = exc.limit
                    continue
                todo = todo[len(part) :]
        self.store.sync()

    def stream(self, explainer: str, part: list[_Todo]) -> None:
        pairs = [t.pair for t in part if t.pair is not None]  # all or none (_checked_rows)
        extra = {"pairs": pairs} if pairs else {}
        stream = self.client.explain_stream(
            [t.text for t in part], model=self.info.name, explainer=explainer,
            timeout=self.stream_timeout(len(part)), **extra, **self.options,
        )
        try:
            for i, e in stream:
                todo = part[i]
                self.store.append(Record(todo.row, explainer, todo.label, e))
                self.explained += 1
                if self.bar is not None:
                    self.bar.update(1)
        except InvalidArgumentError as exc:
            raise _refusal(exc, part) from exc
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # cancels the call if it is still going

    def stream_timeout(self, texts: int) -> float | None:
        """A stream's deadline: the timeout (the client's own by default) is per text here."""
        per_text = self.client.timeout if self.timeout is USE_CLIENT_DEFAULT else self.timeout
        return None if per_text is None else per_text * texts

    def with_entity(self, chunk: list[_Todo]) -> list[_Todo]:
        """The rows of `chunk` that have the entity an entity model is asked to explain by
        index (the server refuses a stream holding a text without it), learnt from a
        PredictStream per part of the chunk; the others are noted in `skipped`, once each,
        and their progress counted as done."""
        index = self.options.get("entity")
        if self.info.kind != "token" or not isinstance(index, int) or isinstance(index, bool):
            return chunk
        counts: list[int] = []
        while len(counts) < len(chunk):
            part = chunk[len(counts) : len(counts) + self.chunk_size]
            try:
                found = dict(self.client.predict_stream(
                    [t.text for t in part], model=self.info.name, timeout=self.stream_timeout(len(part))
                ))
            except InvalidArgumentError as exc:
                refusal = _refusal(exc, part)
                if isinstance(refusal, _StreamLimit) and refusal.limit < len(part):
                    self.chunk_size = refusal.limit  # the server takes fewer texts per stream
                    continue
                raise refusal from exc
            counts.extend(len(found[i].entities) for i in range(len(part)))
        kept = []
        for todo, count in zip(chunk, counts, strict=True):
            if count > index:
                kept.append(todo)
            elif todo.row not in self.skipped:
                self.skipped[todo.row] = None
                if self.bar is not None:
                    self.bar.update(len(todo.explainers))
        return kept


class _StreamLimit(ValueError):
    def __init__(self, limit: int, message: str) -> None:
        super().__init__(message)
        self.limit = limit


def _refusal(exc: InvalidArgumentError, part: list[_Todo]) -> ValueError:
    """The server's complaints, about `texts[i]` of a stream, naming the data row."""
    problems = []
    for name, description in exc.field_violations:
        if name == "texts" and (limit := _STREAM_LIMIT.search(description)):
            return _StreamLimit(int(limit.group(1)), description)
        at = _ROW_FIELD.fullmatch(name)
        problems.append(f"row {part[int(at.group(1))].row}: {description}" if at else f"{name}: {description}")
    return ValueError("the server refused the request: " + "; ".join(problems or [exc.message]))


def _progress_bar(progress: bool | TextIO, total: int | None, initial: int) -> Any:
    """A tqdm bar counting explanations (those on disk already as its start), or None when
    none is asked for or tqdm (an optional extra) is missing."""
    if progress is False:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    stream = sys.stderr if progress is True else progress
    return tqdm(
        total=total, initial=initial, unit="explanation", desc="explain-corpus", file=stream, dynamic_ncols=True
    )


# ---- the CSV of `whybert explain-corpus` ---------------------------------------------------


@dataclass(frozen=True)
class CorpusCSV:
    """A CSV of texts, with or without true labels, checked in one streaming pass before
    anything is sent (as `whybert evaluate` checks its file: the columns, the labels, empty
    texts, a text-pair model's pair column: see `evaluation.csv_pair_column`); the pass
    counts the rows for the progress bar's ETA. Iterating gives (text, label or None), or
    (text, label or None, pair) with a pair column."""

    path: Path
    text_column: str
    label_column: str | None
    rows: int
    pair_column: str | None = None

    @classmethod
    def check(
        cls,
        path: str | os.PathLike[str],
        text_column: str,
        label_column: str | None,
        model: ModelInfo,
        pair_column: str | None = None,
    ) -> CorpusCSV:
        path = Path(path)
        if label_column:
            checked = EvalCSV.check(path, text_column, label_column, model, pair_column)
            return cls(path, text_column, label_column, checked.rows, checked.pair_column)
        pairs = csv_pair_column(path, model, pair_column)
        empty: list[int] = []
        n = 0
        # evaluate's reader wants a label column; the text column stands in for it, unused.
        for n, (text, _, *pair) in enumerate(_read(path, text_column, text_column, pairs), start=1):
            if not text.strip() or (pair and not pair[0].strip()):
                empty.append(n)
        if n == 0:
            raise ValueError(f"{path}: no rows under the header")
        if empty:
            shown = ", ".join(map(str, empty[:10])) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
            what = "empty text or pair text" if pairs else "empty text"
            raise ValueError(f"{path}: {what} in row(s) {shown}")
        return cls(path, text_column, None, n, pairs)

    def __iter__(self) -> Iterator[CorpusRow]:
        label_column = self.label_column or self.text_column
        for text, label, *pair in _read(self.path, self.text_column, label_column, self.pair_column):
            yield (text, label if self.label_column else None, *pair)  # type: ignore[misc]
