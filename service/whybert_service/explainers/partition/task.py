"""One explanation's rounds, fed through the model's worker without a thread of its own.

Each round's rows go to the worker as one submission; when their logits arrive (on the
worker thread, handed to the task's receiver) the engine takes them and the next
round is submitted at once. So an explanation waits only in the worker's queue, where the
scheduler orders it fairly among every other request's work, and it stops at the first
round after its caller left or its deadline passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future

from ...batching.queue import RowsResult, settle
from ...batching.worker import ModelWorker
from ...context import RequestContext
from ...errors import ModelFailure, ServiceError
from .engine import PartitionEngine, PartitionResult

log = logging.getLogger(__name__)


Progress = Callable[[PartitionResult], None]


class PartitionTask:
    """Drives one `PartitionEngine` to its end; `future` receives its result or error.

    With `on_progress`, the engine's snapshot (the values so far, additive) is handed to it
    after a round at most every `progress_interval` seconds, on the worker thread: it must
    only hand the snapshot on (a queue, a loop's call_soon_threadsafe)."""

    def __init__(
        self,
        worker: ModelWorker,
        engine: PartitionEngine,
        context: RequestContext,
        on_progress: Progress | None = None,
        progress_interval: float = 0.1,
        position: int | None = None,
    ) -> None:
        self.worker = worker
        self.position = position  # token models: the position whose logits the rows give
        self.engine = engine
        self.context = context
        self.future: Future[PartitionResult] = Future()
        self.queue_seconds = 0.0
        self.rows = 0
        self._on_progress = on_progress
        self._interval = progress_interval
        self._last_progress = time.monotonic()

    def start(self) -> Future[PartitionResult]:
        self._submit()
        return self.future

    def _submit(self) -> None:
        rows = self.engine.row_lists()
        try:
            self.worker.submit_to(rows, self.context, self._on_logits, self.position)
        except ServiceError as exc:
            settle(self.future, exception=exc)
            return
        self.rows += len(rows)

    def _on_logits(self, result: RowsResult | None, error: BaseException | None) -> None:
        """Runs where the rows' logits arrive (the worker thread): next round or the end."""
        if self.future.done():
            return
        try:
            if error is not None:
                raise error
            assert result is not None
            self.context.ensure_alive("while the explanation ran")
            self.queue_seconds += result.queue_seconds
            self.engine.feed(result.logits)
            if self.engine.done:
                settle(self.future, result=self.engine.result)
                return
            self._progress()
            self._submit()
        except ServiceError as exc:
            settle(self.future, exception=exc)
        except BaseException as exc:  # a bug must fail this request, never the worker
            log.exception("the SHAP engine failed")
            settle(self.future, exception=ModelFailure(f"the explanation failed: {type(exc).__name__}: {exc}"))

    def _progress(self) -> None:
        """Hand on the engine's snapshot, at most every `progress_interval` seconds."""
        if self._on_progress is not None and self.engine.started:
            now = time.monotonic()
            if now - self._last_progress >= self._interval:
                self._last_progress = now
                try:
                    self._on_progress(self.engine.snapshot())
                except BaseException:  # a listener's failure must not stop the explanation
                    log.exception("a progress listener failed")
