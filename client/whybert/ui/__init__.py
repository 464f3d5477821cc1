"""`whybert ui`: a small local web page for people to try a whybert server.

Type or paste a text (or two, to compare them), choose the model and explainer, and see the
prediction with each token highlighted by its attribution. The page's HTTP server uses only
the standard library: it serves the static page and a JSON API that calls the whybert
server through `whybert.Client`, and renders explanations with `whybert.render`, so the page
shows exactly what `whybert explain --html` writes.

    GET  /             the page (static/index.html, app.js, app.css; /render.css)
    GET  /api/models   {"target", "models": [{name, labels, explainers, is_default, ...}]}
    POST /api/explain  {"texts": [...], "model", "explainer", "targets", "output", options}
                       → {"html": "<section>…", "explanations": [{text, label, scores, top}]}

Errors come back as {"error": {"code", "message", "field_violations"}} with an HTTP status
that matches the gRPC code. The page is meant for a trusted machine: it listens on loopback
by default, accepts only JSON posts (so other sites cannot post forms to it) and, on
loopback, only its own Host header (against DNS rebinding).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import socket
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import grpc

from .._client import Client
from .._core import EXPLAIN_OPTIONS
from .._exceptions import WhybertError
from .._types import Explanation
from ..render import STYLE, html_fragment

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
}
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
}
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
SECURITY_HEADERS = {
    # The explanations colour tokens with style attributes, hence 'unsafe-inline' for styles.
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@functools.cache
def _static_file(name: str) -> bytes:
    """A file of the page (a name of `STATIC`), read from the package once."""
    return resources.files(__package__).joinpath("static", name).read_bytes()


class BadRequest(Exception):
    """The page's request to this server was malformed (not the whybert server's verdict)."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


