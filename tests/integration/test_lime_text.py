"""LIME explanations equal the lime package's own, with every perturbation through the
worker, a bounded chunk at a time."""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import grpc
import numpy as np
import pytest
import whybert
from _references import LimeReference
from _wait import wait_for
from lime.lime_text import IndexedString
from whybert_service.batching.worker import ModelWorker
from whybert_service.context import Priority, RequestContext
from whybert_service.errors import Cancelled, DeadlineExceeded
from whybert_service.explainers.lime_text import LimeExplainer
from whybert_service.models.classifier import Classifier
from whybert_service.registry import ModelHandle
from whybert_service.types import (
    ExplainerName,
    ExplainParams,
    ExplanationResult,
    LimeParams,
    OutputName,
    TargetModeName,
)

TEXT = "The food was great, but the service was painfully slow... the FOOD though!"


@pytest.fixture(scope="module")
def client(target: str) -> Iterator[whybert.Client]:
    with whybert.Client(target) as c:
        yield c


def word_weights(ours: whybert.Explanation, column: int) -> dict[str, float]:
    """Our per-occurrence values summed back into LIME's per-word weights."""
    out: dict[str, float] = defaultdict(float)
    for token, value in zip(ours.tokens, ours.values[:, column], strict=True):
        out[token] += float(value)
    return dict(out)


def assert_same_as_lime(ours: whybert.Explanation, ref: Any, labels: list[int]) -> None:
    for column, label in enumerate(labels):
        expected = LimeReference.word_weights(ref, label)
        got = word_weights(ours, column)
        assert got.keys() == expected.keys()
        for word, weight in expected.items():
            assert got[word] == pytest.approx(weight, abs=1e-5), word
        assert ours.base_values[column] == pytest.approx(ref.intercept[label], abs=1e-5)
        assert ours.output_values[column] == pytest.approx(ref.predict_proba[label], abs=1e-6)


@pytest.mark.parametrize("output", ["probability", "logit"])
def test_values_equal_lime_package_for_every_label(
    client: whybert.Client, lime_reference: LimeReference, output: str
) -> None:
    (ours,) = client.explain([TEXT], explainer="lime", num_samples=300, random_seed=7, targets="all", output=output)
    labels = list(range(len(lime_reference.labels)))
    ref = lime_reference.explain(TEXT, labels, output, seed=7, num_samples=300, num_features=10_000)
    assert ours.labels == lime_reference.labels
    assert ours.output == output and ours.explainer == "lime"
    assert_same_as_lime(ours, ref, labels)
    # LIME's local model is not exact at the text: the response says by how much.
    gap = ours.base_values + ours.values.sum(axis=0) - ours.output_values
    assert ours.additivity_error == pytest.approx(float(np.max(np.abs(gap))), abs=1e-9)
    # Every distinct perturbed string costs one row, and only one.
    assert 1 < ours.model_rows <= 300


def test_tokens_are_every_occurrence_of_lime_words(client: whybert.Client) -> None:
    (ours,) = client.explain([TEXT], explainer="lime", num_samples=100, targets="all")
    words = [w for w in re.split(r"\W+", TEXT) if w]
    assert ours.tokens == words  # text order, repeats included, separators left out
    for token, (start, end), special in zip(ours.tokens, ours.offsets, ours.special, strict=True):
        assert TEXT[start:end] == token and not special
    # A word's weight is shared evenly by its occurrences ("the" occurs twice).
    the = [i for i, t in enumerate(ours.tokens) if t == "the"]
    assert len(the) == 2
    np.testing.assert_array_equal(ours.values[the[0]], ours.values[the[1]])


def test_seed_decides_the_values_and_num_features_the_support(
    client: whybert.Client, lime_reference: LimeReference
) -> None:
    first, again, other = [
        client.explain([TEXT], explainer="lime", num_samples=200, random_seed=s)[0] for s in (3, 3, 4)
    ]
    (few,) = client.explain([TEXT], explainer="lime", num_samples=200, num_features=3)
    np.testing.assert_allclose(first.values, again.values, atol=1e-9)
    assert not np.allclose(first.values, other.values, atol=1e-6)
    # num_features=3 keeps three words (each occurrence of them), the others weigh 0.
    assert len({t for t, v in zip(few.tokens, few.values[:, 0], strict=True) if v != 0}) == 3
    label = lime_reference.labels.index(few.labels[0])
    ref = lime_reference.explain(TEXT, [label], "probability", seed=0, num_samples=200, num_features=3)
    assert_same_as_lime(few, ref, [label])


