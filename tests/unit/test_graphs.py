"""Batches replayed from graphs (`models/graphs.py`): on a GPU they are captured CUDA graphs;
here the same buckets, static tensors and 4-D mask run uncaptured (`capture=False`), and
must give what the plain padded pass gives, for every head, however the static tensors are
refilled, and turn themselves off when a graph fails or disagrees."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import torch
from _architectures import LABELS, SEQUENCE_HEADS, TOKEN_HEADS, make_model, make_pair_model, random_rows
from torch.utils._python_dispatch import TorchDispatchMode
from whybert_service.models.classifier import Classifier
from whybert_service.models.graphs import GRAPH_MODEL_TYPES, GRAPH_TOKENS, ROW_STEPS, GraphedForward
from whybert_service.models.pair_classifier import PairClassifier
from whybert_service.models.token_classifier import TokenClassifier


def _graphed(cls: type[Classifier], model: torch.nn.Module, tokenizer: Any) -> Any:
    """A classifier whose padded batches go through uncaptured graphs (no packing)."""
    classifier = cls(
        name="graphed", model=model, tokenizer=tokenizer, labels=LABELS, device=torch.device("cpu"),
        weights_sha256="", source="test", max_length=80,
    )  # fmt: skip
    classifier.packer = None
    classifier.model.set_attn_implementation("sdpa")
    assert classifier.use_graphs(capture=False)
    return classifier


def _plain(classifier: Classifier, rows: list[list[int]]) -> np.ndarray:
    with torch.inference_mode():
        out: np.ndarray = classifier.plain_logits(rows).float().numpy()
    return out


@pytest.mark.parametrize("architecture", SEQUENCE_HEADS)
def test_graphed_batches_give_the_plain_passs_logits(tiny_classifier: Classifier, architecture: str) -> None:
    classifier = _graphed(Classifier, make_model(architecture), tiny_classifier.tokenizer)
    graphs = classifier.graphs
    assert graphs is not None
    batches = [random_rows(21, seed=s, pads=True) for s in range(4)]  # 22 rows each: bucket 24 rows
    widths = {max(map(len, b)) for b in batches}
    for k, rows in enumerate(batches):
        got = classifier.forward(rows)
        np.testing.assert_allclose(got, _plain(classifier, rows), rtol=1e-4, atol=1e-5)
        if k == 0:
            assert graphs.captured == 0  # a shape seen once runs eagerly
    assert graphs.enabled and 1 <= graphs.captured <= len(widths)
    outs = [classifier.forward(b) for b in batches]  # every batch again, from the graphs now
    for rows, got in zip(batches, outs, strict=True):
        np.testing.assert_allclose(got, _plain(classifier, rows), rtol=1e-4, atol=1e-5)
    assert np.ptp(np.concatenate(outs), axis=0).max() > 0.1  # different rows, different logits


def test_a_graph_is_refilled_for_every_batch_of_its_bucket(bert: Classifier) -> None:
    classifier, graphs = bert, bert.graphs
    assert graphs is not None
    rng = np.random.default_rng(7)
    batches = [[[0, *map(int, rng.integers(3, 500, 14)), 2] for _ in range(n)] for n in (9, 12, 10, 11, 12)]
    assert {graphs.bucket(len(b), 16) for b in batches} == {(12, 16)}
    for rows in batches:
        np.testing.assert_allclose(classifier.forward(rows), _plain(classifier, rows), rtol=1e-4, atol=1e-5)
    assert graphs.captured == 1
    # Two batches launched before either is collected (the worker's pipeline): each keeps its own.
    first, second = classifier.launch(batches[0]), classifier.launch(batches[1])
    np.testing.assert_allclose(classifier.collect(first), _plain(classifier, batches[0]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(classifier.collect(second), _plain(classifier, batches[1]), rtol=1e-4, atol=1e-5)


def test_an_eager_attention_model_reads_the_additive_mask(tiny_classifier: Classifier) -> None:
    model = make_model("BertForSequenceClassification", attn_implementation="eager")
    classifier = Classifier(
        name="eager", model=model, tokenizer=tiny_classifier.tokenizer, labels=LABELS, device=torch.device("cpu"),
        weights_sha256="", source="test", max_length=80,
    )  # fmt: skip
    assert classifier.packer is None  # packing needs SDPA
    assert classifier.use_graphs(capture=False)
    rows = random_rows(15, seed=5)
    for _ in range(3):
        np.testing.assert_allclose(classifier.forward(rows), _plain(classifier, rows), rtol=1e-4, atol=1e-5)
    assert classifier.graphs is not None and classifier.graphs.captured == 1


@pytest.mark.parametrize("architecture", TOKEN_HEADS)
def test_a_token_model_reads_positions_and_every_token_from_graphs(ner: TokenClassifier, architecture: str) -> None:
    classifier = _graphed(TokenClassifier, make_model(architecture), ner.tokenizer)
    rows = random_rows(13, seed=3, pads=True)
    every = _plain(classifier, rows)  # rows × longest × labels
    rng = np.random.default_rng(4)
    positions = [int(rng.integers(0, len(r))) for r in rows]
    for _ in range(2):  # eager, then from the graph
        at = classifier.forward(rows, positions)
        np.testing.assert_allclose(at, every[np.arange(len(rows)), positions], rtol=1e-4, atol=1e-5)
        for got, want, row in zip(classifier.token_logits(rows), every, rows, strict=True):
            np.testing.assert_allclose(got, want[: len(row)], rtol=1e-4, atol=1e-5)
    assert classifier.graphs is not None and classifier.graphs.captured == 1


def test_a_pair_model_reads_its_segments_from_graphs(tiny_classifier: Classifier) -> None:
    tokenizer = tiny_classifier.tokenizer
    model = make_pair_model()
    pair = _graphed(PairClassifier, model, tokenizer)
    assert pair.uses_token_types
    texts = ["the food", "a long first text about the food and the service", "ok", "fine then"]
    seconds = ["was good", "was slow", "a second text that is longer than the first one", "no"]
    rows = pair.encode([pair.join(a, b) for a, b in zip(texts, seconds, strict=True)]).ids
    swapped = pair.encode([pair.join(b, a) for a, b in zip(texts, seconds, strict=True)]).ids
    for _ in range(2):
        np.testing.assert_allclose(pair.forward(rows), _plain(pair, rows), rtol=1e-4, atol=1e-5)
    assert pair.graphs is not None and pair.graphs.captured == 1
    alone = [pair.forward([r])[0] for r in rows]  # one row: no padding at all
    np.testing.assert_allclose(pair.forward(rows), np.stack(alone), rtol=1e-4, atol=1e-5)
    assert np.abs(pair.forward(rows) - _plain(pair, swapped)).max() > 0.1  # order of the texts matters


def test_buckets() -> None:
    graphs = GraphedForward(
        lambda ids, mask: ids, lambda rows: torch.zeros(1), device=torch.device("cpu"), dtype=torch.float32,
        pad_id=0, max_width=100, capture=False,
    )  # fmt: skip
    assert graphs.bucket(1, 1) == (1, 8)
    assert graphs.bucket(3, 17) == (4, 24)
    assert graphs.bucket(13, 24) == (16, 24)
    assert graphs.bucket(200, 21) == (256, 24)
    assert graphs.bucket(20, 99) == (24, 100)  # never wider than the model reads
    assert graphs.bucket(20, 101) is None
    assert graphs.bucket(ROW_STEPS[-1] + 1, 8) is None
    assert graphs.bucket(300, 32) is None  # 384 × 32 > GRAPH_TOKENS: the device bounds it, eager
    assert all(rows * 8 <= GRAPH_TOKENS for rows in ROW_STEPS if graphs.bucket(rows, 8) is not None)
    for n in range(1, 300):  # never more than about a third of a bucket's rows padding
        bucket = graphs.bucket(n, 16)
        assert bucket is not None and n <= bucket[0] <= max(2, int(n * 1.5) + 1)


@pytest.fixture
def bert(tiny_classifier: Classifier) -> Classifier:
    """A tiny BERT sequence classifier whose padded batches go through uncaptured graphs."""
    model = make_model("BertForSequenceClassification")
    classifier: Classifier = _graphed(Classifier, model, tiny_classifier.tokenizer)
    return classifier


def test_a_graph_that_disagrees_turns_graphs_off(bert: Classifier, caplog: pytest.LogCaptureFixture) -> None:
    classifier, graphs = bert, bert.graphs
    assert graphs is not None
    right = classifier.logits_of
    graphs._forward = lambda ids, mask: right(ids, mask) + 1.0  # a graph that answers wrong
    plain_passes: list[int] = []
    plain = classifier.plain_logits
    graphs._plain = lambda rows: plain_passes.append(len(rows)) or plain(rows)  # type: ignore[func-returns-value]
    rows = random_rows(6, seed=8)
    with caplog.at_level(logging.WARNING, logger="whybert_service.models.graphs"):
        for _ in range(3):
            np.testing.assert_allclose(classifier.forward(rows), _plain(classifier, rows), rtol=1e-4, atol=1e-5)
    assert not graphs.enabled and graphs.captured == 0
    assert plain_passes == [len(rows)]  # the check's plain pass is the answer: not run twice
    assert "CUDA graphs off" in caplog.text and "differs from the plain pass" in caplog.text


def test_a_graph_that_cannot_be_built_turns_graphs_off(bert: Classifier, caplog: pytest.LogCaptureFixture) -> None:
    classifier, graphs = bert, bert.graphs
    assert graphs is not None

    def broken(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("operation not permitted when stream is capturing")

    graphs._forward = broken
    rows = random_rows(6, seed=9)
    with caplog.at_level(logging.WARNING, logger="whybert_service.models.graphs"):
        for _ in range(3):
            np.testing.assert_allclose(classifier.forward(rows), _plain(classifier, rows), rtol=1e-4, atol=1e-5)
    assert not graphs.enabled and "capturing a graph" in caplog.text


def test_graphs_stop_at_their_limit(bert: Classifier) -> None:
    classifier, graphs = bert, bert.graphs
    assert graphs is not None
    graphs.max_graphs = 2
    shapes = [(n, width) for n in (3, 7, 20) for width in (10, 30)]
    for _ in range(2):
        for n, width in shapes:
            rows = [r[:width] for r in random_rows(n, seed=n + width, low=width, high=width + 1)]
            np.testing.assert_allclose(classifier.forward(rows), _plain(classifier, rows), rtol=1e-4, atol=1e-5)
    assert graphs.captured == 2 and graphs.enabled


# Operators that make the host wait for the device (a value read back, a data-dependent size):
# inside a capture they break it, or bake one batch's answer into the graph.
HOST_SYNCS = {
    "_local_scalar_dense", "is_nonzero", "nonzero", "masked_select", "unique", "_unique", "_unique2",
    "unique_consecutive", "equal", "repeat_interleave", "item",
}  # fmt: skip


class _HostSyncs(TorchDispatchMode):
    """Records every operator of a pass that would make the host wait for the device."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.overloadpacket.__name__ in HOST_SYNCS:
            self.seen.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("architecture", SEQUENCE_HEADS + TOKEN_HEADS + ["pair"])
