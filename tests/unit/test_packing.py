"""Packed forward passes (`models/packing.py`): rows of different lengths laid end to end give
each row the logits the model gives it alone, for every architecture whybert packs, and every
other call on the model runs as SDPA does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _architectures import LABELS, SEQUENCE_HEADS, TOKEN_HEADS, make_model, make_pair_model, random_rows
from whybert_service.models.classifier import Classifier
from whybert_service.models.packing import PACKED_ATTENTION, enable_packing, pack
from whybert_service.models.pair_classifier import PairClassifier
from whybert_service.models.token_classifier import TokenClassifier


def _alone(model: torch.nn.Module, row: list[int], **extra: Any) -> np.ndarray:
    with torch.inference_mode():
        out: np.ndarray = model(input_ids=torch.tensor([row]), **extra).logits[0].float().numpy()
    return out


def _classifier(cls: type[Classifier], model: torch.nn.Module, tokenizer: Any) -> Any:
    return cls(
        name="packed", model=model, tokenizer=tokenizer, labels=LABELS, device=torch.device("cpu"),
        weights_sha256="", source="test", max_length=80,
    )  # fmt: skip


@pytest.mark.parametrize("architecture", SEQUENCE_HEADS)
def test_packed_rows_get_the_logits_each_row_gets_alone(tiny_classifier: Classifier, architecture: str) -> None:
    classifier = _classifier(Classifier, make_model(architecture), tiny_classifier.tokenizer)
    assert classifier.packer is not None
    rows = random_rows(37, seed=1, pads=True)
    assert any(1 in r[1:-1] for r in rows)
    assert classifier.packed(rows) is not None  # rows of many lengths: the packed pass runs
    batch = classifier.forward(rows)
    alone = np.stack([_alone(classifier.model, r) for r in rows])
    np.testing.assert_allclose(batch, alone, rtol=1e-4, atol=1e-5)
    assert np.ptp(alone, axis=0).max() > 0.1  # the rows' logits differ: the comparison means something


def test_rows_of_one_length_run_the_plain_pass(tiny_classifier: Classifier) -> None:
    assert tiny_classifier.packer is not None
    rows = [r[:9] for r in random_rows(5, seed=2, low=12)]
    assert tiny_classifier.packed(rows) is None and tiny_classifier.packed(rows[:1]) is None
    np.testing.assert_allclose(
        tiny_classifier.forward(rows), np.stack([_alone(tiny_classifier.model, r) for r in rows]), atol=1e-5
    )


@pytest.mark.parametrize("architecture", TOKEN_HEADS)
def test_a_token_model_reads_each_rows_own_positions_packed(ner: TokenClassifier, architecture: str) -> None:
    classifier = _classifier(TokenClassifier, make_model(architecture), ner.tokenizer)
    assert classifier.packer is not None
    rows = random_rows(23, seed=3, pads=True)
    alone = [_alone(classifier.model, r) for r in rows]  # length × labels each
    rng = np.random.default_rng(4)
    positions = [int(rng.integers(0, len(r))) for r in rows]
    at = classifier.forward(rows, positions)
    np.testing.assert_allclose(at, np.stack([a[p] for a, p in zip(alone, positions, strict=True)]), atol=1e-5)
    first = classifier.forward(rows)  # no positions: each row's first token
    np.testing.assert_allclose(first, np.stack([a[0] for a in alone]), atol=1e-5)
    every = classifier.token_logits(rows)
    for got, want in zip(every, alone, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_pair_model_reads_each_rows_segments_packed(tiny_classifier: Classifier) -> None:
    tokenizer = tiny_classifier.tokenizer
    model = make_pair_model()
    pair = _classifier(PairClassifier, model, tokenizer)
    assert pair.uses_token_types and pair.packer is not None
    firsts = ["the food", "a long first text about the food and the service", "ok", "fine then"]
    seconds = ["was great", "it was slow", "a second text that is longer than the first", "yes"]
    joined = [pair.join(a, b) for a, b in zip(firsts, seconds, strict=True)]
    rows = pair.encode(joined).ids
    assert len({len(r) for r in rows}) > 1
    batch = pair.forward(rows)
    for row, first, second, got in zip(rows, firsts, seconds, batch, strict=True):
        types = tokenizer(first, second)["token_type_ids"]
        assert len(types) == len(row)
        np.testing.assert_allclose(got, _alone(model, row, token_type_ids=torch.tensor([types])), atol=1e-5)
    swapped = _alone(model, rows[0], token_type_ids=torch.zeros(1, len(rows[0]), dtype=torch.long))
    assert np.abs(swapped - batch[0]).max() > 1e-3  # reading every token as segment 0 would show


def test_pack_lays_rows_end_to_end_in_blocks_of_one_length() -> None:
    rows = random_rows(50, seed=5, low=2, high=12)
    packed = pack(rows)
    assert packed.tokens == sum(map(len, rows))
    for row, start in zip(rows, packed.starts, strict=True):
        assert packed.ids[start : start + len(row)].tolist() == row
        assert packed.positions[start : start + len(row)].tolist() == list(range(len(row)))
    covered = 0
    for first, end, length in packed.blocks:
        assert first == covered and (end - first) % length == 0  # contiguous, whole rows
        covered = end
        assert all(len(rows[i]) == length for i in np.flatnonzero((packed.starts >= first) & (packed.starts < end)))
    assert covered == packed.tokens
    assert [length for *_, length in packed.blocks] == sorted({len(r) for r in rows})
    assert pack([[], [5, 6], [7]]).blocks == [(0, 1, 1), (1, 3, 2)]  # nothing to attend in an empty row
    grid = packed.padded(torch.from_numpy(packed.ids))  # laid out padded again: the rows themselves
    for i, row in enumerate(rows):
        assert grid[i, : len(row)].tolist() == row and not grid[i, len(row) :].any()


@pytest.mark.parametrize("fault", ["wrong", "raises"])
def test_a_model_whose_packed_pass_disagrees_stays_padded(monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    # A variant of a known architecture (another head, another position scheme) is caught
    # by the probe at load: the model keeps SDPA and its batches are padded.
    from whybert_service.models import packing

    def last_token(m: Any) -> Any:  # a head that reads the wrong token
        return lambda first: m.classifier(m.dropout(m.bert.pooler(first[:, None] * 0.5)))

    def broken(m: Any) -> Any:
        def head(first: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("a head this packing does not fit")

        return head

    monkeypatch.setitem(
        packing._HEADS, "BertForSequenceClassification", ("bert", False, last_token if fault == "wrong" else broken)
    )
    model = make_model("BertForSequenceClassification")
    assert enable_packing(model) is None and model.config._attn_implementation == "sdpa"


def test_a_model_packs_only_where_its_head_is_known_and_it_runs_sdpa() -> None:
    import transformers

    config = transformers.AlbertConfig(
        vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, attn_implementation="sdpa",
    )  # fmt: skip
    albert = transformers.AlbertForSequenceClassification(config)  # a head this packing does not know
    assert enable_packing(albert) is None and albert.config._attn_implementation == "sdpa"
    eager = make_model("BertForSequenceClassification")
    eager.set_attn_implementation("eager")  # type: ignore[operator]
    assert enable_packing(eager) is None and eager.config._attn_implementation == "eager"


def test_padded_calls_on_a_packing_model_run_as_sdpa() -> None:
    packing, plain = make_model("BertForSequenceClassification"), make_model("BertForSequenceClassification")
    assert enable_packing(packing) is not None
    assert packing.config._attn_implementation == PACKED_ATTENTION and plain.config._attn_implementation == "sdpa"
    rows = random_rows(6, seed=6)
    width = max(map(len, rows))
    ids = torch.tensor([r + [1] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.inference_mode():
        ours = packing(input_ids=ids, attention_mask=mask).logits.numpy()
        np.testing.assert_array_equal(ours, plain(input_ids=ids, attention_mask=mask).logits.numpy())


def test_a_saved_packing_model_loads_anywhere(tmp_path: Path) -> None:
    model = make_model("BertForSequenceClassification")
    assert enable_packing(model) is not None
    model.save_pretrained(tmp_path)  # type: ignore[operator]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert PACKED_ATTENTION not in json.dumps(saved)  # another process has no such attention registered
