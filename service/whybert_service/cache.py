"""A bounded in-memory cache of finished explanations.

Keyed on what decides the values: the model and its weights' hash, the text, the
explainer and its options. Least recently used entries go first.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Hashable

from .metrics import Metrics
from .models.classifier import Classifier
from .types import ExplainParams, ExplanationResult


class ExplanationCache:
    """LRU of `ExplanationResult`s; thread-safe; `capacity` 0 turns it off."""

    def __init__(self, capacity: int, metrics: Metrics | None = None) -> None:
        self.capacity = capacity
        self.metrics = metrics
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, ExplanationResult] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(classifier: Classifier, text: str, params: ExplainParams) -> Hashable:
        return (classifier.name, classifier.weights_sha256, text, params.options_key())

    def get(self, key: Hashable) -> ExplanationResult | None:
        if self.capacity <= 0:
            return None
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
        if self.metrics is not None:
            (self.metrics.cache_hits if found is not None else self.metrics.cache_misses).inc()
        if found is None:
            return None
        return dataclasses.replace(found, cached=True, model_rows=0, queue_seconds=0.0, compute_seconds=0.0)

    def put(self, key: Hashable, result: ExplanationResult) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._entries[key] = result
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            size = len(self._entries)
        if self.metrics is not None:
            self.metrics.cache_entries.set(size)
