"""The training loop (`training/loop.py`): length-bucketed batches that cover every row once,
scores equal scikit-learn's, predictions in row order, and a tiny random BERT that learns a
one-word task with the best validation kept."""

from __future__ import annotations

import itertools
import random
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, log_loss
from transformers import BertConfig, BertForSequenceClassification
from whybert_service.training import loop
from whybert_service.training.data import Example
from whybert_service.training.loop import Evaluation, Tokenized, TrainConfig


class WordIds:
    """A tokenizer of texts of numbers: "5 7" → [CLS]=1, 5, 7, [SEP]=2."""

    pad_token_id = 0

    def __call__(self, texts: list[str], truncation: bool, max_length: int) -> dict[str, list[list[int]]]:
        assert truncation
        return {"input_ids": [[*[1, *(int(w) for w in t.split())][: max_length - 1], 2] for t in texts]}


@pytest.mark.parametrize("rng", [None, random.Random(3)])
def test_length_batches_cover_every_row_once_with_little_padding(rng: random.Random | None) -> None:
    lengths = [random.Random(i).randint(1, 60) for i in range(1000)]
    batches = loop.length_batches(lengths, 16, rng)
    assert sorted(r for b in batches for r in b) == list(range(1000))
    assert all(len(b) <= 16 for b in batches)
    spread = np.mean([max(lengths[r] for r in b) - min(lengths[r] for r in b) for b in batches])
    assert spread < 5  # random batches of this data spread ~50 tokens
    if rng is None:
        assert [r for b in batches for r in b] == sorted(range(1000), key=lambda i: lengths[i])


def test_shuffled_batches_follow_the_seed() -> None:
    lengths = list(range(200))
    assert loop.length_batches(lengths, 8, random.Random(1)) == loop.length_batches(lengths, 8, random.Random(1))
    assert loop.length_batches(lengths, 8, random.Random(1)) != loop.length_batches(lengths, 8, random.Random(2))


def test_score_equals_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(60, 3))
    labels = rng.integers(0, 3, 60)
    confidence = rng.uniform(0, 1, 60).astype(np.float32)
    s = loop.score(logits, labels, ["a", "b", "c"], confidence)
    pred = logits.argmax(axis=1)
    assert s.rows == 60
    assert s.accuracy == pytest.approx(accuracy_score(labels, pred))
    assert s.macro_f1 == pytest.approx(f1_score(labels, pred, average="macro"))
    per_label = f1_score(labels, pred, average=None, labels=[0, 1, 2])
    assert list(s.per_label_f1.values()) == pytest.approx(list(per_label))
    probs = torch.softmax(torch.tensor(logits), dim=1).numpy()
    assert s.loss == pytest.approx(log_loss(labels, probs, labels=[0, 1, 2]))
    sure = confidence >= loop.CONFIDENT
    assert s.confident_rows == int(sure.sum())
    assert s.confident_accuracy == pytest.approx(accuracy_score(labels[sure], pred[sure]))
    assert "acc(conf" in s.summary()
    none = loop.score(logits, labels, ["a", "b", "c"], np.full(60, np.nan, dtype=np.float32))
    assert none.confident_accuracy is None and "conf" not in none.summary()


def test_tokenized_fills_missing_confidence_with_the_median_and_pads_batches() -> None:
    examples = [Example("5", 0, 0.2), Example("6 7 8", 1, None), Example("9 9", 1, 0.8), Example("4", 0, 1.0)]
    data = Tokenized(WordIds(), examples, max_length=4)
    assert data.ids[1] == [1, 6, 7, 2]  # cut to max_length, [SEP] kept
    np.testing.assert_allclose(data.weights, [0.2, 0.8, 0.8, 1.0])
    assert np.isnan(data.confidence[1])
    batch = data.batch([0, 1])
    assert batch["input_ids"].tolist() == [[1, 5, 2, 0], [1, 6, 7, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [0, 1]


class RowSum(torch.nn.Module):
    """Logits that identify a row: (sum of its ids, -number of tokens)."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        logits = torch.stack([(input_ids * attention_mask).sum(1).float(), -attention_mask.sum(1).float()], 1)
        return type("Out", (), {"logits": logits})


def test_predict_answers_in_row_order_and_restores_train_mode() -> None:
    texts = ["3 3 3 3 3", "4", "5 6", "7 7 7"]
    data = Tokenized(WordIds(), [Example(t, 0) for t in texts], max_length=16)
    model = RowSum().train()
    logits = loop.predict(model, data, batch_size=2)  # batches sorted by length, answers by row
    assert logits[:, 0].tolist() == [18.0, 7.0, 14.0, 24.0]
    assert model.training
    assert loop.predict(model, Tokenized(WordIds(), [], 8)).shape[0] == 0


def test_lr_warms_up_then_decays_to_zero() -> None:
    factors = [loop._lr_factor(s, warmup=4, total=12) for s in range(13)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(factors[3:])) and factors[12] == 0.0


def test_class_weights_make_each_label_weigh_the_same() -> None:
    labels = np.array([0] * 6 + [1] * 2)
    weights = loop._class_weights(labels, 2).numpy()
    assert weights[0] * 6 == pytest.approx(weights[1] * 2)
    assert weights[labels].mean() == pytest.approx(1.0)


def test_a_tiny_bert_learns_one_word_and_the_best_evaluation_is_kept() -> None:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=12, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=12, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    model = BertForSequenceClassification(config)
    rng = random.Random(0)

    def example() -> Example:
        label = rng.randint(0, 1)
        words = [str(rng.randint(3, 9)) for _ in range(3)] + [str(10 + label)]
        rng.shuffle(words)
        return Example(" ".join(words), label)

    train = Tokenized(WordIds(), [example() for _ in range(64)], 8)
    validation = Tokenized(WordIds(), [example() for _ in range(32)], 8)
    before = loop.evaluate(model, validation, ["a", "b"])
    seen: list[tuple[Evaluation, bool]] = []
    config = TrainConfig(epochs=20, batch_size=16, lr=1e-2, evals_per_epoch=2)
    result = loop.train(model, train, validation, ["a", "b"], config, lambda e, is_best: seen.append((e, is_best)))
    assert result.steps == 80 and len(result.evaluations) == 40 == len(seen)
    assert result.best is not None
    assert result.best.scores.accuracy == max(e.scores.accuracy for e in result.evaluations)
    assert [is_best for _, is_best in seen].count(True) >= 1 and seen[0][1]
    assert result.best.scores.accuracy > max(before.accuracy, 0.9)
