"""`whybert ui`: a small local web page for people to try a whybert server.

One text: type or paste it (or two, to compare them), choose the model and explainer, and
see the prediction with each token highlighted by its attribution; or see SHAP, LIME and
integrated gradients side by side with how well their rankings agree; or watch a SHAP
explanation refine as its budget is spent. The page follows the model's kind: for a
token-classification model it first finds the text's entities (Predict), each underlined
with its type, and explains the one clicked; for a text-pair model it takes a second text,
the pair text, and shows the explanation of both texts. A dataset: load a CSV, choose its
text and label columns (and pair column, for a pair model), and every row goes through the
server's Predict, streamed, with progress; then the metrics of `whybert evaluate`, the
confusion matrix, a table of the rows, the words that drive each label over a sample of
rows, and any row's explanation.

The page's HTTP server uses only the standard library (hardened: `ui/http.py`): it serves
the static page and a JSON API that calls the whybert server through `whybert.Client`, and
renders explanations with `whybert.render`, so the page shows exactly what
`whybert explain --html` writes.

    GET    /                the page (static/index.html, app.js, app.css; /render.css)
    GET    /api/models      {"target", "models": [{name, labels, explainers, kind, ...}], "limits"}
    POST   /api/predict     {"texts": [...], "model", "pairs"}
                            → {"predictions": [{text, pair, label, scores, entities: [...], ...}]}
    POST   /api/explain     {"texts": [...], "model", "explainer", options ("entity", "pairs", ...)}
                            → {"html": "<section>…", "explanations": [{text, label, scores, top, entity}]}
    POST   /api/compare     {"text", "model", "targets", "output", budgets, "k", "entity", "pair"}
                            → {"label", "k", "panels": [{explainer, html, summary}], "agreement"}
    POST   /api/explain/progressive   {"text", "model", "targets", "output", "max_evals", "interval",
                                       "entity", "pair"}
                            → one JSON line per refinement: {evals, final, html, explanation}
    POST   /api/datasets    a CSV (Content-Type: text/csv; ?name=FILE) → {id, columns, rows, preview}
    POST   /api/jobs        {"kind": "predict", "dataset", "text_column", "label_column", "pair_column",
                            "model"}
                            or {"kind": "explain", "source": a predict job, "sample", "explainer", options}
    GET    /api/jobs/ID     {state, done, total, seconds, detail, error}
    GET    /api/jobs/ID/result   a finished job's result
    DELETE /api/jobs/ID     cancel it

Errors come back as {"error": {"code", "message", "field_violations"}} with an HTTP status
that matches the gRPC code. Non-finite numbers travel as the strings "NaN", "Infinity" and
"-Infinity". The page is meant for a trusted machine: it listens on loopback by default,
accepts only JSON or CSV posts (so other sites cannot post forms to it) and, on loopback,
only its own Host header (against DNS rebinding).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc

from .._client import Client
from .._core import EXPLAIN_OPTIONS
from .._exceptions import WhybertError
from .._types import Entity, Explanation, Prediction
from ..agreement import agreement
from ..evaluation import model_info
from ..render import STYLE, html_fragment
from .http import SECURITY_HEADERS, HardenedHandler, HardenedHTTPServer, HTTPError, Limits, dump_json
from .jobs import (
    DatasetStore,
    JobManager,
    check_labelled,
    check_pairs,
    close,
    explain_rows,
    parse_csv,
    predict_rows,
    sample_rows,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = Limits.max_body_bytes
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
SIDE_BY_SIDE = ("shap-partition", "lime", "integrated-gradients")
MAX_INTERVAL = 5.0  # seconds between progressive messages, at most
_JOB_PATH = re.compile(r"/api/jobs/([0-9a-f]{16})(/result)?")


@functools.cache
def _static_file(name: str) -> bytes:
    """A file of the page (a name of `STATIC`), read from the package once."""
    return resources.files(__package__).joinpath("static", name).read_bytes()


class BadRequest(HTTPError):
    """The page's request to this server was malformed (not the whybert server's verdict)."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(status, message)


