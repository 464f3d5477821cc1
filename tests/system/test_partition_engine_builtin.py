"""whybert's Partition engine gives shap's own values on the built-in `sentiment` model,
given the outputs the engine's rows received (tests/_partition.py's corpus and harness)."""

from __future__ import annotations

import pytest
import torch
from _partition import TEXTS, Harness, assert_equal

pytestmark = pytest.mark.slow  # the real default model


def test_values_equal_shap_on_the_builtin_model() -> None:
    from whybert_service.models.builtin import load_builtin

    harness = Harness(load_builtin(torch.device("cpu"), torch.float32))
    for i in range(3, len(TEXTS), 30):
        result, prepared, seen = harness.run(TEXTS[i], i)
        assert_equal(result, prepared, harness.shap(prepared.text, i, result.targets, harness.replay(seen)), 1e-9)
