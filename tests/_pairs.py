"""A tiny random-weight pair classifier (BERT with two segments, NLI labels) and pair texts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

PAIR_LABELS = ["entailment", "neutral", "contradiction"]
_WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "dogs",
    "barked",
    "loudly",
    "at",
    "strangers",
    "walking",
    "past",
    "unbelievably",
    "wonderful",
    "movie",
    "never",
    "rains",
    "tomorrow",
    "question",
    "answer",
    "is",
    "it",
    "true",
    "playing",
    "swimmingly",
    "happiness",
    "Paris",
    "London",
    "1999",
    "42",
    "don't",
    "isn't",
]
_PUNCT = ["", "", "", ",", ".", "?", "!"]


def make_tiny_pair_bert(path: Path, max_tokens: int = 64) -> Path:
    """A random BertForSequenceClassification (hidden 32, type_vocab_size 2, weights scaled
    up as conftest's tiny model) with the uncased WordPiece tokenizer, marked as a pair
    model in its config.json."""
    from conftest import save_tiny, scale_up, tiny_bert_config
    from transformers import BertForSequenceClassification

    torch.manual_seed(1)
    model = BertForSequenceClassification(tiny_bert_config(PAIR_LABELS, max_tokens, type_vocab_size=2)).eval()
    with torch.no_grad():
        scale_up(model, "encoder", "pooler")
        model.classifier.weight.mul_(4.0)
        model.bert.embeddings.token_type_embeddings.weight.mul_(20.0)  # segments matter
    save_tiny(model, path, max_tokens)
    config_file = path / "config.json"
    data = json.loads(config_file.read_text())
    data["whybert_text_pairs"] = True
    config_file.write_text(json.dumps(data, indent=2))
    return path


def random_text(rng: random.Random, low: int, high: int) -> str:
    """A generated text of `low`..`high` words, with some punctuation and capitals."""
    words = [rng.choice(_WORDS) + rng.choice(_PUNCT) for _ in range(rng.randint(low, high))]
    if rng.random() < 0.5:
        words[0] = words[0].capitalize()
    return " ".join(words)


def random_pairs(n: int, seed: int = 0, low: int = 1, high: int = 12) -> list[tuple[str, str]]:
    """`n` generated (text, pair) inputs of various lengths."""
    rng = random.Random(seed)
    return [(random_text(rng, low, high), random_text(rng, low, high)) for _ in range(n)]
