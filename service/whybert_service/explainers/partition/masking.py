"""How shap's Text masker hides tokens, reproduced as token-id rows for the worker.

shap builds every masked row as a string (a hidden piece becomes ` [MASK]`, white space
collapsed) that the model function tokenises again. For a WordPiece tokenizer with BERT's
pre-tokenizer that string's ids are the original ids with the mask id at the hidden
positions, except where a kept piece continues a word whose previous piece is hidden
(`play` hidden, `##ing` kept: re-tokenised, `ing` is a word of its own). Only those rows
differ; the others are edited in place. In such a row the kept run follows ` [MASK]`
directly, so it is a word of its own: `ContinuedRows` builds the row from the run's ids,
tokenised once per run, and only rows it cannot vouch for are built as shap's strings and
tokenised (`build_rows` tokenises every one of them). Any other
tokenizer, or a text whose unmasked or fully masked string does not give back the
edited ids, is masked as strings throughout: the values are shap's either way.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...models.classifier import read_window
from .tree import text_clustering

Encode = Callable[[Sequence[str]], list[list[int]]]
_SPACES = re.compile(r"[\s]+")
# Slow tokenizer classes whose `▁` shap turns back into spaces (shap/utils/transformers.py).
_SENTENCEPIECE = ("MarianTokenizer", "T5Tokenizer", "XLNetTokenizer", "AlbertTokenizer")


@dataclass(frozen=True)
class MaskingSpec:
    """What shap's `Text(tokenizer)` masker decides once per tokenizer."""

    mask_token: str
    mask_id: int
    collapse: bool
    keep_prefix: int
    keep_suffix: int
    sep_token: str | None
    sentencepiece: bool
    edit_ids: bool  # rows may be built by editing ids (see the module docstring)
    # shap's `Text(tokenizer, output_type="token_ids")`: every row is the ids with the mask
    # id at each hidden piece, so positions never shift (token models explain one position).
    in_place: bool = False
    # The tokenizer normalizes character by character (BERT's normalizer: lower-casing,
    # accents stripped, CJK spaced), so a run of pieces reads the same alone as in its
    # string, whatever its script.
    charwise: bool = False

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> MaskingSpec:
        keep_prefix, keep_suffix = _prefix_suffix(tokenizer)
        mask_token = getattr(tokenizer, "mask_token", None)
        if mask_token is not None:
            mask_id = getattr(tokenizer, "mask_token_id", None)
            collapse = False
        else:
            mask_token, mask_id, collapse = "...", None, True
        if mask_id is None:
            mask_id = tokenizer(mask_token)["input_ids"][keep_prefix]
        backend = getattr(tokenizer, "backend_tokenizer", None)
        wordpiece = (
            backend is not None
            and type(backend.model).__name__ == "WordPiece"
            and type(backend.pre_tokenizer).__name__ == "BertPreTokenizer"
        )
        return cls(
            mask_token=str(mask_token),
            mask_id=int(mask_id),
            collapse=collapse,
            keep_prefix=keep_prefix,
            keep_suffix=keep_suffix,
            sep_token=getattr(tokenizer, "sep_token", None),
            sentencepiece=_is_sentencepiece(tokenizer),
            edit_ids=wordpiece and not collapse,
            charwise=backend is not None and type(backend.normalizer).__name__ in ("BertNormalizer", "NoneType"),
        )


def _prefix_suffix(tokenizer: Any) -> tuple[int, int]:
    """shap's `parse_prefix_suffix_for_tokenizer`: special tokens kept around a text."""
    null = tokenizer("")["input_ids"]
    if len(null) == 1:
        special = getattr(tokenizer, "special_tokens_map", {})
        decoded = tokenizer.decode(null[0])
        if "eos_token" in special and decoded == special["eos_token"]:
            return 0, 1
        if "bos_token" in special and decoded == special["bos_token"]:
            return 1, 0
        raise ValueError("the tokenizer adds one special token that is neither BOS nor EOS")
    if len(null) % 2:
        raise ValueError("the tokenizer adds an odd number of special tokens to an empty text")
    return len(null) // 2, len(null) // 2


def _is_sentencepiece(tokenizer: Any) -> bool:
    import transformers

    classes = [getattr(transformers, name, None) for name in _SENTENCEPIECE]
    return any(isinstance(tokenizer, c) for c in classes if isinstance(c, type))


