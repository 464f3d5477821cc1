"""PairClassifier against transformers: the pair encoding, longest_first truncation, the
token_type_ids, and which directories are pair models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _pairs import make_tiny_pair_bert, random_pairs
from whybert_service.models.pair_classifier import PairClassifier, is_text_pair, longest_first, pair_window


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_pair_bert(tmp_path_factory.mktemp("pair-bert"), max_tokens=24)


@pytest.fixture(scope="module")
def classifier(pair_dir: Path) -> PairClassifier:
    from whybert_service.models.loading import load_directory

    loaded = load_directory("pairs", pair_dir, torch.device("cpu"), torch.float32)
    assert isinstance(loaded, PairClassifier) and loaded.kind == "pair"
    return loaded


INPUTS = random_pairs(40, seed=11, low=1, high=18)


def test_longest_first_keeps_what_the_tokenizer_keeps(classifier: PairClassifier) -> None:
    tok = classifier.tokenizer
    for n1 in range(1, 16):
        for n2 in range(1, 16):
            for max_length in (6, 9, 14, 20):
                enc = tok(
                    " ".join(["cat"] * n1), " ".join(["dog"] * n2), truncation="longest_first", max_length=max_length
                )
                seq = enc.sequence_ids()
                assert longest_first(n1, n2, max_length - 3) == (seq.count(0), seq.count(1))


def test_encode_equals_the_tokenizers_pair_encoding(classifier: PairClassifier) -> None:
    tok = classifier.tokenizer
    joined = [classifier.join(a, b) for a, b in INPUTS]
    encoded = classifier.encode(joined)
    for (a, b), ids, cut in zip(INPUTS, encoded.ids, encoded.truncated, strict=True):
        expected = tok(a, b, truncation="longest_first", max_length=24)["input_ids"]
        assert ids == expected
        assert cut == (len(tok(a, b)["input_ids"]) > 24)
    assert any(encoded.truncated) and not all(encoded.truncated)


def test_token_types_are_the_tokenizers(classifier: PairClassifier) -> None:
    tok = classifier.tokenizer
    for a, b in INPUTS[:10]:
        enc = tok(a, b, truncation="longest_first", max_length=24)
        got = classifier.token_types(torch.tensor([enc["input_ids"]]))[0].tolist()
        assert got == enc["token_type_ids"]


def test_logits_equal_the_model_called_with_the_tokenizers_pair(classifier: PairClassifier, pair_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(pair_dir).eval()
    firsts, seconds = [a for a, _ in INPUTS], [b for _, b in INPUTS]
    enc = classifier.tokenizer(
        firsts, seconds, truncation="longest_first", max_length=24, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        expected = model(**enc).logits.numpy()
    got = classifier.forward(classifier.encode([classifier.join(a, b) for a, b in INPUTS]).ids)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_pair_window_fits_and_keeps_prefixes(classifier: PairClassifier) -> None:
    tok = classifier.tokenizer
    for a, b in INPUTS:
        text, pair, cut = pair_window(classifier, a, b)
        assert a.startswith(text) and b.startswith(pair)
        assert len(tok(text, pair)["input_ids"]) <= 24
        assert cut == (len(tok(a, b)["input_ids"]) > 24)
        if cut:  # what is kept is what longest_first keeps
            expected = tok(a, b, truncation="longest_first", max_length=24)["input_ids"]
            assert tok(text, pair)["input_ids"] == expected


@pytest.mark.parametrize(
    ("extra", "pairs"),
    [
        ({}, False),
        ({"whybert_text_pairs": True}, True),
        ({"whybert_text_pairs": False, "sentence_transformers": {"version": "4.1"}}, False),
        ({"sentence_transformers": {"activation_fn": "torch.nn.modules.activation.Sigmoid"}}, True),
        ({"sbert_ce_default_activation_function": None}, True),
    ],
)
def test_which_directories_hold_pair_models(tmp_path: Path, extra: dict[str, Any], pairs: bool) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"], **extra}))
    assert is_text_pair(tmp_path) is pairs
