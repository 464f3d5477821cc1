"""Where text preparation runs (`offload.py`): short texts on the event loop, so they never
wait behind large requests' preparation in the thread pool; long ones in a thread."""

from __future__ import annotations

import asyncio
import threading

from whybert_service import offload


async def test_short_texts_are_prepared_on_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    assert await offload.prepare(threading.get_ident, ["a short text", "and another"]) == loop_thread


async def test_long_texts_are_prepared_in_a_thread() -> None:
    loop_thread = threading.get_ident()
    texts = ["x" * (offload.INLINE_CHARS // 2), "y" * (offload.INLINE_CHARS // 2 + 1)]
    assert await offload.prepare(threading.get_ident, texts) != loop_thread


async def test_large_preparation_runs_in_few_threads_and_short_texts_never_wait() -> None:
    release = threading.Event()
    running: list[int] = []
    peak: list[int] = [0]
    lock = threading.Lock()

    def large() -> str:
        with lock:
            running.append(1)
            peak[0] = max(peak[0], len(running))
        release.wait(30)
        with lock:
            running.pop()
        return "large"

    big = ["z" * (offload.INLINE_CHARS + 1)]
    busy = [asyncio.ensure_future(offload.prepare(large, big)) for _ in range(offload.PREPARE_THREADS + 3)]
    try:
        await asyncio.sleep(0.2)
        assert peak[0] == offload.PREPARE_THREADS  # the rest wait their turn
        done = await asyncio.wait_for(offload.prepare(lambda: "prepared", ["a one-word Predict"]), 1)
        assert done == "prepared"
    finally:
        release.set()
    assert await asyncio.gather(*busy) == ["large"] * (offload.PREPARE_THREADS + 3)
    assert peak[0] == offload.PREPARE_THREADS
