"""Entity figures equal seqeval's classification report (its default chunking) on random
tag sequences with B-/I- mixtures, I- starting entities and type changes; CoNLL files are
read as sentences; predicted character spans become token tags."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from whybert import Entity
from whybert.entity_evaluation import entity_report, read_conll, tags_of

TAGS = ["O", "O", "O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def _random_corpus(rng: random.Random, sentences: int) -> list[list[str]]:
    return [[rng.choice(TAGS) for _ in range(rng.randint(1, 25))] for _ in range(sentences)]


@pytest.mark.parametrize("seed", range(20))
def test_the_report_equals_seqeval(seed: int) -> None:
    from seqeval.metrics import classification_report

    rng = random.Random(seed)
    y_true = _random_corpus(rng, rng.randint(1, 60))
    # predictions: the truth with some tags changed, so there are hits and misses
    y_pred = [[t if rng.random() < 0.7 else rng.choice(TAGS) for t in row] for row in y_true]
    ours = entity_report(y_true, y_pred)
    ref = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    assert set(ours) == set(ref)
    for name, row in ref.items():
        for key in ("precision", "recall", "f1-score", "support"):
            assert ours[name][key] == pytest.approx(float(row[key]), abs=1e-12), (name, key)


def test_lengths_must_agree() -> None:
    with pytest.raises(ValueError, match="length"):
        entity_report([["O", "B-PER"]], [["O"]])


def test_a_conll_file_is_read_as_sentences(tmp_path: Path) -> None:
    path = tmp_path / "test.txt"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\n\n"
        "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n"
    )
    sentences = read_conll(path)
    assert [s.tokens for s in sentences] == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert [s.tags for s in sentences] == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"]]
    path.write_text("lonely\n")
    with pytest.raises(ValueError, match=r"test\.txt:1"):
        read_conll(path)


def test_entity_spans_become_token_tags() -> None:
    tokens = ["Peter", "Blackburn", "visited", "New", "York", "."]  # "Peter Blackburn visited New York ."
    entities = [Entity("Peter Blackburn", "PER", 0, 15, 0.9), Entity("New York", "LOC", 24, 32, 0.8)]
    assert tags_of(tokens, entities) == ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]
    assert tags_of(tokens, []) == ["O"] * 6
