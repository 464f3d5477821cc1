"""Text pairs between the request and the explainers (transport-free).

A request's pair inputs become joined strings (`PairClassifier.join`) that everything below
the data plane treats as texts; an explanation of a joined string is turned back into
tokens of the two texts here (`split_explanation`): each token's offsets into its own text
and its segment (0: the text, 1: the pair text, as token_type_ids number them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TypeVar

from .errors import InvalidArgument
from .models.classifier import Classifier
from .models.pair_classifier import PairClassifier, pair_window
from .registry import ModelHandle
from .types import ExplainParams, ExplanationResult, PredictParams, TokenSpan

_P = TypeVar("_P", PredictParams, ExplainParams)


def joined_params(handle: ModelHandle, params: _P) -> _P:
    """The request's parameters with each pair joined into its text (`pair_inputs`)."""
    texts = pair_inputs(handle.classifier, handle.name, params.texts, params.pairs)
    return dataclasses.replace(params, texts=texts, pairs=())


def pair_inputs(classifier: Classifier, name: str, texts: Sequence[str], pairs: Sequence[str]) -> tuple[str, ...]:
    """The inputs the model computes on: the texts themselves for a single-text model, the
    joined pairs for a pair model. A pair text for a single-text model, or a pair model
    without its pair texts, is INVALID_ARGUMENT naming `pairs` (whybert refuses rather than
    guess: a cross-encoder's output on one text alone means nothing)."""
    if not isinstance(classifier, PairClassifier):
        if pairs:
            raise InvalidArgument([("pairs", f"model {name!r} classifies single texts: send no pair texts")])
        return tuple(texts)
    if not pairs:
        raise InvalidArgument([("pairs", f"model {name!r} classifies text pairs: send one pair text per text")])
    bad = [
        (f"texts[{i}]", f"contains the model's separator {classifier.sep_token!r}, which splits a pair")
        for i, text in enumerate(texts)
        if classifier.sep_token in text
    ]
    if bad:
        raise InvalidArgument(bad)
    return tuple(classifier.join(text, pair) for text, pair in zip(texts, pairs, strict=True))


@dataclasses.dataclass(frozen=True)
class PairWindow:
    """What of a pair the model reads (longest_first) and how its joined string is laid out."""

    text: str  # the text's prefix the model reads
    pair: str  # the pair text's prefix the model reads (leading white space included)
    truncated: bool
    # What the explainers explain: the two prefixes joined, the pair's leading white space
    # (which no tokenizer reads) dropped, so that the separator is a segment of its own,
    # as shap's masker needs to keep it.
    joined: str

    @property
    def pair_start(self) -> int:
        """Where the pair text's characters start in `joined`, minus the white space the
        join dropped (so that joined offset - pair_start = offset into the pair text)."""
        return len(self.joined) - len(self.pair)


def window(classifier: PairClassifier, joined: str) -> PairWindow:
    """Cut a joined pair as the model reads it: both texts' prefixes, longest_first."""
    text, pair = classifier.split(joined)
    text, pair, truncated = pair_window(classifier, text, pair)
    return PairWindow(text=text, pair=pair, truncated=truncated, joined=classifier.join(text, pair.lstrip()))


def split_tokens(tokens: Sequence[TokenSpan], w: PairWindow) -> list[TokenSpan]:
    """Tokens of a joined string as tokens of the two texts: the separator and [CLS] are
    the text's (special), the last special token the pair's; the others by where they
    are, their offsets made relative to their own text."""
    boundary = len(w.text)
    out = []
    for i, t in enumerate(tokens):
        if t.special and t.start == t.end == 0:
            out.append(dataclasses.replace(t, segment=0 if i == 0 else 1))
        elif t.end <= boundary:
            out.append(t)
        elif t.start >= len(w.joined) - len(w.pair.lstrip()):
            shift = w.pair_start
            out.append(dataclasses.replace(t, start=t.start - shift, end=t.end - shift, segment=1))
        else:  # the separator joining the two
            out.append(dataclasses.replace(t, start=boundary, end=boundary, special=True, segment=0))
    return out


def mark_separator(result: ExplanationResult, w: PairWindow) -> ExplanationResult:
    """The explanation with the separator joining the two texts marked special (a token
    of the text as far as the tokenizer knows): what works on non-special tokens, such as
    faithfulness's removals, never removes it."""
    first_pair = len(w.joined) - len(w.pair.lstrip())
    tokens = [
        dataclasses.replace(t, special=True)
        if t.start >= len(w.text) and t.end <= first_pair and t.end > t.start
        else t
        for t in result.tokens
    ]
    return dataclasses.replace(result, tokens=tokens)


def split_explanation(result: ExplanationResult, w: PairWindow) -> ExplanationResult:
    """An explanation of a joined pair as one of the two texts (see `split_tokens`)."""
    truncated = w.truncated or result.truncated
    return dataclasses.replace(
        result,
        tokens=split_tokens(result.tokens, w),
        truncated=truncated,
        explained_chars=len(w.text),
        explained_pair_chars=len(w.pair),
        prediction=dataclasses.replace(result.prediction, truncated=truncated or result.prediction.truncated),
    )
