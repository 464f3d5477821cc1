"""The explanation cache is bounded in bytes as well as entries: least recently used go
first until both limits hold, an entry larger than the whole budget is not stored, either
limit at 0 turns it off, and its size is exported as a gauge. (The server's own cache:
integration/test_server_cache.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from whybert_service.cache import ExplanationCache, key_bytes, result_bytes
from whybert_service.metrics import Metrics
from whybert_service.types import (
    ExplainerName,
    ExplanationResult,
    OutputName,
    PredictionResult,
    TokenSpan,
)

LABELS = ["negative", "neutral", "positive"]


def result(n_tokens: int, n_labels: int = 3) -> ExplanationResult:
    words = [f"w{i} " for i in range(n_tokens)]
    starts = np.cumsum([0, *map(len, words)])
    return ExplanationResult(
        tokens=[TokenSpan(w, int(s), int(s) + len(w)) for w, s in zip(words, starts, strict=False)],
        labels=LABELS[:n_labels],
        values=np.zeros((n_tokens, n_labels)),
        base_values=np.zeros(n_labels),
        output_values=np.zeros(n_labels),
        prediction=PredictionResult(
            labels=LABELS, probabilities=np.full(3, 1 / 3), logits=np.zeros(3), truncated=False,
            token_count=n_tokens,
        ),
        explainer=ExplainerName.SHAP_PARTITION,
        output=OutputName.PROBABILITY,
    )


def size(key: tuple[str, ...], r: ExplanationResult) -> int:
    return result_bytes(r) + key_bytes(key)


def test_an_entry_counts_its_arrays_and_its_strings() -> None:
    small, large = result(10), result(1000)
    assert result_bytes(large) > result_bytes(small) + large.values.nbytes
    assert result_bytes(large) >= sum(len(t.text) for t in large.tokens) + large.values.nbytes
    text = "x" * 20_000
    assert key_bytes(("tiny", "sha", text, ("shap", 500))) > len(text)


def test_an_entry_counts_its_raw_attention_maps_and_entities() -> None:
    # Raw attention (up to --max-attention-cells floats) is most of such an entry's memory:
    # left out, a cache of attention explanations held gigabytes it thought were megabytes.
    import dataclasses

    from whybert_service.types import AttentionMapsResult, EntityResult

    plain = result(110)
    weights = np.zeros((6, 12, 110, 110), np.float32)
    maps = AttentionMapsResult(layers=tuple(range(6)), heads=tuple(range(12)), weights=weights)
    with_maps = dataclasses.replace(plain, attention_maps=maps, explainer=ExplainerName.ATTENTION)
    assert result_bytes(with_maps) >= result_bytes(plain) + maps.weights.nbytes
    entities = tuple(EntityResult("Angela Merkel" * 50, "PER", 0, 650, 0.9, 1) for _ in range(20))
    tagged = dataclasses.replace(plain, prediction=dataclasses.replace(plain.prediction, entities=entities))
    assert result_bytes(tagged) >= result_bytes(plain) + sum(len(e.text) for e in entities)
    cache = ExplanationCache(100, max_bytes=2 * result_bytes(with_maps) + 1000)
    for i in range(5):
        cache.put(("text", str(i)), with_maps)
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes  # the bytes bound holds


def test_least_recently_used_go_first_until_the_bytes_fit() -> None:
    metrics = Metrics()
    entries = {k: result(100) for k in ("a", "b", "c", "d")}
    one = size(("a",), entries["a"])
    cache = ExplanationCache(100, metrics, max_bytes=3 * one + one // 2)  # room for three
    for key in ("a", "b", "c"):
        cache.put((key,), entries[key])
    assert len(cache) == 3 and cache.bytes == 3 * one
    assert cache.get(("a",)) is not None  # a is now the most recently used
    cache.put(("d",), entries["d"])
    assert [cache.get((k,)) is not None for k in "abcd"] == [True, False, True, True]
    assert cache.bytes == 3 * one <= cache.max_bytes
    assert metrics.registry.get_sample_value("whybert_cache_bytes") == cache.bytes
    assert metrics.registry.get_sample_value("whybert_cache_entries") == 3


def test_a_large_entry_evicts_as_many_as_it_needs() -> None:
    small = result(10)
    unit = size(("s0",), small)
    big = result(60)
    cache = ExplanationCache(100, max_bytes=size(("big",), big) + unit)
    for i in range(10):
        cache.put((f"s{i}",), small)
    assert len(cache) > 1
    cache.put(("big",), big)
    assert cache.get(("big",)) is not None
    assert cache.bytes <= cache.max_bytes
    assert cache.get(("s9",)) is not None and cache.get(("s0",)) is None


def test_an_entry_larger_than_the_whole_budget_is_not_stored() -> None:
    cache = ExplanationCache(100, max_bytes=size(("a",), result(50)) * 2)
    cache.put(("a",), result(50))
    cache.put(("huge",), result(5000))
    assert cache.get(("huge",)) is None
    assert cache.get(("a",)) is not None and len(cache) == 1


def test_the_entry_limit_still_holds() -> None:
    cache = ExplanationCache(2, max_bytes=1 << 30)
    for key in ("a", "b", "c"):
        cache.put((key,), result(5))
    assert len(cache) == 2 and cache.get(("a",)) is None
    assert cache.bytes == 2 * size(("b",), result(5))


def test_putting_a_key_again_replaces_it_without_counting_twice() -> None:
    cache = ExplanationCache(10, max_bytes=1 << 30)
    cache.put(("a",), result(5))
    cache.put(("a",), result(50))
    assert len(cache) == 1 and cache.bytes == size(("a",), result(50))


@pytest.mark.parametrize(("entries", "max_bytes"), [(0, 1 << 30), (10, 0)])
def test_either_limit_at_zero_turns_the_cache_off(entries: int, max_bytes: int) -> None:
    cache = ExplanationCache(entries, max_bytes=max_bytes)
    cache.put(("a",), result(5))
    assert cache.get(("a",)) is None and len(cache) == 0 and cache.misses == 0