def _object(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    return body


def _string(body: dict[str, Any], name: str, default: str | None = None) -> str | None:
    value = body.get(name)
    if value in (None, ""):
        return default
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


def _options(body: dict[str, Any], names: tuple[str, ...] = EXPLAIN_OPTIONS) -> dict[str, Any]:
    return {k: body[k] for k in names if body.get(k) not in (None, "")}


def _texts(body: dict[str, Any]) -> list[str]:
    texts = body.get("texts")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise BadRequest("texts must be a non-empty list of strings")
    return texts


def _pairs(body: dict[str, Any], texts: list[str]) -> list[str] | None:
    """The pair texts (a text-pair model's second texts), one per text, or None."""
    pairs = body.get("pairs")
    if pairs is None:
        return None
    if not isinstance(pairs, list) or not all(isinstance(t, str) for t in pairs) or len(pairs) != len(texts):
        raise BadRequest(f"pairs must be a list of {len(texts)} string(s), one pair text per text")
    return pairs


def explain_arguments(body: Any) -> tuple[list[str], str | None, str, dict[str, Any]]:
    """texts, model, explainer and explain options (an entity, pair texts, ...) from the
    JSON the page posts."""
    body = _object(body, {"texts", "model", "explainer", *EXPLAIN_OPTIONS})
    texts = _texts(body)
    _pairs(body, texts)
    model, explainer = _string(body, "model"), _string(body, "explainer", "shap-partition")
    assert explainer is not None
    return texts, model, explainer, _options(body)


def entity_summary(entity: Entity) -> dict[str, Any]:
    return {"text": entity.text, "label": entity.label, "start": entity.start, "end": entity.end, "score": entity.score}


def explanation_summary(e: Explanation) -> dict[str, Any]:
    summary = {
        "text": e.text,
        "label": e.prediction.label,
        "scores": e.prediction.scores,
        "labels": e.labels,
        "explainer": e.explainer,
        "output": e.output,
        "top": e.top_tokens(None, 10),
        "cached": e.cached,
        "model_rows": e.model_rows,
    }
    if e.entity is not None:  # a token model's explained entity, and where it is
        summary.update(entity=entity_summary(e.entity), entity_index=e.entity_index, text_index=e.text_index)
    if e.pair is not None:
        summary["pair"] = e.pair
    return summary


def prediction_summary(text: str, pair: str | None, p: Prediction) -> dict[str, Any]:
    """One input's prediction: its label and scores, or a token model's entities (offsets in
    code points of `text`)."""
    return {
        "text": text,
        "pair": pair,
        "label": p.label,
        "scores": p.scores,
        "entities": [entity_summary(e) for e in p.entities],
        "truncated": p.truncated,
        "token_count": p.token_count,
    }


def joined_pair(e: Explanation) -> Explanation:
    """A text pair's explanation as one text: the explained text, a line break, the
    explained pair text, with the pair's tokens moved after the break; so that
    `whybert.agreement` reads the words of both texts, each at its place (its offsets of
    the pair text would otherwise land on the first text's words). Others: as they are."""
    if e.pair is None or not e.segments:
        return e
    text = e.text[: e.explained_chars or len(e.text)]
    pair = e.pair[: e.explained_pair_chars or len(e.pair)]
    shift = len(text) + 1
    offsets = [
        (start + shift, end + shift) if segment == 1 else (start, end)
        for (start, end), segment in zip(e.offsets, e.segments, strict=True)
    ]
    joined = f"{text}\n{pair}"
    return dataclasses.replace(
        e, text=joined, offsets=offsets, explained_chars=len(joined), pair=None, segments=[], explained_pair_chars=0
    )


def _integer(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if value in (None, ""):
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return value


def _agreement_label(explanations: list[Explanation]) -> str:
    """The label every explanation explains: the predicted one where they all have it."""
    first = explanations[0]
    common = [label for label in first.labels if all(label in e.labels for e in explanations)]
    if not common:
        raise BadRequest("the explainers explained different labels")
    return first.prediction.label if first.prediction.label in common else common[0]


def _refinements(stream: Iterator[Any]) -> Iterator[dict[str, Any]]:
    """Each progressive message rendered; closing this closes the stream (the call)."""
    try:
        for m in stream:
            yield {
                "evals": m.evals,
                "final": bool(m.final),
                "html": html_fragment([m.explanation]),
                "explanation": explanation_summary(m.explanation),
            }
    finally:
        close(stream)


class UIServer:
    """The page's HTTP server; one `Client` (thread-safe) serves every request."""

    def __init__(self, client: Client, host: str = "127.0.0.1", port: int = 0, limits: Limits | None = None) -> None:
        self.client = client
        self.limits = limits or Limits()
        server_class = _HTTPServer6 if ":" in host else _HTTPServer
        self.httpd = server_class((host, port), _Handler, self.limits)
        self.httpd.ui = self
        self.datasets = DatasetStore(max(4, 2 * self.limits.max_jobs))
        self.jobs = JobManager(self.limits)
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
        self.jobs.close()

    def __enter__(self) -> UIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the API ---------------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        models = self.client.list_models()
        limits = self.limits
        return {
            "target": self.client.target,
            "models": [vars(m) for m in models],
            "limits": {
                "max_dataset_bytes": limits.max_dataset_bytes,
                "max_dataset_rows": limits.max_dataset_rows,
                "max_explain_rows": limits.max_explain_rows,
                "progressive": hasattr(self.client, "explain_progressive"),
            },
        }

    def explain(self, body: Any) -> dict[str, Any]:
        texts, model, explainer, options = explain_arguments(body)
        explanations = self._client_call(
            lambda: self.client.explain(texts, model=model, explainer=explainer, **options)
        )
        return {
            "html": html_fragment(explanations, shared_scale=len(explanations) > 1),
            "explanations": [explanation_summary(e) for e in explanations],
        }

    def predict(self, body: Any) -> dict[str, Any]:
        """The texts' predictions: labels and scores, or a token model's entities (the
        page's entity view, before an entity is explained)."""
        body = _object(body, {"texts", "model", "pairs"})
        texts = _texts(body)
        pairs = _pairs(body, texts)
        model = _string(body, "model")
        predictions = self._client_call(lambda: self.client.predict(texts, model=model, pairs=pairs))
        return {
            "predictions": [
                prediction_summary(text, pairs[i] if pairs is not None else None, p)
                for i, (text, p) in enumerate(zip(texts, predictions, strict=True))
            ]
        }

    @staticmethod
    def _client_call(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (TypeError, ValueError) as exc:  # the client's own checks of the options
            raise BadRequest(str(exc)) from exc

    def compare(self, body: Any) -> dict[str, Any]:
        """One text (a token model's entity in it, a pair model's text pair) through SHAP,
        LIME and integrated gradients (those the model has), and how well each two rank the
        words alike (`whybert.agreement`; the words of both texts of a pair)."""
        budgets = ("max_evals", "num_samples", "n_steps")
        body = _object(body, {"text", "model", "targets", "output", "k", "entity", "pair", *budgets})
        text = body.get("text")
        if not isinstance(text, str):
            raise BadRequest("text must be a string")
        pair = body.get("pair")
        if pair is not None and not isinstance(pair, str):
            raise BadRequest("pair must be a string")
        model = _string(body, "model")
        k = _integer(body, "k", 5, 1, 100)
        served = {m.name: m for m in self.client.list_models()}
        info = served.get(model) if model else next((m for m in served.values() if m.is_default), None)
        if info is None:
            raise HTTPError(HTTPStatus.NOT_FOUND, f"the server has no model {model!r}", "NOT_FOUND")
        explainers = [x for x in SIDE_BY_SIDE if x in info.explainers]
        if not explainers:
            raise BadRequest(f"model {info.name!r} has none of the explainers {', '.join(SIDE_BY_SIDE)}")
        common = _options(body, ("targets", "output", "entity"))
        if pair is not None:
            common["pairs"] = [pair]
        own = {"shap-partition": "max_evals", "lime": "num_samples", "integrated-gradients": "n_steps"}

        def run(explainer: str) -> Explanation:
            options = {**common, **_options(body, (own[explainer],))}
            return self._client_call(
                lambda: self.client.explain([text], model=info.name, explainer=explainer, **options)[0]
            )

        with ThreadPoolExecutor(len(explainers), thread_name_prefix="whybert-ui-compare") as pool:
            explanations = list(pool.map(run, explainers))
        label = _agreement_label(explanations)
        pairs = []
        for i, a in enumerate(explanations):
            for b in explanations[i + 1 :]:
                agreed = agreement(joined_pair(a), joined_pair(b), label, k)
                pairs.append({
                    "a": a.explainer, "b": b.explainer, "spearman": agreed.spearman,
                    "top_k_overlap": agreed.top_k_overlap, "k": agreed.k, "words": len(agreed.words),
                })
        return {
            "label": label,
            "k": k,
            "panels": [
                {"explainer": e.explainer, "html": html_fragment([e]), "summary": explanation_summary(e)}
                for e in explanations
            ],
            "agreement": pairs,
        }

    def progressive(self, body: Any) -> Iterator[dict[str, Any]]:
        """A SHAP explanation's refinements (of a token model's entity, of a pair model's
        text pair), as the server sends them, each rendered."""
        body = _object(body, {"text", "model", "targets", "output", "max_evals", "interval", "entity", "pair"})
        text = body.get("text")
        if not isinstance(text, str):
            raise BadRequest("text must be a string")
        if body.get("pair") is not None and not isinstance(body["pair"], str):
            raise BadRequest("pair must be a string")
        interval = body.get("interval", 0.25)
        if not isinstance(interval, int | float) or isinstance(interval, bool) or not 0 <= interval <= MAX_INTERVAL:
            raise BadRequest(f"interval must be a number of seconds from 0 to {MAX_INTERVAL:g}")
        stream_call = getattr(self.client, "explain_progressive", None)
        if stream_call is None:
            raise HTTPError(
                HTTPStatus.NOT_IMPLEMENTED, "this whybert client has no explain_progressive", "UNIMPLEMENTED"
            )
        options = _options(body, ("targets", "output", "max_evals", "entity", "pair"))
        stream = self._client_call(
            lambda: stream_call(text, model=_string(body, "model"), interval=float(interval), **options)
        )
        return _refinements(stream)

    def add_dataset(self, data: bytes, name: str) -> dict[str, Any]:
        dataset = parse_csv(data, name, self.limits)
        self.datasets.add(dataset)
        return dataset.summary()

    def start_job(self, body: Any) -> dict[str, Any]:
        kind = body.get("kind") if isinstance(body, dict) else None
        if kind == "predict":
            body = _object(body, {"kind", "dataset", "text_column", "label_column", "pair_column", "model"})
            dataset = self.datasets.get(body.get("dataset"))
            info = self._client_call(lambda: model_info(self.client, _string(body, "model")))
            columns = (body.get("text_column"), body.get("label_column"))
            pairs = check_pairs(dataset, body.get("pair_column"), info, columns)
            texts, labels = check_labelled(dataset, *columns, info)
            job = self.jobs.start("predict", len(texts), predict_rows(self.client, info, texts, labels, pairs))
        elif kind == "explain":
            # Every label is explained; the rows' pair texts come from the predict job.
            per_text = tuple(o for o in EXPLAIN_OPTIONS if o not in ("targets", "entity", "pairs"))
            body = _object(body, {"kind", "source", "sample", "explainer", *per_text})
            source = self.jobs.get(str(body.get("source")))
            if source.kind != "predict" or source.state != "done":
                raise HTTPError(HTTPStatus.CONFLICT, "explain the rows of a finished predict job", "NOT_READY")
            texts, model, pairs = source.data["texts"], source.data["model"], source.data.get("pairs")
            size = _integer(body, "sample", min(50, self.limits.max_explain_rows), 1, self.limits.max_explain_rows)
            rows = sample_rows(len(texts), size)
            explainer = _string(body, "explainer", "shap-partition")
            assert explainer is not None
            options = _options(body, per_text)
            # The client checks the options before anything starts.
            self._client_call(lambda: self.client.explain_stream_request([texts[rows[0]]], model, explainer, options))
            work = explain_rows(self.client, model, texts, rows, explainer, options, pairs)
            job = self.jobs.start("explain", len(rows), work)
        else:
            raise BadRequest("kind must be 'predict' or 'explain'")
        return job.status()

    def job_status(self, job_id: str) -> dict[str, Any]:
        return self.jobs.get(job_id).status()

    def job_result(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job.result is None:
            raise HTTPError(HTTPStatus.CONFLICT, f"the job is {job.state}: it has no result", "NOT_READY")
        return {"status": job.status(), "result": job.result}

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self.jobs.cancel(job_id).status()


class _HTTPServer(HardenedHTTPServer):
    ui: UIServer


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(HardenedHandler):
    server_version = "whybert-ui"
    server: _HTTPServer

    @property
    def ui(self) -> UIServer:
        return self.server.ui

    def do_GET(self) -> None:
        if not self._host_allowed():
            return
        path = urlsplit(self.path).path
        job = _JOB_PATH.fullmatch(path)
        if path in STATIC:
            name, content_type = STATIC[path]
            self.send_bytes(HTTPStatus.OK, _static_file(name), content_type)
        elif path == "/render.css":
            self.send_bytes(HTTPStatus.OK, STYLE.encode(), "text/css; charset=utf-8")
        elif path == "/api/models":
            self._api(self.ui.models)
        elif job and job.group(2):
            self._api(lambda: self.ui.job_result(job.group(1)))
        elif job:
            self._api(lambda: self.ui.job_status(job.group(1)))
        else:
            self._not_found(path)

    def do_DELETE(self) -> None:
        if not self._host_allowed():
            return
        path = urlsplit(self.path).path
        job = _JOB_PATH.fullmatch(path)
        if job and not job.group(2):
            self._api(lambda: self.ui.cancel_job(job.group(1)))
        else:
            self._not_found(path)

    def do_POST(self) -> None:
        if not self._host_allowed():
            return
        url = urlsplit(self.path)
        routes: dict[str, Callable[[], Any]] = {
            "/api/predict": lambda: self.ui.predict(self.read_json()),
            "/api/explain": lambda: self.ui.explain(self.read_json()),
            "/api/compare": lambda: self.ui.compare(self.read_json()),
            "/api/jobs": lambda: self.ui.start_job(self.read_json()),
            "/api/datasets": lambda: self.ui.add_dataset(self._read_csv(), self._dataset_name(url.query)),
        }
        if url.path == "/api/explain/progressive":
            self._stream(lambda: self.ui.progressive(self.read_json()))
        elif url.path in routes:
            self._api(routes[url.path])
        else:
            self._not_found(url.path)

    def _read_csv(self) -> bytes:
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "text/csv":
            raise HTTPError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the file as Content-Type: text/csv")
        limit = self.limits.max_dataset_bytes
        return self.read_body(limit, "the file", "--max-dataset-bytes")

    @staticmethod
    def _dataset_name(query: str) -> str:
        name = (parse_qs(query).get("name") or ["data.csv"])[0]
        return name[:200]

    def _not_found(self, path: str) -> None:
        self.send_json_error(HTTPError(HTTPStatus.NOT_FOUND, f"nothing at {path}", "NOT_FOUND"))

    def _error(self, call: Callable[[], Any]) -> tuple[Any, HTTPError | None]:
        """The call's result, or the refusal to send for what it raised."""
        try:
            return call(), None
        except HTTPError as exc:
            return None, exc
        except WhybertError as exc:
            status = HTTP_STATUS.get(exc.code, HTTPStatus.BAD_GATEWAY)
            return None, HTTPError(status, exc.message, exc.code.name, exc.field_violations)
        except (TimeoutError, ConnectionError):
            raise  # the page's own connection: handle_one_request ends it
        except Exception as exc:  # a bug here must still answer the page, not drop it
            log.exception("ui request failed")
            return None, HTTPError(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}", "INTERNAL")

    def _api(self, call: Callable[[], Any]) -> None:
        result, error = self._error(call)
        if error is not None:
            self.send_json_error(error)
        else:
            self.send_bytes(HTTPStatus.OK, dump_json(result), "application/json")

    def _stream(self, call: Callable[[], Iterator[dict[str, Any]]]) -> None:
        """One JSON line per item, each sent as it comes. A failure before the first item
        is an ordinary error answer; after it, a last line {"error": ...}. A page that
        leaves ends the stream (and the server call) at the next line written."""
        messages, error = self._error(lambda: iter(call()))
        first = None
        if error is None:
            first, error = self._error(lambda: next(messages, None))
        if error is not None:
            self.send_json_error(error)
            return
        self.start_chunked("application/x-ndjson")
        try:
            item = first
            while item is not None:
                self.write_chunk(dump_json(item) + b"\n")
                item, error = self._error(lambda: next(messages, None))
                if error is not None:
                    body = {"code": error.code, "message": error.message, "field_violations": error.field_violations}
                    self.write_chunk(dump_json({"error": body}) + b"\n")
                    break
            self.end_chunked()
        except OSError:
            self.close_connection = True  # the page left
        finally:
            close(messages)  # cancels the server call when the page left in its middle

    def _host_allowed(self) -> bool:
        allowed = self.ui._allowed_hosts
        if allowed is None or self.headers.get("Host", "") in allowed:
            return True
        self.send_json_error(HTTPError(HTTPStatus.MISDIRECTED_REQUEST, "unexpected Host header", "WRONG_HOST"))
        return False


def serve(client: Client, host: str = "127.0.0.1", port: int = 8080, limits: Limits | None = None) -> None:
    """Serve the page until interrupted (Ctrl-C)."""
    with UIServer(client, host, port, limits) as ui:
        print(f"whybert ui on {ui.url} (server {client.target}); Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            ui.serve_forever()


__all__ = [
    "SECURITY_HEADERS",
    "BadRequest",
    "Limits",
    "UIServer",
    "explain_arguments",
    "joined_pair",
    "prediction_summary",
    "serve",
]