def test_the_captured_pass_never_waits_on_the_device(
    tiny_classifier: Classifier, architecture: str, attention: str
) -> None:
    # What a CUDA graph captures must not ask the host anything: checked operator by
    # operator on the CPU for every architecture graphs are allowed for.
    if architecture == "pair":
        model = make_pair_model()
        cls: type[Classifier] = PairClassifier
    else:
        model = make_model(architecture)
        cls = TokenClassifier if architecture in TOKEN_HEADS else Classifier
    assert model.config.model_type in GRAPH_MODEL_TYPES
    classifier = _graphed(cls, model, tiny_classifier.tokenizer)
    classifier.model.set_attn_implementation(attention)
    assert classifier.graphs is not None
    rows = random_rows(5, seed=12)
    key = classifier.graphs.bucket(len(rows), max(map(len, rows)))
    assert key is not None
    ids, keep = classifier.graphs._inputs(rows, key)
    with torch.inference_mode():
        with _HostSyncs() as graphed:
            classifier.graphs._run(ids, keep)
        with _HostSyncs() as plain:
            classifier.plain_logits(rows)
    assert graphed.seen == []
    if attention == "sdpa":
        assert plain.seen  # the 2-D mask's check for padding does wait: the spy sees waits


def test_graphs_need_a_gpu_a_known_architecture_and_sdpa_or_eager(tiny_classifier: Classifier) -> None:
    cpu = Classifier(
        name="cpu", model=make_model("BertForSequenceClassification"), tokenizer=tiny_classifier.tokenizer,
        labels=LABELS, device=torch.device("cpu"), weights_sha256="", source="test", max_length=80,
    )  # fmt: skip
    assert not cpu.use_graphs() and cpu.graphs is None  # capturing needs CUDA
    cpu.model.config._attn_implementation = "flash_attention_2"  # takes no 4-D mask
    assert not cpu.use_graphs(capture=False) and cpu.graphs is None
    cpu.model.config._attn_implementation = "sdpa"
    cpu.model.config.model_type = "deberta-v2"  # an architecture not held to capture's rules
    assert not cpu.use_graphs(capture=False) and cpu.graphs is None
    cpu.model.config.model_type = "bert"
    assert cpu.use_graphs(capture=False) and cpu.graphs is not None
