"""The attention explainer through the in-process server: rollout values and raw maps equal
transformers' own attention weights on the tiny model, limits refused with
INVALID_ARGUMENT naming the field, and its one forward pass scheduled on the worker (a
request that left while queued never runs)."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import whybert
from _servers import ServerThread, hold_worker_thread, tiny_settings
from _wait import wait_for
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from whybert_service.batching.worker import ModelWorker, WorkerConfig
from whybert_service.context import Priority, RequestContext
from whybert_service.errors import Cancelled, DeadlineExceeded
from whybert_service.explainers.attention import AttentionRequest, attention_pass
from whybert_service.models.classifier import Classifier
from whybert_service.registry import ModelHandle

TEXTS = ["The food was great, but the service was unbelievably slow.", "ok"]


class Reference:
    """The tiny model straight from transformers with eager attention: its weights."""

    def __init__(self, path: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager").eval()

    def attentions(self, text: str) -> tuple[list[int], np.ndarray]:
        """The text's ids and its attention weights, layers × heads × tokens × tokens."""
        ids = self.tokenizer(text)["input_ids"]
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids]), output_attentions=True)
        return ids, np.stack([a[0].numpy() for a in out.attentions])

    def rollout(self, text: str) -> np.ndarray:
        """The full rollout matrix, numpy, as the paper writes it."""
        _, attn = self.attentions(text)
        tokens = attn.shape[-1]
        rollout = np.eye(tokens)
        for layer in attn.astype(np.float64):
            mixed = layer.mean(axis=0) + np.eye(tokens)
            rollout = (mixed / mixed.sum(axis=1, keepdims=True)) @ rollout
        return rollout


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> Reference:
    return Reference(tiny_model_dir)


@pytest.fixture(scope="module")
def small_server(tiny_model_dir: Path) -> Iterator[ServerThread]:
    """A server whose attention-cell limit is small enough to reach with a short text."""
    with ServerThread(tiny_settings(tiny_model_dir, max_attention_cells=400)) as server:
        yield server


def test_rollout_values_are_the_cls_row(target: str, reference: Reference) -> None:
    with whybert.Client(target) as client:
        results = client.explain(TEXTS, model="tiny", explainer="attention", targets="all")
    for text, e in zip(TEXTS, results, strict=True):
        expected = reference.rollout(text)[0]
        assert e.explainer == "attention" and e.attention_position == 0 and e.attention is None
        assert e.labels == ["negative", "neutral", "positive"] and e.values.shape == (len(expected), 3)
        for column in e.values.T:
            np.testing.assert_allclose(column, expected, rtol=1e-5, atol=1e-7)
        assert e.special[0] and e.tokens[0] == "[CLS]"
        assert np.isnan(e.additivity_error) and np.all(e.base_values == 0)
        assert e.model_rows == 1
        # The prediction comes from the same forward pass and is the model's own.
        with torch.no_grad():
            ids = reference.tokenizer(text, return_tensors="pt")
            probs = torch.softmax(reference.model(**ids).logits[0], dim=-1).numpy()
        np.testing.assert_allclose(list(e.prediction.scores.values()), probs, atol=1e-5)
        np.testing.assert_allclose(e.output_values, probs, atol=1e-5)


def test_raw_maps_are_the_chosen_layers_and_heads(target: str, reference: Reference) -> None:
    with whybert.Client(target) as client:
        chosen = client.explain(
            TEXTS[0], model="tiny", explainer="attention", attention_layers=[1], attention_heads=[1, 0]
        )
        every = client.explain(TEXTS[1], model="tiny", explainer="attention", raw_attention=True)
    _, attn = reference.attentions(TEXTS[0])
    maps = chosen[0].attention
    assert maps is not None and maps.layers == [1] and maps.heads == [1, 0]
    assert maps.weights.shape == (1, 2, *attn.shape[-2:])
    np.testing.assert_allclose(maps.weights[0], attn[1][[1, 0]], rtol=1e-5, atol=1e-6)
    _, attn = reference.attentions(TEXTS[1])
    maps = every[0].attention
    assert maps is not None and maps.layers == [0, 1] and maps.heads == [0, 1]
    np.testing.assert_allclose(maps.weights, attn, rtol=1e-5, atol=1e-6)


