"""LIME text explanations: the lime package's values, with the samples drawn and evaluated
a chunk at a time.

The values are those of `lime.lime_text.LimeTextExplainer` with its defaults (kernel width
25, bag of words, words split on `\\W+`, cosine distance, ridge regression). whybert draws
the perturbations as `LimeTextExplainer.explain_instance` does (its private
`__data_labels_distances`: the same RandomState calls in the same order), computes the
same distances, and fits with lime's own `LimeBase.explain_instance_with_data`; only the
model function differs. lime builds every perturbed string at once and hands them all to
the model, which for a long text and many samples is gigabytes of strings and token ids;
here they are built, tokenized and sent to the model's shared worker a chunk at a time
(`CHUNK_ROWS` strings or `CHUNK_CHARS` characters, one chunk evaluated while the next is
built), and all that stays is what the fit needs: the perturbation matrix (one byte per
sample and word), the outputs and the distances. A caller who left or whose deadline
passed stops the work between chunks. Identical perturbations are evaluated once.

Building a chunk (long strings cut and joined, then tokenized) is CPU work in Python, on
the explainer threads: twenty long texts building chunks at once would hold the GIL and
the cores from the model's worker thread and the event loop, so every other request
(a small SHAP explanation's rounds, a Predict) would crawl. At most `BUILD_SLOTS` chunks
are built at a time in the process, whatever the requests, and a request builds its next
chunk only while fewer than two chunks' rows of all its texts wait for the model: the
model consumes chunks far slower than one thread builds them, so LIME itself loses
nothing, and twenty texts do not build forty chunks (minutes of model work) up front.

LIME's features are words, and with bag of words a word's occurrences are removed
together, so they share one weight. The response lists every occurrence as a token (with
its character span); a word that occurs n times carries 1/n of its weight on each, which
keeps `base + sum(values)` equal to LIME's local model at the text.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..batching.queue import RowsResult
from ..context import RequestContext
from ..errors import InvalidArgument
from ..offload import python_threads
from ..outputs import to_output_space
from ..registry import ModelHandle
from ..types import ExplainerName, ExplainParams, TokenSpan
from .base import Attribution, Explainer

CHUNK_ROWS = 256  # perturbed strings built, tokenized and queued at once
CHUNK_CHARS = 1 << 20  # ... and their characters: bounds the tokenizer's memory per chunk
CHECK_EVERY = 16  # samples drawn between two looks at whether the caller is still there
BUILD_SLOTS = python_threads()  # chunks built at once (1 on ≤ 7 cores)
_BUILDING = threading.BoundedSemaphore(BUILD_SLOTS)


def _take_build_slot(handle: ModelHandle, context: RequestContext, queued_limit: int) -> None:
    """Wait for a turn to build a chunk, and until the request (all its texts) has fewer
    than `queued_limit` rows waiting for the model: the model takes a chunk in seconds on
    a CPU, so chunks built further ahead would only hold a core (and the GIL) from every
    other request while they wait. A caller who leaves meanwhile stops waiting."""
    while True:
        while handle.worker.request_rows(context) >= queued_limit:
            time.sleep(0.02)
            context.ensure_alive("while LIME's samples waited their turn to be drawn")
        while not _BUILDING.acquire(timeout=0.05):
            context.ensure_alive("while LIME's samples waited their turn to be drawn")
        if handle.worker.request_rows(context) < queued_limit:
            return
        _BUILDING.release()  # another text of the request filled the queue meanwhile


def lime_split(classifier: Any) -> dict[str, Any]:
    """LIME's word splitting for a model: its default (`\\W+`), and for a text-pair model
    the separator of the joined pair as one more non-word, so that the words of both texts
    are the features and the separator is never removed."""
    sep = getattr(classifier, "sep_token", None)
    if getattr(classifier, "kind", "") != "pair" or sep is None:
        return {}
    return {"split_expression": rf"(?:{re.escape(sep)}|\W)+"}


class LimeExplainer(Explainer):
    name = ExplainerName.LIME

    def __init__(self, chunk_rows: int = CHUNK_ROWS, chunk_chars: int = CHUNK_CHARS) -> None:
        self.chunk_rows = chunk_rows
        self.chunk_chars = chunk_chars

    def warm_up(self) -> None:
        """Importing lime pulls in scikit-learn and scipy (a second or two): do it now."""
        import lime.lime_text  # noqa: F401

    def attribute(self, handle: ModelHandle, text: str, params: ExplainParams, context: RequestContext) -> Attribution:
        from lime.lime_text import IndexedString, LimeTextExplainer

        if params.entity_target is not None:  # a token model's entity: words hidden in place
            from .lime_entities import attribute_entity

            return attribute_entity(handle, text, params, context, self.chunk_rows)
        text, truncated = handle.classifier.readable_prefix(text)
        indexed = IndexedString(text, **lime_split(handle.classifier))  # LimeTextExplainer's, same defaults
        if indexed.num_words() == 0:
            raise InvalidArgument([("texts", f"LIME needs at least one word to remove, and {text[:40]!r} has none")])
        classifier = handle.classifier
        explainer = LimeTextExplainer(class_names=list(classifier.labels), random_state=params.lime.random_seed)
        samples = evaluate_samples(
            handle,
            indexed,
            params.lime.num_samples,
            explainer.random_state,
            context,
            max_rows=self.chunk_rows,
            max_chars=self.chunk_chars,
        )
        raw = samples.logits[0]  # the first sample is the text itself
        targets = self.targets(params, classifier, raw)
        outputs = to_output_space(samples.logits, params.output)
        data = samples.masks.astype(np.float64)  # what lime fits on: num_samples × words
        num_features = params.lime.num_features or indexed.num_words()
        intercepts: dict[int, float] = {}
        local_exp: dict[int, list[tuple[int, float]]] = {}
        for target in targets:  # explain_instance's own loop over the labels
            context.ensure_alive("before LIME's regression")
            intercept, local_exp[target], _, _ = explainer.base.explain_instance_with_data(
                data,
                outputs,
                samples.distances,
                target,
                num_features,
                model_regressor=None,
                feature_selection=explainer.feature_selection,
            )
            intercepts[target] = float(intercept)
        weights = feature_weights(local_exp, targets, indexed.num_words())
        tokens, features = word_occurrences(indexed)
        counts = np.bincount(features, minlength=weights.shape[0])
        values = weights[features] / counts[features][:, None]
        return Attribution(
            tokens=tokens,
            targets=targets,
            values=values,
            base_values=np.array([intercepts[t] for t in targets], dtype=np.float64),
            output_values=to_output_space(raw[None, :], params.output)[0, targets],
            logits=raw,
            token_count=samples.text_tokens,
            truncated=truncated,
            explained_chars=len(text),
            rows=samples.rows,
            queue_seconds=samples.queue_seconds,
        )


def perturbation_masks(indexed: Any, num_samples: int, random_state: Any) -> Iterator[np.ndarray]:
    """The rows of LIME's perturbation matrix one at a time (1: the word stays), drawn from
    `random_state` exactly as `LimeTextExplainer` draws them; the first is the text."""
    doc_size = indexed.num_words()
    sizes = random_state.randint(1, doc_size + 1, num_samples - 1)
    yield np.ones(doc_size, dtype=np.uint8)
    for size in sizes:
        mask = np.ones(doc_size, dtype=np.uint8)
        # lime passes range(doc_size): the same draws, the same indices.
        mask[random_state.choice(doc_size, size, replace=False)] = 0
        yield mask


def cosine_distances_to_text(masks: np.ndarray) -> np.ndarray:
    """lime's distances (cosine to the first row, the text, × 100), for any block of rows:
    sklearn computes them row by row on the sparse matrix, so blocks give lime's values."""
    import scipy.sparse
    import sklearn.metrics

    rows = scipy.sparse.csr_matrix(masks.astype(np.float64))
    text = scipy.sparse.csr_matrix(np.ones((1, masks.shape[1]), dtype=np.float64))
    distances: np.ndarray = sklearn.metrics.pairwise.pairwise_distances(rows, text, metric="cosine").ravel() * 100
    return distances


