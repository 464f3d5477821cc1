"""Faithfulness: ferret's AOPC comprehensiveness and sufficiency, with rows through the worker."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import whybert
from _servers import ServerThread
from conftest import tiny_settings
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from whybert_service.batching.worker import ModelWorker
from whybert_service.context import Priority, RequestContext
from whybert_service.explainers.faithfulness import (
    faithfulness,
    perturbed_texts,
    rationales,
    with_faithfulness,
)
from whybert_service.models.classifier import Classifier
from whybert_service.outputs import prediction_from_logits
from whybert_service.registry import ModelHandle
from whybert_service.types import (
    ExplainerName,
    ExplanationResult,
    OutputName,
    TokenSpan,
)

TEXT = "The food was great, but the service was unbelievably slow."


class Reference:
    """The model's probabilities straight from transformers, no server involved."""

    def __init__(self, tiny_model_dir: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    def probabilities(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            return torch.softmax(self.model(**enc).logits.double(), dim=-1).numpy()

    def aopc(
        self, text: str, spans: list[tuple[int, int, bool]], scores: np.ndarray, label: str
    ) -> tuple[float, float]:
        tokens = [TokenSpan(text="", start=s, end=e, special=sp) for s, e, sp in spans]
        without, only = perturbed_texts(text, tokens, scores)
        j = self.labels.index(label)
        p = self.probabilities([text, *without, *only])[:, j]
        return float(np.mean(p[0] - p[1 : 1 + len(without)])), float(
            np.mean(p[0] - p[1 + len(without) :])
        )


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> Reference:
    return Reference(tiny_model_dir)


@pytest.fixture(scope="module")
def handle(tiny_classifier: Classifier) -> Iterator[ModelHandle]:
    worker = ModelWorker(tiny_classifier)
    worker.start()
    yield ModelHandle(tiny_classifier, worker)
    worker.stop()


def words_of(text: str) -> list[TokenSpan]:
    out, start = [], 0
    for word in text.split(" "):
        out.append(TokenSpan(text=word, start=start, end=start + len(word)))
        start += len(word) + 1
    return out


def result_for(
    classifier: Classifier, text: str, tokens: list[TokenSpan], scores: list[float]
) -> ExplanationResult:
    logits = classifier.forward(classifier.encode([text]).ids)[0]
    prediction = prediction_from_logits(classifier.labels, logits, False, 0)
    return ExplanationResult(
        tokens=tokens,
        labels=[prediction.label],
        values=np.asarray(scores, dtype=np.float64)[:, None],
        base_values=np.zeros(1),
        output_values=np.zeros(1),
        prediction=prediction,
        explainer=ExplainerName.LIME,
        output=OutputName.LOGIT,
    )


def test_rationales_are_fractions_of_positive_tokens_best_first() -> None:
    # 4 tokens: k = int(f·4), f = 0.1..1.0, gives 0,0,1,1,2,2,2,3,3,4 (0.3·4 is 1.2000000000000002).
    # k = 0 is skipped, repeats are dropped and only positive scores count (k=4 repeats k=3).
    assert rationales([0.5, -1.0, 2.0, 0.1]) == [[2], [2, 0], [2, 0, 3]]
    # Nothing positive: one empty rationale (ferret still evaluates it once).
    assert rationales([-1.0, -2.0]) == [[]]
    rng = np.random.default_rng(0)
    for n in (1, 7, 23, 60):
        scores = rng.normal(size=n)
        found = rationales(scores)
        assert 1 <= len(found) <= 10
        for earlier, later in itertools.pairwise(found):
            assert set(earlier) < set(later)  # nested, growing
        for r in found:
            assert all(scores[i] > 0 for i in r)
            assert list(r) == sorted(r, key=lambda i: -scores[i])


def test_removal_deletes_each_tokens_characters_and_nothing_else() -> None:
    text = "alpha beta, gamma delta"
    tokens = [
        TokenSpan("[CLS]", 0, 0, special=True),
        TokenSpan("alpha", 0, 5),
        TokenSpan("beta", 6, 10),
        TokenSpan(",", 10, 11),
        TokenSpan("gamma", 12, 17),
        TokenSpan("delta", 18, 23),
        TokenSpan("[SEP]", 0, 0, special=True),
    ]
    # n = 5 features: k = 0,1,1,2,2,3,3,4,4,5 → top 1, 2, 3, 4 (the 5th is negative).
    scores = [9.0, 3.0, -1.0, 0.5, 2.0, 1.0, 9.0]
    without, only = perturbed_texts(text, tokens, scores)
    assert without == [
        " beta, gamma delta",
        " beta,  delta",
        " beta,  ",
        " beta  ",
    ]
    assert only == [
        "alpha   ",
        "alpha  gamma ",
        "alpha  gamma delta",
        "alpha , gamma delta",
    ]


def test_figures_are_mean_drops_of_the_targets_probability(
    handle: ModelHandle, reference: Reference
) -> None:
    text = "terrible food but lovely staff and a great view"
    tokens = words_of(text)
    scores = [0.3, -0.2, 0.0, 0.9, 0.1, -0.4, 0.05, 0.6, 0.2]
    result = result_for(handle.classifier, text, tokens, scores)
    figures, f = faithfulness(handle, text, result, RequestContext(Priority.EXPLAIN))
    without, only = perturbed_texts(text, tokens, scores)
    target = reference.labels.index(result.labels[0])
    p = reference.probabilities([text, *without, *only])[:, target]
    assert figures.comprehensiveness == pytest.approx(
        np.mean(p[0] - p[1 : 1 + len(without)]), abs=1e-6
    )
    assert figures.sufficiency == pytest.approx(np.mean(p[0] - p[1 + len(without) :]), abs=1e-6)
    assert f.rows == len(set(without + only)) <= 20


def test_occlusion_is_more_faithful_than_its_opposite(
    handle: ModelHandle, reference: Reference
) -> None:
    """Scores that are each word's own effect on the output beat the same scores reversed."""
    text = "terrible food but lovely staff and a great view"
    tokens = words_of(text)
    base = handle.classifier.forward(handle.classifier.encode([text]).ids)[0]
    target = int(np.argmax(base))
    dropped = [" ".join(t.text for t in tokens if t is not gone) for gone in tokens]
    p = reference.probabilities([text, *dropped])[:, target]
    occlusion = list(p[0] - p[1:])
    context = RequestContext(Priority.EXPLAIN)
    good, _ = faithfulness(
        handle, text, result_for(handle.classifier, text, tokens, occlusion), context
    )
    bad, _ = faithfulness(
        handle, text, result_for(handle.classifier, text, tokens, [-v for v in occlusion]), context
    )
    assert good.comprehensiveness > bad.comprehensiveness
    assert good.sufficiency < bad.sufficiency


def test_faithfulness_adds_its_rows_and_time(handle: ModelHandle) -> None:
    text = "terrible food but lovely staff"
    tokens = words_of(text)
    result = result_for(handle.classifier, text, tokens, [0.5, 0.1, -0.2, 0.3, 0.0])
    out = with_faithfulness(handle, text, result, RequestContext(Priority.EXPLAIN))
    assert out.faithfulness is not None
    assert result.model_rows < out.model_rows <= result.model_rows + 20
    assert out.compute_seconds > result.compute_seconds
    assert out.values is result.values  # the attributions are untouched


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path) -> Iterator[whybert.Client]:
    with ServerThread(tiny_settings(tiny_model_dir)) as server, whybert.Client(server.target) as c:
        yield c


@pytest.mark.parametrize(
    ("explainer", "options"),
    [
        ("shap-partition", {"max_evals": 40}),
        ("lime", {"num_samples": 100}),
        ("integrated-gradients", {"n_steps": 8}),
    ],
)
def test_every_explainer_reports_faithfulness_over_grpc(
    client: whybert.Client, reference: Reference, explainer: str, options: dict[str, Any]
) -> None:
    kw: dict[str, Any] = {
        "explainer": explainer,
        "targets": ["positive", "negative"],
        "output": "logit",
        **options,
    }
    (plain,) = client.explain([TEXT], **kw)
    (ours,) = client.explain([TEXT], faithfulness=True, **kw)
    assert plain.faithfulness is None and ours.faithfulness is not None
    np.testing.assert_allclose(ours.values, plain.values, atol=1e-9)
    assert plain.model_rows < ours.model_rows <= plain.model_rows + 20
    # The first target, in probabilities, whatever the output space: recomputed from the response.
    spans = [(s, e, sp) for (s, e), sp in zip(ours.offsets, ours.special, strict=True)]
    compr, suff = reference.aopc(TEXT, spans, ours.values[:, 0], "positive")
    assert ours.faithfulness.comprehensiveness == pytest.approx(compr, abs=1e-5)
    assert ours.faithfulness.sufficiency == pytest.approx(suff, abs=1e-5)
