"""The generated corpus and the harness that run whybert's Partition engine and shap side
by side, shared by the engine's quick checks (unit/test_partition_engine.py), its sweep
over the corpus (integration/test_partition_engine_shap.py) and the built-in model's
(system/test_partition_engine_builtin.py)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

import numpy as np
from _references import PlainModel, ShapReference
from whybert_service.explainers.partition import MaskingSpec, PartitionEngine, explain_text, prepare_text
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


Options = tuple[OutputName, Any, int | None, int, int | None]  # output, targets, fixed_context, max_evals, batch


def options_for(i: int) -> Options:
    output, targets, fixed_context, (max_evals, batch_size) = OPTIONS[(i * 37) % len(OPTIONS)]
    return output, targets, fixed_context, max_evals, batch_size


def row_key(ids: Any) -> bytes:
    return np.asarray(ids, dtype=np.int64).tobytes()


class Harness:
    """Runs the engine on a classifier and shap (the shared `ShapReference`) on the same
    classifier's outputs."""

    def __init__(self, classifier: Any) -> None:
        self.classifier = classifier
        self.tokenizer = classifier.tokenizer
        self.spec = MaskingSpec.for_tokenizer(self.tokenizer)
        self.reference = ShapReference(PlainModel.from_classifier(classifier))

    def encode(self, strings: Any) -> list[list[int]]:
        return self.classifier.encode(list(strings)).ids

    def forward(self, rows: list[Any], alone: bool = False) -> np.ndarray:
        rows = [list(map(int, r)) for r in rows]
        if alone:
            return np.concatenate([self.classifier.forward([r]) for r in rows])
        return self.classifier.forward(rows)

    def engine(self, text: str, i: int, options: Options | None = None) -> tuple[PartitionEngine, Any]:
        output, targets, fixed_context, max_evals, batch_size = options or options_for(i)
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

    def run(
        self, text: str, i: int, alone: bool = False, options: Options | None = None
    ) -> tuple[Any, Any, dict[bytes, np.ndarray]]:
        engine, prepared = self.engine(text, i, options)
        seen: dict[bytes, np.ndarray] = {}

        def logits(rows: list[np.ndarray]) -> np.ndarray:
            out = self.forward(rows, alone)
            for r, o in zip(rows, out, strict=True):
                assert row_key(r) not in seen, "a row was evaluated twice"
                seen[row_key(r)] = o
            return out

        return explain_text(engine, logits), prepared, seen

    def shap(
        self, text: str, i: int, targets: list[int], model: Callable[[list[str]], np.ndarray],
        options: Options | None = None,
    ) -> Any:
        output, _, fixed_context, max_evals, batch_size = options or options_for(i)
        # seed 0: the engine's tie-breaks are seeded the same way
        return self.reference.explain(
            text, targets, output, logits=model, seed=0,
            max_evals=max_evals, fixed_context=fixed_context, batch_size=batch_size or "auto",
        )

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
