"""Explainer processes: shap's pure-Python work off the server's GIL.

shap's Partition explainer spends much of its time in Python bookkeeping (masking,
building strings, its priority queue). In threads that work holds the GIL, so on a fast
device many concurrent explanations serialise on it. Here each explanation can run in a
child process instead: the child runs the library code, and every model evaluation it
needs comes back to the server as a list of strings, which the server's explainer thread
submits to the shared batching worker and answers with logits. The child never touches
the model; the batching across requests is unchanged.

Children are forked from a fork server that imported shap and compiled its numba kernels
once, so a new child starts warm (a cold start costs ~10 s of JIT on a small CPU).
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ..context import RequestContext
from ..errors import ServiceError, Unavailable

log = logging.getLogger(__name__)

Logits = Callable[[Sequence[str]], np.ndarray]
# fn(tokenizer, remote_logits, *args) runs in the child; it must be a module-level function.
ChildFunction = Callable[..., Any]

_PRELOAD = "whybert_service.offload.warmup"


class _Aborted(Exception):
    """The server told the child to stop the job (caller gone, deadline, model error)."""


@dataclass
class _Child:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    tokenizers: set[str]


def _child_main(conn: Connection) -> None:
    """A child's loop: run jobs one at a time, asking the parent for every model evaluation."""
    tokenizers: dict[str, Any] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        fn, key, tokenizer, args = message
        if tokenizer is not None:
            tokenizers[key] = tokenizer

        def remote_logits(texts: Sequence[str]) -> np.ndarray:
            conn.send(("eval", list(texts)))
            kind, payload = conn.recv()
            if kind != "logits":
                raise _Aborted(payload)
            out: np.ndarray = payload
            return out

        try:
            result = fn(tokenizers[key], remote_logits, *args)
        except _Aborted:
            conn.send(("aborted", None))
        except Exception as exc:  # reported to the parent, which fails the request
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        else:
            conn.send(("done", result))


class ExplainerProcesses:
    """A fixed number of warm child processes; each runs one explanation at a time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload([_PRELOAD])
        self._idle: queue.Queue[_Child] = queue.Queue()
        self._closed = False
        for _ in range(size):
            self._idle.put(self._spawn())

    def _spawn(self) -> _Child:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_child_main, args=(child,), daemon=True, name="whybert-explainer")
        process.start()
        child.close()
        return _Child(process, parent, set())

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                child = self._idle.get_nowait()
            except queue.Empty:
                return
            child.conn.close()
            child.process.terminate()

    def run(
        self,
        fn: ChildFunction,
        args: tuple[Any, ...],
        tokenizer: tuple[str, Any],
        logits: Logits,
        context: RequestContext,
    ) -> Any:
        """Run `fn(tokenizer, remote_logits, *args)` in a child; answer its evaluations with `logits`.

        A child found dead before it took the job is replaced and the job goes to another
        one; a child that dies mid-job fails the job with UNAVAILABLE (clients retry it).
        """
        while True:
            child = self._checkout(context)
            try:
                child.conn.send((fn, tokenizer[0], None if tokenizer[0] in child.tokenizers else tokenizer[1], args))
            except OSError:
                self._checkin(child, healthy=False)
                continue
            child.tokenizers.add(tokenizer[0])
            return self._serve_job(child, logits)

    def _serve_job(self, child: _Child, logits: Logits) -> Any:
        """Answer the child's evaluations until it reports the job's end."""
        finished = False  # the child answered the job and waits for the next one
        failure: ServiceError | None = None
        try:
            while True:
                kind, payload = child.conn.recv()
                if kind == "eval":
                    try:
                        child.conn.send(("logits", logits(payload)))
                    except ServiceError as exc:
                        failure = exc
                        child.conn.send(("abort", exc.message))
                    continue
                finished = True
                if kind == "done":
                    return payload
                if kind == "aborted" and failure is not None:
                    raise failure
                raise ServiceError(f"the explainer failed on this text: {payload}")
        except (EOFError, OSError) as exc:
            log.error("an explainer process died: %r", exc)
            raise Unavailable("an explainer process died during this explanation; retry") from exc
        finally:
            self._checkin(child, finished)

    def _checkout(self, context: RequestContext) -> _Child:
        while True:
            if self._closed:
                raise Unavailable("the server is shutting down")
            context.ensure_alive("while waiting for an explainer process")
            try:
                child = self._idle.get(timeout=0.05)
            except queue.Empty:
                continue
            if child.process.is_alive():
                return child
            log.warning("an idle explainer process had died; starting a new one")
            self._checkin(child, healthy=False)

    def _checkin(self, child: _Child, healthy: bool) -> None:
        """Back to the idle set; a child that broke off mid-job is replaced."""
        if not healthy:
            child.conn.close()
            child.process.kill()
            child.process.join(1)
            if self._closed:
                return
            child = self._spawn()
        self._idle.put(child)

