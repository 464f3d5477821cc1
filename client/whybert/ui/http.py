"""The page's HTTP layer, hardened: the standard library's `ThreadingHTTPServer` with the
limits a server reachable by other programs needs.

- **Bodies** are limited whatever the headers say: a Content-Length over the limit is
  refused (413) before a byte of the body is read; a chunked body is counted as it is
  decoded and refused once over; a body that is neither is refused (411); both at once, or
  several different lengths, are refused (400), so no two readers can disagree on where a
  request ends. After a refusal the connection is closed, and what the client still sends
  is drained for a moment so that it reads the answer instead of a reset.
- **Time**: the request line and headers must arrive within `header_timeout` of the first
  byte being awaited (a deadline, not a per-read timeout: a client sending one byte a
  second cannot hold a thread), the body within `body_timeout`, and each answer must be
  taken within `write_timeout`.
- **Connections**: at most `max_connections` are served at once; one more is answered 503
  at once and closed, by the accepting thread, without starting a thread for it.
- **JSON**: malformed, non-UTF-8, non-standard (NaN, Infinity) or nested deeper than
  `max_json_depth` is a 400; answers write non-finite floats as the strings "NaN",
  "Infinity" and "-Infinity" (JSON has no such numbers; the page reads them back).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    # The explanations colour tokens with style attributes, hence 'unsafe-inline' for styles.
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
LINGER_SECONDS = 1.0  # how long a refused body is drained so the client reads the answer
LINGER_BYTES = 8 << 20
_CHUNK_LINE = 1024  # a chunk-size line: hex digits and extensions
_MAX_TRAILERS = 32
_DIGITS = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True)
class Limits:
    """What one page server accepts; `whybert ui` sets them from its flags."""

    max_body_bytes: int = 1 << 20  # a JSON request
    max_dataset_bytes: int = 4 << 20  # an uploaded CSV (`--max-dataset-bytes`)
    max_dataset_rows: int = 10_000
    max_explain_rows: int = 500  # rows one corpus explanation job may explain
    max_jobs: int = 4  # dataset jobs running at once
    job_idle_seconds: float = 30.0  # a job nobody asked about for this long is cancelled
    max_connections: int = 32
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    write_timeout: float = 30.0
    max_json_depth: int = 32

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")


class HTTPError(Exception):
    """A request this server refuses, with the status and the code the page shows."""

    def __init__(
        self,
        status: HTTPStatus,
        message: str,
        code: str = "INVALID_REQUEST",
        field_violations: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field_violations = list(field_violations)


# ---- JSON both ways ---------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_depth(value: Any) -> int:
    """How deeply arrays and objects nest (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json(data: bytes, max_depth: int) -> Any:
    """The body as JSON, or a 400 saying why not; never an exception of another kind."""
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise HTTPError(HTTPStatus.BAD_REQUEST, f"the body is not UTF-8: {exc}") from None
    except RecursionError:
        raise HTTPError(HTTPStatus.BAD_REQUEST, f"the JSON nests deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, and NaN or Infinity
        raise HTTPError(HTTPStatus.BAD_REQUEST, f"the body is not valid JSON: {exc}") from None
    if json_depth(value) > max_depth:
        raise HTTPError(HTTPStatus.BAD_REQUEST, f"the JSON nests deeper than {max_depth} levels")
    return value


def _finite(value: Any) -> Any:
    """The value with every non-finite float as a string JavaScript's Number() reads."""
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return v
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _finite(value.tolist())
    return value


def dump_json(value: Any) -> bytes:
    """Strict JSON (what JSON.parse accepts), NaN and ±inf as strings."""
    return json.dumps(_finite(value), allow_nan=False, separators=(",", ":")).encode()


# ---- reading under a deadline --------------------------------------------------------------


class _DeadlineReader(io.RawIOBase):
    """The connection's bytes, each read given only the time left until the deadline."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.deadline = math.inf
        self.received = 0  # bytes read since `start`

    def start(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the client was too slow")
        self._sock.settimeout(remaining)
        n = self._sock.recv_into(buffer)
        self.received += n
        return n


# ---- the server --------------------------------------------------------------------------


class HardenedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most `limits.max_connections` of them."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], limits: Limits) -> None:
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        self._open = 0
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    @property
    def open_connections(self) -> int:
        with self._open_lock:
            return self._open

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        with self._open_lock:
            self._open += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._open_lock:
            self._open -= 1
        self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        """503 to a connection over the cap, from the accepting thread, in bounded time."""
        body = dump_json({"error": {
            "code": "TOO_MANY_CONNECTIONS",
            "message": f"the page's server is serving its maximum of {self.limits.max_connections} connections",
            "field_violations": [],
        }})
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        try:
            request.settimeout(1.0)
            request.sendall(head.encode() + body)
        except OSError:
            pass
        self.shutdown_request(request)


class HardenedHandler(BaseHTTPRequestHandler):
    """Reads requests under the server's deadlines and limits; answers errors as JSON."""

    protocol_version = "HTTP/1.1"
    server: HardenedHTTPServer

    @property
    def limits(self) -> Limits:
        return self.server.limits

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain file of the socket, replaced by one under deadlines
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader, 1 << 16)
        self._unread_body = False
        self._answering = False

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("ui request", extra={"client": self.client_address[0], "line": format % args})

    def handle(self) -> None:
        super().handle()
        if self._unread_body:
            self._linger()

    def handle_one_request(self) -> None:
        """One request: its line and headers by the header deadline, then the method."""
        self._reader.start(self.limits.header_timeout)
        self._answering = False
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            # A body nobody reads (an unknown path, a refusal) must not be taken for the next
            # request: the answer then closes the connection (`send_bytes`).
            self._unread_body = bool(self.headers.get_all("Transfer-Encoding")) or any(
                v.strip() != "0" for v in self.headers.get_all("Content-Length", [])
            )
            self._reader.start(self.limits.body_timeout)
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(HTTPStatus.NOT_IMPLEMENTED, f"unsupported method ({self.command!r})")
                return
            method()
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True
            if self._reader.received and not self._answering:  # a request had begun: say why it ends
                self._try_send_error(HTTPStatus.REQUEST_TIMEOUT, "TIMEOUT", "the request did not arrive in time")
        except ConnectionError:  # the client left (reset, broken pipe) before its answer: nobody to tell
            self.close_connection = True

    def _try_send_error(self, status: HTTPStatus, code: str, message: str) -> None:
        with contextlib.suppress(OSError):
            self.send_json_error(HTTPError(status, message, code))

    def _linger(self) -> None:
        """Half-close, then drain what the client still sends for a moment: closing with
        unread bytes would reset the connection before it reads the refusal."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            end, drained = time.monotonic() + LINGER_SECONDS, 0
            while drained < LINGER_BYTES and (left := end - time.monotonic()) > 0:
                self.connection.settimeout(left)
                chunk = self.connection.recv(1 << 16)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass

    # ---- bodies ------------------------------------------------------------------------

    def read_body(self, limit: int, what: str = "the body", flag: str = "") -> bytes:
        """The request's body, at most `limit` bytes, however it is framed."""
        try:
            data = self._read_body(limit, what, flag)
        except TimeoutError:
            self.close_connection = True
            raise HTTPError(HTTPStatus.REQUEST_TIMEOUT, f"{what} did not arrive in time", "TIMEOUT") from None
        except HTTPError:
            self.close_connection = True
            raise
        self._unread_body = False
        return data

    def _read_body(self, limit: int, what: str, flag: str) -> bytes:
        encodings = [e.strip().lower() for v in self.headers.get_all("Transfer-Encoding", []) for e in v.split(",")]
        lengths = {v.strip() for v in self.headers.get_all("Content-Length", [])}
        too_large = f"{what} is over the limit of {limit} bytes" + (f" ({flag})" if flag else "")
        if encodings:
            if lengths:
                raise HTTPError(HTTPStatus.BAD_REQUEST, "both Transfer-Encoding and Content-Length")
            if encodings != ["chunked"]:
                raise HTTPError(HTTPStatus.NOT_IMPLEMENTED, f"unsupported Transfer-Encoding {', '.join(encodings)}")
            return b"".join(self._chunks(limit, too_large))
        if not lengths:
            raise HTTPError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length (or a chunked body) is required")
        if len(lengths) > 1 or not _DIGITS.fullmatch(next(iter(lengths))):
            raise HTTPError(HTTPStatus.BAD_REQUEST, "the Content-Length is not one non-negative number")
        length = int(next(iter(lengths)))
        if length > limit:
            raise HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{too_large}: it says {length} bytes")
        data = self.rfile.read(length)
        if len(data) < length:
            raise HTTPError(HTTPStatus.BAD_REQUEST, f"{what} ended after {len(data)} of {length} bytes")
        return data

    def _chunks(self, limit: int, too_large: str) -> Iterator[bytes]:
        total = 0
        while True:
            line = self.rfile.readline(_CHUNK_LINE + 1)
            if len(line) > _CHUNK_LINE or not line.endswith(b"\n"):
                raise HTTPError(HTTPStatus.BAD_REQUEST, "a malformed chunk-size line")
            size_text = line.split(b";", 1)[0].strip()
            if not re.fullmatch(rb"[0-9a-fA-F]{1,15}", size_text):
                raise HTTPError(HTTPStatus.BAD_REQUEST, "a malformed chunk size")
            size = int(size_text, 16)
            if size == 0:
                break
            total += size
            if total > limit:
                raise HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, too_large)
            data = self.rfile.read(size)
            if len(data) < size or self.rfile.read(2) != b"\r\n":
                raise HTTPError(HTTPStatus.BAD_REQUEST, "a chunk ended early")
            yield data
        for _ in range(_MAX_TRAILERS):  # trailers, ignored, then the empty line
            line = self.rfile.readline(8193)
            if line in (b"\r\n", b"\n"):
                return
            if not line or len(line) > 8192:
                break
        raise HTTPError(HTTPStatus.BAD_REQUEST, "a malformed chunked body ending")

    def read_json(self) -> Any:
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise HTTPError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON (Content-Type: application/json)")
        return parse_json(self.read_body(self.limits.max_body_bytes), self.limits.max_json_depth)

    # ---- answers -----------------------------------------------------------------------

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (a malformed request line, too many or too
        long headers) in the page's JSON form."""
        status = HTTPStatus(code)
        self.close_connection = True
        self.send_json_error(HTTPError(status, message or status.phrase, "INVALID_REQUEST"))

    def send_json_error(self, error: HTTPError) -> None:
        body = {"error": {"code": error.code, "message": error.message, "field_violations": error.field_violations}}
        self.send_bytes(error.status, dump_json(body), "application/json")

    def send_bytes(self, status: HTTPStatus, data: bytes, content_type: str) -> None:
        self._answering = True
        if self._unread_body:
            self.close_connection = True
        self.connection.settimeout(self.limits.write_timeout)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def start_chunked(self, content_type: str) -> None:
        """Headers of an answer written piece by piece (`write_chunk`, then `end_chunked`)."""
        self._answering = True
        if self._unread_body:
            self.close_connection = True
        self.connection.settimeout(self.limits.write_timeout)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


__all__ = [
    "HTTPError",
    "HardenedHTTPServer",
    "HardenedHandler",
    "Limits",
    "dump_json",
    "json_depth",
    "parse_json",
]
