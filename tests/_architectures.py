"""Tiny random-weight models of every architecture whybert runs packed or from graphs, and
rows of random lengths to feed them (no download)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from conftest import scale_up

LABELS = ["a", "b", "c"]


def config_of(kind: str, **extra: Any) -> Any:
    import transformers

    shape = {
        "vocab_size": 500, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 80, "num_labels": len(LABELS),
        "attn_implementation": "sdpa", **extra,
    }  # fmt: skip
    if kind == "bert":
        return transformers.BertConfig(**shape)
    if kind == "electra":
        return transformers.ElectraConfig(embedding_size=16, **shape)
    if kind == "distilbert":
        return transformers.DistilBertConfig(
            vocab_size=500, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=80,
            num_labels=len(LABELS), attn_implementation="sdpa", **extra,
        )  # fmt: skip
    if kind == "roberta":
        return transformers.RobertaConfig(pad_token_id=1, bos_token_id=0, eos_token_id=2, **shape)
    return transformers.XLMRobertaConfig(pad_token_id=1, bos_token_id=0, eos_token_id=2, **shape)


def make_model(architecture: str, **extra: Any) -> torch.nn.Module:
    import transformers

    prefixes = {"XLM": "xlm", "Roberta": "roberta", "DistilBert": "distilbert", "Electra": "electra"}
    kind = next((k for prefix, k in prefixes.items() if architecture.startswith(prefix)), "bert")
    torch.manual_seed(0)
    model: torch.nn.Module = getattr(transformers, architecture)(config_of(kind, **extra)).eval()
    with torch.no_grad():  # random BERT weights barely depend on the text: make them
        scale_up(model, "encoder", "transformer", "pooler", "classifier", factor=6.0)
    return model


def random_rows(n: int, seed: int, low: int = 3, high: int = 40, pads: bool = False) -> list[list[int]]:
    """Rows of random lengths: a start id, random ids, an end id; with `pads`, every third
    row starts with a run of padding ids (1 for RoBERTa) and one row is nothing else, as
    integrated gradients' baseline rows are."""
    rng = np.random.default_rng(seed)
    rows = [[0, *map(int, rng.integers(3, 500, int(length) - 2)), 2] for length in rng.integers(low, high, n)]
    if not pads:
        return rows
    for row in rows[::3]:
        cut = int(rng.integers(2, len(row)))
        row[1:cut] = [1] * (cut - 1)
    return [*rows, [0, 1, 1, 1, 1, 2]]


SEQUENCE_HEADS = [
    "BertForSequenceClassification", "DistilBertForSequenceClassification", "ElectraForSequenceClassification",
    "RobertaForSequenceClassification", "XLMRobertaForSequenceClassification",
]  # fmt: skip
TOKEN_HEADS = [
    "BertForTokenClassification", "DistilBertForTokenClassification", "ElectraForTokenClassification",
    "RobertaForTokenClassification",
]  # fmt: skip


def make_pair_model() -> torch.nn.Module:
    """A BERT pair classifier (two segments, the MiniLM vocabulary) whose segment embedding
    is scaled up, so that which text a token belongs to changes the logits."""
    model = make_model("BertForSequenceClassification", type_vocab_size=2, vocab_size=30522)
    with torch.no_grad():
        model.bert.embeddings.token_type_embeddings.weight.mul_(20.0)
    return model
