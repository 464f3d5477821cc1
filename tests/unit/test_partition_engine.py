"""whybert's Partition engine (explainers/partition/): its rows are shap's masked strings
tokenised, its trees are shap's, long texts are explained on the prefix the model reads,
and it hands out rounds a driver feeds. The same values as shap over the whole generated
corpus: integration/test_partition_engine_shap.py (tens of seconds).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import shap
from _partition import ACCENTS, CJK, EMOJI, LOOKALIKES, PIECES, PUNCT, TEXTS, Harness
from shap.maskers._text import partition_tree as shap_partition_tree
from whybert_service.explainers.partition import prepare_text
from whybert_service.explainers.partition.engine import tie_breaks
from whybert_service.explainers.partition.masking import (
    ContinuedRows,
    build_rows,
    edit_rows,
    mask_string,
    needs_string,
)
from whybert_service.explainers.partition.tree import partition_tree


@pytest.fixture(scope="module")
def tiny(tiny_classifier: Any) -> Harness:
    return Harness(tiny_classifier)


def test_the_corpus_covers_what_it_claims() -> None:
    assert len(TEXTS) >= 200 and len(set(TEXTS)) > 200
    for pool in (PUNCT, EMOJI, CJK, ACCENTS, PIECES, LOOKALIKES):
        assert any(p in t for t in TEXTS for p in pool)


def test_long_texts_are_explained_on_the_prefix_the_model_reads(tiny: Harness) -> None:
    text = " ".join(["unbelievably slow service"] * 60)
    _, prepared = tiny.engine(text, 0)
    assert prepared.truncated and len(prepared.text) < len(text) and text.startswith(prepared.text)
    assert prepared.size <= tiny.classifier.max_length
    assert len(tiny.classifier.encode([prepared.text]).ids[0]) == prepared.size
    # the explained prefix is the model's own reading of the whole text
    assert tiny.classifier.encode([text]).ids[0] == prepared.ids.tolist()


def test_a_texts_rows_equal_its_masked_strings_tokenised(tiny: Harness) -> None:
    """Every row the engine builds is what tokenising shap's masked string gives, and that
    string is shap's masker's own; count how often editing ids alone would be wrong."""
    rng = np.random.default_rng(3)
    differ = total = 0
    for text in TEXTS[::3]:
        prepared = prepare_text(tiny.tokenizer, tiny.spec, text, tiny.classifier.max_length, tiny.encode)
        masker = shap.maskers.Text(tiny.tokenizer)
        masks = rng.random((40, prepared.size)) < rng.random((40, 1))
        rows = build_rows(prepared, tiny.spec, masks, tiny.encode)
        edited = edit_rows(prepared, tiny.spec, masks)
        for mask, row, edit in zip(masks, rows, edited, strict=True):
            string = mask_string(prepared, tiny.spec, mask)
            assert string == str(masker(mask, prepared.text)[0][0])
            if prepared.edit_ids:
                assert row.tolist() == tiny.encode([string])[0]
                differ += row.tolist() != edit.tolist()
                total += 1
        # the rows flagged for strings are the only ones whose edit can be wrong
        if prepared.edit_ids:
            flagged = needs_string(prepared, masks)
            for row, edit, flag in zip(rows, edited, flagged, strict=True):
                assert flag or row.tolist() == edit.tolist()
    assert total > 2000
    assert 0.01 < differ / total < 0.5  # the string path is exercised, and is the exception


def test_rows_whose_kept_pieces_continue_hidden_ones_are_shaps_strings_without_tokenising_them(
    tiny: Harness,
) -> None:
    """The engine builds such rows from its runs' ids (`ContinuedRows`): equal to the
    masked string tokenised, on every text of the corpus with word pieces (accents, CJK,
    emoji among them), and only what it cannot vouch for (rows longer than the model reads,
    runs with a combining mark, a normalizer not known to work character by character) goes
    to the tokenizer; with a normalizer it does not know, runs beyond ASCII decline."""
    rng = np.random.default_rng(5)
    built = declined = 0
    beyond_ascii = 0
    unknown = dataclasses.replace(tiny.spec, charwise=False)
    for i, text in enumerate(TEXTS):
        _, prepared = tiny.engine(text, i)
        if not prepared.edit_ids or not prepared.continues.any():
            continue
        masks = rng.random((30, prepared.size)) < rng.random((30, 1))
        flagged = masks[needs_string(prepared, masks)]
        continued = ContinuedRows(prepared, tiny.spec, tiny.encode)
        for mask in flagged:
            row = continued.row(mask)
            if row is None:
                declined += 1
                continue
            built += 1
            assert row.tolist() == tiny.encode([mask_string(prepared, tiny.spec, mask)])[0], text
            if ContinuedRows(prepared, unknown, tiny.encode).row(mask) is None:
                beyond_ascii += 1
    assert built > 2000 and declined < built / 5
    assert beyond_ascii > 300  # rows with runs beyond ASCII, built only for a known normalizer


def test_a_piece_after_a_masked_piece_of_its_word_is_tokenised_as_shap_does(tiny: Harness) -> None:
    prepared = prepare_text(tiny.tokenizer, tiny.spec, "playing unbelievably", 128, tiny.encode)
    pieces = tiny.tokenizer.convert_ids_to_tokens(prepared.ids.tolist())
    assert pieces[1:3] == ["playing", "un"] or "##" in "".join(pieces)
    first_piece_hidden = np.ones(prepared.size, dtype=bool)
    continuation = next(i for i, p in enumerate(pieces) if p.startswith("##"))
    first_piece_hidden[continuation - 1] = False
    (row,) = build_rows(prepared, tiny.spec, first_piece_hidden[None, :], tiny.encode)
    string = mask_string(prepared, tiny.spec, first_piece_hidden)
    assert row.tolist() == tiny.encode([string])[0]
    assert row.tolist() != edit_rows(prepared, tiny.spec, first_piece_hidden[None, :])[0].tolist()


def _token_sequences() -> Iterator[list[str]]:
    rng = random.Random(1)
    vocab = ["the", "a", "##ing", "##s", "(", ")", ",", ".", "!", "?", "'", "t", "s", "but", "and", "or",
             "[CLS]", "[SEP]", "[MASK]", "good", "x", "##x", "[UNK]"]
    for _ in range(600):
        toks = [rng.choice(vocab) for _ in range(rng.randint(1, 40))]
        yield ["[CLS]", *toks, "[SEP]"] if rng.random() < 0.5 else toks


def test_the_tree_equals_shaps_partition_tree() -> None:
    for tokens in _token_sequences():
        np.testing.assert_array_equal(partition_tree(tokens, ("[SEP]",)), shap_partition_tree(tokens, ["[SEP]"]))


def test_each_texts_tree_equals_the_maskers_clustering(tiny: Harness) -> None:
    for text in TEXTS[::5]:
        prepared = prepare_text(tiny.tokenizer, tiny.spec, text, tiny.classifier.max_length, tiny.encode)
        masker = shap.maskers.Text(tiny.tokenizer)
        np.testing.assert_array_equal(prepared.clustering, masker.clustering(prepared.text))


def test_the_engine_hands_out_rounds_and_can_stop_between_them(tiny: Harness) -> None:
    engine, _ = tiny.engine("the food was great but the service was painfully slow", 0)
    rounds = []
    while not engine.done and len(rounds) < 5:
        rows = engine.rows()
        assert 0 < len(rows) <= 6
        rounds.append(len(rows))
        engine.feed(tiny.forward(rows))
    assert not engine.done  # stopped after five rounds: nothing runs without the driver
    with pytest.raises(ValueError, match="expected logits"):
        engine.feed(np.zeros((len(engine.rows()) + 1, 3), dtype=np.float32))


def test_the_shared_tie_breaks_are_the_draws_shap_takes_one_node_at_a_time() -> None:
    """shap draws one `randn()` per queued node from a seeded generator; the engine shares
    one read-only sequence per seed, longer when an explanation needs more."""
    generator = np.random.RandomState(3)
    one_at_a_time = np.array([generator.randn() for _ in range(9000)])
    short = tie_breaks(3, 10)
    assert not short.flags.writeable
    np.testing.assert_array_equal(short[:10], one_at_a_time[:10])
    long = tie_breaks(3, 9000)
    assert len(long) >= 9000
    np.testing.assert_array_equal(long[:9000], one_at_a_time)
    assert tie_breaks(3, 10) is long  # the longer sequence now serves every explanation
