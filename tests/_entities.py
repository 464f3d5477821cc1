"""A tiny random token-classification BERT (BIO tags) and generated texts for entity tests.

Random weights give every piece nearly the same tag distribution; the head is sharpened
(scaled up) so that the most probable tag changes from piece to piece and the texts get
entities of every type, B-/I- mixtures and adjacent entities.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]

_WORDS = [
    "Angela", "Merkel", "visited", "Paris", "and", "Renée", "Zellweger", "met", "Microsoft", "Corporation",
    "in", "São", "Paulo", "on", "Tuesday", "unbelievably", "internationalisation", "Müller", "Straße",
    "the", "United", "Nations", "said", "New", "York", "Times", "reported", "that", "Jean-Luc", "Picard",
    "Dvořák", "naïve", "café", "O'Neill", "McDonald's", "Schwarzenegger", "Reykjavík", "Łódź", "EU", "U.S.",
]
_PUNCT = [",", ".", ";", ":", "!", "?", "(", ")", "-", "'", '"', "...", "&"]


def make_tiny_ner(path: Path, sharpen: float = 60.0) -> Path:
    """Save a random BertForTokenClassification with BIO tags and the MiniLM tokenizer."""
    from conftest import save_tiny, scale_up, tiny_bert_config
    from transformers import BertForTokenClassification

    torch.manual_seed(1)
    model = BertForTokenClassification(tiny_bert_config(TAGS)).eval()
    with torch.no_grad():
        scale_up(model, "encoder")
        model.classifier.weight.mul_(sharpen)
    return save_tiny(model, path, 128)


def generated_texts(count: int, seed: int = 0) -> list[str]:
    """Texts of names, accents, long words split into pieces, punctuation and odd spaces."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        parts: list[str] = []
        for _ in range(rng.randint(1, 14)):
            r = rng.random()
            if r < 0.15:
                parts.append(rng.choice(_PUNCT))
            elif r < 0.2:
                parts.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyzé") for _ in range(rng.randint(9, 18))))
            else:
                parts.append(rng.choice(_WORDS))
        text = ""
        for p in parts:
            text += p if not text or rng.random() < 0.15 else rng.choice([" ", " ", " ", "  "]) + p
        texts.append(text.strip() or "Paris")
    return texts
