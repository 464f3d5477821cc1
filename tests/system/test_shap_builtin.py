"""SHAP values from whybert equal shap's own PartitionExplainer on the real built-in model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import torch
import whybert
from _references import PlainModel, ShapReference
from _servers import tiny_settings

TEXTS = {
    "short": "great food",
    "mixed": "the food was great but the service was painfully slow",
    "long past the budget": (
        "I booked this hotel for a week because the photos looked amazing, but the room was tiny, "
        "the air conditioning rattled all night, breakfast was cold every single morning and the "
        "staff at the front desk could not have cared less, although the pool was lovely."
    ),
    "punctuation": "Really?! No... NOT again -- the 3rd delay (in 2 days); #fail @airline",
    "emoji": "loved it 😍😍 best concert ever 🎉 but parking was a nightmare 😡",
    "word pieces": "unbelievably overpriced, the waiter's condescension was insufferable",
}
pytestmark = pytest.mark.slow  # the real default model


@pytest.fixture(scope="module")
def builtin() -> Any:
    from whybert_service.models.builtin import load_builtin

    return load_builtin(torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def reference(builtin: Any) -> ShapReference:
    """shap.PartitionExplainer over the same model, called directly."""
    return ShapReference(PlainModel.from_classifier(builtin))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[Any]:
    from whybert_service.grpc.server import WhybertServer

    settings = tiny_settings(None, model=(), no_builtin_model=False, cache_entries=0)  # type: ignore[arg-type]
    srv = WhybertServer(settings)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop(0)


@pytest.mark.parametrize("name", list(TEXTS))
@pytest.mark.asyncio(loop_scope="module")
async def test_all_labels_equal_shap(server: Any, reference: ShapReference, name: str) -> None:
    text = TEXTS[name]
    async with whybert.AsyncClient(f"127.0.0.1:{server.port}", timeout=300) as client:
        (ours,) = await client.explain([text], targets="all")
    ref = reference.explain(text, [0, 1, 2])
    assert ours.labels == ["negative", "neutral", "positive"]
    assert ours.tokens == list(ref.data[0])
    np.testing.assert_allclose(ours.values, ref.values[0], rtol=1e-3, atol=2e-5)
    np.testing.assert_allclose(ours.base_values, ref.base_values[0], atol=1e-5)
    assert ours.additivity_error < 1e-6
    if name == "long past the budget":
        assert ours.model_rows >= 450  # the budget binds


@pytest.mark.parametrize(
    "options",
    [
        {"output": "logit"},
        {"fixed_context": 1},
        {"max_evals": 120, "batch_size": 8},
    ],
    ids=["logit", "fixed-context-1", "small-budget"],
)
@pytest.mark.asyncio(loop_scope="module")
async def test_predicted_label_with_options_equals_shap(
    server: Any, builtin: Any, reference: ShapReference, options: dict[str, Any]
) -> None:
    text = TEXTS["mixed"]
    async with whybert.AsyncClient(f"127.0.0.1:{server.port}", timeout=300) as client:
        (ours,) = await client.explain([text], **options)
    predicted = builtin.labels.index(ours.prediction.label)
    assert ours.labels == [ours.prediction.label]
    shap_kw = {k: options[k] for k in ("max_evals", "fixed_context", "batch_size") if k in options}
    ref = reference.explain(text, [predicted], options.get("output", "probability"), **shap_kw)
    np.testing.assert_allclose(ours.values, np.asarray(ref.values[0]).reshape(-1, 1), rtol=1e-3, atol=2e-5)
    assert ours.additivity_error < 1e-5