@dataclass(frozen=True)
class PreparedText:
    """One text as the masker sees it: the prefix the model reads, its pieces and tree."""

    text: str  # the explained text: the prefix of the request's text that the model reads
    truncated: bool  # the request's text went on past `text`
    segments: list[str]  # shap's per-token substrings (a token and the white space after it)
    offsets: list[tuple[int, int]]
    special: list[bool]
    ids: np.ndarray  # int64 token ids, special tokens included
    keep: np.ndarray  # positions never masked: prefix, suffix, a separator's own segment
    continues: np.ndarray  # the piece continues the word of the piece before it
    invariant: np.ndarray  # shap's `Text.invariants`: prefix, suffix and separator-id pieces
    clustering: np.ndarray
    edit_ids: bool  # rows by editing ids (False: every row as shap's string)
    max_tokens: int = 0  # the most tokens the model reads (0: not known)

    @property
    def size(self) -> int:
        return len(self.segments)


def prepare_text(tokenizer: Any, spec: MaskingSpec, text: str, max_tokens: int, encode: Encode) -> PreparedText:
    """Tokenise a text, cut it to the prefix the model reads, and build its hierarchy."""
    text, truncated, enc = read_window(tokenizer, text, max_tokens, spec.keep_suffix, return_special_tokens_mask=True)
    ids = [int(i) for i in enc["input_ids"]]
    offsets = [(0, 0) if o is None else (int(o[0]), int(o[1])) for o in enc["offset_mapping"]]
    segments = [text[offsets[i][0] : max(offsets[i][1], offsets[i + 1][0])] for i in range(len(offsets) - 1)]
    segments.append(text[offsets[-1][0] : offsets[-1][1]])
    m = len(ids)
    keep = np.zeros(m, dtype=bool)
    keep[: spec.keep_prefix] = True
    if spec.keep_suffix:
        keep[m - spec.keep_suffix :] = True
    if spec.sep_token is not None and not spec.in_place:  # the token_ids path keeps no separator
        keep |= np.array([s == spec.sep_token for s in segments], dtype=bool)
    invariant = np.zeros(m, dtype=bool)
    invariant[: spec.keep_prefix] = True
    if spec.keep_suffix:
        invariant[m - spec.keep_suffix :] = True
    sep_id = getattr(tokenizer, "sep_token_id", None)
    if sep_id is not None:
        invariant |= np.asarray(ids) == sep_id
    continues = np.zeros(m, dtype=bool)
    word_ids = _word_ids(enc)
    if word_ids is not None:
        for i in range(1, m):
            continues[i] = word_ids[i] is not None and word_ids[i] == word_ids[i - 1]
    prepared = PreparedText(
        text=text,
        truncated=truncated,
        segments=segments,
        offsets=offsets,
        special=[bool(s) for s in enc["special_tokens_mask"]],
        ids=np.asarray(ids, dtype=np.int64),
        keep=keep,
        continues=continues,
        invariant=invariant,
        clustering=text_clustering(segments, spec.sep_token),
        edit_ids=spec.in_place or (spec.edit_ids and word_ids is not None),
        max_tokens=max_tokens,
    )
    if prepared.edit_ids and not spec.in_place and not _edits_agree(prepared, spec, encode):
        prepared = dataclasses.replace(prepared, edit_ids=False)
    return prepared


def _word_ids(enc: Any) -> list[int | None] | None:
    try:
        return list(enc.word_ids())
    except (AttributeError, ValueError):  # a slow tokenizer: no word ids
        return None


def _edits_agree(p: PreparedText, spec: MaskingSpec, encode: Encode) -> bool:
    """Whether the unmasked and the fully masked strings give back the edited ids (a
    text whose white space or characters the tokenizer treats unlike shap does not)."""
    ones = np.ones((1, p.size), dtype=bool)
    masks = np.concatenate([~ones, ones])
    strings = [mask_string(p, spec, row) for row in masks]
    edited = edit_rows(p, spec, masks)
    return all(list(e) == got for e, got in zip(edited, encode(strings), strict=True))


def mask_string(p: PreparedText, spec: MaskingSpec, mask: np.ndarray) -> str:
    """The string shap's Text masker builds for `mask` (True: the piece is kept)."""
    parts: list[str] = []
    previous_masked = False
    kept = mask | p.keep
    for i, seg in enumerate(p.segments):
        if kept[i]:
            parts.append(seg)
            previous_masked = False
        elif not spec.collapse or not previous_masked:
            parts.append(" " + spec.mask_token)
            previous_masked = True
    out = "".join(parts)
    if spec.sentencepiece:
        out = out.replace("▁", " ")
    return _SPACES.sub(" ", out).strip()


