"""The CoNLL-2003 reader of `whybert train --task entities` (`training/conll.py`): document
markers and blank lines, the NER column, IOB1 → IOB2, and the SHA-256 check that refuses a
corpus file other than the one the built-in model was trained on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from whybert_service.training import conll
from whybert_service.training.conll import Sentence, parse_conll, to_iob2
from whybert_service.training.data import DataError

SAMPLE = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O
"""


def test_sentences_split_on_blank_lines_and_document_markers() -> None:
    sentences = parse_conll(SAMPLE.splitlines())
    assert sentences == [
        Sentence(("EU", "rejects", "German", "call"), ("B-ORG", "O", "B-MISC", "O")),
        Sentence(("Peter", "Blackburn"), ("B-PER", "I-PER")),
        Sentence(("BRUSSELS", "1996-08-22"), ("B-LOC", "O")),
    ]


def test_a_document_marker_ends_a_sentence_without_a_blank_line() -> None:
    lines = ["Bonn NNP B-NP B-LOC", "-DOCSTART- -X- -X- O", "Paris NNP B-NP B-LOC"]
    assert [s.words for s in parse_conll(lines)] == [("Bonn",), ("Paris",)]


def test_the_tag_is_the_last_column_whatever_the_width() -> None:
    assert parse_conll(["Siemens B-ORG", "", "Angela NNP B-NP x y B-PER"]) == [
        Sentence(("Siemens",), ("B-ORG",)),
        Sentence(("Angela",), ("B-PER",)),
    ]


@pytest.mark.parametrize(
    ("iob1", "iob2"),
    [
        (["I-PER", "I-PER", "O"], ["B-PER", "I-PER", "O"]),  # IOB1 starts entities with I-
        (["I-LOC", "B-LOC", "O"], ["B-LOC", "B-LOC", "O"]),  # B- marks a second adjacent LOC
        (["I-ORG", "I-LOC"], ["B-ORG", "B-LOC"]),  # a type change starts an entity
        (["O", "I-MISC", "I-MISC"], ["O", "B-MISC", "I-MISC"]),
        (["B-PER", "I-PER", "O", "B-ORG"], ["B-PER", "I-PER", "O", "B-ORG"]),  # IOB2 unchanged
    ],
)
def test_iob1_becomes_iob2(iob1: list[str], iob2: list[str]) -> None:
    assert to_iob2(iob1) == iob2
    assert to_iob2(iob2) == iob2


def test_the_reader_converts_iob1_files() -> None:
    lines = ["New NNP I-NP I-LOC", "York NNP I-NP I-LOC", "Knicks NNP I-NP I-ORG"]
    assert parse_conll(lines)[0].tags == ("B-LOC", "I-LOC", "B-ORG")


@pytest.mark.parametrize("lines", [["word"], ["word NNP B-NP X-PER"]])
def test_malformed_lines_are_refused(lines: list[str]) -> None:
    with pytest.raises(DataError):
        parse_conll(lines)


def _cache_with(tmp_path: Path, files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder holding `files`, whose expected hashes are those of SAMPLE."""
    folder = tmp_path / "en"
    folder.mkdir()
    for name, body in files.items():
        (folder / f"{name}.txt").write_bytes(body)
    good = hashlib.sha256(SAMPLE.encode()).hexdigest()
    monkeypatch.setattr(conll, "SPLITS", {name: (good, 3) for name in conll.SPLITS})
    return tmp_path


def test_checked_files_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _cache_with(tmp_path, dict.fromkeys(conll.SPLITS, SAMPLE.encode()), monkeypatch)
    corpus = conll.read_corpus(cache)
    assert {name: len(s) for name, s in corpus.items()} == {"train": 3, "valid": 3, "test": 3}


def test_a_changed_corpus_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = dict.fromkeys(conll.SPLITS, SAMPLE.encode())
    files["valid"] = SAMPLE.replace("B-PER", "B-ORG").encode()  # one tag changed
    cache = _cache_with(tmp_path, files, monkeypatch)
    with pytest.raises(DataError, match=r"valid\.txt has sha256 .* expected"):
        conll.read_corpus(cache)


def test_the_pinned_hashes_are_sha256_of_each_split() -> None:
    assert set(conll.SPLITS) == {"train", "valid", "test"}
    assert [n for _, n in conll.SPLITS.values()] == [14041, 3250, 3453]
    assert all(len(h) == 64 and int(h, 16) >= 0 for h, _ in conll.SPLITS.values())
