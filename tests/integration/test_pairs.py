"""Text pairs end to end: a tiny random pair BERT served in-process, Predict and the three
explainers over the gRPC stubs, against transformers and shap themselves.

The SHAP reference is shap's recipe for pairs: `shap.PartitionExplainer(f,
shap.maskers.Text(tokenizer))` on `text + "[SEP]" + pair`, whose masker keeps the separator
and `f` splits each masked string there and encodes the two parts as the tokenizer's pair.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from _pairs import make_tiny_pair_bert, random_pairs
from _servers import ServerThread, tiny_settings
from whybert.v1 import explainer_pb2 as pb
from whybert.v1 import explainer_pb2_grpc as pb_grpc

PAIRS = random_pairs(48, seed=3, low=1, high=12) + random_pairs(4, seed=4, low=30, high=45)


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_pair_bert(tmp_path_factory.mktemp("tiny-pair-bert"))


@pytest.fixture(scope="module")
def server(pair_dir: Path, tiny_model_dir: Path) -> Iterator[ServerThread]:
    settings = tiny_settings(pair_dir, model=(f"pairs={pair_dir}", f"tiny={tiny_model_dir}"))
    with ServerThread(settings) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[pb_grpc.ExplainerStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.ExplainerStub(channel)


@pytest.fixture(scope="module")
def plain(pair_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(pair_dir).eval()
    return model, AutoTokenizer.from_pretrained(pair_dir)


def _probabilities(plain: tuple[Any, Any], firsts: list[str], seconds: list[str]) -> np.ndarray:
    """transformers' own answer: the tokenizer's pair encoding, longest_first, padded."""
    model, tok = plain
    enc = tok(firsts, seconds, truncation="longest_first", max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(model(**enc).logits.double(), dim=-1).numpy()


def test_list_models_gives_the_pair_kind(stub: pb_grpc.ExplainerStub) -> None:
    kinds = {m.name: m.kind for m in stub.ListModels(pb.ListModelsRequest()).models}
    assert kinds["pairs"] == pb.MODEL_KIND_TEXT_PAIR_CLASSIFICATION
    assert kinds["tiny"] == pb.MODEL_KIND_SEQUENCE_CLASSIFICATION


def test_predict_equals_transformers_on_pairs(stub: pb_grpc.ExplainerStub, plain: tuple[Any, Any]) -> None:
    firsts, seconds = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    reply = stub.Predict(pb.PredictRequest(model="pairs", texts=firsts, pairs=seconds))
    got = np.array([[s.probability for s in p.scores] for p in reply.predictions])
    np.testing.assert_allclose(got, _probabilities(plain, firsts, seconds), atol=1e-5)
    assert any(p.truncated for p in reply.predictions)  # the long ones were cut longest_first
    # The second text matters: the same first texts with their pairs swapped differ.
    swapped = stub.Predict(pb.PredictRequest(model="pairs", texts=firsts, pairs=seconds[::-1]))
    other = np.array([[s.probability for s in p.scores] for p in swapped.predictions])
    assert np.abs(got - other).max() > 1e-3


def test_predict_stream_takes_pairs(stub: pb_grpc.ExplainerStub, plain: tuple[Any, Any]) -> None:
    firsts, seconds = [a for a, _ in PAIRS[:6]], [b for _, b in PAIRS[:6]]
    replies = list(stub.PredictStream(pb.PredictStreamRequest(model="pairs", texts=firsts, pairs=seconds)))
    got = np.zeros((6, 3))
    for r in replies:
        got[r.index] = [s.probability for s in r.prediction.scores]
    np.testing.assert_allclose(got, _probabilities(plain, firsts, seconds), atol=1e-5)


def _field_of(error: grpc.RpcError) -> str:
    from google.rpc import error_details_pb2, status_pb2

    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    return ",".join(v.field for v in bad.field_violations)
    return ""


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.PredictRequest(model="tiny", texts=["a"], pairs=["b"]), "pairs"),
        (pb.PredictRequest(model="pairs", texts=["a"]), "pairs"),
        (pb.PredictRequest(model="pairs", texts=["a", "b"], pairs=["c"]), "pairs"),
        (pb.PredictRequest(model="pairs", texts=["a"], pairs=["  "]), "pairs[0]"),
        (pb.PredictRequest(model="pairs", texts=["a [SEP] b"], pairs=["c"]), "texts[0]"),
    ],
)
def test_bad_pairs_are_invalid_arguments(stub: pb_grpc.ExplainerStub, request_: Any, field: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _field_of(caught.value) == field


def test_explain_pair_text_for_a_single_text_model_is_refused(stub: pb_grpc.ExplainerStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Explain(pb.ExplainRequest(model="tiny", texts=["a"], pairs=["b"]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _field_of(caught.value) == "pairs"


def _check_tokens(e: pb.TextExplanation, text: str, pair: str) -> None:
    """Every token's offsets point into its own text, segments in order 0… then 1…."""
    assert e.pair
    segments = [t.segment for t in e.tokens]
    assert segments == sorted(segments) and segments[0] == 0 and segments[-1] == 1
    for t in e.tokens:
        if not t.special:
            own = text if t.segment == 0 else pair
            assert own[t.start : t.end].strip() and t.text.strip().lower().startswith(own[t.start : t.end].lower()[:1])
    assert e.explained_chars == len(text) or e.truncated
    assert e.explained_pair_chars == len(pair) or e.truncated


