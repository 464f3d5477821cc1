"""whybert's Partition engine gives shap's own values, row for row and value for value.

Over 240 generated texts (short, long past the budget and past the model's window,
punctuation runs, emoji, CJK, accents, word pieces, repeated words, special-token
look-alikes, odd white space) crossed with the options (tests/_partition.py). shap is
given exactly the outputs the engine's rows received (keyed by token ids, so a row shap
needs that the engine never evaluated fails the test): values agree to 1e-9. Against shap
calling the model itself, each row evaluated alone on both sides: 1e-6. No server, but
tens of seconds of shap: not a unit test.
"""

from __future__ import annotations

from typing import Any

import pytest
from _partition import TEXTS, Harness, assert_equal, options_for
from whybert_service.types import OutputName


@pytest.fixture(scope="module")
def tiny(tiny_classifier: Any) -> Harness:
    return Harness(tiny_classifier)


@pytest.mark.parametrize("chunk", range(8))
def test_values_equal_shap_given_the_engines_outputs(tiny: Harness, chunk: int) -> None:
    for i in range(chunk, len(TEXTS), 8):
        text = TEXTS[i]
        result, prepared, seen = tiny.run(text, i)
        ref = tiny.shap(prepared.text, i, result.targets, tiny.replay(seen))
        assert_equal(result, prepared, ref, atol=1e-9)
        _, _, _, max_evals, _ = options_for(i)
        assert result.evals <= max_evals + 1  # shap's own overshoot: a round's last pair
        assert result.rows <= result.evals


def test_values_equal_shap_calling_the_model_itself(tiny: Harness) -> None:
    for i in range(0, len(TEXTS), 24):
        result, prepared, _ = tiny.run(TEXTS[i], i, alone=True)
        ref = tiny.shap(prepared.text, i, result.targets, tiny.direct())
        assert_equal(result, prepared, ref, atol=1e-6)


def test_values_equal_shap_where_the_engines_arrays_grow(tiny: Harness) -> None:
    """A budget past what the engine sizes its arrays for at the start (2,048 evals): its
    queue entries, shared tie-breaks, masks, outputs and memo all grow on the way."""
    text = " ".join(TEXTS[k] for k in range(0, 240, 11))
    options = (OutputName.PROBABILITY, "all", None, 4500, None)
    result, prepared, seen = tiny.run(text, 0, options=options)
    assert prepared.size > 100 and result.evals > 4096  # more nodes queued than the first tie-breaks
    ref = tiny.shap(prepared.text, 0, result.targets, tiny.replay(seen), options=options)
    assert_equal(result, prepared, ref, atol=1e-9)
