"""`whybert train --task entities` (`training/entities.py`) on the tiny random BERT: tags on
each word's first piece only, seqeval's figures, and a whole run whose written adapter is
peft's format and merges (without peft) to peft's own logits. The CoNLL files themselves
are replaced by a few inline sentences; their reader is tested in tests/unit/test_conll.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertForTokenClassification

peft = pytest.importorskip("peft")
seqeval_metrics = pytest.importorskip("seqeval.metrics")

from whybert_service.models import adapter  # noqa: E402
from whybert_service.training import cli, conll  # noqa: E402
from whybert_service.training import entities as ent  # noqa: E402
from whybert_service.training.conll import LABELS, Sentence  # noqa: E402

SENTENCES = [
    Sentence(("Angela", "Merkel", "visited", "Paris", "."), ("B-PER", "I-PER", "O", "B-LOC", "O")),
    Sentence(("Siemens", "hired", "unbelievably", "many", "people"), ("B-ORG", "O", "O", "O", "O")),
    Sentence(("The", "European", "Union", "met"), ("O", "B-ORG", "I-ORG", "O")),
    Sentence(("German", "beer", "in", "Bonn"), ("B-MISC", "O", "O", "B-LOC")),
]


def test_each_word_is_labelled_on_its_first_piece_only(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for sentence in SENTENCES:
        enc = ent.encode(tokenizer, sentence, 64)
        words = tokenizer(list(sentence.words), is_split_into_words=True).word_ids()
        labelled = [i for i, label in enumerate(enc.labels) if label != ent.IGNORE]
        assert labelled == enc.first_piece  # one labelled piece per word, in order
        for word, position in enumerate(enc.first_piece):
            assert words[position] == word and (position == 0 or words[position - 1] != word)
            assert LABELS[enc.labels[position]] == sentence.tags[word]
        assert enc.labels[0] == ent.IGNORE and enc.labels[-1] == ent.IGNORE  # [CLS], [SEP]


def test_words_beyond_max_length_are_marked_unseen(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    enc = ent.encode(tokenizer, SENTENCES[0], 4)
    assert enc.first_piece[-1] == -1 and len(enc.ids) == 4


def test_scores_are_seqeval_entity_figures() -> None:
    gold = [list(s.tags) for s in SENTENCES]
    predicted = [list(t) for t in gold]
    predicted[0][1] = "O"  # "Angela" alone: a wrong span
    predicted[3][0] = "B-ORG"  # a wrong type
    got = ent.score(gold, predicted)
    assert got["f1"] == pytest.approx(seqeval_metrics.f1_score(gold, predicted), abs=1e-4)
    assert got["f1"] < 1.0 and got["per_type"]["LOC"]["f1"] == 1.0
    assert got["per_type"]["PER"]["support"] == 1 and got["per_type"]["PER"]["f1"] == 0.0


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # inside peft
def test_a_run_writes_a_peft_adapter_that_merges_like_peft(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conll, "read_corpus", lambda cache=None: dict.fromkeys(("train", "valid", "test"), SENTENCES))
    out = tmp_path / "adapter"
    argv = ["--task", "entities", "--format", "adapter", "--base", str(tiny_model_dir), "--out", str(out)]
    argv += ["--epochs", "2", "--batch-size", "2", "--lora-rank", "4", "--lora-alpha", "8", "--no-progress"]
    assert cli.main(argv) == 0
    report = json.loads((out / "training_report.json").read_text())
    assert [e["epoch"] for e in report["epochs"]] == [1, 2]
    assert set(report["test"]) >= {"precision", "recall", "f1", "per_type"}
    info = json.loads((out / adapter.ADAPTER_INFO).read_text())
    assert info["labels"] == list(LABELS)

    settings, tensors = adapter.read_adapter(out)
    ours = BertForTokenClassification.from_pretrained(
        tiny_model_dir, num_labels=len(LABELS), ignore_mismatched_sizes=True
    )
    adapter.merge_adapter(ours, tensors, settings.scaling)
    base = BertForTokenClassification.from_pretrained(
        tiny_model_dir, num_labels=len(LABELS), ignore_mismatched_sizes=True
    )
    theirs = peft.PeftModel.from_pretrained(base, out).merge_and_unload()
    ids = torch.tensor([ent.encode(AutoTokenizer.from_pretrained(tiny_model_dir), SENTENCES[0], 64).ids])
    with torch.no_grad():
        a, b = ours.eval()(input_ids=ids).logits.numpy(), theirs.eval()(input_ids=ids).logits.numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(a[0, :, 0], a[0, 0, 0])  # a real head, not a constant


def test_a_zero_rank_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    monkeypatch.setattr(conll, "read_corpus", lambda cache=None: dict.fromkeys(("train", "valid", "test"), SENTENCES))
    argv = ["--task", "entities", "--base", str(tiny_model_dir), "--out", str(tmp_path), "--lora-rank", "0"]
    assert cli.main(argv) == 2
