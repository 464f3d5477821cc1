"""A loaded token classifier (named entities): one label per token, BIO/IOB2 tags.

It shares the sequence classifier's tokenisation, truncation and padding, and adds what a
token model needs: the logits of every position (`launch_tokens`, for Predict rows, which
the worker batches across callers like any rows) and the logits of one chosen position
per row (`launch(rows, positions)`, for the rows of an explanation, which all read the
explained entity's first piece). Both run only on the model's worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .classifier import Classifier, Launched, read_window


@dataclass(frozen=True)
class TokenWindow:
    """The prefix of a text the model reads, with its pieces' ids, offsets and specials."""

    text: str
    truncated: bool
    ids: list[int]
    offsets: list[tuple[int, int]]
    special: list[bool]


def entity_type(label: str) -> tuple[str, str]:
    """(B or I, type) of a tag, as transformers' pipeline reads it: a tag without a B-/I-
    prefix (O included) counts as a continuation of its own type."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


class TokenClassifier(Classifier):
    """One token-classification model on one device; `labels` are its tags (O, B-PER, ...)."""

    kind = "token"

    @property
    def entity_types(self) -> list[str]:
        """The entity types the tags name, in tag order (O excluded)."""
        types = [entity_type(label)[1] for label in self.labels if label != "O"]
        return list(dict.fromkeys(types))

    def type_columns(self, kind: str) -> list[int]:
        """The tag columns whose probabilities make up p(type): B-X and I-X (and a bare X)."""
        return [i for i, label in enumerate(self.labels) if label != "O" and entity_type(label)[1] == kind]

    def window(self, text: str) -> TokenWindow:
        """The text as the model reads it (cut where the last piece that fits ends)."""
        prefix, truncated, enc = read_window(
            self.tokenizer, text, self.max_length, self._suffix, return_special_tokens_mask=True
        )
        offsets = [(0, 0) if o is None else (int(o[0]), int(o[1])) for o in enc["offset_mapping"]]
        return TokenWindow(
            text=prefix,
            truncated=truncated,
            ids=[int(i) for i in enc["input_ids"]],
            offsets=offsets,
            special=[bool(s) for s in enc["special_tokens_mask"]],
        )

    @torch.inference_mode()
    def launch(self, rows: Sequence[Sequence[int]], positions: Sequence[int | None] | None = None) -> Launched:
        """Start the forward pass of `rows`; `collect` gives, per row, the logits at its
        position (None or no positions: the first, [CLS]), rows × labels."""
        if positions is not None and any(
            p is not None and not 0 <= p < len(r) for p, r in zip(positions, rows, strict=True)
        ):
            raise ValueError("a token position lies outside its row")  # packed, it would read another row's
        where = torch.tensor([p or 0 for p in positions] if positions is not None else [0] * len(rows))
        packed = self.packed(rows)
        if packed is not None:  # every token's logits in the packed order: each row's at its start + position
            packer, layout = packed
            at = torch.from_numpy(layout.starts) + where
            return self.to_host(packer.logits(layout)[at.to(self.device)].float())
        logits = self.padded_logits(rows)
        return self.to_host(logits[torch.arange(len(rows), device=logits.device), where.to(logits.device)].float())

    @torch.inference_mode()
    def launch_tokens(self, rows: Sequence[Sequence[int]]) -> Launched:
        """Start the forward pass of `rows` for the logits of every position (a Predict):
        `collect` gives rows × longest × labels, float32; row i's are its first len(i)."""
        packed = self.packed(rows)
        if packed is not None:
            packer, layout = packed
            return self.to_host(layout.padded(packer.logits(layout).float()))
        return self.to_host(self.padded_logits(rows).float())

    def token_logits(self, rows: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """The logits of every position of each row (its length × labels, float32)."""
        logits = self.collect(self.launch_tokens(rows))
        return [logits[i, : len(r)] for i, r in enumerate(rows)]


def is_subword_tokenizer(tokenizer: Any) -> bool:
    """Whether the fast tokenizer marks continuing pieces (WordPiece's `##`): then a piece
    is a continuation when its token is longer than its characters, as the pipeline reads
    it; otherwise the pipeline's fallback (no space before the piece) applies."""
    backend = getattr(tokenizer, "_tokenizer", None)
    return bool(backend is not None and getattr(backend.model, "continuing_subword_prefix", None))