def edit_rows(p: PreparedText, spec: MaskingSpec, masks: np.ndarray) -> np.ndarray:
    """Token-id rows for boolean masks (rows × pieces): hidden pieces become the mask id."""
    return np.where(masks | p.keep, p.ids, spec.mask_id)


def needs_string(p: PreparedText, masks: np.ndarray) -> np.ndarray:
    """Rows whose edited ids may differ from shap's string: a kept piece right after a
    hidden piece of the same word."""
    kept = masks | p.keep
    return np.any(kept[:, 1:] & ~kept[:, :-1] & p.continues[1:], axis=1)


def build_rows(p: PreparedText, spec: MaskingSpec, masks: np.ndarray, encode: Encode) -> list[np.ndarray]:
    """The model's input ids for each mask, equal to tokenising shap's masked strings (or,
    in place, to shap's token_ids rows)."""
    if spec.in_place:
        return list(edit_rows(p, spec, masks))
    if not p.edit_ids:
        return string_rows(p, spec, masks, encode)
    edited = edit_rows(p, spec, masks)
    rows = list(edited)
    if not p.continues.any():
        return rows
    risky = np.flatnonzero(needs_string(p, masks))
    if len(risky):
        for i, ids in zip(risky, string_rows(p, spec, masks[risky], encode), strict=True):
            rows[i] = ids
    return rows


def string_rows(p: PreparedText, spec: MaskingSpec, masks: np.ndarray, encode: Encode) -> list[np.ndarray]:
    """The ids of shap's masked strings for boolean masks (rows × pieces), tokenised."""
    return [np.asarray(r, dtype=np.int64) for r in encode([mask_string(p, spec, m) for m in masks])]


class ContinuedRows:
    """Rows where a kept piece continues a hidden piece's word, built without tokenising
    the whole masked string: each run of kept pieces after a hidden one is a word of its
    own in shap's string (it follows ` [MASK]` directly), so its ids are its characters
    tokenised alone, once per run; the rest of the row is edited."""

    def __init__(self, p: PreparedText, spec: MaskingSpec, encode: Encode) -> None:
        self.p, self.spec, self._encode = p, spec, encode
        self._runs: dict[tuple[int, int], np.ndarray | None] = {}
        self._empty: list[int] | None = None  # what the model's encoding puts around a text

    def row(self, mask: np.ndarray) -> np.ndarray | None:
        """The row of a mask (True: kept); None where the run rule does not hold for
        certain (a run beyond ASCII where the tokenizer's normalizer is not known to work
        character by character, or a row longer than the model reads, which the tokenizer
        would cut): then the masked string must be tokenised."""
        p = self.p
        kept = mask | p.keep
        edited = edit_rows(p, self.spec, mask)
        m = p.size
        parts: list[np.ndarray] = []
        done = 0
        for start in np.flatnonzero(kept[1:] & ~kept[:-1] & p.continues[1:]) + 1:
            i = j = int(start)
            while j + 1 < m and p.continues[j + 1] and kept[j + 1]:
                j += 1
            ids = self._run_ids(i, j)
            if ids is None:
                return None
            parts += [edited[done:i], ids]
            done = j + 1
        parts.append(edited[done:])
        row = np.concatenate(parts)
        return row if len(row) <= max(m, p.max_tokens) else None

    def _run_ids(self, i: int, j: int) -> np.ndarray | None:
        """The ids of pieces i..j of one word read as a word of their own (memoised)."""
        key = (i, j)
        if key in self._runs:
            return self._runs[key]
        p = self.p
        chars = p.text[p.offsets[i][0] : p.offsets[j][1]]
        ids: np.ndarray | None = None
        # ASCII is normalized character by character whatever the tokenizer; beyond it, a
        # tokenizer that normalizes so (and no combining mark that could belong before)
        charwise = self.spec.charwise and not any(unicodedata.combining(c) for c in chars)
        if chars.isascii() or charwise:
            if self._empty is None:
                self._empty = list(self._encode([""])[0])
            encoded, empty, before = list(self._encode([chars])[0]), self._empty, self.spec.keep_prefix
            after = len(empty) - before
            if encoded[:before] == empty[:before] and encoded[len(encoded) - after :] == empty[before:]:
                ids = np.asarray(encoded[before : len(encoded) - after], dtype=np.int64)
        self._runs[key] = ids
        return ids
