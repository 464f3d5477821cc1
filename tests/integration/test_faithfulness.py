"""Faithfulness: ferret's AOPC comprehensiveness and sufficiency, with rows through the worker
(the rationales and the perturbed texts alone: unit/test_faithfulness_rationales.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import whybert
from _references import PlainModel
from whybert_service.batching.worker import ModelWorker
from whybert_service.context import Priority, RequestContext
from whybert_service.explainers.faithfulness import (
    faithfulness,
    perturbed_texts,
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


def aopc(
    model: PlainModel, text: str, spans: list[tuple[int, int, bool]], scores: np.ndarray, label: str
) -> tuple[float, float]:
    """ferret's comprehensiveness and sufficiency, recomputed with the plain model."""
    tokens = [TokenSpan(text="", start=s, end=e, special=sp) for s, e, sp in spans]
    without, only = perturbed_texts(text, tokens, scores)
    j = model.labels.index(label)
    p = model.probabilities([text, *without, *only])[:, j]
    return float(np.mean(p[0] - p[1 : 1 + len(without)])), float(np.mean(p[0] - p[1 + len(without) :]))


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


def test_figures_are_mean_drops_of_the_targets_probability(
    handle: ModelHandle, plain_model: PlainModel
) -> None:
    text = "terrible food but lovely staff and a great view"
    tokens = words_of(text)
    scores = [0.3, -0.2, 0.0, 0.9, 0.1, -0.4, 0.05, 0.6, 0.2]
    result = result_for(handle.classifier, text, tokens, scores)
    figures, f = faithfulness(handle, text, result, RequestContext(Priority.EXPLAIN))
    without, only = perturbed_texts(text, tokens, scores)
    target = plain_model.labels.index(result.labels[0])
    p = plain_model.probabilities([text, *without, *only])[:, target]
    assert figures.comprehensiveness == pytest.approx(
        np.mean(p[0] - p[1 : 1 + len(without)]), abs=1e-6
    )
    assert figures.sufficiency == pytest.approx(np.mean(p[0] - p[1 + len(without) :]), abs=1e-6)
    assert f.rows == len(set(without + only)) <= 20


def test_occlusion_is_more_faithful_than_its_opposite(
    handle: ModelHandle, plain_model: PlainModel
) -> None:
    """Scores that are each word's own effect on the output beat the same scores reversed."""
    text = "terrible food but lovely staff and a great view"
    tokens = words_of(text)
    base = handle.classifier.forward(handle.classifier.encode([text]).ids)[0]
    target = int(np.argmax(base))
    dropped = [" ".join(t.text for t in tokens if t is not gone) for gone in tokens]
    p = plain_model.probabilities([text, *dropped])[:, target]
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
def client(target: str) -> Iterator[whybert.Client]:
    with whybert.Client(target) as c:
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
    client: whybert.Client, plain_model: PlainModel, explainer: str, options: dict[str, Any]
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
    compr, suff = aopc(plain_model, TEXT, spans, ours.values[:, 0], "positive")
    assert ours.faithfulness.comprehensiveness == pytest.approx(compr, abs=1e-5)
    assert ours.faithfulness.sufficiency == pytest.approx(suff, abs=1e-5)
