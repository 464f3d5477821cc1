"""LIME for one entity of a token model: words as features, hidden in place.

A sequence model's LIME removes words from the string; a token model's output is read at
one position (the entity's first piece), which removing words would move. So a hidden
word's pieces are replaced by the mask token in place (as shap's `output_type="token_ids"`
masker does), the rows keep their length and the entity keeps its position. Everything
else is LIME's own: the same perturbations drawn from the same RandomState
(`perturbation_masks`), the same cosine distances, the same kernel and ridge fit by
`LimeBase.explain_instance_with_data`, on the entity's output (p(type) or its log-odds).
Rows go to the model's worker a chunk at a time, each reading the entity's position.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..context import RequestContext
from ..entities import entity_output
from ..errors import InvalidArgument
from ..models.token_classifier import TokenClassifier
from ..registry import ModelHandle
from ..types import ExplainParams, OutputName
from .base import Attribution
from .lime_text import cosine_distances_to_text, feature_weights, perturbation_masks, word_occurrences
from .partition.masking import MaskingSpec


def piece_features(indexed: Any, offsets: list[tuple[int, int]], special: list[bool]) -> np.ndarray:
    """The LIME feature (word) of each piece, -1 for pieces of no word (specials,
    punctuation): a piece belongs to the word occurrence it overlaps."""
    spans = []
    for feature in range(indexed.num_words()):
        word = str(indexed.word(feature))
        for start in indexed.string_position(feature):
            spans.append((int(start), int(start) + len(word), feature))
    out = np.full(len(offsets), -1, dtype=np.int64)
    for i, (start, end) in enumerate(offsets):
        if special[i] or end <= start:
            continue
        for s, e, feature in spans:
            if start < e and s < end:
                out[i] = feature
                break
    return out


def attribute_entity(
    handle: ModelHandle, text: str, params: ExplainParams, context: RequestContext, chunk_rows: int
) -> Attribution:
    """LIME's attributions of the entity `params.entity_target` over the text's words."""
    from lime.lime_text import IndexedString, LimeTextExplainer

    classifier = handle.classifier
    target = params.entity_target
    assert isinstance(classifier, TokenClassifier) and target is not None
    window = classifier.window(text)
    indexed = IndexedString(window.text)
    if indexed.num_words() == 0:
        raise InvalidArgument([("texts", f"LIME needs at least one word to hide, and {text[:40]!r} has none")])
    features = piece_features(indexed, window.offsets, window.special)
    mask_id = MaskingSpec.for_tokenizer(classifier.tokenizer).mask_id
    ids = np.asarray(window.ids, dtype=np.int64)
    explainer = LimeTextExplainer(class_names=[target.entity.label], random_state=params.lime.random_seed)
    n = params.lime.num_samples
    masks = np.stack(list(perturbation_masks(indexed, n, explainer.random_state)))
    logits = np.empty((n, classifier.num_labels), dtype=np.float32)
    first: dict[bytes, int] = {}
    distinct: list[int] = []
    for i, mask in enumerate(masks):
        key = np.packbits(mask).tobytes()
        if key not in first:
            first[key] = i
            distinct.append(i)
    queue_seconds = 0.0
    position = target.entity.position
    for start in range(0, len(distinct), chunk_rows):
        context.ensure_alive("before LIME's next chunk of samples")
        chunk = distinct[start : start + chunk_rows]
        hidden = np.zeros((len(chunk), len(ids)), dtype=bool)
        for row, sample in enumerate(chunk):
            gone = masks[sample] == 0
            hidden[row] = (features >= 0) & gone[np.maximum(features, 0)]
        rows = np.where(hidden, mask_id, ids[None, :])
        result = handle.worker.run_blocking(rows.tolist(), context, position)
        queue_seconds += result.queue_seconds
        logits[chunk] = result.logits
    for i, mask in enumerate(masks):
        logits[i] = logits[first[np.packbits(mask).tobytes()]]
    logit = params.output is OutputName.LOGIT
    outputs = entity_output(logits, target.columns, logit)
    distances = cosine_distances_to_text(masks)
    context.ensure_alive("before LIME's regression")
    num_features = params.lime.num_features or indexed.num_words()
    intercept, local_exp, _, _ = explainer.base.explain_instance_with_data(
        masks.astype(np.float64), outputs, distances, 0, num_features,
        model_regressor=None, feature_selection=explainer.feature_selection,
    )
    weights = feature_weights({0: local_exp}, [0], indexed.num_words())
    tokens, occurrence = word_occurrences(indexed)
    counts = np.bincount(occurrence, minlength=weights.shape[0])
    return Attribution(
        tokens=tokens,
        targets=[0],
        values=weights[occurrence] / counts[occurrence][:, None],
        base_values=np.array([float(intercept)]),
        output_values=outputs[0],
        logits=logits[0],
        token_count=len(ids),
        truncated=window.truncated,
        explained_chars=len(window.text),
        rows=len(distinct),
        queue_seconds=queue_seconds,
    )
