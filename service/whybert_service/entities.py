"""Entities from a token classifier's logits, grouped as transformers' token-classification
pipeline does with `aggregation_strategy="first"` (its `gather_pre_entities`,
`aggregate_words` and `group_entities`): a word's tag is its first piece's most probable
one, with that probability as the word's score; adjacent words of one type merge unless a
word starts with B-; an entity's score is the mean of its words' scores; O is dropped.
Plain numpy: no model work here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InvalidArgument, NotFound
from .models.token_classifier import TokenClassifier, TokenWindow, entity_type, is_subword_tokenizer
from .outputs import softmax
from .types import EntityChoice, EntityResult, EntityTarget, PredictionResult


def pipeline_scores(logits: np.ndarray) -> np.ndarray:
    """The pipeline's per-piece probabilities (its own softmax, in the logits' dtype)."""
    maxes = np.max(logits, axis=-1, keepdims=True)
    shifted = np.exp(logits - maxes)
    out: np.ndarray = shifted / shifted.sum(axis=-1, keepdims=True)
    return out


def group_entities(
    tokenizer: Any, window: TokenWindow, logits: np.ndarray, labels: Sequence[str]
) -> list[EntityResult]:
    """The entities of one text (`window`: its pieces; `logits`: pieces × tags)."""
    scores = pipeline_scores(np.asarray(logits, dtype=np.float32))
    word_aware = is_subword_tokenizer(tokenizer)
    text = window.text
    unk = getattr(tokenizer, "unk_token_id", None)
    # One (first piece's position, tag, score, start, end) per word.
    words: list[tuple[int, int, float, int, int]] = []
    for idx, token_id in enumerate(window.ids):
        if window.special[idx]:
            continue
        start, end = window.offsets[idx]
        if word_aware:
            piece = tokenizer.convert_ids_to_tokens(int(token_id))
            is_subword = len(piece) != len(text[start:end])
        else:
            is_subword = start > 0 and " " not in text[start - 1 : start + 1]
        if unk is not None and int(token_id) == unk:
            is_subword = False
        if is_subword and words:
            first, tag, score, wstart, _ = words[-1]
            words[-1] = (first, tag, score, wstart, end)
        else:
            tag = int(scores[idx].argmax())
            words.append((idx, tag, float(scores[idx][tag]), start, end))
    entities: list[EntityResult] = []
    group: list[tuple[int, int, float, int, int]] = []

    def close() -> None:
        kind = entity_type(labels[group[0][1]])[1]
        if labels[group[0][1]] == "O" or kind == "O":
            return
        start, end = group[0][3], group[-1][4]
        entities.append(
            EntityResult(
                text=text[start:end],
                label=kind,
                start=start,
                end=end,
                score=float(np.nanmean([w[2] for w in group])),
                position=group[0][0],
            )
        )

    for word in words:
        if group:
            bi, kind = entity_type(labels[word[1]])
            _, last = entity_type(labels[group[-1][1]])
            if kind == last and bi != "B":
                group.append(word)
                continue
            close()
        group = [word]
    if group:
        close()
    return entities


def type_probability(logits: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """p(B-X) + p(I-X) of each row of tag logits (rows × tags), float64."""
    out: np.ndarray = softmax(np.asarray(logits))[:, list(columns)].sum(axis=1)
    return out


def entity_output(logits: np.ndarray, columns: Sequence[int], logit: bool) -> np.ndarray:
    """The explained output of an entity, rows × 1: p(type) or its log-odds log(p/(1-p))."""
    p = type_probability(logits, columns)
    if logit:
        p = np.clip(p, 1e-12, 1 - 1e-12)
        p = np.log(p) - np.log1p(-p)
    return p[:, None]


def entity_prediction(classifier: TokenClassifier, window: TokenWindow, logits: np.ndarray) -> PredictionResult:
    """A token model's prediction on one text: its entities (no sequence label)."""
    return PredictionResult(
        labels=[],
        probabilities=np.zeros(0),
        logits=np.zeros(0),
        truncated=window.truncated,
        token_count=len(window.ids),
        entities=tuple(group_entities(classifier.tokenizer, window, logits, classifier.labels)),
    )


def select_entities(
    classifier: TokenClassifier, choice: EntityChoice, entities: Sequence[EntityResult], text_index: int
) -> list[EntityTarget]:
    """The entities of one text that a request's `EntityChoice` picks (all of them, one by
    index, or the one with exactly the given span): INVALID_ARGUMENT for an index beyond
    the text's entities, NOT_FOUND for a span that is no entity's."""

    def target(i: int) -> EntityTarget:
        e = entities[i]
        return EntityTarget(entity=e, index=i, text_index=text_index, columns=tuple(classifier.type_columns(e.label)))

    if choice.all:
        return [target(i) for i in range(len(entities))]
    if choice.index is not None:
        if choice.index >= len(entities):
            why = f"text {text_index} has {len(entities)} entities; index {choice.index} is out of range"
            raise InvalidArgument([("entity.index", why)])
        return [target(choice.index)]
    if choice.span is None:
        raise InvalidArgument([("entity", "set one of index, start and end, or all")])
    start, end = choice.span
    for i, e in enumerate(entities):
        if (e.start, e.end) == (start, end):
            return [target(i)]
    spans = ", ".join(f"[{e.start}, {e.end})" for e in entities[:10]) or "none"
    raise NotFound(f"entity.start/entity.end: no entity of text {text_index} spans [{start}, {end}) ({spans})")
