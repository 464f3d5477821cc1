"""ExplainProgressive end to end: the RPC, the servicer, the data plane and both clients."""

from __future__ import annotations

import numpy as np
import pytest
import whybert

TEXT = "the food was great but the service was painfully slow, and the room was cold and loud"


def test_messages_refine_to_exactly_explain(target: str) -> None:
    with whybert.Client(target, retries=0) as client:
        messages = list(client.explain_progressive(TEXT, targets="all", max_evals=300, batch_size=2, interval=0.01))
        plain = client.explain([TEXT], targets="all", max_evals=300, batch_size=2)[0]
    assert messages[-1].final and not any(m.final for m in messages[:-1])
    assert len(messages) >= 2
    for m in messages:
        e = m.explanation
        np.testing.assert_allclose(e.base_values + e.values.sum(axis=0), e.output_values, atol=1e-9)
        assert e.tokens == plain.tokens and e.labels == plain.labels
    np.testing.assert_allclose(messages[-1].explanation.values, plain.values, atol=1e-12)
    assert [m.evals for m in messages] == sorted(m.evals for m in messages)


async def test_the_async_client_streams_too(target: str) -> None:
    async with whybert.AsyncClient(target, retries=0) as client:
        finals = [m async for m in client.explain_progressive(TEXT, max_evals=100, interval=0.01) if m.final]
    assert len(finals) == 1 and finals[0].explanation.labels == [finals[0].explanation.prediction.label]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"text": "   "}, "text"),
        ({"text": TEXT, "max_evals": 1}, "shap.max_evals"),
        ({"text": TEXT, "interval": 61.0}, "interval_ms"),
    ],
)
def test_bad_fields_are_named(target: str, kwargs: dict[str, object], field: str) -> None:
    with whybert.Client(target, retries=0) as client, pytest.raises(whybert.InvalidArgumentError) as info:
        list(client.explain_progressive(**kwargs))  # type: ignore[arg-type]
    assert field in [f for f, _ in info.value.field_violations]
