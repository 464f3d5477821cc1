"""The Partition engine's in-place masking (token models) gives shap's own values.

The reference is `shap.PartitionExplainer(f, shap.maskers.Text(tokenizer,
output_type="token_ids"))`, where a masked piece is replaced by the mask id in place, and
`f` runs the plain transformers model on shap's id rows and reads the explained entity's
type probability (p(B-X) + p(I-X), or its log-odds) at the entity's first piece. Over
generated texts with names, accents, long words split into pieces and punctuation, every
entity of each text, both output spaces and several budgets: values agree to 1e-9 when
shap is given the outputs the engine's rows received, and to 1e-6 when it calls the model
itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from _entities import generated_texts
from whybert_service.entities import entity_output, group_entities
from whybert_service.explainers.partition import MaskingSpec, PartitionEngine, explain_text, prepare_text
from whybert_service.models.token_classifier import TokenClassifier

TEXTS = generated_texts(60, seed=3)
BUDGETS = [(500, None, None), (60, None, None), (120, 1, None), (200, None, 8), (40, 0, 64)]


def _plain_logits(classifier: TokenClassifier, rows: Any, position: int) -> np.ndarray:
    """The model straight from transformers, each row alone: its tag logits at `position`."""
    out = []
    with torch.no_grad():
        for row in np.asarray(rows).reshape(len(rows), -1):
            ids = torch.tensor([list(map(int, row))])
            out.append(classifier.model(input_ids=ids).logits[0, position].float().numpy())
    return np.stack(out)


def _cases(classifier: TokenClassifier) -> list[tuple[int, str, Any, int]]:
    cases = []
    for i, text in enumerate(TEXTS):
        window = classifier.window(text)
        logits = classifier.token_logits([window.ids])[0]
        for k, entity in enumerate(group_entities(classifier.tokenizer, window, logits, classifier.labels)):
            cases.append((i, text, entity, k))
    return cases


def _explain(classifier: TokenClassifier, text: str, entity: Any, case: int, alone: bool) -> tuple[Any, Any, Any]:
    import shap

    logit = case % 2 == 1
    max_evals, fixed_context, batch_size = BUDGETS[case % len(BUDGETS)]
    columns = classifier.type_columns(entity.label)
    spec = dataclasses.replace(MaskingSpec.for_tokenizer(classifier.tokenizer), in_place=True)
    encode = lambda strings: classifier.encode(list(strings)).ids  # noqa: E731
    prepared = prepare_text(classifier.tokenizer, spec, text, classifier.max_length, encode)
    engine = PartitionEngine(
        prepared, spec, encode, output=None,  # type: ignore[arg-type]
        targets=lambda logits: [0], max_evals=max_evals, fixed_context=fixed_context, batch_size=batch_size,
        transform=lambda logits: entity_output(logits, columns, logit),
    )
    seen: dict[bytes, np.ndarray] = {}

    def run(rows: list[np.ndarray]) -> np.ndarray:
        out = classifier.forward([list(map(int, r)) for r in rows], [entity.position] * len(rows))
        for r, o in zip(rows, out, strict=True):
            seen[np.asarray(r, dtype=np.int64).tobytes()] = o
        return out

    result = explain_text(engine, run)

    def f(rows: Any) -> np.ndarray:
        rows = np.asarray(rows).reshape(len(rows), -1).astype(np.int64)
        if alone:
            logits = _plain_logits(classifier, rows, entity.position)
        else:
            logits = np.stack([seen[r.tobytes()] for r in rows])
        return entity_output(logits, columns, logit)

    np.random.seed(0)  # shap's tie-breaks; the engine seeds its own the same way
    explainer = shap.PartitionExplainer(f, shap.maskers.Text(classifier.tokenizer, output_type="token_ids"))
    ref = explainer([prepared.text], max_evals=max_evals, fixed_context=fixed_context,
                    batch_size=batch_size or "auto", silent=True)
    return result, prepared, ref


def _assert_equal(result: Any, prepared: Any, ref: Any, atol: float) -> None:
    values = np.asarray(ref.values[0]).reshape(result.values.shape)
    assert values.shape[0] == prepared.size
    np.testing.assert_allclose(result.values, values, rtol=0, atol=atol)
    np.testing.assert_allclose(result.base_values, np.asarray(ref.base_values[0]).reshape(-1), rtol=0, atol=atol)
    additivity = result.base_values + result.values.sum(0) - result.output_values
    assert np.max(np.abs(additivity)) < 1e-9


def test_the_corpus_has_entities_of_every_kind(ner: TokenClassifier) -> None:
    cases = _cases(ner)
    assert len(cases) > 100
    assert {c[2].label for c in cases} == {"PER", "ORG", "LOC", "MISC"}


@pytest.mark.parametrize("chunk", range(4))
def test_values_equal_shap_token_ids_given_the_engines_outputs(ner: TokenClassifier, chunk: int) -> None:
    cases = _cases(ner)
    for n in range(chunk, len(cases), 4 * 3):  # a third of the cases, every budget and space
        _, text, entity, _ = cases[n]
        result, prepared, ref = _explain(ner, text, entity, n, alone=False)
        _assert_equal(result, prepared, ref, atol=1e-9)


def test_values_equal_shap_token_ids_calling_the_model_itself(ner: TokenClassifier) -> None:
    cases = _cases(ner)
    for n in range(0, len(cases), 40):
        _, text, entity, _ = cases[n]
        result, prepared, ref = _explain(ner, text, entity, n, alone=True)
        _assert_equal(result, prepared, ref, atol=1e-6)


def test_masked_rows_keep_every_position(ner: TokenClassifier) -> None:
    """Rows are the text's ids with the mask id at hidden pieces: never shifted."""
    spec = dataclasses.replace(MaskingSpec.for_tokenizer(ner.tokenizer), in_place=True)
    encode = lambda strings: ner.encode(list(strings)).ids  # noqa: E731
    prepared = prepare_text(ner.tokenizer, spec, "unbelievably Schwarzenegger, [SEP] naïve", ner.max_length, encode)
    rng = np.random.default_rng(0)
    masks = rng.random((20, prepared.size)) < 0.5
    from whybert_service.explainers.partition.masking import build_rows

    for mask, row in zip(masks, build_rows(prepared, spec, masks, encode), strict=True):
        assert len(row) == prepared.size
        hidden = ~mask
        hidden[0] = hidden[-1] = False
        assert (row[hidden] == spec.mask_id).all()
        assert (row[~hidden] == prepared.ids[~hidden]).all()
