"""A loaded classifier (`models/classifier.py`) on the tiny random BERT: encoding cuts rows
as the tokenizer's own truncation does, a padded batch gives each row the logits transformers
gives it alone, and the readable prefix is exactly what the model reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from whybert_service.models.classifier import Classifier, pad_rows

LONG = "the service was slow but the food was great and the staff were lovely " * 4


def _short(classifier: Classifier, max_length: int = 16) -> Classifier:
    return Classifier(
        name="short", model=classifier.model, tokenizer=classifier.tokenizer, labels=classifier.labels,
        device=torch.device("cpu"), weights_sha256="", source="test", max_length=max_length,
    )  # fmt: skip


def test_encode_cuts_like_the_tokenizers_truncation(tiny_classifier: Classifier) -> None:
    short = _short(tiny_classifier)
    texts = ["good", LONG, "a fine day"]
    encoded = short.encode(texts)
    expected = tiny_classifier.tokenizer(texts, truncation=True, max_length=16)["input_ids"]
    assert encoded.ids == expected
    assert encoded.truncated == [False, True, False]
    assert encoded.ids[1][-1] == tiny_classifier.tokenizer.sep_token_id  # [SEP] kept on a cut row
    assert tiny_classifier.encode([LONG]).truncated == [False]  # 128 tokens fit the tiny model


def test_a_padded_batch_gives_each_row_its_own_logits(tiny_classifier: Classifier) -> None:
    texts = ["good", "the food was great but the service was slow", "bad"]
    rows = tiny_classifier.encode(texts).ids
    batch = tiny_classifier.forward(rows)
    assert batch.shape == (3, tiny_classifier.num_labels) and batch.dtype == np.float32
    with torch.no_grad():
        for row, logits in zip(rows, batch, strict=True):
            alone = tiny_classifier.model(input_ids=torch.tensor([row])).logits[0].numpy()
            np.testing.assert_allclose(logits, alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(batch[0], batch[1])  # the texts matter


def test_rows_of_one_length_go_without_a_mask(tiny_classifier: Classifier) -> None:
    # Without a mask the model never asks the device whether the batch holds padding (a
    # wait on every batch in flight on a GPU); the logits are those of an all-ones mask.
    rows = tiny_classifier.encode(["good food", "bad room"]).ids
    assert len(rows[0]) == len(rows[1])
    ids, mask = tiny_classifier.pad(rows)
    assert mask is None and ids.tolist() == rows
    with torch.no_grad():
        masked = tiny_classifier.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()
    launched = tiny_classifier.launch(rows)
    assert launched.done is None  # on the CPU the logits are there at once
    np.testing.assert_array_equal(tiny_classifier.collect(launched), masked)
    _, ragged = tiny_classifier.pad([rows[0], rows[1][:-1]])
    assert ragged is not None and ragged.tolist()[1][-1] == 0


def test_readable_prefix_is_what_the_model_reads(tiny_classifier: Classifier) -> None:
    short = _short(tiny_classifier)
    prefix, truncated = short.readable_prefix(LONG)
    assert truncated and LONG.startswith(prefix) and len(prefix) < len(LONG)
    assert short.encode([prefix]).ids == short.encode([LONG]).ids  # the same tokens
    assert short.readable_prefix("good food") == ("good food", False)


def test_pad_rows_right_pads_with_a_mask() -> None:
    ids, mask = pad_rows([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert ids.dtype == mask.dtype == np.int64
    same, ones = pad_rows([[1, 2], [3, 4]], pad_id=9)
    assert same.tolist() == [[1, 2], [3, 4]] and ones.tolist() == [[1, 1], [1, 1]]


def test_description_of_the_model(tiny_classifier: Classifier) -> None:
    assert tiny_classifier.max_length == 128  # the smaller of the position table and the tokenizer's limit
    assert tiny_classifier.num_labels == 3 and tiny_classifier.kind == "sequence"
    assert tiny_classifier.dtype == torch.float32
    assert tiny_classifier.input_embeddings() is tiny_classifier.model.get_input_embeddings()
    assert not tiny_classifier.model.training


@pytest.mark.parametrize("max_length", [8, 9])
def test_every_cut_row_fits(tiny_classifier: Classifier, max_length: int) -> None:
    short = _short(tiny_classifier, max_length)
    assert all(len(r) <= max_length for r in short.encode([LONG, LONG[:30], "x"]).ids)
