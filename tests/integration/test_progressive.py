"""Progressive SHAP explanations through a real worker (explainers/shap_partition.py:
`explain_progressively`): coarse to fine, additive at every message, ending with exactly
the values of an ordinary explanation, and stopped when the caller leaves."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from _wait import wait_for
from whybert_service.batching.worker import ModelWorker
from whybert_service.context import Priority, RequestContext
from whybert_service.explainers.shap_partition import ShapPartitionExplainer, explain_progressively
from whybert_service.models.classifier import Classifier
from whybert_service.registry import ModelHandle
from whybert_service.types import ExplainParams, ShapParams, TargetModeName

TEXT = "the food was great but the service was painfully slow, and the room was cold and loud"


@pytest.fixture(scope="module")
def handle(tiny_classifier: Classifier) -> Iterator[ModelHandle]:
    worker = ModelWorker(tiny_classifier)
    worker.start()
    yield ModelHandle(tiny_classifier, worker)
    worker.stop()


def _params(max_evals: int) -> ExplainParams:
    return ExplainParams(
        model="", texts=(TEXT,), target_mode=TargetModeName.ALL, shap=ShapParams(max_evals=max_evals, batch_size=2)
    )


async def test_messages_are_additive_and_end_with_the_explanation(handle: ModelHandle) -> None:
    explainer = ShapPartitionExplainer()
    params = _params(300)
    messages = [
        m
        async for m in explain_progressively(
            explainer, handle, TEXT, params, RequestContext(Priority.EXPLAIN), interval=0.0
        )
    ]
    assert len(messages) > 3 and [m.final for m in messages] == [False] * (len(messages) - 1) + [True]
    evals = [m.evals for m in messages]
    assert evals == sorted(evals) and evals[-1] <= 300
    for m in messages:
        r = m.result
        np.testing.assert_allclose(r.base_values + r.values.sum(axis=0), r.output_values, atol=1e-9)
    with ThreadPoolExecutor(1) as pool:
        plain = await explainer.explain_async(handle, TEXT, params, RequestContext(Priority.EXPLAIN), pool)
    np.testing.assert_array_equal(messages[-1].result.values, plain.values)
    assert [t.text for t in messages[-1].result.tokens] == [t.text for t in plain.tokens]
    assert not np.allclose(messages[0].result.values, plain.values)  # the first is coarse


async def test_leaving_stops_the_rounds(handle: ModelHandle) -> None:
    explainer = ShapPartitionExplainer()
    context = RequestContext(Priority.EXPLAIN)
    stream = explain_progressively(explainer, handle, TEXT, _params(2000), context, interval=0.0)
    first = await anext(stream)
    assert not first.final
    await stream.aclose()  # the reader leaves after one message
    assert context.cancelled
    charged = context.rows  # every round's rows are charged to the request when submitted
    assert await asyncio.to_thread(wait_for, lambda: handle.worker.queued_rows() == 0, 10)
    assert context.rows == charged  # the round in flight submitted no next one
    assert charged < 2000
