"""A loaded classifier (`models/classifier.py`) on the tiny random BERT: encoding cuts rows
as the tokenizer's own truncation does, a padded batch gives each row the logits transformers
gives it alone, and the readable prefix is exactly what the model reads."""

from __future__ import annotations

import random
from typing import Any

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


_PIECES = [
    "the", "food", "was", "unbelievably", "good", "Angela", "Merkel", "café", "naïve", "東京", "😀", "1999",
    "https://example.com/a?b=c", "don't", "!!!", "...", "—", "e\u0301", "x\u00a0y", "tab\there", "new\nline",
    "ctl\x1cchar", "[SEP]", "[MASK]", "##ing", "supercalifragilisticexpialidocious" * 3,
]


def _long_text(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(_PIECES)
        sep = rng.choice([" ", " ", " ", "  ", ", ", ". ", "\n", ""])
        out.append(word + sep)
        size += len(word) + len(sep)
    return "".join(out)


def _whole_text_window(tokenizer: Any, text: str, max_tokens: int, suffix: int) -> tuple[str, bool, list[int]]:
    """`read_window` as it was: the whole text tokenized, then cut."""
    enc = tokenizer(text, return_offsets_mapping=True)
    truncated = False
    while len(enc["input_ids"]) > max_tokens:
        last = enc["offset_mapping"][max_tokens - suffix - 1]
        cut = min(int(last[1]), len(text) - 1)
        text, truncated = text[:cut], True
        enc = tokenizer(text, return_offsets_mapping=True)
    return text, truncated, list(enc["input_ids"])


def _byte_level_bpe() -> Any:
    """A RoBERTa-like tokenizer (byte-level BPE, spaces attached to the next word), trained here."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(7)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([_long_text(rng, 400) for _ in range(200)], vocab_size=400, special_tokens=["<s>", "</s>"])

    bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", sep_token="</s>")


@pytest.mark.parametrize("kind", ["wordpiece", "byte-level-bpe"])
def test_long_texts_are_read_from_a_prefix_with_the_whole_texts_tokens(tiny_classifier: Classifier, kind: str) -> None:
    """A long text is tokenized from a whole-word prefix (`head`), not whole: the window, the
    cut and the ids are exactly those of tokenizing the whole text, on texts with accents,
    emoji, CJK, URLs, control characters, runs of punctuation and every kind of space."""
    from whybert_service.models.classifier import HEAD_CHARS_PER_TOKEN, head, read_window

    tokenizer = tiny_classifier.tokenizer if kind == "wordpiece" else _byte_level_bpe()
    rng = random.Random(3)
    calls: list[int] = []
    real = tokenizer.__call__

    class Counting:  # the characters each tokenizer call reads
        def __call__(self, text: Any, **kw: Any) -> Any:
            calls.append(sum(map(len, text)) if isinstance(text, list) else len(text))
            return real(text, **kw)

    counting = Counting()
    for case in range(60):
        max_tokens = rng.choice([16, 64, 128])
        text = _long_text(rng, rng.choice([50, 600, 3_000, 20_000]))
        expected = _whole_text_window(tokenizer, text, max_tokens, 1)
        calls.clear()
        got_text, got_truncated, enc = read_window(counting, text, max_tokens, 1)
        assert (got_text, got_truncated, list(enc["input_ids"])) == expected, case
        if len(text) > 4 * HEAD_CHARS_PER_TOKEN * max_tokens and " " in text[HEAD_CHARS_PER_TOKEN * max_tokens :]:
            assert max(calls) < len(text)  # never the whole text
        prefix, _ = head(tokenizer, text, max_tokens)  # the text, or a prefix before a space that overflows
        assert prefix == text or (
            text.startswith(prefix) and text[len(prefix)] == " " and len(tokenizer(prefix)["input_ids"]) > max_tokens
        )
    short = Classifier(
        name="short", model=tiny_classifier.model, tokenizer=tiny_classifier.tokenizer, labels=tiny_classifier.labels,
        device=torch.device("cpu"), weights_sha256="", source="test", max_length=32,
    )  # fmt: skip
    texts = [_long_text(rng, n) for n in (40, 300, 5_000, 30_000)]
    raw = tiny_classifier.tokenizer(texts)["input_ids"]
    want = [r if len(r) <= 32 else r[:31] + r[-1:] for r in raw]
    encoded = short.encode(texts)
    assert encoded.ids == want and encoded.truncated == [len(r) > 32 for r in raw]


def test_a_long_text_logs_no_indexing_warning(tiny_classifier: Classifier, caplog: pytest.LogCaptureFixture) -> None:
    # whybert cuts every row itself: transformers' "will result in indexing errors" warning
    # about a long text's ids would only mislead whoever reads the server's log.
    import logging

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier.tokenizer.name_or_path)
    fresh = Classifier(
        name="fresh", model=tiny_classifier.model, tokenizer=tokenizer, labels=tiny_classifier.labels,
        device=torch.device("cpu"), weights_sha256="", source="test",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        encoded = fresh.encode(["这是一个很长的中文句子" * 300])
    assert len(encoded.ids[0]) == fresh.max_length and encoded.truncated == [True]
    assert "indexing errors" not in caplog.text
