"""Sequence classification of text pairs (NLI, cross-encoders, question-answer relevance).

Inside the service a pair travels as one string, `text + sep_token + pair` (`joined`): the
string shap's recipe for pairs hands to `shap.maskers.Text(tokenizer)`, whose masker keeps
a segment that is exactly the separator token (the explainers get it with the pair's
leading white space dropped: `pairs.window`). So every path that works on strings (the
cache key, the explainers' memo, LIME's perturbations, the Partition engine's masked
strings) works on pairs unchanged. `PairClassifier.encode` splits each string at its first
separator and encodes the two parts as the tokenizer's pair, cut as transformers'
`truncation="longest_first"` cuts; `launch` adds the token_type_ids the tokenizer gives
(everything after the first [SEP] is segment 1).

A model takes pairs when its directory says so (see `is_text_pair`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .classifier import Classifier, Encoded
from .packing import Packed

# Keys of config.json that mark a sentence-transformers CrossEncoder (v4+ writes the first,
# older versions the second), and whybert's own marker for any other pair model.
CROSS_ENCODER_KEYS = ("sentence_transformers", "sbert_ce_default_activation_function")
PAIR_MARKER = "whybert_text_pairs"


def is_text_pair(root: Path) -> bool:
    """Whether a sequence-classification directory classifies text pairs: its config.json
    has `"whybert_text_pairs": true`, or it is a sentence-transformers CrossEncoder."""
    config = json.loads((root / "config.json").read_text())
    if PAIR_MARKER in config:
        return bool(config[PAIR_MARKER])
    return any(key in config for key in CROSS_ENCODER_KEYS)


def longest_first(n_first: int, n_second: int, room: int) -> tuple[int, int]:
    """How many pieces of each text `truncation="longest_first"` keeps in `room` pieces:
    the tokenizers library's rule (the shorter text keeps at most half the room, the first
    on a tie; the longer takes the rest)."""
    if n_first + n_second <= room:
        return n_first, n_second
    if n_first > n_second:
        second = min(n_second, room // 2)
        return room - second, second
    first = min(n_first, room // 2)
    return first, room - first


class PairClassifier(Classifier):
    """A sequence classifier whose inputs are pairs of texts, each given as one `joined`
    string."""

    kind = "pair"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        sep = getattr(self.tokenizer, "sep_token", None)
        sep_id = getattr(self.tokenizer, "sep_token_id", None)
        if sep is None or sep_id is None:
            raise ValueError(f"model {self.name!r}: a pair model's tokenizer needs a separator token")
        self.sep_token: str = str(sep)
        self.sep_id = int(sep_id)
        config: Any = getattr(self.model, "config", None)
        # Only models with a segment embedding of two or more rows read token_type_ids.
        self.uses_token_types = int(getattr(config, "type_vocab_size", 0) or 0) >= 2
        self._specials = self.tokenizer.num_special_tokens_to_add(pair=True)

    def join(self, text: str, pair: str) -> str:
        """The one string a pair travels as: lossless (the request's pair text is the part
        after the first separator), so that offsets into it can be given back."""
        return text + self.sep_token + pair

    def split(self, joined: str) -> tuple[str, str]:
        """The two texts of a joined string (at its first separator)."""
        first, found, second = joined.partition(self.sep_token)
        return (first, second) if found else (joined, "")

    def encode(self, texts: Sequence[str]) -> Encoded:
        """The pair encoding of each joined string, cut longest_first on the id lists (the
        shared tokenizer's settings are never changed)."""
        firsts, seconds = zip(*(self.split(t) for t in texts), strict=True) if texts else ((), ())
        enc = self.tokenizer(list(firsts), list(seconds), add_special_tokens=True)
        ids: list[list[int]] = []
        truncated: list[bool] = []
        room = self.max_length - self._specials
        for i, row in enumerate(enc["input_ids"]):
            if len(row) <= self.max_length:
                ids.append(list(row))
                truncated.append(False)
                continue
            seq = enc.sequence_ids(i)
            n1, n2 = sum(1 for s in seq if s == 0), sum(1 for s in seq if s == 1)
            keep1, keep2 = longest_first(n1, n2, room)
            seen = [0, 0]
            out = []
            for tok, s in zip(row, seq, strict=True):
                if s is None:
                    out.append(tok)
                    continue
                seen[s] += 1
                if seen[s] <= (keep1 if s == 0 else keep2):
                    out.append(tok)
            ids.append(out)
            truncated.append(True)
        return Encoded(ids=ids, truncated=truncated)

    def token_types(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Segment ids of padded rows: 1 after each row's first separator, as the tokenizer
        gives them (padding reads 0 or 1 alike: it is masked out)."""
        is_sep = (input_ids == self.sep_id).long()
        return ((torch.cumsum(is_sep, dim=1) - is_sep) > 0).long()

    def extra_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"token_type_ids": self.token_types(input_ids)} if self.uses_token_types else {}

    def packed_token_types(self, layout: Packed) -> np.ndarray | None:
        return layout.segments(self.sep_id) if self.uses_token_types else None


def pair_window(classifier: PairClassifier, text: str, pair: str) -> tuple[str, str, bool]:
    """The prefixes of both texts that the model reads after longest_first truncation, and
    whether anything was cut: each text is cut where its last kept piece ends."""
    tok = classifier.tokenizer
    truncated = False
    for _ in range(8):  # re-tokenising a cut text rarely changes its pieces; bounded anyway
        enc = tok(text, pair, return_offsets_mapping=True)
        if len(enc["input_ids"]) <= classifier.max_length:
            return text, pair, truncated
        truncated = True
        seq = enc.sequence_ids(0)
        offsets = enc["offset_mapping"]
        n1, n2 = seq.count(0), seq.count(1)
        keep1, keep2 = longest_first(n1, n2, classifier.max_length - (len(seq) - n1 - n2))
        ends = [[int(o[1]) for o, s in zip(offsets, seq, strict=True) if s == k] for k in (0, 1)]
        text = text[: ends[0][keep1 - 1]] if keep1 else ""
        pair = pair[: ends[1][keep2 - 1]] if keep2 else ""
    return text, pair, truncated


def segments_of(ids: Sequence[int], sep_id: int) -> np.ndarray:
    """Each position's segment (0 up to and with the first separator, 1 after it)."""
    arr = np.asarray(ids, dtype=np.int64)
    is_sep = (arr == sep_id).astype(np.int64)
    return ((np.cumsum(is_sep) - is_sep) > 0).astype(np.int64)