class _ShapPair:
    """shap's own Partition values on pairs (its recipe: one string joined by [SEP])."""

    def __init__(self, plain: tuple[Any, Any]) -> None:
        self.model, self.tok = plain

    def f(self, strings: Any) -> np.ndarray:
        firsts, seconds = zip(*(str(s).split("[SEP]", 1) for s in strings), strict=True)
        return _probabilities((self.model, self.tok), list(firsts), list(seconds))

    def values(self, text: str, pair: str, max_evals: int = 500) -> Any:
        import shap

        explainer = shap.PartitionExplainer(self.f, shap.maskers.Text(self.tok))
        return explainer([text + "[SEP]" + pair.lstrip()], max_evals=max_evals, silent=True)


def test_shap_values_equal_shaps_partition_over_the_pair(stub: pb_grpc.ExplainerStub, plain: tuple[Any, Any]) -> None:
    """All labels, a budget of 200 evaluations on both sides (the default 500 costs shap's
    own explainer, the slow side, more for the same comparison)."""
    reference = _ShapPair(plain)
    short = [(a, b) for a, b in PAIRS if len(a) + len(b) < 140]  # shap itself does not truncate
    firsts, seconds = [a for a, _ in short], [b for _, b in short]
    explanations = [
        e
        for i in range(0, len(short), 12)
        for e in stub.Explain(
            pb.ExplainRequest(
                model="pairs",
                texts=firsts[i : i + 12],
                pairs=seconds[i : i + 12],
                target_mode=pb.TARGET_MODE_ALL,
                shap=pb.ShapOptions(max_evals=200),
            )
        ).explanations
    ]
    assert len(explanations) == len(short) >= 36
    worst = 0.0
    for (text, pair), e in zip(short, explanations, strict=True):
        _check_tokens(e, text, pair)
        ref = reference.values(text, pair, max_evals=200)
        values = np.array(e.values).reshape(len(e.tokens), len(e.labels))
        assert values.shape == ref.values[0].shape
        worst = max(worst, float(np.abs(values - ref.values[0]).max()))
        np.testing.assert_allclose(e.base_values, ref.base_values[0], atol=1e-5)
        assert e.additivity_error < 1e-6
    assert worst < 1e-5


@pytest.mark.parametrize("explainer", [pb.EXPLAINER_KIND_LIME, pb.EXPLAINER_KIND_INTEGRATED_GRADIENTS])
def test_lime_and_integrated_gradients_explain_both_texts(stub: pb_grpc.ExplainerStub, explainer: int) -> None:
    text, pair = "is it raining in Paris today?", "no, the sun is shining"
    reply = stub.Explain(
        pb.ExplainRequest(
            model="pairs",
            texts=[text],
            pairs=[pair],
            explainer=explainer,
            lime=pb.LimeOptions(num_samples=300),
            integrated_gradients=pb.IntegratedGradientsOptions(n_steps=64),
        )
    )
    (e,) = reply.explanations
    _check_tokens(e, text, pair) if explainer != pb.EXPLAINER_KIND_LIME else None
    words = {(t.segment, (text if t.segment == 0 else pair)[t.start : t.end]) for t in e.tokens if not t.special}
    assert (0, "Paris") in words and (1, "shining") in words
    assert all("SEP" not in w for _, w in words)
    values = np.array(e.values)
    assert np.abs(values).max() > 0
    if explainer == pb.EXPLAINER_KIND_INTEGRATED_GRADIENTS:
        assert abs(e.convergence_delta[0]) < 0.05 * max(abs(e.output_values[0] - e.base_values[0]), 1e-3) + 1e-3
    else:
        assert any(t.segment == 1 for t in e.tokens)


