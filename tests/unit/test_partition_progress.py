"""Progressive Owen values: the engine's snapshot between rounds (explainers/partition/engine.py).

A snapshot is the explanation as it would end if the budget ran out at that round, so it
must be additive at every round, end exactly at the final values, and only get closer to
them as the budget is spent (in the sense of the pieces that are still lumped together).
"""

from __future__ import annotations

import numpy as np
import pytest
from whybert_service.explainers.partition import MaskingSpec, PartitionEngine, prepare_text
from whybert_service.models.classifier import Classifier
from whybert_service.types import OutputName

TEXTS = [
    "the food was great but the service was painfully slow and the room was cold",
    "absolutely wonderful!!! would come back 😀 again, tomorrow",
    "no",
]


def _engine(classifier: Classifier, text: str, **options: object) -> PartitionEngine:
    spec = MaskingSpec.for_tokenizer(classifier.tokenizer)
    encode = lambda strings: classifier.encode(list(strings)).ids  # noqa: E731
    prepared = prepare_text(classifier.tokenizer, spec, text, classifier.max_length, encode)
    return PartitionEngine(
        prepared, spec, encode, output=OutputName.PROBABILITY, targets=lambda logits: [0, 1], **options  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("fixed_context", [None, 0, 1])
def test_every_snapshot_is_additive_and_the_last_is_the_result(
    tiny_classifier: Classifier, text: str, fixed_context: int | None
) -> None:
    engine = _engine(tiny_classifier, text, max_evals=120, fixed_context=fixed_context)
    with pytest.raises(RuntimeError):
        engine.snapshot()  # nothing is known before the base and unmasked rows
    snapshots = []
    while not engine.done:
        engine.feed(tiny_classifier.forward([r.tolist() for r in engine.rows()]))
        snapshots.append(engine.snapshot())
    final = engine.result
    for snap in snapshots:
        assert snap.values.shape == final.values.shape
        np.testing.assert_allclose(snap.base_values + snap.values.sum(axis=0), snap.output_values, atol=1e-9)
        np.testing.assert_array_equal(snap.base_values, final.base_values)
    np.testing.assert_array_equal(snapshots[-1].values, final.values)


def test_early_snapshots_are_coarse_and_refine_to_the_result(tiny_classifier: Classifier) -> None:
    engine = _engine(tiny_classifier, TEXTS[0], max_evals=400)
    engine.feed(tiny_classifier.forward([r.tolist() for r in engine.rows()]))
    first = engine.snapshot()
    # Before any expansion the whole gap f(text) − f(nothing) is shared over the pieces by
    # size: every piece gets the same value.
    pieces = first.values[1:-1]  # without [CLS] / [SEP], which the masker keeps
    assert np.allclose(pieces, pieces[0])
    distinct = [len(np.unique(np.round(first.values[:, 0], 12)))]
    while not engine.done:
        engine.feed(tiny_classifier.forward([r.tolist() for r in engine.rows()]))
        distinct.append(len(np.unique(np.round(engine.snapshot().values[:, 0], 12))))
    assert distinct[-1] > distinct[0]  # finer: more pieces told apart at the end
    assert not np.allclose(first.values, engine.result.values)