@dataclass
class Samples:
    """What LIME's fit needs of its samples, and what evaluating them cost."""

    masks: np.ndarray  # num_samples × words, uint8
    logits: np.ndarray  # num_samples × labels, float32
    distances: np.ndarray  # num_samples, float64
    rows: int  # distinct strings the model evaluated
    queue_seconds: float
    text_tokens: int  # the text itself (the first sample) as the model reads it


class _Chunk:
    """Distinct perturbed strings waiting for the model, and the samples they stand for."""

    def __init__(self) -> None:
        self.strings: list[str] = []
        self.samples: list[int] = []
        self.chars = 0

    def full(self, max_rows: int, max_chars: int) -> bool:
        return len(self.strings) >= max_rows or self.chars >= max_chars


def evaluate_samples(
    handle: ModelHandle,
    indexed: Any,
    num_samples: int,
    random_state: Any,
    context: RequestContext,
    *,
    max_rows: int = CHUNK_ROWS,
    max_chars: int = CHUNK_CHARS,
) -> Samples:
    """Draw LIME's samples and evaluate them on the model's worker, one chunk of strings at
    a time: a chunk is tokenized and queued while the one before it runs, so at most two
    chunks' strings and rows are held at once."""
    n_words = indexed.num_words()
    masks = np.empty((num_samples, n_words), dtype=np.uint8)
    logits = np.empty((num_samples, handle.classifier.num_labels), dtype=np.float32)
    first_of: dict[bytes, int] = {}  # a perturbation → the sample that evaluates it
    copies: list[tuple[int, int]] = []  # (sample, sample whose output it shares)
    evaluated = _Evaluation(handle, context, logits)
    chunk = _Chunk()
    building = False  # holding one of the process's build slots
    try:
        for i, mask in enumerate(perturbation_masks(indexed, num_samples, random_state)):
            if not building:
                _take_build_slot(handle, context, 2 * max_rows)
                building = True
            if i % CHECK_EVERY == 0:  # many texts build chunks at once: each stops within a few strings
                context.ensure_alive("while LIME's samples were drawn")
            masks[i] = mask
            key = np.packbits(mask).tobytes()
            if key in first_of:
                copies.append((i, first_of[key]))
                continue
            first_of[key] = i
            string = indexed.inverse_removing(np.flatnonzero(mask == 0))
            chunk.strings.append(string)
            chunk.samples.append(i)
            chunk.chars += len(string)
            if chunk.full(max_rows, max_chars):
                evaluated.submit(chunk)
                _BUILDING.release()  # built: another text builds while this one waits
                building = False
                evaluated.collect_previous()
                chunk = _Chunk()
        if chunk.strings:
            if not building:
                _take_build_slot(handle, context, 2 * max_rows)
                building = True
            evaluated.submit(chunk)
        if building:
            _BUILDING.release()
            building = False
        evaluated.finish()
    finally:
        if building:
            _BUILDING.release()
        evaluated.abandon()
    distances = np.empty(num_samples, dtype=np.float64)
    for start in range(0, num_samples, max_rows):  # a sparse copy of a block at a time
        block = slice(start, start + max_rows)
        distances[block] = cosine_distances_to_text(masks[block])
    for sample, source in copies:
        logits[sample] = logits[source]
    return Samples(
        masks=masks,
        logits=logits,
        distances=distances,
        rows=evaluated.rows,
        queue_seconds=evaluated.queue_seconds,
        text_tokens=evaluated.text_tokens,
    )


