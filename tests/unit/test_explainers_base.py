"""What every explainer shares (`explainers/base.py`), on the tiny model and a real worker
thread: the model as f(strings) (each distinct string evaluated once, in the requested
output space and targets, its cost counted) and the shell that turns a method's
attribution into a result (labels of the targets, the prediction, the timing)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from whybert_service.batching.worker import ModelWorker
from whybert_service.context import Priority, RequestContext
from whybert_service.explainers.base import Attribution, Explainer, ModelFunction
from whybert_service.models.classifier import Classifier
from whybert_service.registry import ModelHandle
from whybert_service.types import (
    EntityResult,
    EntityTarget,
    ExplainerName,
    ExplainParams,
    OutputName,
    TargetModeName,
    TokenSpan,
)

TEXTS = ["good food", "bad service", "good food", "a fine day"]


@pytest.fixture(scope="module")
def handle(tiny_classifier: Classifier) -> Iterator[ModelHandle]:
    worker = ModelWorker(tiny_classifier)
    worker.start()
    yield ModelHandle(tiny_classifier, worker)
    worker.stop()


def _context() -> RequestContext:
    return RequestContext(Priority.EXPLAIN)


def test_each_distinct_string_is_evaluated_once(handle: ModelHandle, tiny_classifier: Classifier) -> None:
    f = ModelFunction(handle, _context())
    logits = f.logits(TEXTS)
    expected = tiny_classifier.forward(tiny_classifier.encode(TEXTS).ids)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    assert f.rows == 3
    f.logits(["bad service", "good food"])
    assert f.rows == 3  # remembered
    raw, prediction = f.prediction("good food")
    assert f.rows == 3
    np.testing.assert_allclose(raw, logits[0])
    assert prediction.label == tiny_classifier.labels[int(np.argmax(raw))]
    assert prediction.token_count == len(tiny_classifier.encode(["good food"]).ids[0])
    assert f.logits([]).shape == (0, tiny_classifier.num_labels)


@pytest.mark.parametrize("output", list(OutputName))
def test_the_function_gives_the_targets_in_the_output_space(handle: ModelHandle, output: OutputName) -> None:
    f = ModelFunction(handle, _context(), output=output, targets=[2, 0])
    logits = f.logits(TEXTS[:2])
    space = (
        logits if output is OutputName.LOGIT else torch.softmax(torch.tensor(logits, dtype=torch.float64), 1).numpy()
    )
    got = f(np.array([[TEXTS[0]], [TEXTS[1]]]))  # shap hands in a column of strings
    np.testing.assert_allclose(got, space[:, [2, 0]], rtol=1e-6)
    assert ModelFunction(handle, _context(), output=output)(TEXTS[:2]).shape == (2, 3)


class Whole(Explainer):
    """A method that gives the whole output to a single token: enough to test the shell."""

    name = ExplainerName.LIME

    def attribute(self, handle: ModelHandle, text: str, params: ExplainParams, context: RequestContext) -> Attribution:
        f = ModelFunction(handle, context, params.output)
        raw, prediction = f.prediction(text)
        targets = self.targets(params, handle.classifier, raw)
        out = f([text])[0, targets]
        return Attribution(
            tokens=[TokenSpan(text, 0, len(text))], targets=targets, values=out[None, :],
            base_values=np.zeros(len(targets)), output_values=out, logits=raw,
            token_count=prediction.token_count, truncated=False, explained_chars=len(text),
            rows=f.rows, queue_seconds=f.queue_seconds,
        )  # fmt: skip


def test_the_shell_builds_the_result(handle: ModelHandle, tiny_classifier: Classifier) -> None:
    params = ExplainParams(model="tiny", texts=("good food",), output=OutputName.LOGIT, target_mode=TargetModeName.ALL)
    result = Whole().explain(handle, "good food", params, _context())
    assert result.labels == tiny_classifier.labels and result.explainer is ExplainerName.LIME
    assert result.output is OutputName.LOGIT and result.model_rows == 1
    assert result.additivity_error == 0.0 and result.compute_seconds > 0
    logits = tiny_classifier.forward(tiny_classifier.encode(["good food"]).ids)[0]
    np.testing.assert_allclose(result.prediction.logits, logits, rtol=1e-4, atol=1e-5)
    assert result.prediction.label == tiny_classifier.labels[int(np.argmax(logits))]


def test_predicted_target_and_named_targets(handle: ModelHandle, tiny_classifier: Classifier) -> None:
    predicted = Whole().explain(handle, "bad service", ExplainParams(model="tiny", texts=("bad service",)), _context())
    assert predicted.labels == [predicted.prediction.label]
    named = ExplainParams(
        model="tiny", texts=("x",), target_mode=TargetModeName.NAMED, target_labels=("positive", "negative")
    )
    assert Whole().explain(handle, "bad service", named, _context()).labels == ["positive", "negative"]


def test_an_entity_explanation_is_labelled_with_the_entity(handle: ModelHandle) -> None:
    entity = EntityResult(text="food", label="MISC", start=5, end=9, score=0.9, position=2)
    target = EntityTarget(entity=entity, index=0, text_index=0, columns=(0,))
    params = ExplainParams(model="tiny", texts=("good food",), entity_target=target)
    result = Whole().explain(handle, "good food", params, _context())
    assert result.labels == ["MISC"] and result.entity is target


async def test_explain_async_runs_the_method_on_the_executor(handle: ModelHandle) -> None:
    params = ExplainParams(model="tiny", texts=("good food",))
    with ThreadPoolExecutor(1, thread_name_prefix="explainer") as executor:
        async_result = await Whole().explain_async(handle, "good food", params, _context(), executor)
    blocking = await asyncio.to_thread(Whole().explain, handle, "good food", params, _context())
    np.testing.assert_allclose(async_result.values, blocking.values)
    assert Whole().supports(handle.classifier)
