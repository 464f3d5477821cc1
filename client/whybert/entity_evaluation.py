"""Entity-level evaluation of a served token-classification model on a CoNLL-style file.

The figures are seqeval's (`seqeval.metrics.classification_report(y_true, y_pred,
output_dict=True)`, its default conlleval chunking, not the strict IOB2 mode): an entity
counts as found when its type and exact span match; per type precision, recall, F1 and
support, and their micro, macro and weighted averages. They are computed here in plain
Python (the tests compare with seqeval) so the client needs no extra package.

The file has one token per line (first column the token, last column its tag: CoNLL-2003's
four columns or just two), sentences separated by blank lines, `-DOCSTART-` lines skipped.
Each sentence is sent as its tokens joined by single spaces; the model's entities are read
back as tags on those tokens: B- on an entity's first token, I- on the others, O elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._client import Client
from ._types import Entity

Report = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Sentence:
    tokens: list[str]
    tags: list[str]


def read_conll(path: str | Path) -> list[Sentence]:
    """The sentences of a CoNLL-style file (tokens and their gold tags)."""
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if tokens:
                    sentences.append(Sentence(tokens, tags))
                    tokens, tags = [], []
                continue
            if len(parts) < 2:
                raise ValueError(f"{path}:{number}: expected a token and its tag, got {line.strip()!r}")
            tokens.append(parts[0])
            tags.append(parts[-1])
    if tokens:
        sentences.append(Sentence(tokens, tags))
    return sentences


def entity_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, first, last token) of each entity, chunked as seqeval's `get_entities`."""
    chunks: set[tuple[str, int, int]] = set()
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag = chunk[0]
        kind = chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _end_of_chunk(prev_tag, tag, prev_type, kind):
            chunks.add((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, kind):
            begin = i
        prev_tag, prev_type = tag, kind
    return chunks


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != kind


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != kind


def entity_report(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> Report:
    """seqeval's classification report: per type, then micro, macro and weighted averages."""
    if len(y_true) != len(y_pred) or any(len(t) != len(p) for t, p in zip(y_true, y_pred, strict=True)):
        raise ValueError("the true and predicted tag sequences differ in length")
    true: set[tuple[str, int, int, int]] = set()
    pred: set[tuple[str, int, int, int]] = set()
    for n, (t, p) in enumerate(zip(y_true, y_pred, strict=True)):
        true |= {(k, n, s, e) for k, s, e in entity_spans(t)}
        pred |= {(k, n, s, e) for k, s, e in entity_spans(p)}
    types = sorted({x[0] for x in true} | {x[0] for x in pred})
    report: Report = {}
    for kind in types:
        gold = {x for x in true if x[0] == kind}
        found = {x for x in pred if x[0] == kind}
        report[kind] = _figures(len(gold & found), len(found), len(gold))
    report["micro avg"] = _figures(len(true & pred), len(pred), len(true))
    per_type = [report[k] for k in types]
    support = sum(r["support"] for r in per_type)
    for name, weights in (
        ("macro avg", [1.0] * len(per_type)),
        ("weighted avg", [r["support"] for r in per_type]),
    ):
        total = sum(weights)
        report[name] = {
            key: sum(w * r[key] for w, r in zip(weights, per_type, strict=True)) / total if total else 0.0
            for key in ("precision", "recall", "f1-score")
        }
        report[name]["support"] = float(support)
    return report


def _figures(hits: int, predicted: int, actual: int) -> dict[str, float]:
    precision = hits / predicted if predicted else 0.0
    recall = hits / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1-score": f1, "support": float(actual)}


def tags_of(tokens: Sequence[str], entities: Sequence[Entity]) -> list[str]:
    """The model's entities (character spans in the tokens joined by spaces) as token tags."""
    tags = ["O"] * len(tokens)
    starts, position = [], 0
    for token in tokens:
        starts.append(position)
        position += len(token) + 1
    for entity in entities:
        inside = [i for i, s in enumerate(starts) if s < entity.end and entity.start < s + len(tokens[i])]
        for n, i in enumerate(inside):
            tags[i] = ("B-" if n == 0 else "I-") + entity.label
    return tags


def _batches(sentences: Sequence[Sentence], size: int) -> Iterator[Sequence[Sentence]]:
    for start in range(0, len(sentences), size):
        yield sentences[start : start + size]


def evaluate_entities(
    client: Client, path: str | Path, model: str | None = None, batch_size: int = 1000
) -> dict[str, Any]:
    """Predict every sentence of the file and report the entity figures (seqeval's)."""
    return EntityEvaluation.run(client, path, model, batch_size).result


@dataclass(frozen=True)
class EntityEvaluation:
    """A CoNLL file's sentences, the tags the model predicted for them, and the figures."""

    sentences: list[Sentence]
    predicted: list[list[str]]
    result: dict[str, Any]  # {"sentences": count, "report": seqeval's figures}

    @classmethod
    def run(
        cls, client: Client, path: str | Path, model: str | None = None, batch_size: int = 1000
    ) -> EntityEvaluation:
        """The sentences go `batch_size` to a PredictStream (no per-request text limit
        applies to a stream)."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        sentences = read_conll(path)
        if not sentences:
            raise ValueError(f"{path}: no sentences (one token and its tag a line, a blank line between sentences)")
        predicted: list[list[str]] = []
        for batch in _batches(sentences, batch_size):
            found = dict(client.predict_stream([" ".join(s.tokens) for s in batch], model=model))
            predicted.extend(tags_of(s.tokens, found[i].entities) for i, s in enumerate(batch))
        report = entity_report([s.tags for s in sentences], predicted)
        return cls(sentences, predicted, {"sentences": len(sentences), "report": report})

    def write_conll(self, path: str | Path) -> None:
        """conlleval's input: a line per token (the token, its gold tag, the predicted one),
        a blank line after each sentence."""
        with Path(path).open("w", encoding="utf-8") as f:
            for sentence, tags in zip(self.sentences, self.predicted, strict=True):
                for token, gold, guess in zip(sentence.tokens, sentence.tags, tags, strict=True):
                    f.write(f"{token} {gold} {guess}\n")
                f.write("\n")
