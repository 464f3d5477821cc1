"""whybert's Partition engine gives shap's own values, row for row and value for value.

Over 240 generated texts (short, long past the budget and past the model's window,
punctuation runs, emoji, CJK, accents, word pieces, repeated words, special-token
look-alikes, odd white space) crossed with the options. shap is given exactly the outputs
the engine's rows received (keyed by token ids, so a row shap needs that the engine never
evaluated fails the test): values agree to 1e-9. Against shap calling the model itself,
each row evaluated alone on both sides: 1e-6.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import shap
import torch
from shap.maskers._text import partition_tree as shap_partition_tree
from whybert_service.explainers.partition import MaskingSpec, PartitionEngine, explain_text, prepare_text
from whybert_service.explainers.partition.masking import build_rows, edit_rows, mask_string, needs_string
from whybert_service.explainers.partition.tree import partition_tree
from whybert_service.outputs import to_output_space
from whybert_service.types import OutputName

WORDS = ["the", "food", "was", "great", "but", "service", "slow", "and", "or", "not", "very", "good", "bad",
         "movie", "I", "loved", "it", "hated", "staff", "room"]
PIECES = ["unbelievably", "antidisestablishmentarianism", "overpriced", "condescending", "rewritten",
          "playing", "tokenization", "uncharacteristically", "hyperventilating", "misunderstandings"]
PUNCT = ["!!!", "?!", "...", "--", "(", ")", ",", ".", "'s", "n't", "don't", "it's", ";", ":)", "!!!!!!!!"]
EMOJI = ["😀", "🎉😡", "👍🏽", "🍮", "❤️", "🤷‍♀️"]
CJK = ["東京", "素晴らしい", "한국어", "中文字", "ありがとう"]
ACCENTS = ["café", "naïve", "crème brûlée", "Ångström", "über", "façade", "São Paulo", "résumé"]
LOOKALIKES = ["[MASK]", "[SEP]", "[CLS]", "[PAD]", "[UNK]", "[mask]", "[ SEP ]", "[SEP][MASK]", "x[MASK]y"]
OTHER = ["3rd", "2024", "http://x.io/a?b=1", "@user", "#tag", "e-mail", "U.S.A.", "$12.50", "50%"]
SPACES = [" ", " ", " ", "  ", "\t", "\n", "\u00a0", " \n "]
KINDS = ["short", "medium", "long", "punct", "emoji", "cjk", "accents", "pieces", "repeated", "lookalike", "mixed"]


def generate_texts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    pools = {
        "punct": WORDS + PUNCT * 3, "emoji": WORDS + EMOJI * 2, "cjk": WORDS + CJK * 2,
        "accents": WORDS + ACCENTS * 2, "pieces": WORDS + PIECES * 2, "lookalike": WORDS + LOOKALIKES * 2,
        "mixed": WORDS + PIECES + PUNCT + EMOJI + CJK + ACCENTS + LOOKALIKES + OTHER,
    }
    texts = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        if kind == "short":
            words = rng.sample(WORDS + PIECES + PUNCT[:4] + EMOJI[:2], rng.randint(1, 3))
        elif kind == "long":  # past the budget, and often past the tiny model's 128 tokens
            words = [rng.choice(WORDS + PIECES + PUNCT) for _ in range(rng.randint(30, 100))]
        elif kind == "repeated":
            word = rng.choice(WORDS + PIECES)
            words = [word] * rng.randint(3, 12) + rng.sample(WORDS, 3)
        elif kind == "medium":
            words = [rng.choice(WORDS) for _ in range(rng.randint(5, 25))]
        else:
            words = [rng.choice(pools[kind]) for _ in range(rng.randint(4, 30))]
        text = ""
        for w in words:
            text += w + (rng.choice(SPACES) if rng.random() < 0.9 else "")
        if rng.random() < 0.2:
            text = rng.choice(SPACES) + text
        texts.append(text if text.strip() else "ok")
    return texts


TEXTS = generate_texts(240)
OPTIONS = list(
    itertools.product(
        [OutputName.PROBABILITY, OutputName.LOGIT],
        ["predicted", "all", [2, 0], [1]],
        [None, 0, 1],
        [(500, None), (60, None), (3, None), (120, 1), (200, 8), (40, 64), (300, 3)],
    )
)


def options_for(i: int) -> tuple[OutputName, Any, int | None, int, int | None]:
    output, targets, fixed_context, (max_evals, batch_size) = OPTIONS[(i * 37) % len(OPTIONS)]
    return output, targets, fixed_context, max_evals, batch_size


def row_key(ids: Any) -> bytes:
    return np.asarray(ids, dtype=np.int64).tobytes()


class Harness:
    """Runs the engine on a classifier and shap on the same classifier's outputs."""

    def __init__(self, classifier: Any) -> None:
        self.classifier = classifier
        self.tokenizer = classifier.tokenizer
        self.spec = MaskingSpec.for_tokenizer(self.tokenizer)

    def encode(self, strings: Any) -> list[list[int]]:
        return self.classifier.encode(list(strings)).ids

    def forward(self, rows: list[Any], alone: bool = False) -> np.ndarray:
        rows = [list(map(int, r)) for r in rows]
        if alone:
            return np.concatenate([self.classifier.forward([r]) for r in rows])
        return self.classifier.forward(rows)

    def engine(self, text: str, i: int) -> tuple[PartitionEngine, Any]:
        output, targets, fixed_context, max_evals, batch_size = options_for(i)
        prepared = prepare_text(self.tokenizer, self.spec, text, self.classifier.max_length, self.encode)

        def resolve(logits: np.ndarray) -> list[int]:
            if targets == "predicted":
                return [int(np.argmax(logits))]
            return list(range(self.classifier.num_labels)) if targets == "all" else list(targets)

        engine = PartitionEngine(
            prepared, self.spec, self.encode, output=output, targets=resolve,
            max_evals=max_evals, fixed_context=fixed_context, batch_size=batch_size,
        )
        return engine, prepared

    def run(self, text: str, i: int, alone: bool = False) -> tuple[Any, Any, dict[bytes, np.ndarray]]:
        engine, prepared = self.engine(text, i)
        seen: dict[bytes, np.ndarray] = {}

        def logits(rows: list[np.ndarray]) -> np.ndarray:
            out = self.forward(rows, alone)
            for r, o in zip(rows, out, strict=True):
                assert row_key(r) not in seen, "a row was evaluated twice"
                seen[row_key(r)] = o
            return out

        return explain_text(engine, logits), prepared, seen

    def shap(self, text: str, i: int, targets: list[int], model: Callable[[list[str]], np.ndarray]) -> Any:
        output, _, fixed_context, max_evals, batch_size = options_for(i)

        def f(strings: Any) -> np.ndarray:
            logits = model([str(s) for s in np.asarray(strings).reshape(-1)])
            return to_output_space(logits, output)[:, targets]

        np.random.seed(0)  # the engine's tie-breaks are seeded the same way
        explainer = shap.PartitionExplainer(f, shap.maskers.Text(self.tokenizer))
        return explainer([text], max_evals=max_evals, fixed_context=fixed_context,
                         batch_size=batch_size or "auto", silent=True)

    def replay(self, seen: dict[bytes, np.ndarray]) -> Callable[[list[str]], np.ndarray]:
        """shap's model: the outputs the engine's rows received, found by the strings' ids."""
        return lambda strings: np.stack([seen[row_key(ids)] for ids in self.encode(strings)])

    def direct(self) -> Callable[[list[str]], np.ndarray]:
        """shap's model: tokenise each string and run the model on it alone."""
        return lambda strings: self.forward(self.encode(strings), alone=True)


