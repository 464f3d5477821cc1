"""Headless Chromium for the page tests, driven over the DevTools protocol on a pipe.

`--remote-debugging-pipe` makes Chromium read protocol commands from fd 3 and write replies
to fd 4 (NUL-separated JSON), so no port, websocket library or driver is needed. Every wait
is bounded: a command that gets no reply in time fails the test instead of hanging it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",  # tests run as root in containers
    "--disable-gpu",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--hide-scrollbars",
    "--mute-audio",
    "--force-color-profile=srgb",  # screenshots in exact sRGB, so colours can be checked
]


class ChromiumError(RuntimeError):
    """Chromium answered a command with an error, or not at all in time."""


class Browser:
    """One headless Chromium with one page, attached over the DevTools pipe."""

    def __init__(self, width: int = 1200, height: int = 900, timeout: float = 30.0) -> None:
        if CHROMIUM is None:
            raise RuntimeError("chromium is not installed (apt-get install chromium)")
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="whybert-chromium-")
        # Our ends of two pipes; Chromium's ends are moved to fds 3 and 4 at spawn time
        # (posix_spawn's dup2 actions: no preexec_fn, which is unsafe with threads).
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]
        for fd in (to_chrome_r, from_chrome_w):
            os.close(fd)
        args = [CHROMIUM, *FLAGS, "--remote-debugging-pipe", f"--window-size={width},{height}",
                f"--user-data-dir={self._profile.name}", "about:blank"]
        try:
            self._pid = os.posix_spawn(
                CHROMIUM,
                args,
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_DUP2, high[0], 3),
                    (os.POSIX_SPAWN_DUP2, high[1], 4),
                ],
            )
        finally:
            for fd in high:
                os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self.send(
                "Target.attachToTarget", {"targetId": target, "flatten": True}
            )["sessionId"]
            self.send("Page.enable", session=True)
            self.send("Runtime.enable", session=True)
            self.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=True,
            )
        except BaseException:
            self.close()
            raise

    # ---- the protocol ----------------------------------------------------------------------

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = False) -> Any:
        """Send one command and wait (bounded) for its reply; events seen meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise ChromiumError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _read(self, deadline: float, method: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_chrome], [], [], max(left, 0))
            if not ready:
                raise ChromiumError(f"no reply to {method} within {self.timeout} s")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise ChromiumError(f"chromium exited while waiting for {method}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)  # type: ignore[no-any-return]

    # ---- what tests do with a page ---------------------------------------------------------

    def navigate(self, url: str) -> None:
        """Open a URL and wait until its document has loaded."""
        self.send("Page.navigate", {"url": url}, session=True)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    def evaluate(self, expression: str) -> Any:
        """A JavaScript expression's value (awaited when it is a promise)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=True,
        )
        if "exceptionDetails" in result:
            raise ChromiumError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise ChromiumError(f"timed out waiting for {expression!r}")
            time.sleep(0.1)

    def center(self, element: str) -> tuple[float, float]:
        """The middle of an element, given as a JavaScript expression, in page pixels."""
        x, y = self.evaluate(
            f"(() => {{ const r = ({element}).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        return float(x), float(y)

    def hover(self, element: str) -> None:
        """Move the mouse over an element (a JavaScript expression)."""
        x, y = self.center(element)
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y}, session=True)

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        x, y = self.center(f"document.querySelector({json.dumps(selector)})")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
                session=True,
            )

    def type(self, selector: str, text: str) -> None:
        """Focus an element (by clicking it) and type text into it, as a keyboard would."""
        self.click(selector)
        self.send("Input.insertText", {"text": text}, session=True)

    def screenshot(self, selector: str | None = None) -> bytes:
        """A PNG of the viewport, or of one element."""
        params: dict[str, Any] = {"format": "png"}
        if selector is not None:
            box = self.evaluate(
                f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                ".getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()"
            )
            params["clip"] = {"x": box[0], "y": box[1], "width": box[2], "height": box[3],
                              "scale": 1}
        return base64.b64decode(self.send("Page.captureScreenshot", params, session=True)["data"])

    def _reaped(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(self._pid, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid:
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        for fd in (self._to_chrome, self._from_chrome):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._pid, signal.SIGTERM)
        if not self._reaped(10.0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            self._reaped(10.0)
        self._profile.cleanup()


@contextlib.contextmanager
def browser(**kwargs: Any) -> Iterator[Browser]:
    b = Browser(**kwargs)
    try:
        yield b
    finally:
        b.close()
