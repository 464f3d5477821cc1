"""The model's logits read as predictions and output spaces (`outputs.py`), checked against
torch's softmax: the space an explanation adds up in must be the one the caller asked for."""

from __future__ import annotations

import numpy as np
import torch
from whybert_service.outputs import prediction_from_logits, softmax, to_output_space
from whybert_service.types import OutputName


def test_softmax_equals_torch_and_survives_huge_logits() -> None:
    logits = np.array([[1.0, 2.0, -3.0], [1000.0, 999.0, -1000.0]], dtype=np.float32)
    expected = torch.softmax(torch.tensor(logits, dtype=torch.float64), dim=-1).numpy()
    got = softmax(logits)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert np.isfinite(got).all()  # no overflow: the row's maximum is subtracted first
    np.testing.assert_allclose(got.sum(axis=-1), 1.0)


def test_softmax_is_per_row_and_leaves_its_input_alone() -> None:
    logits = np.array([[0.0, 0.0], [5.0, 0.0]])
    before = logits.copy()
    got = softmax(logits)
    np.testing.assert_allclose(got[0], [0.5, 0.5])
    assert got[1, 0] > 0.99
    np.testing.assert_array_equal(logits, before)


def test_output_space_is_logits_or_probabilities() -> None:
    logits = np.array([[0.5, -1.5, 2.0]], dtype=np.float32)
    np.testing.assert_array_equal(to_output_space(logits, OutputName.LOGIT), logits.astype(np.float64))
    assert to_output_space(logits, OutputName.LOGIT).dtype == np.float64
    np.testing.assert_allclose(to_output_space(logits, OutputName.PROBABILITY), softmax(logits))


def test_prediction_from_logits_keeps_logits_labels_and_flags() -> None:
    logits = np.array([0.1, 3.0, -2.0], dtype=np.float32)
    labels = ["neg", "pos", "neutral"]
    p = prediction_from_logits(labels, logits, truncated=True, token_count=7)
    assert p.label == "pos"
    assert p.labels == labels and p.labels is not labels  # a copy: the model's list stays its own
    np.testing.assert_allclose(p.probabilities, torch.softmax(torch.tensor(logits, dtype=torch.float64), 0).numpy())
    np.testing.assert_array_equal(p.logits, logits.astype(np.float64))
    assert p.truncated and p.token_count == 7