def test_text_without_words_is_invalid_argument(client: whybert.Client) -> None:
    with pytest.raises(whybert.WhybertError) as info:
        client.explain(["?!... :-)"], explainer="lime", num_samples=50)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "LIME" in str(info.value)


class Recorder:
    """Instruments the model function of the explanations on one worker: the strings each
    chunk tokenizes, the rows queued and not yet answered (and their peak), and the logits
    every string received."""

    def __init__(self, classifier: Classifier, worker: ModelWorker, monkeypatch: pytest.MonkeyPatch) -> None:
        self.chunks: list[list[str]] = []
        self.logits: dict[str, np.ndarray] = {}
        self.submitted = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.on_submit: Callable[[int], None] | None = None  # called with the count so far
        self._lock = threading.Lock()
        encode, submit = classifier.encode, worker.submit

        def recording_encode(texts: Sequence[str]) -> Any:
            self.chunks.append(list(texts))
            return encode(texts)

        def recording_submit(rows: Sequence[Sequence[int]], context: RequestContext) -> Any:
            strings = self.chunks[self.submitted]
            future = submit(rows, context)
            with self._lock:
                self.in_flight += len(rows)
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            future.add_done_callback(lambda f: self._answered(f, strings))
            self.submitted += 1
            if self.on_submit is not None:
                self.on_submit(self.submitted)
            return future

        monkeypatch.setattr(classifier, "encode", recording_encode)
        monkeypatch.setattr(worker, "submit", recording_submit)

    def _answered(self, future: Future[Any], strings: list[str]) -> None:
        with self._lock:
            self.in_flight -= len(strings)
        if not future.cancelled() and future.exception() is None:
            self.logits.update(zip(strings, future.result().logits, strict=True))


@pytest.fixture
def worker(tiny_classifier: Classifier) -> Iterator[ModelWorker]:
    w = ModelWorker(tiny_classifier)
    w.start()
    yield w
    w.stop()


def lime_params(text: str, output: OutputName, num_samples: int, seed: int) -> ExplainParams:
    return ExplainParams(
        model="tiny",
        texts=(text,),
        explainer=ExplainerName.LIME,
        output=output,
        target_mode=TargetModeName.ALL,
        lime=LimeParams(num_samples=num_samples, random_seed=seed),
    )


def per_word(ours: ExplanationResult, column: int) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for token, value in zip(ours.tokens, ours.values[:, column], strict=True):
        out[token.text] += float(value)
    return dict(out)


LONG = " ".join(f"w{i}ord" for i in range(120)) + ", " + TEXT


