"""Tokens of a joined pair given back as tokens of the two texts (`whybert_service.pairs`),
and the separator kept out of what removes tokens."""

from __future__ import annotations

import numpy as np
from whybert_service.pairs import PairWindow, mark_separator, split_explanation, split_tokens
from whybert_service.types import ExplainerName, ExplanationResult, OutputName, PredictionResult, TokenSpan

TEXT, PAIR = "is it so", "  yes it is"
JOINED = TEXT + "[SEP]" + PAIR.lstrip()
WINDOW = PairWindow(text=TEXT, pair=PAIR, truncated=False, joined=JOINED)


def _joined_tokens() -> list[TokenSpan]:
    """What an explainer gives for JOINED: [CLS], the words, the separator, the pair's words, [SEP]."""
    spans = [TokenSpan("[CLS]", 0, 0, special=True)]
    cursor = 0
    for word in TEXT.split():
        start = JOINED.index(word, cursor)
        spans.append(TokenSpan(word, start, start + len(word)))
        cursor = start + len(word)
    spans.append(TokenSpan("[SEP]", len(TEXT), len(TEXT) + 5))  # not special to the tokenizer
    cursor = len(TEXT) + 5
    for word in PAIR.split():
        start = JOINED.index(word, cursor)
        spans.append(TokenSpan(word, start, start + len(word)))
        cursor = start + len(word)
    spans.append(TokenSpan("[SEP]", 0, 0, special=True))
    return spans


def _result(tokens: list[TokenSpan]) -> ExplanationResult:
    prediction = PredictionResult(["a", "b"], np.array([0.4, 0.6]), np.zeros(2), False, len(tokens))
    return ExplanationResult(
        tokens=tokens,
        labels=["b"],
        values=np.zeros((len(tokens), 1)),
        base_values=np.zeros(1),
        output_values=np.zeros(1),
        prediction=prediction,
        explainer=ExplainerName.SHAP_PARTITION,
        output=OutputName.PROBABILITY,
    )


def test_each_token_points_into_its_own_text() -> None:
    tokens = split_tokens(_joined_tokens(), WINDOW)
    assert [t.segment for t in tokens] == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    for t in tokens:
        if not t.special:
            own = TEXT if t.segment == 0 else PAIR
            assert own[t.start : t.end] == t.text
    separator = tokens[4]
    assert separator.special and (separator.start, separator.end) == (len(TEXT), len(TEXT))


def test_the_separator_is_special_before_anything_removes_tokens() -> None:
    marked = mark_separator(_result(_joined_tokens()), WINDOW)
    assert [t.text for t in marked.tokens if t.special] == ["[CLS]", "[SEP]", "[SEP]"]
    assert [t.text for t in marked.tokens if not t.special] == TEXT.split() + PAIR.split()


def test_the_explanation_reports_both_prefixes() -> None:
    cut = PairWindow(text=TEXT, pair=PAIR, truncated=True, joined=JOINED)
    result = split_explanation(_result(_joined_tokens()), cut)
    assert result.truncated and result.prediction.truncated
    assert (result.explained_chars, result.explained_pair_chars) == (len(TEXT), len(PAIR))