def assert_equal(result: Any, prepared: Any, ref: Any, atol: float) -> None:
    assert list(ref.data[0]) == prepared.segments
    values = np.asarray(ref.values[0]).reshape(result.values.shape)
    np.testing.assert_allclose(result.values, values, rtol=0, atol=atol)
    np.testing.assert_allclose(result.base_values, np.asarray(ref.base_values[0]).reshape(-1), rtol=0, atol=atol)
    additivity = result.base_values + result.values.sum(0) - result.output_values
    assert np.max(np.abs(additivity)) < 1e-9


@pytest.fixture(scope="module")
def tiny(tiny_classifier: Any) -> Harness:
    return Harness(tiny_classifier)


def test_the_corpus_covers_what_it_claims() -> None:
    assert len(TEXTS) >= 200 and len(set(TEXTS)) > 200
    for pool in (PUNCT, EMOJI, CJK, ACCENTS, PIECES, LOOKALIKES):
        assert any(p in t for t in TEXTS for p in pool)


@pytest.mark.parametrize("chunk", range(8))
def test_values_equal_shap_given_the_engines_outputs(tiny: Harness, chunk: int) -> None:
    for i in range(chunk, len(TEXTS), 8):
        text = TEXTS[i]
        result, prepared, seen = tiny.run(text, i)
        ref = tiny.shap(prepared.text, i, result.targets, tiny.replay(seen))
        assert_equal(result, prepared, ref, atol=1e-9)
        _, _, _, max_evals, _ = options_for(i)
        assert result.evals <= max_evals + 1  # shap's own overshoot: a round's last pair
        assert result.rows <= result.evals


def test_values_equal_shap_calling_the_model_itself(tiny: Harness) -> None:
    for i in range(0, len(TEXTS), 24):
        result, prepared, _ = tiny.run(TEXTS[i], i, alone=True)
        ref = tiny.shap(prepared.text, i, result.targets, tiny.direct())
        assert_equal(result, prepared, ref, atol=1e-6)


def test_values_equal_shap_on_the_builtin_model() -> None:
    from whybert_service.models.builtin import load_builtin

    harness = Harness(load_builtin(torch.device("cpu"), torch.float32))
    for i in range(3, len(TEXTS), 30):
        result, prepared, seen = harness.run(TEXTS[i], i)
        assert_equal(result, prepared, harness.shap(prepared.text, i, result.targets, harness.replay(seen)), 1e-9)


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