class _Evaluation:
    """Sends chunks of strings to the model's worker, keeping at most one in flight while
    the caller builds the next, and writes each sample's logits where they belong."""

    def __init__(self, handle: ModelHandle, context: RequestContext, logits: np.ndarray) -> None:
        self.handle = handle
        self.context = context
        self.logits = logits
        self.rows = 0
        self.queue_seconds = 0.0
        self.text_tokens = 0
        self._in_flight: tuple[Future[RowsResult], list[int]] | None = None
        self._previous: tuple[Future[RowsResult], list[int]] | None = None

    def submit(self, chunk: _Chunk) -> None:
        """Tokenize and queue a chunk (the one before it stays in flight)."""
        if not chunk.strings:
            return
        self.context.ensure_alive("before LIME's next chunk of samples")
        encoded = self.handle.classifier.encode(chunk.strings)
        if chunk.samples[0] == 0:  # the text itself: the prediction's length
            self.text_tokens = len(encoded.ids[0])
        future = self.handle.worker.submit(encoded.ids, self.context)
        self.rows += len(chunk.strings)
        self._previous, self._in_flight = self._in_flight, (future, chunk.samples)

    def collect_previous(self) -> None:
        """Wait for the chunk queued before the last and store its logits."""
        if self._previous is not None:
            previous, self._previous = self._previous, None
            self._store(*previous)

    def finish(self) -> None:
        """Wait for every chunk still in flight and store its logits."""
        self.collect_previous()
        if self._in_flight is not None:
            self._store(*self._in_flight)
            self._in_flight = None

    def _store(self, future: Future[RowsResult], samples: list[int]) -> None:
        result = self.context.wait(future, "the model")
        self.logits[samples] = result.logits
        self.queue_seconds += result.queue_seconds

    def abandon(self) -> None:
        """On the way out with an error: the chunks in flight are of no use any more."""
        for pending in (self._previous, self._in_flight):
            if pending is not None:
                pending[0].cancel()
        self._previous = self._in_flight = None


def feature_weights(
    local_exp: dict[int, list[tuple[int, float]]], targets: Sequence[int], n_features: int
) -> np.ndarray:
    """LIME's weights as a (features × targets) matrix; features it left out weigh 0."""
    out = np.zeros((n_features, len(targets)), dtype=np.float64)
    for column, target in enumerate(targets):
        for feature, weight in local_exp[target]:
            out[int(feature), column] = float(weight)
    return out


def word_occurrences(indexed: Any) -> tuple[list[TokenSpan], np.ndarray]:
    """Every occurrence of every LIME feature in text order, and the feature of each."""
    found: list[tuple[int, str, int]] = []
    for feature in range(indexed.num_words()):
        word = str(indexed.word(feature))
        for start in indexed.string_position(feature):
            found.append((int(start), word, feature))
    found.sort()
    tokens = [TokenSpan(text=word, start=start, end=start + len(word)) for start, word, _ in found]
    return tokens, np.array([feature for _, _, feature in found], dtype=np.int64)
