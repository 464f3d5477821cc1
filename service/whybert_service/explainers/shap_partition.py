"""SHAP Partition explanations, computed by the shap library itself.

The values are those of `shap.PartitionExplainer(f, shap.maskers.Text(tokenizer))`:
the same token hierarchy, the same masked strings, the same rounds. whybert changes only
what `f` is: instead of calling the model, each round's strings go to the model's shared
batching worker, where they share forward batches with the rounds of every other
explanation in flight. When a request explains fewer outputs than the model has, `f`
returns just those outputs, exactly as if shap explained a model with only those outputs.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import shap

from ..context import RequestContext
from ..models.registry import ModelHandle
from ..types import ExplainerName, ExplainParams, ExplanationResult, TokenSpan
from ..validation import resolve_targets
from .base import Explainer, ModelFunction, prediction_from_logits, to_output_space


class ShapPartitionExplainer(Explainer):
    name = ExplainerName.SHAP_PARTITION

    def warm_up(self) -> None:
        """shap's numba kernels compile on first use (~10 s on a small CPU): do it now."""
        masker = shap.maskers.Text()  # shap's regex tokenizer: same kernels, no model needed
        constant = lambda texts: np.ones((len(texts), 2))  # noqa: E731
        shap.PartitionExplainer(constant, masker)(["warm up the explainer now"], silent=True)

    def explain(
        self, handle: ModelHandle, text: str, params: ExplainParams, context: RequestContext
    ) -> ExplanationResult:
        started = time.perf_counter()
        classifier = handle.classifier
        f = ModelFunction(handle, context, params.output)
        encoded = classifier.encode([text])
        raw = f.logits([text])[0]
        prediction = prediction_from_logits(
            classifier.labels, raw, encoded.truncated[0], len(encoded.ids[0])
        )
        targets = resolve_targets(params, classifier.labels, int(np.argmax(raw)))
        f.targets = targets
        labels = [classifier.labels[t] for t in targets]

        masker = shap.maskers.Text(classifier.tokenizer)
        explainer = shap.PartitionExplainer(f, masker, output_names=labels)
        explanation = explainer(
            [text],
            max_evals=params.shap.max_evals,
            fixed_context=params.shap.fixed_context,
            batch_size=params.shap.batch_size or "auto",
            silent=True,
        )
        values = np.asarray(explanation.values[0], dtype=np.float64).reshape(-1, len(targets))
        base_values = np.asarray(explanation.base_values[0], dtype=np.float64).reshape(len(targets))
        # shap's additivity is with respect to the unmasked string it rebuilds from the tokens.
        unmasked = masker(np.ones(values.shape[0], dtype=bool), text)[0][0]
        output_values = to_output_space(f.logits([unmasked]), params.output)[0, targets]
        return ExplanationResult(
            tokens=token_spans(classifier.tokenizer, text, list(explanation.data[0])),
            labels=labels,
            values=values,
            base_values=base_values,
            output_values=output_values,
            prediction=prediction,
            explainer=self.name,
            output=params.output,
            model_rows=f.rows,
            queue_seconds=f.queue_seconds,
            compute_seconds=time.perf_counter() - started,
        )


def token_spans(tokenizer: Any, text: str, segments: list[str]) -> list[TokenSpan]:
    """Each of shap's segments with the character span of its token in `text`."""
    encoding = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    offsets = encoding["offset_mapping"]
    special = encoding["special_tokens_mask"]
    if len(offsets) != len(segments):
        raise RuntimeError("the tokenizer and shap's masker disagree on the tokens of a text")
    return [
        TokenSpan(text=seg, start=int(start), end=int(end), special=bool(sp))
        for seg, (start, end), sp in zip(segments, offsets, special, strict=True)
    ]