def test_attention_rollout_reads_both_texts(stub: pb_grpc.ExplainerStub, pair_dir: Path) -> None:
    # The rollout at [CLS] of the pair's one forward pass (its segments given), against an
    # independent numpy rollout of transformers' own attention weights on the pair encoding.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    text, pair = "is it raining in Paris today?", "no, the sun is shining"
    reply = stub.Explain(
        pb.ExplainRequest(model="pairs", texts=[text], pairs=[pair], explainer=pb.EXPLAINER_KIND_ATTENTION)
    )
    (e,) = reply.explanations
    tok = AutoTokenizer.from_pretrained(pair_dir)
    model = AutoModelForSequenceClassification.from_pretrained(pair_dir, attn_implementation="eager").eval()
    enc = tok(text, pair, return_tensors="pt")
    assert enc["token_type_ids"].max() == 1  # the pair's segments matter to this model
    with torch.no_grad():
        attn = np.stack([a[0].numpy() for a in model(**enc, output_attentions=True).attentions]).astype(np.float64)
    n = attn.shape[-1]
    rollout = np.eye(n)
    for layer in attn:
        mixed = layer.mean(axis=0) + np.eye(n)
        rollout = (mixed / mixed.sum(axis=1, keepdims=True)) @ rollout
    assert len(e.tokens) == n and e.attention_position == 0
    np.testing.assert_allclose(np.array(e.values).reshape(n, -1)[:, 0], rollout[0], rtol=1e-5, atol=1e-7)
    _check_tokens(e, text, pair)
    assert {t.segment for t in e.tokens if not t.special} == {0, 1}


def test_the_cache_keys_on_the_pair_text(stub: pb_grpc.ExplainerStub) -> None:
    request = pb.ExplainRequest(model="pairs", texts=["same first text"], pairs=["one pair"])
    first = stub.Explain(request).explanations[0]
    again = stub.Explain(request).explanations[0]
    other = stub.Explain(pb.ExplainRequest(model="pairs", texts=["same first text"], pairs=["another pair"]))
    assert not first.cached and again.cached
    assert not other.explanations[0].cached


def test_progressive_explains_pairs(stub: pb_grpc.ExplainerStub) -> None:
    text, pair = "who wrote this?", "the cat wrote it"
    messages = list(stub.ExplainProgressive(pb.ExplainProgressiveRequest(model="pairs", text=text, pair=pair)))
    final = messages[-1]
    assert final.final
    _check_tokens(final.explanation, text, pair)
    explained = stub.Explain(pb.ExplainRequest(model="pairs", texts=[text], pairs=[pair])).explanations[0]
    np.testing.assert_allclose(final.explanation.values, explained.values, atol=1e-6)  # batching noise


# ---- the client ------------------------------------------------------------------------------


def test_client_predict_and_explain_take_pairs(server: ServerThread, plain: tuple[Any, Any]) -> None:
    import whybert

    firsts, seconds = [a for a, _ in PAIRS[:5]], [b for _, b in PAIRS[:5]]
    with whybert.Client(server.target) as client:
        kinds = {m.name: m.kind for m in client.list_models()}
        predictions = client.predict(firsts, model="pairs", pairs=seconds)
        explanations = client.explain(firsts, model="pairs", pairs=seconds, max_evals=100)
        streamed = dict(client.explain_stream(firsts[:2], model="pairs", pairs=seconds[:2], max_evals=100))
        progress = list(client.explain_progressive(firsts[0], model="pairs", pair=seconds[0], max_evals=100))
        with pytest.raises(whybert.WhybertError) as caught:
            client.predict(["one text"], model="tiny", pairs=["a pair"])
    assert kinds["pairs"] == "text-pair"
    assert "pairs" in str(caught.value)
    got = np.array([[p.scores[label] for label in p.scores] for p in predictions])
    np.testing.assert_allclose(got, _probabilities(plain, firsts, seconds), atol=1e-5)
    for e, pair in zip(explanations, seconds, strict=True):
        assert e.pair == pair and set(e.segments) == {0, 1}
        for i, (start, end) in enumerate(e.offsets):
            if not e.special[i]:  # each token's characters, from its own text
                assert e.tokens[i].strip().lower().startswith(e.source(i)[start:end].lower())
        assert e.to_shap().values.shape == e.values.shape
    assert streamed[1].pair == seconds[1] and streamed[1].segments == explanations[1].segments
    assert progress[-1].final and progress[-1].explanation.pair == seconds[0]
    np.testing.assert_allclose(progress[-1].explanation.values, explanations[0].values, atol=1e-6)


