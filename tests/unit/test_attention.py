"""Attention rollout against an independent numpy computation from transformers' own
`output_attentions` on the tiny random BERT, and the eager switch that makes them exist."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification
from whybert_service.explainers.attention import (
    AttentionRequest,
    attention_shape,
    eager_attention,
    rollout_row,
    run_attention,
)
from whybert_service.explainers.integrated_gradients import word_pieces
from whybert_service.models.classifier import Classifier
from whybert_service.models.packing import PACKED_ATTENTION

TEXTS = ["The food was great, but the service was unbelievably slow.", "ok", "Crème brûlée 🍮 über-sweet!!"]


def numpy_rollout(attentions: list[np.ndarray]) -> np.ndarray:
    """Abnar & Zuidema's rollout as the paper writes it: the full matrix product of
    (mean over heads + I) / 2 per layer, top layer on the left."""
    tokens = attentions[0].shape[-1]
    rollout = np.eye(tokens)
    for layer in attentions:  # bottom first: R_l = Â_l R_{l-1}
        mixed = 0.5 * layer.astype(np.float64).mean(axis=0) + 0.5 * np.eye(tokens)
        rollout = mixed @ rollout
    return rollout


@pytest.fixture(scope="module")
def eager_reference(tiny_model_dir: object) -> torch.nn.Module:
    """The same weights loaded straight into transformers with eager attention."""
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, attn_implementation="eager")
    return model.eval()


def reference_attentions(model: torch.nn.Module, ids: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_attentions=True)
    return out.logits[0].numpy(), [a[0].numpy() for a in out.attentions]


@pytest.mark.parametrize("text", TEXTS)
def test_rollout_row_is_the_papers_product(
    tiny_classifier: Classifier, eager_reference: torch.nn.Module, text: str
) -> None:
    _, ids, _ = word_pieces(tiny_classifier, text)
    ref_logits, ref_attn = reference_attentions(eager_reference, ids)
    expected = numpy_rollout(ref_attn)
    logits, row, maps = run_attention(tiny_classifier, AttentionRequest(ids, position=0))
    assert maps is None
    np.testing.assert_allclose(row, expected[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-5)
    assert row.sum() == pytest.approx(1.0, abs=1e-9) and (row >= 0).all()


def test_rollout_at_another_position_reads_its_row(
    tiny_classifier: Classifier, eager_reference: torch.nn.Module
) -> None:
    _, ids, _ = word_pieces(tiny_classifier, TEXTS[0])
    expected = numpy_rollout(reference_attentions(eager_reference, ids)[1])
    _, row, _ = run_attention(tiny_classifier, AttentionRequest(ids, position=3))
    np.testing.assert_allclose(row, expected[3], rtol=1e-5, atol=1e-7)
    assert not np.allclose(row, expected[0])


def test_raw_maps_are_the_chosen_layers_and_heads(
    tiny_classifier: Classifier, eager_reference: torch.nn.Module
) -> None:
    _, ids, _ = word_pieces(tiny_classifier, TEXTS[2])
    ref = reference_attentions(eager_reference, ids)[1]
    _, _, maps = run_attention(tiny_classifier, AttentionRequest(ids, 0, layers=(1, 0), heads=(1,)))
    assert maps is not None and maps.shape == (2, 1, len(ids), len(ids)) and maps.dtype == np.float32
    np.testing.assert_allclose(maps[0, 0], ref[1][1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps[1, 0], ref[0][1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps.sum(axis=-1), 1.0, atol=1e-5)


def test_rollout_of_uniform_attention_is_uniform_plus_self() -> None:
    """One layer of uniform attention: Â = (U + I) / 2, so row p is 1/(2T) everywhere plus
    1/2 at p; more layers mix it towards uniform."""
    tokens = 4
    uniform = torch.full((3, tokens, tokens), 1.0 / tokens)
    row = rollout_row([uniform], position=2).numpy()
    expected = np.full(tokens, 0.5 / tokens)
    expected[2] += 0.5
    np.testing.assert_allclose(row, expected)


def test_the_model_goes_back_to_its_fast_attention(tiny_classifier: Classifier) -> None:
    """Predict and SHAP keep the fast kernel (SDPA, packed on the CPU): eager only inside the
    attention pass."""
    config = tiny_classifier.model.config
    assert config._attn_implementation == PACKED_ATTENTION
    with eager_attention(tiny_classifier.model):
        assert config._attn_implementation == "eager"
    assert config._attn_implementation == PACKED_ATTENTION
    _, ids, _ = word_pieces(tiny_classifier, "ok")
    run_attention(tiny_classifier, AttentionRequest(ids, 0))
    assert config._attn_implementation == PACKED_ATTENTION


def test_attention_shape(tiny_classifier: Classifier) -> None:
    assert attention_shape(tiny_classifier) == (2, 2)
