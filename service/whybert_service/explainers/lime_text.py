"""LIME text explanations, computed by the lime package itself.

The values are those of `lime.lime_text.LimeTextExplainer` with its defaults (kernel width
25, bag of words, words split on `\\W+`, cosine distance, ridge regression): whybert
changes only `classifier_fn`. Its perturbed strings go to the model's shared batching
worker as one submission, where they share forward batches with every other request in
flight; identical strings are evaluated once.

LIME's features are words, and with bag of words a word's occurrences are removed
together, so they share one weight. The response lists every occurrence as a token (with
its character span); a word that occurs n times carries 1/n of its weight on each, which
keeps `base + sum(values)` equal to LIME's local model at the text.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..context import RequestContext
from ..errors import InvalidArgument
from ..models.registry import ModelHandle
from ..outputs import to_output_space
from ..types import ExplainerName, ExplainParams, ExplanationResult, TokenSpan
from ..validation import resolve_targets
from .base import Explainer, ModelFunction


class LimeExplainer(Explainer):
    name = ExplainerName.LIME

    def warm_up(self) -> None:
        """Importing lime pulls in scikit-learn and scipy (a second or two): do it now."""
        import lime.lime_text  # noqa: F401

    def explain(
        self, handle: ModelHandle, text: str, params: ExplainParams, context: RequestContext
    ) -> ExplanationResult:
        from lime.lime_text import IndexedString, LimeTextExplainer

        started = time.perf_counter()
        indexed = IndexedString(text)  # what LimeTextExplainer builds, with the same defaults
        if indexed.num_words() == 0:
            raise InvalidArgument(
                [("texts", f"LIME needs at least one word to remove, and {text[:40]!r} has none")]
            )
        classifier = handle.classifier
        # LIME's own first row is the text itself: the memo makes this prediction free.
        f = ModelFunction(handle, context, params.output)
        raw, prediction = f.prediction(text)
        targets = resolve_targets(params, classifier.labels, int(np.argmax(raw)))

        explainer = LimeTextExplainer(
            class_names=list(classifier.labels), random_state=params.lime.random_seed
        )
        explanation = explainer.explain_instance(
            text,
            f,
            labels=targets,
            num_features=params.lime.num_features or indexed.num_words(),
            num_samples=params.lime.num_samples,
        )
        weights = feature_weights(explanation.as_map(), targets, indexed.num_words())
        tokens, features = word_occurrences(indexed)
        counts = np.bincount(features, minlength=weights.shape[0])
        values = weights[features] / counts[features][:, None]
        return ExplanationResult(
            tokens=tokens,
            labels=[classifier.labels[t] for t in targets],
            values=values,
            base_values=np.array([explanation.intercept[t] for t in targets], dtype=np.float64),
            output_values=to_output_space(raw[None, :], params.output)[0, targets],
            prediction=prediction,
            explainer=self.name,
            output=params.output,
            model_rows=f.rows,
            queue_seconds=f.queue_seconds,
            compute_seconds=time.perf_counter() - started,
        )


def feature_weights(
    local_exp: dict[int, list[tuple[int, float]]], targets: Sequence[int], n_features: int
) -> np.ndarray:
    """LIME's weights as a (features × targets) matrix; features it left out weigh 0."""
    out = np.zeros((n_features, len(targets)), dtype=np.float64)
    for column, target in enumerate(targets):
        for feature, weight in local_exp[target]:
            out[int(feature), column] = float(weight)
    return out


def word_occurrences(indexed: Any) -> tuple[list[TokenSpan], np.ndarray]:
    """Every occurrence of every LIME feature in text order, and the feature of each."""
    found: list[tuple[int, str, int]] = []
    for feature in range(indexed.num_words()):
        word = str(indexed.word(feature))
        for start in indexed.string_position(feature):
            found.append((int(start), word, feature))
    found.sort()
    tokens = [TokenSpan(text=word, start=start, end=start + len(word)) for start, word, _ in found]
    return tokens, np.array([feature for _, _, feature in found], dtype=np.int64)