@pytest.mark.parametrize("output", [OutputName.PROBABILITY, OutputName.LOGIT])
@pytest.mark.parametrize("text", [TEXT, LONG, "ok ok ok — fine 🙂 fine"])
def test_chunked_samples_give_lime_s_own_values_with_bounded_rows(
    worker: ModelWorker,
    tiny_classifier: Classifier,
    lime_reference: LimeReference,
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    output: OutputName,
) -> None:
    """lime itself, given the outputs our chunks received, fits exactly our values: the
    same samples (same seed, same strings), distances and kernel. Meanwhile no chunk is
    larger than its bound and at most two chunks' rows are queued at once."""
    recorder = Recorder(tiny_classifier, worker, monkeypatch)
    explainer = LimeExplainer(chunk_rows=16, chunk_chars=2000)
    handle = ModelHandle(tiny_classifier, worker)
    ours = explainer.explain(handle, text, lime_params(text, output, 300, seed=11), RequestContext(Priority.EXPLAIN))

    labels = list(range(len(tiny_classifier.labels)))
    # LIME explains the prefix the model reads: LONG is cut, the others are whole
    original = text
    text, truncated = tiny_classifier.readable_prefix(text)
    assert truncated == (original == LONG) and original.startswith(text)
    assert ours.truncated == truncated and ours.explained_chars == len(text)
    assert ours.prediction.truncated == truncated  # the request's text, not the prefix
    n_words = IndexedString(text).num_words()

    def same_logits(strings: list[str]) -> np.ndarray:  # KeyError: a string we never sent
        return np.stack([recorder.logits[s] for s in strings])

    ref = lime_reference.explain(
        text, labels, output, seed=11, logits=same_logits, num_features=n_words, num_samples=300
    )
    for column, label in enumerate(labels):
        expected = LimeReference.word_weights(ref, label)
        got = per_word(ours, column)
        assert got.keys() == expected.keys()
        for word, weight in expected.items():
            assert got[word] == pytest.approx(weight, rel=1e-12, abs=1e-15), word
        assert ours.base_values[column] == ref.intercept[label]
        assert ours.output_values[column] == pytest.approx(ref.predict_proba[label], abs=1e-12)
    # Each distinct string once, in chunks of at most 16 strings (or ~2000 characters).
    strings = [s for chunk in recorder.chunks for s in chunk]
    assert len(strings) == len(set(strings)) == ours.model_rows == len(recorder.logits)
    assert max(len(c) for c in recorder.chunks) <= 16
    assert all(sum(map(len, c[:-1])) < 2000 for c in recorder.chunks)
    assert recorder.peak_in_flight <= 2 * 16
    if text is LONG:
        assert len(recorder.chunks) > 10


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_a_caller_who_left_stops_lime_between_chunks(
    worker: ModelWorker, tiny_classifier: Classifier, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    recorder = Recorder(tiny_classifier, worker, monkeypatch)
    context = RequestContext(Priority.EXPLAIN)

    def leave(submitted: int) -> None:
        if submitted == 3:
            if how == "cancel":
                context.cancel()
            else:
                context.deadline = time.monotonic()  # the deadline passes now

    recorder.on_submit = leave
    explainer = LimeExplainer(chunk_rows=8)
    with pytest.raises(Cancelled if how == "cancel" else DeadlineExceeded):
        explainer.explain(
            ModelHandle(tiny_classifier, worker),
            LONG,
            lime_params(LONG, OutputName.PROBABILITY, 1000, seed=0),
            context,
        )
    # No chunk after the third was built or tokenized; the queued rows are dropped.
    assert len(recorder.chunks) == recorder.submitted == 3
    assert wait_for(lambda: worker.queued_rows() == 0, timeout=10, step=0.01)


class CountingSlots:
    """A stand-in for the process's build slots that records how many were held at once
    and how often a builder had to wait."""

    def __init__(self, slots: int) -> None:
        self._slots = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self.held = 0
        self.peak = 0
        self.waits = 0

    def acquire(self, timeout: float | None = None) -> bool:
        got = self._slots.acquire(blocking=False)
        if not got:
            with self._lock:
                self.waits += 1  # another builder holds the slot
            got = self._slots.acquire(timeout=timeout)
        if got:
            with self._lock:
                self.held += 1
                self.peak = max(self.peak, self.held)
        return got

    def release(self) -> None:
        with self._lock:
            self.held -= 1
        self._slots.release()


def test_texts_build_their_chunks_one_at_a_time(
    worker: ModelWorker, tiny_classifier: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several long texts explained at once take turns building chunks (the CPU work that
    would otherwise starve the worker thread), and get the values they get alone."""
    from whybert_service.explainers import lime_text

    explainer = LimeExplainer(chunk_rows=16)
    handle = ModelHandle(tiny_classifier, worker)
    texts = [f"{i} {LONG}" for i in range(4)]
    alone = [
        explainer.explain(
            handle, t, lime_params(t, OutputName.PROBABILITY, 400, seed=i), RequestContext(Priority.EXPLAIN)
        )
        for i, t in enumerate(texts)
    ]
    slots = CountingSlots(1)
    monkeypatch.setattr(lime_text, "_BUILDING", slots)
    results: dict[int, ExplanationResult] = {}

    def run(i: int) -> None:
        params = lime_params(texts[i], OutputName.PROBABILITY, 400, seed=i)
        results[i] = explainer.explain(handle, texts[i], params, RequestContext(Priority.EXPLAIN))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert slots.peak == 1 and slots.held == 0 and slots.waits > 0
    for i, expected in enumerate(alone):
        # the same samples; logits differ only by the float noise of other batch paddings
        np.testing.assert_allclose(results[i].values, expected.values, rtol=1e-4, atol=1e-6)


def test_a_caller_who_leaves_while_waiting_to_build_stops_at_once(
    worker: ModelWorker, tiny_classifier: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    from whybert_service.explainers import lime_text

    slots = CountingSlots(1)
    monkeypatch.setattr(lime_text, "_BUILDING", slots)
    assert slots.acquire()  # another text is building
    recorder = Recorder(tiny_classifier, worker, monkeypatch)
    context = RequestContext(Priority.EXPLAIN)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            LimeExplainer(chunk_rows=8).explain(
                ModelHandle(tiny_classifier, worker), LONG, lime_params(LONG, OutputName.PROBABILITY, 200, 0), context
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: slots.waits > 0, timeout=10)
    context.cancel()
    thread.join(5)
    assert not thread.is_alive() and len(errors) == 1 and isinstance(errors[0], Cancelled)
    assert recorder.submitted == 0
    slots.release()
    assert slots.held == 0
