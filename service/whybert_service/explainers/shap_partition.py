"""SHAP Partition explanations, computed by the shap library itself.

The values are those of `shap.PartitionExplainer(f, shap.maskers.Text(tokenizer))`:
the same token hierarchy, the same masked strings, the same rounds. whybert changes only
what `f` is: instead of calling the model, each round's strings go to the model's shared
batching worker, where they share forward batches with the rounds of every other
explanation in flight. When a request explains fewer outputs than the model has, `f`
returns just those outputs, exactly as if shap explained a model with only those outputs.

shap's own Python work runs in the calling explainer thread, or, with explainer processes
(`--explain-processes`), in a warm child process so that it does not hold the server's GIL.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..context import RequestContext
from ..models.registry import ModelHandle
from ..offload.partition import PartitionValues, partition_values, warm_up_shap
from ..offload.pool import ExplainerProcesses
from ..types import ExplainerName, ExplainParams, ExplanationResult, TokenSpan
from ..validation import resolve_targets
from .base import Explainer, ModelFunction, to_output_space


class ShapPartitionExplainer(Explainer):
    name = ExplainerName.SHAP_PARTITION

    def __init__(self, processes: int = 0) -> None:
        self._process_count = processes
        self._pool: ExplainerProcesses | None = None

    def warm_up(self) -> None:
        """Compile shap's numba kernels (here, or once in the processes' fork server)."""
        if self._process_count > 0:
            self._pool = ExplainerProcesses(self._process_count)
        else:
            warm_up_shap()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def explain(
        self, handle: ModelHandle, text: str, params: ExplainParams, context: RequestContext
    ) -> ExplanationResult:
        started = time.perf_counter()
        classifier = handle.classifier
        f = ModelFunction(handle, context, params.output)
        raw, prediction = f.prediction(text)
        targets = resolve_targets(params, classifier.labels, int(np.argmax(raw)))
        args = (text, params.shap, params.output, targets)
        if self._pool is None:
            result: PartitionValues = partition_values(classifier.tokenizer, f.logits, *args)
        else:
            tokenizer = (f"{classifier.name}:{classifier.weights_sha256}", classifier.tokenizer)
            result = self._pool.run(partition_values, args, tokenizer, f.logits, context)
        # shap's additivity is with respect to the unmasked string it rebuilds from the tokens.
        output_values = to_output_space(f.logits([result.unmasked]), params.output)[0, targets]
        return ExplanationResult(
            tokens=token_spans(classifier.tokenizer, text, result.segments),
            labels=[classifier.labels[t] for t in targets],
            values=result.values,
            base_values=result.base_values,
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