def explain_arguments(body: Any) -> tuple[list[str], str | None, str, dict[str, Any]]:
    """texts, model, explainer and explain options from the JSON the page posts."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    texts = body.get("texts")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise BadRequest("texts must be a non-empty list of strings")
    model, explainer = body.get("model") or None, body.get("explainer") or "shap-partition"
    if not isinstance(model, str | None) or not isinstance(explainer, str):
        raise BadRequest("model and explainer must be strings")
    unknown = sorted(set(body) - {"texts", "model", "explainer", *EXPLAIN_OPTIONS})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    options = {k: body[k] for k in EXPLAIN_OPTIONS if body.get(k) not in (None, "")}
    return texts, model, explainer, options


def explanation_summary(e: Explanation) -> dict[str, Any]:
    return {
        "text": e.text,
        "label": e.prediction.label,
        "scores": e.prediction.scores,
        "labels": e.labels,
        "explainer": e.explainer,
        "output": e.output,
        "top": e.top_tokens(None, 10),
        "cached": e.cached,
    }


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class UIServer:
    """The page's HTTP server; one `Client` (thread-safe) serves every request."""

    def __init__(self, client: Client, host: str = "127.0.0.1", port: int = 0) -> None:
        self.client = client
        server_class = _HTTPServer6 if ":" in host else _HTTPServer
        self.httpd = server_class((host, port), _Handler)
        self.httpd.ui = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None
        # The socket is bound: host and port are fixed from here on.
        self._allowed_hosts = self._compute_allowed_hosts()

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def allowed_hosts(self) -> set[str] | None:
        """Host headers accepted: on loopback only our own names; elsewhere any."""
        return None if self._allowed_hosts is None else set(self._allowed_hosts)

    def _compute_allowed_hosts(self) -> frozenset[str] | None:
        if self.host not in LOOPBACK:
            return None
        return frozenset(f"{name}:{self.port}" for name in ("127.0.0.1", "localhost", "[::1]"))

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> UIServer:
        """Serve from a background thread (for tests and embedding)."""
        self._thread = threading.Thread(target=self.serve_forever, name="whybert-ui", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()

    def __enter__(self) -> UIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the API ---------------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        models = self.client.list_models()
        return {"target": self.client.target, "models": [vars(m) for m in models]}

    def explain(self, body: Any) -> dict[str, Any]:
        texts, model, explainer, options = explain_arguments(body)
        try:
            explanations = self.client.explain(texts, model=model, explainer=explainer, **options)
        except (TypeError, ValueError) as exc:  # the client's own checks of the options
            raise BadRequest(str(exc)) from exc
        return {
            "html": html_fragment(explanations, shared_scale=len(explanations) > 1),
            "explanations": [explanation_summary(e) for e in explanations],
        }


class _Handler(BaseHTTPRequestHandler):
    server_version = "whybert-ui"
    protocol_version = "HTTP/1.1"

    @property
    def ui(self) -> UIServer:
        return self.server.ui  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("ui request", extra={"client": self.client_address[0], "line": format % args})

    def do_GET(self) -> None:
        if not self._host_allowed():
            return
        path = urlsplit(self.path).path
        if path in STATIC:
            name, content_type = STATIC[path]
            self._send(HTTPStatus.OK, _static_file(name), content_type)
        elif path == "/render.css":
            self._send(HTTPStatus.OK, STYLE.encode(), "text/css; charset=utf-8")
        elif path == "/api/models":
            self._api(lambda: self.ui.models())
        else:
            self._send_error(HTTPStatus.NOT_FOUND, "NOT_FOUND", f"no page at {path}")

    def do_POST(self) -> None:
        if not self._host_allowed():
            return
        path = urlsplit(self.path).path
        if path != "/api/explain":
            self._send_error(HTTPStatus.NOT_FOUND, "NOT_FOUND", f"no API at {path}")
            return
        self._api(lambda: self.ui.explain(self._json_body()))

    def _json_body(self) -> Any:
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise BadRequest("send JSON (Content-Type: application/json)",
                             HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise BadRequest("a Content-Length is required", HTTPStatus.LENGTH_REQUIRED) from None
        if length > MAX_BODY_BYTES:
            raise BadRequest(f"the body is over {MAX_BODY_BYTES} bytes",
                             HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        try:
            return json.loads(self.rfile.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from exc

    def _api(self, call: Any) -> None:
        try:
            result = call()
        except BadRequest as exc:
            self.close_connection = True  # the body may be left unread
            self._send_error(exc.status, "INVALID_REQUEST", str(exc))
        except WhybertError as exc:
            status = HTTP_STATUS.get(exc.code, HTTPStatus.BAD_GATEWAY)
            self._send_error(status, exc.code.name, exc.message, exc.field_violations)
        except Exception as exc:  # a bug here must still answer the page, not drop it
            log.exception("ui request failed")
            message = f"{type(exc).__name__}: {exc}"
            self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR, "INTERNAL", message)
        else:
            self._send(HTTPStatus.OK, json.dumps(result).encode(), "application/json")

    def _host_allowed(self) -> bool:
        allowed = self.ui._allowed_hosts
        if allowed is None or self.headers.get("Host", "") in allowed:
            return True
        self._send_error(HTTPStatus.MISDIRECTED_REQUEST, "WRONG_HOST", "unexpected Host header")
        return False

    def _send_error(
        self,
        status: HTTPStatus,
        code: str,
        message: str,
        field_violations: Sequence[tuple[str, str]] = (),
    ) -> None:
        error = {"code": code, "message": message, "field_violations": list(field_violations)}
        self._send(status, json.dumps({"error": error}).encode(), "application/json")

    def _send(self, status: HTTPStatus, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def serve(client: Client, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the page until interrupted (Ctrl-C)."""
    with UIServer(client, host, port) as ui:
        print(f"whybert ui on {ui.url} (server {client.target}); Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            ui.serve_forever()


__all__ = ["BadRequest", "UIServer", "explain_arguments", "serve"]
