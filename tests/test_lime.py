"""LIME explanations equal the lime package's own, with every perturbation through the batcher."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
import whybert
from _servers import ServerThread
from conftest import tiny_settings
from lime.lime_text import LimeTextExplainer
from transformers import AutoModelForSequenceClassification, AutoTokenizer

TEXT = "The food was great, but the service was painfully slow... the FOOD though!"


class Reference:
    """What a user writes: LimeTextExplainer over a plain function of strings."""

    def __init__(self, tiny_model_dir: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    def f(self, output: str) -> Any:
        def f(texts: list[str]) -> np.ndarray:
            outs = []
            for i in range(0, len(texts), 64):
                enc = self.tokenizer(
                    texts[i : i + 64],
                    padding=True,
                    truncation=True,
                    max_length=128,
                    return_tensors="pt",
                )
                with torch.no_grad():
                    logits = self.model(**enc).logits.double()
                outs.append(logits if output == "logit" else torch.softmax(logits, dim=-1))
            return torch.cat(outs).numpy()

        return f

    def explain(self, text: str, labels: list[int], output: str, seed: int, **kw: Any) -> Any:
        explainer = LimeTextExplainer(class_names=self.labels, random_state=seed)
        return explainer.explain_instance(text, self.f(output), labels=labels, **kw)


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> Reference:
    return Reference(tiny_model_dir)


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path) -> Iterator[whybert.Client]:
    with ServerThread(tiny_settings(tiny_model_dir)) as server, whybert.Client(server.target) as c:
        yield c


def word_weights(ours: whybert.Explanation, column: int) -> dict[str, float]:
    """Our per-occurrence values summed back into LIME's per-word weights."""
    out: dict[str, float] = defaultdict(float)
    for token, value in zip(ours.tokens, ours.values[:, column], strict=True):
        out[token] += float(value)
    return dict(out)


def assert_same_as_lime(
    ours: whybert.Explanation, ref: Any, labels: list[int], n_words: int
) -> None:
    indexed = ref.domain_mapper.indexed_string
    for column, label in enumerate(labels):
        expected = {indexed.word(i): 0.0 for i in range(n_words)}
        expected.update({indexed.word(i): w for i, w in ref.as_map()[label]})
        got = word_weights(ours, column)
        assert got.keys() == expected.keys()
        for word, weight in expected.items():
            assert got[word] == pytest.approx(weight, abs=1e-5), word
        assert ours.base_values[column] == pytest.approx(ref.intercept[label], abs=1e-5)
        assert ours.output_values[column] == pytest.approx(ref.predict_proba[label], abs=1e-6)


@pytest.mark.parametrize("output", ["probability", "logit"])
def test_values_equal_lime_package_for_every_label(
    client: whybert.Client, reference: Reference, output: str
) -> None:
    (ours,) = client.explain(
        [TEXT], explainer="lime", num_samples=300, random_seed=7, targets="all", output=output
    )
    labels = list(range(len(reference.labels)))
    ref = reference.explain(TEXT, labels, output, seed=7, num_samples=300, num_features=10_000)
    assert ours.labels == reference.labels
    assert ours.output == output and ours.explainer == "lime"
    assert_same_as_lime(ours, ref, labels, ref.domain_mapper.indexed_string.num_words())
    # LIME's local model is not exact at the text: the response says by how much.
    gap = ours.base_values + ours.values.sum(axis=0) - ours.output_values
    assert ours.additivity_error == pytest.approx(float(np.max(np.abs(gap))), abs=1e-9)
    # Every distinct perturbed string costs one row, and only one.
    assert 1 < ours.model_rows <= 300


def test_tokens_are_every_occurrence_of_lime_words(client: whybert.Client) -> None:
    (ours,) = client.explain([TEXT], explainer="lime", num_samples=100, targets="all")
    words = [w for w in re.split(r"\W+", TEXT) if w]
    assert ours.tokens == words  # text order, repeats included, separators left out
    for token, (start, end), special in zip(ours.tokens, ours.offsets, ours.special, strict=True):
        assert TEXT[start:end] == token and not special
    # A word's weight is shared evenly by its occurrences ("the" occurs twice).
    the = [i for i, t in enumerate(ours.tokens) if t == "the"]
    assert len(the) == 2
    np.testing.assert_array_equal(ours.values[the[0]], ours.values[the[1]])


def test_seed_decides_the_values_and_num_features_the_support(
    client: whybert.Client, reference: Reference
) -> None:
    first, again, other = [
        client.explain([TEXT], explainer="lime", num_samples=200, random_seed=s)[0]
        for s in (3, 3, 4)
    ]
    (few,) = client.explain([TEXT], explainer="lime", num_samples=200, num_features=3)
    np.testing.assert_allclose(first.values, again.values, atol=1e-9)
    assert not np.allclose(first.values, other.values, atol=1e-6)
    # num_features=3 keeps three words (each occurrence of them), the others weigh 0.
    assert len({t for t, v in zip(few.tokens, few.values[:, 0], strict=True) if v != 0}) == 3
    label = reference.labels.index(few.labels[0])
    ref = reference.explain(TEXT, [label], "probability", seed=0, num_samples=200, num_features=3)
    assert_same_as_lime(few, ref, [label], ref.domain_mapper.indexed_string.num_words())


def test_text_without_words_is_invalid_argument(client: whybert.Client) -> None:
    with pytest.raises(whybert.WhybertError) as info:
        client.explain(["?!... :-)"], explainer="lime", num_samples=50)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "LIME" in str(info.value)
