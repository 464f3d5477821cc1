"""LIME of a token model's entity (explainers/lime_entities.py) equals lime's own answer:
lime's sampler draws the perturbations and distances, the plain model reads the entity's
output on rows where hidden words' pieces are the mask id in place, and lime's own
`explain_instance_with_data` fits them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import whybert
from _entities import generated_texts
from _servers import ServerThread, tiny_settings
from whybert_service.entities import entity_output, group_entities
from whybert_service.models.token_classifier import TokenClassifier


@pytest.fixture(scope="module")
def server(ner_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(tiny_settings(ner_dir, model=(f"ner={ner_dir}",))) as running:
        yield running


def _first_with_entities(ner: TokenClassifier, count: int) -> list[tuple[str, list]]:  # type: ignore[type-arg]
    found = []
    for text in generated_texts(100, seed=5):
        window = ner.window(text)
        entities = group_entities(ner.tokenizer, window, ner.token_logits([window.ids])[0], ner.labels)
        if len(entities) >= 2 and len(set(text.split())) < len(text.split()):  # a repeated word too
            found.append((text, entities))
        if len(found) == count:
            break
    return found


@pytest.mark.parametrize("case", range(3))
def test_lime_explains_an_entity_with_limes_own_samples_and_fit(
    server: ServerThread, ner: TokenClassifier, case: int
) -> None:
    from lime.lime_text import IndexedString, LimeTextExplainer
    from whybert_service.explainers.lime_entities import piece_features

    text, entities = _first_with_entities(ner, 3)[case]
    k, output = case % len(entities), ["probability", "logit", "probability"][case]
    target = entities[k]
    with whybert.Client(server.target) as client:
        (e,) = client.explain(
            text, model="ner", explainer="lime", entity=k, num_samples=300, random_seed=4, output=output
        )
    # lime's own draws and distances (its private sampler), the model on rows masked in place
    explainer = LimeTextExplainer(class_names=[target.label], random_state=4)
    indexed = IndexedString(text)
    sampler = explainer._LimeTextExplainer__data_labels_distances  # type: ignore[attr-defined]
    data, _, distances = sampler(indexed, lambda strings: np.zeros((len(strings), 1)), 300)
    window = ner.window(text)
    features = piece_features(indexed, window.offsets, window.special)
    ids = np.asarray(window.ids)
    rows = [
        np.where((features >= 0) & (d[np.maximum(features, 0)] == 0), ner.tokenizer.mask_token_id, ids).tolist()
        for d in data
    ]
    with torch.no_grad():
        logits = ner.model(input_ids=torch.tensor(rows)).logits[:, target.position].numpy()
    outputs = entity_output(logits, ner.type_columns(target.label), output == "logit")
    intercept, local_exp, _, _ = explainer.base.explain_instance_with_data(
        data, outputs, distances, 0, indexed.num_words(), feature_selection=explainer.feature_selection
    )
    weights = dict(local_exp)
    feature_of = {w: i for i, w in enumerate(indexed.inverse_vocab)}
    expected = [
        weights[feature_of[tok]] / len(indexed.string_position(feature_of[tok])) for tok in e.tokens
    ]
    assert len(e.tokens) == sum(len(indexed.string_position(i)) for i in range(indexed.num_words()))
    np.testing.assert_allclose(e.values[:, 0], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(e.base_values, [intercept], rtol=1e-4, atol=1e-6)
    assert e.entity is not None and e.entity.label == target.label
