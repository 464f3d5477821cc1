"""Where a request's text preparation (tokenizing, cutting to the model's window) runs.

Large preparation runs in a thread, so it never holds the event loop, and in few threads
(`PREPARE_THREADS`, 1 below 8 cores): tokenizing is Python and Rust that holds the GIL, so
six threads tokenizing large requests at once leave the event loop and the model's worker
thread a seventh of the interpreter each, and every other caller crawls. Small preparation
runs on the event loop itself: tokenizing a few kilobytes takes well under a millisecond, and
behind the large requests' preparation it would wait seconds (sixteen callers each sending
64 texts of 20,000 characters kept a one-word Predict waiting that long).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# Characters of text prepared on the event loop; more goes to a thread.
INLINE_CHARS = 4096


def python_threads() -> int:
    """How many threads of GIL-bound preparation a process of this size affords beside the
    event loop and the model workers: 1 below 8 cores, a quarter of them up to 4 (text
    preparation here, LIME's chunk building in `explainers/lime_text.py`)."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


PREPARE_THREADS = python_threads()
_POOL = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="whybert-prepare")


async def prepare(fn: Callable[[], T], texts: Iterable[str]) -> T:
    """`fn()`, on the event loop when `texts` hold at most `INLINE_CHARS` characters in
    all, else on one of the preparation threads (in arrival order; a caller who leaves
    while it waits there is dropped unrun)."""
    size = 0
    for text in texts:
        size += len(text)
        if size > INLINE_CHARS:
            return await asyncio.get_running_loop().run_in_executor(_POOL, fn)
    return fn()