async def test_async_client_predicts_pairs(server: ServerThread, plain: tuple[Any, Any]) -> None:
    import whybert

    async with whybert.AsyncClient(server.target) as client:
        predictions = await client.predict(["is it true?"], model="pairs", pairs=["it is"])
        (e,) = await client.explain(["is it true?"], model="pairs", pairs=["it is"], explainer="lime", num_samples=64)
    expected = _probabilities(plain, ["is it true?"], ["it is"])[0]
    np.testing.assert_allclose(list(predictions[0].scores.values()), expected, atol=1e-5)
    assert e.pair == "it is" and {e.source(i)[a:b] for i, (a, b) in enumerate(e.offsets)} >= {"true", "is"}


def test_rendering_shows_both_texts_apart(server: ServerThread) -> None:
    import whybert
    from whybert import render

    with whybert.Client(server.target) as client:
        (e,) = client.explain(["where is Paris?"], model="pairs", pairs=["Paris is in France"], max_evals=60)
    plain_text = render.terminal(e, colour=False)
    before, _, after = plain_text.partition("‖ pair:")
    assert "paris" in before.lower() and "france" in after.lower() and "france" not in before.lower()
    page = render.html([e])
    assert page.count('class="wb-pair-sep"') == 1 and "France</span>" in page and "where" in page


def test_cli_pair_flag(server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from whybert import cli

    target = ["--target", server.target]
    code = cli.main(["predict", "is it raining?", "--pair", "no", "--model", "pairs", "--json", *target])
    out, _ = capsys.readouterr()
    assert code == 0 and json.loads(out)[0]["pair"] == "no"
    code = cli.main(
        ["explain", "is it raining?", "--pair", "no", "--model", "pairs", "--max-evals", "40", "--json", *target]
    )
    out, _ = capsys.readouterr()
    (item,) = json.loads(out)
    assert code == 0 and item["pair"] == "no" and item["segments"][-1] == 1


@pytest.mark.parametrize("explainer", [pb.EXPLAINER_KIND_SHAP_PARTITION, pb.EXPLAINER_KIND_INTEGRATED_GRADIENTS])
def test_offsets_point_into_each_text_when_cut_and_padded(stub: pb_grpc.ExplainerStub, explainer: int) -> None:
    """A pair text with leading white space, and pairs past the model's 64 tokens (cut
    longest_first): every piece's offsets still slice its own text."""
    long_text = " ".join(["wonderful movie"] * 40)  # 80 pieces: past the 64 tokens
    inputs = [("short question?", "   spaced answer here"), (long_text, "a short pair"), ("tiny", long_text)]
    reply = stub.Explain(
        pb.ExplainRequest(
            model="pairs",
            texts=[a for a, _ in inputs],
            pairs=[b for _, b in inputs],
            explainer=explainer,
            shap=pb.ShapOptions(max_evals=60),
            integrated_gradients=pb.IntegratedGradientsOptions(n_steps=16),
        )
    )
    for (text, pair), e in zip(inputs, reply.explanations, strict=True):
        assert len(e.tokens) <= 64
        for t in e.tokens:
            if t.special:
                continue
            own = text if t.segment == 0 else pair
            piece = own[t.start : t.end]
            assert piece and t.text.lower().startswith(piece.lower()), (t, piece)
        assert [t.segment for t in e.tokens].count(1) >= 2
    assert not reply.explanations[0].truncated
    assert reply.explanations[1].truncated and reply.explanations[1].explained_pair_chars == len("a short pair")
    assert reply.explanations[1].explained_chars < len(long_text)
    assert reply.explanations[2].truncated and reply.explanations[2].explained_chars == len("tiny")


def test_faithfulness_on_pairs(stub: pb_grpc.ExplainerStub) -> None:
    request = pb.ExplainRequest(
        model="pairs", texts=["is the cat here?"], pairs=["the cat sat on a mat"], faithfulness=True
    )
    (e,) = stub.Explain(request).explanations
    assert e.HasField("faithfulness") and e.pair
    assert np.isfinite([e.faithfulness.comprehensiveness, e.faithfulness.sufficiency]).all()
