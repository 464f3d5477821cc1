"""The unit layer's promise, kept: no subprocess and no network port (a server, a client
connection, a metrics endpoint) in a unit test. Such a test fails at once here and belongs in
tests/integration (in-process servers) or tests/system (processes)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable

import pytest


def _refuse(what: str) -> Callable[..., None]:
    def refused(*_args: object, **_kwargs: object) -> None:
        raise AssertionError(f"a unit test may not {what}: it belongs in tests/integration or tests/system")

    return refused


@pytest.fixture(autouse=True)
def no_process_and_no_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("start a process"))
    monkeypatch.setattr(socket.socket, "bind", _refuse("listen on a port"))
    monkeypatch.setattr(socket.socket, "connect", _refuse("connect to a port"))