def test_to_shap_keeps_the_rollout(target: str) -> None:
    pytest.importorskip("shap")
    with whybert.Client(target) as client:
        (e,) = client.explain(TEXTS[0], model="tiny", explainer="attention")
    s = e.to_shap()
    np.testing.assert_array_equal(s.values, e.values)
    assert list(s.data) == e.tokens


def test_list_models_offers_attention(target: str) -> None:
    with whybert.Client(target) as client:
        (info,) = [m for m in client.list_models() if m.name == "tiny"]
    assert "attention" in info.explainers


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"attention_layers": [2]}, "attention.layers[0]"),
        ({"attention_heads": [0, 5]}, "attention.heads[1]"),
        ({"attention_layers": [0, 0]}, "attention.layers"),
    ],
)
def test_out_of_range_choices_are_refused(target: str, options: dict[str, Any], field: str) -> None:
    with whybert.Client(target) as client, pytest.raises(whybert.InvalidArgumentError) as info:
        client.explain("ok", model="tiny", explainer="attention", **options)
    assert [f for f, _ in info.value.field_violations] == [field]


def test_layers_without_raw_are_refused(target: str) -> None:
    import grpc
    from whybert.v1 import explainer_pb2 as pb
    from whybert.v1 import explainer_pb2_grpc as pb_grpc

    request = pb.ExplainRequest(
        model="tiny", texts=["ok"], explainer=pb.EXPLAINER_KIND_ATTENTION, attention=pb.AttentionOptions(layers=[0])
    )
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.ExplainerStub(channel).Explain(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "attention.layers" in str(info.value.details())


def test_too_many_cells_are_refused_naming_the_field(small_server: ServerThread) -> None:
    # "ok": 3 tokens; 2 layers × 2 heads × 9 = 36 cells fit under 400; a long text does not.
    with whybert.Client(small_server.target) as client:
        (fits,) = client.explain("ok", model="tiny", explainer="attention", raw_attention=True)
        assert fits.attention is not None and fits.attention.weights.size == 36
        with pytest.raises(whybert.InvalidArgumentError) as info:
            client.explain(TEXTS[0], model="tiny", explainer="attention", raw_attention=True)
        assert [f for f, _ in info.value.field_violations] == ["attention"]
        assert "--max-attention-cells" in info.value.field_violations[0][1]
        # Without raw maps the same text is fine: the limit is on the maps only.
        (e,) = client.explain(TEXTS[0], model="tiny", explainer="attention")
        assert e.attention is None


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_a_request_that_left_while_queued_never_runs(
    tiny_classifier: Classifier, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    worker = ModelWorker(tiny_classifier, WorkerConfig())
    worker.start()
    handle = ModelHandle(tiny_classifier, worker)
    ids = tiny_classifier.encode(["the food was great"]).ids[0]
    context = RequestContext.with_timeout(Priority.EXPLAIN, 0.2 if how == "deadline" else None)
    ran: list[bool] = []
    original = tiny_classifier.model.forward
    errors: list[BaseException] = []
    submitted: list[bool] = []
    call = worker.call

    def counted_call(fn: Any, ctx: RequestContext, cost: int = 0) -> Any:
        future = call(fn, ctx, cost)
        submitted.append(True)
        return future

    monkeypatch.setattr(worker, "call", counted_call)

    def run() -> None:
        try:
            attention_pass(handle, AttentionRequest(ids, 0), context)
        except BaseException as exc:
            errors.append(exc)

    release = hold_worker_thread(worker)  # through counted_call: submitted[0]
    try:
        tiny_classifier.model.forward = lambda *a, **k: ran.append(True) or original(*a, **k)  # type: ignore[method-assign]
        thread = threading.Thread(target=run)
        thread.start()
        assert wait_for(lambda: len(submitted) == 2, timeout=5, step=0.005)  # the barrier, then ours
        if how == "cancel":
            context.cancel()
        thread.join(5)
        assert not thread.is_alive()
    finally:
        release.set()
        worker.call(lambda _c: None, RequestContext()).result(5)
        del tiny_classifier.model.forward
        worker.stop()
    assert not ran
    assert len(errors) == 1 and isinstance(errors[0], Cancelled if how == "cancel" else DeadlineExceeded)


def test_cli_explains_with_attention(
    threaded_server: ServerThread, reference: Reference, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from whybert import cli

    target = ["--target", threaded_server.target, "--model", "tiny"]
    png = tmp_path / "maps.png"
    code = cli.main(["explain", TEXTS[1], "--explainer", "attention", "--attention-layers", "1", "--json", *target])
    out = capsys.readouterr().out
    assert code == 0
    (item,) = json.loads(out)  # strict JSON: the NaN additivity error is null
    assert item["explainer"] == "attention" and item["additivity_error"] is None
    assert item["attention_position"] == 0
    np.testing.assert_allclose([v[0] for v in item["values"]], reference.rollout(TEXTS[1])[0], rtol=1e-5, atol=1e-7)
    assert item["attention"]["layers"] == [1] and item["attention"]["heads"] == [0, 1]
    np.testing.assert_allclose(item["attention"]["weights"][0], reference.attentions(TEXTS[1])[1][1], atol=1e-6)
    code = cli.main(["explain", TEXTS[0], "--explainer", "attention", "--attention-png", str(png), *target])
    out = capsys.readouterr().out
    assert code == 0 and "attention rollout read at token 0 ([CLS])" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_page_offers_and_renders_attention(client_for_ui: whybert.Client) -> None:
    from whybert.ui import UIServer

    with UIServer(client_for_ui).start() as ui:
        models = _get(ui.url + "api/models")
        assert "attention" in next(m for m in models["models"] if m["name"] == "tiny")["explainers"]
        body = _post(ui.url + "api/explain", {"texts": [TEXTS[0]], "model": "tiny", "explainer": "attention"})
    assert "attention rollout read at token 0" in body["html"] and "wb-tok" in body["html"]
    assert body["explanations"][0]["explainer"] == "attention"


@pytest.fixture
def client_for_ui(target: str) -> Iterator[whybert.Client]:
    with whybert.Client(target) as c:
        yield c


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def _post(url: str, body: Any) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_explain_stream_resolves_and_checks_the_options_too(target: str, reference: Reference) -> None:
    with whybert.Client(target) as client:
        results = dict(
            client.explain_stream(TEXTS, model="tiny", explainer="attention", attention_heads=[1])
        )
        with pytest.raises(whybert.InvalidArgumentError) as info:
            list(client.explain_stream(TEXTS, model="tiny", explainer="attention", attention_layers=[7]))
    assert [f for f, _ in info.value.field_violations] == ["attention.layers[0]"]
    for i, text in enumerate(TEXTS):
        maps = results[i].attention
        assert maps is not None and maps.layers == [0, 1] and maps.heads == [1]
        np.testing.assert_allclose(maps.weights[:, 0], reference.attentions(text)[1][:, 1], atol=1e-6)
        np.testing.assert_allclose(results[i].values[:, 0], reference.rollout(text)[0], rtol=1e-5, atol=1e-7)


def test_an_entity_is_read_at_its_first_piece(ner_dir: Path) -> None:
    from _entities import generated_texts
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(ner_dir, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(ner_dir)
    with ServerThread(tiny_settings(ner_dir, model=(f"ner={ner_dir}",))) as server, whybert.Client(
        server.target
    ) as client:
        texts = [t for t in generated_texts(40, seed=5) if client.predict(t, model="ner")[0].entities][:2]
        assert texts
        for text in texts:
            entities = client.predict(text, model="ner")[0].entities
            k = len(entities) - 1  # the last entity: its position is not 0
            (e,) = client.explain(text, model="ner", explainer="attention", entity=k)
            with torch.no_grad():
                out = model(input_ids=torch.tensor([tokenizer(text)["input_ids"]]), output_attentions=True)
            attn = [a[0].double().numpy() for a in out.attentions]
            rollout = np.eye(attn[0].shape[-1])
            for layer in attn:
                mixed = layer.mean(axis=0) + np.eye(len(rollout))
                rollout = (mixed / mixed.sum(axis=1, keepdims=True)) @ rollout
            assert e.attention_position == e.entity_position > 0
            assert e.labels == [entities[k].label]
            np.testing.assert_allclose(e.values[:, 0], rollout[e.entity_position], rtol=1e-5, atol=1e-7)


def test_faithfulness_ranks_tokens_by_their_rollout(target: str) -> None:
    """AOPC works on the rollout like on any ranking: figures in [-1, 1], the cost counted."""
    with whybert.Client(target) as client:
        (e,) = client.explain(TEXTS[0], model="tiny", explainer="attention", faithfulness=True)
    assert e.faithfulness is not None
    assert -1 <= e.faithfulness.comprehensiveness <= 1 and -1 <= e.faithfulness.sufficiency <= 1
    assert e.model_rows > 1  # the AOPC rows on top of the one forward pass
