"""A bounded in-memory cache of finished explanations.

Keyed on what decides the values: the model and its weights' hash, the text, the
explainer and its options. Bounded twice: in entries (`--cache-entries`) and in bytes
(`--cache-bytes`), because one explanation of a long text can hold megabytes, so a count
alone does not bound memory. Least recently used entries go first.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np

from .metrics import Metrics
from .models.classifier import Classifier
from .types import ExplainParams, ExplanationResult

# What one token costs besides its text: the TokenSpan object and its attribute dict, its
# two offsets and its slot in the list (measured on CPython 3.11; an estimate, not exact).
TOKEN_OVERHEAD_BYTES = 400
# What one entry costs besides its arrays and strings: the result and prediction objects,
# their attribute dicts, the key tuple and the cache's own bookkeeping.
ENTRY_OVERHEAD_BYTES = 2048


def result_bytes(result: ExplanationResult) -> int:
    """An estimate of the memory an explanation holds: its arrays' bytes (the raw attention
    maps' above all: up to `--max-attention-cells` floats), its tokens', labels' and
    entities' strings and a fixed overhead per token, entity and entry."""
    arrays: list[np.ndarray | None] = [
        result.values,
        result.base_values,
        result.output_values,
        result.convergence_delta,
        result.prediction.probabilities,
        result.prediction.logits,
        None if result.attention_maps is None else result.attention_maps.weights,
    ]
    size = ENTRY_OVERHEAD_BYTES + sum(a.nbytes for a in arrays if a is not None)
    size += sum(sys.getsizeof(t.text) + TOKEN_OVERHEAD_BYTES for t in result.tokens)
    size += sum(sys.getsizeof(label) for label in (*result.labels, *result.prediction.labels))
    entities = result.prediction.entities
    size += sum(sys.getsizeof(e.text) + sys.getsizeof(e.label) + TOKEN_OVERHEAD_BYTES for e in entities)
    return size


def key_bytes(key: Hashable) -> int:
    """The strings a key holds (the text above all), which the cache keeps alive too."""
    if isinstance(key, tuple):
        return sum(key_bytes(part) for part in key)
    return sys.getsizeof(key)


class ExplanationCache:
    """LRU of `ExplanationResult`s; thread-safe.

    At most `capacity` entries and `max_bytes` estimated bytes (`result_bytes` plus
    `key_bytes`); either at 0 turns the cache off. An entry larger than the whole byte
    budget is not stored (it would only evict everything else).
    """

    def __init__(
        self, capacity: int, metrics: Metrics | None = None, max_bytes: int = 256 * 1024 * 1024
    ) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.hits = 0
        self.misses = 0
        self.bytes = 0
        self._entries: OrderedDict[Hashable, tuple[ExplanationResult, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.capacity > 0 and self.max_bytes > 0

    @staticmethod
    def key(classifier: Classifier, text: str, params: ExplainParams) -> Hashable:
        return (classifier.name, classifier.weights_sha256, text, params.options_key())

    def get(self, key: Hashable) -> ExplanationResult | None:
        if not self.enabled:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
        if self.metrics is not None:
            (self.metrics.cache_hits if entry is not None else self.metrics.cache_misses).inc()
        if entry is None:
            return None
        return dataclasses.replace(
            entry[0], cached=True, model_rows=0, queue_seconds=0.0, compute_seconds=0.0
        )

    def put(self, key: Hashable, result: ExplanationResult) -> None:
        if not self.enabled:
            return
        size = result_bytes(result) + key_bytes(key)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._entries[key] = (result, size)
            self.bytes += size
            while len(self._entries) > self.capacity or self.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted
            if self.metrics is not None:  # under the lock, so the gauges never go stale
                self.metrics.cache_entries.set(len(self._entries))
                self.metrics.cache_bytes.set(self.bytes)
