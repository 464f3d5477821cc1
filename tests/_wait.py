"""Bounded polling: the one way the tests wait for a state.

A test waits on the state it needs (a queue empty, a status seen, a port answering), never
for a fixed time. `wait_for` polls a predicate until it holds or the timeout passes, then
fails with a message that says what never happened; `wait_for_async` is its twin for
coroutines on an event loop. A predicate may raise to stop the wait early (a process that
exited, a call that failed), and its truthy value is returned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

Message = str | Callable[[], str] | None


class WaitTimeout(AssertionError):
    """The predicate never held within the timeout."""


def _fail(predicate: Callable[[], object], timeout: float, message: Message) -> WaitTimeout:
    what = message() if callable(message) else message
    name = getattr(predicate, "__qualname__", repr(predicate))
    return WaitTimeout(what or f"{name} did not hold within {timeout} s")


def wait_for(
    predicate: Callable[[], T], timeout: float = 10.0, step: float = 0.01, message: Message = None
) -> T:
    """Poll `predicate()` every `step` seconds until it is truthy and return its value;
    raise `WaitTimeout` (an AssertionError, with `message`) if it never was within `timeout`."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise _fail(predicate, timeout, message)
        time.sleep(step)


async def wait_for_async(
    predicate: Callable[[], T], timeout: float = 10.0, step: float = 0.01, message: Message = None
) -> T:
    """`wait_for` on an event loop: the loop keeps running between polls."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise _fail(predicate, timeout, message)
        await asyncio.sleep(step)


__all__ = ["WaitTimeout", "wait_for", "wait_for_async"]
