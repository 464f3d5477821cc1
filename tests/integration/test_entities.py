"""Token-classification models end to end: entities as transformers' pipeline groups them,
Predict and ListModels over gRPC, and Explain of an entity by the three explainers, each
against its library's own answer on the same tiny random NER model (tests/_entities.py).

References: `pipeline("token-classification", aggregation_strategy="first")`; shap's
`PartitionExplainer` with the `token_ids` Text masker; lime's own perturbations, distances
and fit (the model's outputs on in-place masked rows); Captum's LayerIntegratedGradients
of the entity's output at its position.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import whybert
from _entities import generated_texts
from _servers import ServerThread, tiny_settings
from whybert_service.entities import entity_output, group_entities
from whybert_service.models.token_classifier import TokenClassifier

TEXTS = generated_texts(300)


@pytest.fixture(scope="module")
def pipe(ner_dir: Path) -> Any:
    """The pipeline on the model straight from its directory: no whybert code."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    model = AutoModelForTokenClassification.from_pretrained(ner_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(ner_dir)
    return pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="first", device=-1)


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, ner_dir: Path) -> Iterator[ServerThread]:
    settings = tiny_settings(tiny_model_dir, model=(f"tiny={tiny_model_dir}", f"ner={ner_dir}"), default_model="tiny")
    with ServerThread(settings) as running:
        yield running


def _reference(pipe: Any, text: str) -> list[tuple[int, int, str, float]]:
    return [(e["start"], e["end"], e["entity_group"], float(e["score"])) for e in pipe(text)]


def _assert_same(got: list[tuple[int, int, str, float]], ref: list[tuple[int, int, str, float]]) -> None:
    assert [g[:3] for g in got] == [r[:3] for r in ref]
    np.testing.assert_allclose([g[3] for g in got], [r[3] for r in ref], rtol=0, atol=1e-5)


def test_entities_are_grouped_as_the_pipeline_groups_them(ner: TokenClassifier, pipe: Any) -> None:
    total, mixed = 0, 0
    for text in TEXTS:
        window = ner.window(text)
        logits = ner.token_logits([window.ids])[0]
        entities = group_entities(ner.tokenizer, window, logits, ner.labels)
        _assert_same([(e.start, e.end, e.label, e.score) for e in entities], _reference(pipe, text))
        for e in entities:
            assert e.text == text[e.start : e.end]
            assert ner.labels[int(np.argmax(logits[e.position]))].endswith(e.label)
        total += len(entities)
        mixed += sum(1 for a, b in itertools.pairwise(entities) if a.end >= b.start - 1)
    assert total > 1000 and mixed > 50  # many entities, many of them adjacent


def test_predict_over_grpc_lists_the_pipelines_entities(server: ServerThread, pipe: Any) -> None:
    texts = TEXTS[:40]
    with whybert.Client(server.target) as client:
        predictions = client.predict(texts, model="ner")
        models = {m.name: m for m in client.list_models()}
        streamed = dict(client.predict_stream(texts[:5], model="ner"))
    for text, p in zip(texts, predictions, strict=True):
        _assert_same([(e.start, e.end, e.label, e.score) for e in p.entities], _reference(pipe, text))
        assert all(e.text == text[e.start : e.end] for e in p.entities)
        assert p.label == "" and p.token_count > 0
    for i in range(5):  # streamed one by one: the same entities (scores up to padding noise)
        _assert_same(
            [(x.start, x.end, x.label, x.score) for x in streamed[i].entities],
            [(x.start, x.end, x.label, x.score) for x in predictions[i].entities],
        )
    assert models["ner"].kind == "token" and models["tiny"].kind == "sequence"
    assert models["ner"].labels[:3] == ["O", "B-PER", "I-PER"]
    assert {"shap-partition", "lime", "integrated-gradients"} <= set(models["ner"].explainers)


def _first_with_entities(ner: TokenClassifier, count: int) -> list[tuple[str, Any]]:
    found = []
    for text in TEXTS:
        window = ner.window(text)
        entities = group_entities(ner.tokenizer, window, ner.token_logits([window.ids])[0], ner.labels)
        if len(entities) >= 2:
            found.append((text, entities))
        if len(found) == count:
            break
    return found


@pytest.mark.parametrize("output", ["probability", "logit"])
def test_shap_explains_an_entity_as_shaps_token_ids_masker(
    server: ServerThread, ner: TokenClassifier, output: str
) -> None:
    import shap

    for text, entities in _first_with_entities(ner, 3):
        k = len(entities) - 1
        with whybert.Client(server.target) as client:
            (e,) = client.explain(text, model="ner", entity=k, output=output, max_evals=200)
        target = entities[k]
        assert e.entity is not None and e.entity_index == k and e.text_index == 0
        assert (e.entity.start, e.entity.end, e.entity.label) == (target.start, target.end, target.label)
        assert e.labels == [target.label] and e.entity_position == target.position
        columns = ner.type_columns(target.label)

        def f(rows: Any, target: Any = target, columns: list[int] = columns) -> np.ndarray:
            with torch.no_grad():
                ids = torch.tensor(np.asarray(rows).reshape(len(rows), -1).astype(np.int64))
                logits = ner.model(input_ids=ids).logits[:, target.position].numpy()
            return entity_output(logits, columns, output == "logit")

        np.random.seed(0)
        ref = shap.PartitionExplainer(f, shap.maskers.Text(ner.tokenizer, output_type="token_ids"))(
            [text], max_evals=200, silent=True
        )
        np.testing.assert_allclose(e.values[:, 0], np.asarray(ref.values[0]).reshape(-1), rtol=0, atol=1e-5)
        np.testing.assert_allclose(e.base_values, np.asarray(ref.base_values[0]).reshape(-1), atol=1e-5)
        assert e.additivity_error < 1e-9
        shown = e.to_shap()
        assert shown.output_names == [target.label] and shown.values.shape == (len(e.tokens), 1)
        p = entity_output(ner.forward([ner.window(text).ids], [target.position]), columns, output == "logit")
        np.testing.assert_allclose(e.output_values, p[0], atol=1e-5)


def test_an_entity_is_chosen_by_span_and_all_of_them_at_once(server: ServerThread, ner: TokenClassifier) -> None:
    (text, entities), (text2, entities2) = _first_with_entities(ner, 2)
    with whybert.Client(server.target) as client:
        (by_span,) = client.explain(text, model="ner", entity=(entities[1].start, entities[1].end), max_evals=60)
        (by_index,) = client.explain(text, model="ner", entity=1, max_evals=60)
        every = client.explain([text, text2], model="ner", entity="all", max_evals=60)
    np.testing.assert_array_equal(by_span.values, by_index.values)
    assert by_span.entity == by_index.entity and by_span.entity_index == 1
    assert [(x.text_index, x.entity_index) for x in every] == [(0, i) for i in range(len(entities))] + [
        (1, i) for i in range(len(entities2))
    ]
    assert [x.text for x in every] == [text] * len(entities) + [text2] * len(entities2)
    assert [x.entity.label for x in every if x.entity] == [en.label for en in entities + entities2]


def test_bad_entity_requests_get_clear_statuses(server: ServerThread, ner: TokenClassifier) -> None:
    (text, entities), = _first_with_entities(ner, 1)
    with whybert.Client(server.target) as client:
        with pytest.raises(whybert.InvalidArgumentError) as out_of_range:
            client.explain(text, model="ner", entity=len(entities))
        with pytest.raises(whybert.NotFoundError) as no_span:
            client.explain(text, model="ner", entity=(entities[0].start, entities[0].end + 100))
        with pytest.raises(whybert.InvalidArgumentError) as on_sequence:
            client.explain("the food was great", model="tiny", entity=0)
        with pytest.raises(whybert.InvalidArgumentError) as missing:
            client.explain(text, model="ner")
        with pytest.raises(whybert.InvalidArgumentError) as empty_span:
            client.explain(text, model="ner", entity=(3, 3))
        with pytest.raises(ValueError):
            client.explain(text, model="ner", entity="first")
        with pytest.raises(whybert.InvalidArgumentError) as faithfulness:
            client.explain(text, model="ner", entity=0, faithfulness=True)
        with pytest.raises(whybert.InvalidArgumentError) as targets:
            client.explain(text, model="ner", entity=0, targets="all")
    assert "entity.index" in str(out_of_range.value.field_violations)
    assert "entity.start" in no_span.value.message
    assert "entity" in str(on_sequence.value.field_violations)
    assert "entity" in str(missing.value.field_violations)
    assert "entity.end" in str(empty_span.value.field_violations)
    assert "faithfulness" in str(faithfulness.value.field_violations)
    assert "target_mode" in str(targets.value.field_violations)


def test_integrated_gradients_of_an_entity_equal_captums(server: ServerThread, ner: TokenClassifier) -> None:
    from captum.attr import LayerIntegratedGradients

    (text, entities), = _first_with_entities(ner, 1)
    target = entities[-1]
    columns = ner.type_columns(target.label)
    with whybert.Client(server.target) as client:
        (e,) = client.explain(text, model="ner", explainer="ig", entity=len(entities) - 1, n_steps=40)
    enc = ner.tokenizer(text, return_tensors="pt", return_special_tokens_mask=True)
    baseline = torch.where(enc["special_tokens_mask"].bool(), enc["input_ids"], ner.tokenizer.pad_token_id)

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = ner.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, target.position]
        return torch.softmax(logits, dim=-1)[:, columns].sum(-1)

    lig = LayerIntegratedGradients(forward, ner.model.get_input_embeddings())
    attr, delta = lig.attribute(
        enc["input_ids"], baselines=baseline, additional_forward_args=(enc["attention_mask"],),
        n_steps=40, return_convergence_delta=True,
    )
    np.testing.assert_allclose(e.values[:, 0], attr.sum(-1)[0].detach().double().numpy(), rtol=1e-3, atol=1e-5)
    assert e.convergence_delta is not None
    np.testing.assert_allclose(e.convergence_delta, [float(delta[0])], atol=1e-4)
    assert e.labels == [target.label]


async def test_streams_and_progressive_explain_one_entity_per_text(server: ServerThread, ner: TokenClassifier) -> None:
    found = _first_with_entities(ner, 2)
    texts = [text for text, _ in found]
    async with whybert.AsyncClient(server.target) as client:
        unary = await client.explain(texts, model="ner", entity=1, max_evals=60)
        streamed = {i: e async for i, e in client.explain_stream(texts, model="ner", entity=1, max_evals=60)}
        progress = [m async for m in client.explain_progressive(texts[0], model="ner", entity=1, max_evals=60)]
        with pytest.raises(whybert.InvalidArgumentError) as refused:
            async for _ in client.explain_stream(texts, model="ner", entity="all"):
                pass
    for i, e in enumerate(unary):
        assert streamed[i].entity == e.entity and streamed[i].entity_index == 1
        np.testing.assert_allclose(streamed[i].values, e.values, atol=1e-9)
    assert progress[-1].final and progress[-1].explanation.entity == unary[0].entity
    np.testing.assert_allclose(progress[-1].explanation.values, unary[0].values, atol=1e-9)
    assert "entity.all" in str(refused.value.field_violations)
