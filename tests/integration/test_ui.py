"""`whybert ui`: the page's JSON API against a real server, its dataset jobs, its entity
and text-pair requests (the tiny NER and pair models), and its hardening as a web server
(body limits whatever the headers say, deadlines for slow clients, a connection cap, bad
JSON answered 400). (The page driven end to end in headless Chromium, and the `whybert ui`
command: system/test_ui_chromium.py.)"""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import json
import math
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest
import whybert
from _pairs import make_tiny_pair_bert
from _servers import ServerThread, tiny_settings
from _wait import wait_for
from whybert import Explanation, InvalidArgumentError, ModelInfo, Prediction
from whybert.aggregate import aggregate
from whybert.agreement import agreement, word_spans
from whybert.evaluation import classification_report, confusion_matrix
from whybert.ui import Limits, UIServer
from whybert.ui.jobs import sample_rows

TEXT = "The food was great, but the service was slow."
OTHER = "Awful place, rude staff."


@pytest.fixture(scope="module")
def client(target: str) -> Iterator[whybert.Client]:
    with whybert.Client(target) as c:
        yield c


@pytest.fixture(scope="module")
def ui(client: whybert.Client) -> Iterator[UIServer]:
    with UIServer(client).start() as server:
        yield server


def call(
    ui: UIServer, path: str, body: Any = None, *, raw: bytes | None = None,
    headers: dict[str, str] | None = None, method: str | None = None,
) -> tuple[int, Any]:
    """One request to the page's server: (HTTP status, decoded JSON)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(
        ui.url + path, data=data, headers={"Content-Type": "application/json", **(headers or {})},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_models_lists_what_the_server_serves(ui: UIServer, client: whybert.Client) -> None:
    status, body = call(ui, "api/models")
    assert status == 200
    assert body["target"] == client.target
    assert [(m["name"], m["labels"], m["explainers"]) for m in body["models"]] == [
        (m.name, m.labels, m.explainers) for m in client.list_models()
    ]


def test_explain_renders_what_the_client_gets(ui: UIServer, client: whybert.Client) -> None:
    status, body = call(ui, "api/explain", {"texts": [TEXT, OTHER], "model": "tiny",
                                            "max_evals": 40})
    assert status == 200
    expected = client.explain([TEXT, OTHER], model="tiny", max_evals=40)
    assert [s["label"] for s in body["explanations"]] == [e.prediction.label for e in expected]
    assert [s["top"] for s in body["explanations"]] == [
        [list(t) for t in e.top_tokens(None, 10)] for e in expected
    ]
    assert body["html"].count('<section class="wb-explanation">') == 2


@pytest.mark.parametrize(
    ("request_args", "status", "code"),
    [
        ({"raw": b"texts=x", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
         415, "INVALID_REQUEST"),
        ({"raw": b"{not json"}, 400, "INVALID_REQUEST"),
        ({"body": {"texts": "not a list"}}, 400, "INVALID_REQUEST"),
        ({"body": {"texts": ["x"], "bogus": 1}}, 400, "INVALID_REQUEST"),
        ({"body": {"texts": ["x"], "max_evals": -3}}, 400, "INVALID_REQUEST"),
        ({"body": {"texts": ["x"], "faithfulness": "no"}}, 400, "INVALID_REQUEST"),
        ({"body": {"texts": ["x"], "targets": 5}}, 400, "INVALID_REQUEST"),
        ({"body": {"texts": ["x"], "targets": [1, None]}}, 400, "INVALID_REQUEST"),
        ({"body": {"texts": ["   "]}}, 400, "INVALID_ARGUMENT"),
        ({"body": {"texts": ["x"], "model": "nope"}}, 404, "NOT_FOUND"),
        ({"body": {"texts": ["x"]}, "headers": {"Host": "evil.example:80"}}, 421, "WRONG_HOST"),
        ({"raw": b"{}", "headers": {"Content-Length": str(2 << 20)}}, 413, "INVALID_REQUEST"),
    ],
)
def test_bad_requests_get_a_clear_status(
    ui: UIServer, request_args: dict[str, Any], status: int, code: str
) -> None:
    got_status, body = call(ui, "api/explain", **request_args)
    assert (got_status, body["error"]["code"]) == (status, code)
    assert body["error"]["message"] and "object is not" not in body["error"]["message"]  # no raw Python


def test_server_errors_keep_their_field_violations(ui: UIServer) -> None:
    status, body = call(ui, "api/explain", {"texts": ["fine", " "]})
    assert status == 400
    assert [v[0] for v in body["error"]["field_violations"]] == ["texts[1]"]


def test_unknown_paths_are_404(ui: UIServer) -> None:
    assert call(ui, "nope")[0] == 404
    assert call(ui, "static/../__init__.py")[0] == 404


# ---- datasets and jobs ------------------------------------------------------------------------

LABELLED = [
    ("The food was great, but the service was slow.", "positive"),
    ("Awful place, rude staff.", "negative"),
    ("It was fine, nothing special.", "neutral"),
    ("I loved every minute of it!", "positive"),
    ("Cold soup and a long wait.", "negative"),
    ("The room was clean and quiet.", "positive"),
    ("We will not come back.", "negative"),
    ("Average prices, average taste.", "neutral"),
]


def csv_bytes(rows: list[tuple[str, str]], header: str = "label,text") -> bytes:
    lines = [header] + [f'{label},"{text}"' for text, label in rows]
    return ("\n".join(lines) + "\n").encode()


def upload(ui: UIServer, data: bytes, name: str = "reviews.csv") -> tuple[int, Any]:
    return call(ui, f"api/datasets?name={name}", raw=data, headers={"Content-Type": "text/csv"})


def follow(ui: UIServer, job_id: str, timeout: float = 120) -> dict[str, Any]:
    """Poll the job as the page does until it ends; its last status."""
    def ended() -> dict[str, Any] | None:
        status, body = call(ui, f"api/jobs/{job_id}")
        assert status == 200, body
        return body if body["state"] != "running" else None

    return wait_for(ended, timeout, step=0.05)


def test_a_dataset_job_gives_the_figures_of_whybert_evaluation(ui: UIServer, client: whybert.Client) -> None:
    status, dataset = upload(ui, csv_bytes(LABELLED))
    assert status == 200, dataset
    assert (dataset["columns"], dataset["rows"]) == (["label", "text"], len(LABELLED))
    status, job = call(ui, "api/jobs", {"kind": "predict", "dataset": dataset["id"], "text_column": "text",
                                        "label_column": "label", "model": "tiny"})
    assert status == 200, job
    assert follow(ui, job["id"])["state"] == "done"
    status, body = call(ui, f"api/jobs/{job['id']}/result")
    assert status == 200
    texts = [t for t, _ in LABELLED]
    truth = [label for _, label in LABELLED]
    predicted = [p.label for p in client.predict(texts, model="tiny")]
    metrics = body["result"]["metrics"]
    labels = metrics["labels"]
    assert set(labels) == set(truth) | set(predicted)
    assert metrics["report"] == classification_report(truth, predicted, labels)
    assert metrics["confusion_matrix"] == confusion_matrix(truth, predicted, labels).tolist()
    assert [row[:3] for row in body["result"]["rows"]] == [list(r) for r in zip(texts, truth, predicted, strict=True)]


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (csv_bytes([("good", "happy")]), 400, "'happy' (1 row, first row 1)"),
        (csv_bytes([("   ", "positive")]), 400, "empty text in row(s) 1"),
    ],
)
def test_a_dataset_is_checked_before_anything_is_sent(
    ui: UIServer, data: bytes, status: int, words: str
) -> None:
    _, dataset = upload(ui, data)
    got, body = call(ui, "api/jobs", {"kind": "predict", "dataset": dataset["id"], "text_column": "text",
                                      "label_column": "label", "model": "tiny"})
    assert got == status
    assert words in body["error"]["message"]


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "no header row"),
        (b"text,label\n", 400, "no rows under the header"),
        (b"text,text\nx,y\n", 400, "columns named twice"),
        (b"text,label\nx,y,z\n", 400, "row 1 (line 2) has 3 fields"),
        (b"text,label\n\xff\xfe,x\n", 400, "not UTF-8"),
    ],
)
def test_a_bad_csv_is_refused_clearly(ui: UIServer, data: bytes, status: int, words: str) -> None:
    got, body = upload(ui, data)
    assert got == status
    assert words in body["error"]["message"]


class BlockingClient:
    """A stand-in for `whybert.Client` whose PredictStream hands out one prediction per
    `release`, and records when the page's server closed (cancelled) the stream."""

    target = "stub:0"

    def __init__(self) -> None:
        self.release = threading.Semaphore(0)
        self.waiting = threading.Event()
        self.closed = threading.Event()

    def list_models(self, **_: Any) -> list[ModelInfo]:
        return [ModelInfo("stub", ["negative", "positive"], 128, True, ["shap-partition"])]

    def predict_stream(self, texts: list[str], model: str | None = None, **_: Any) -> Iterator[tuple[int, Prediction]]:
        def stream() -> Iterator[tuple[int, Prediction]]:
            try:
                for i in range(len(texts)):
                    self.waiting.set()
                    self.release.acquire()
                    yield i, Prediction("positive", {"negative": 0.25, "positive": 0.75})
            finally:
                self.closed.set()

        return stream()


@pytest.fixture
def stub_ui() -> Iterator[tuple[UIServer, BlockingClient]]:
    stub = BlockingClient()
    limits = Limits(max_jobs=1, job_idle_seconds=0.5)
    with UIServer(stub, limits=limits).start() as server:  # type: ignore[arg-type]
        yield server, stub
    for _ in range(100):  # let any job still waiting end
        stub.release.release()


def start_stub_job(ui: UIServer) -> str:
    _, dataset = upload(ui, csv_bytes([(t, "positive") for t, _ in LABELLED]))
    status, job = call(ui, "api/jobs", {"kind": "predict", "dataset": dataset["id"], "text_column": "text",
                                        "label_column": "label"})
    assert status == 200, job
    return str(job["id"])


def test_a_job_is_cancelled_when_the_page_asks(stub_ui: tuple[UIServer, BlockingClient]) -> None:
    ui, stub = stub_ui
    job = start_stub_job(ui)
    stub.release.release()
    wait_for(lambda: call(ui, f"api/jobs/{job}")[1]["done"] == 1)
    second = csv_bytes([("x", "positive")])
    _, dataset = upload(ui, second)
    status, body = call(ui, "api/jobs", {"kind": "predict", "dataset": dataset["id"], "text_column": "text",
                                         "label_column": "label"})
    assert (status, body["error"]["code"]) == (429, "TOO_MANY_JOBS")  # max_jobs=1
    status, body = call(ui, f"api/jobs/{job}", method="DELETE")
    assert status == 200
    stub.release.release()  # the stream's next message: the job sees the cancel there
    assert follow(ui, job)["state"] == "cancelled"
    assert stub.closed.is_set()  # the stream was closed: the server call is cancelled
    assert call(ui, f"api/jobs/{job}/result")[0] == 409


def test_a_job_nobody_asks_about_is_cancelled(stub_ui: tuple[UIServer, BlockingClient]) -> None:
    ui, stub = stub_ui
    job_id = start_stub_job(ui)
    job = ui.jobs.find(job_id)
    assert job is not None
    wait_for(stub.waiting.is_set)
    wait_for(job.cancel_requested.is_set, 10, message="the abandoned job was never cancelled")
    stub.release.release()
    wait_for(lambda: job.state == "cancelled")
    assert stub.closed.is_set()


# ---- non-finite numbers ---------------------------------------------------------------------


class NonFiniteClient:
    """A stand-in whose explanation holds NaN and ±inf, as a broken model gives."""

    target = "stub:0"

    def explain(self, texts: list[str], **_: Any) -> list[Explanation]:
        text = texts[0]
        return [Explanation(
            text=text, tokens=["[CLS]", "bad", "model", "here", "[SEP]"],
            offsets=[(0, 0), (0, 3), (4, 9), (10, 14), (0, 0)], special=[True, False, False, False, True],
            values=np.array([[0.0], [math.nan], [math.inf], [-math.inf], [0.0]]),
            base_values=np.array([0.5]), output_values=np.array([math.nan]), labels=["positive"],
            prediction=Prediction("positive", {"positive": math.nan, "negative": math.nan}),
            explainer="shap-partition", output="probability",
        )]


def test_nan_and_infinity_travel_as_strict_json_and_render_as_such() -> None:
    with UIServer(NonFiniteClient()).start() as ui:  # type: ignore[arg-type]
        request = urllib.request.Request(ui.url + "api/explain", data=b'{"texts": ["bad model here"]}',
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    body = json.loads(raw, parse_constant=refuse)  # what JavaScript's JSON.parse accepts
    summary = body["explanations"][0]
    assert summary["scores"] == {"positive": "NaN", "negative": "NaN"}
    assert summary["top"][0][1] in ("NaN", "Infinity", "-Infinity")
    for value in ('data-value="NaN"', 'data-value="Infinity"', 'data-value="-Infinity"'):
        assert value in body["html"]
    for tip in ("bad: nan to positive", "model: +inf to positive", "here: -inf to positive"):
        assert f'data-tip="{tip}"' in body["html"]


# ---- progressive explanations (a stand-in stream: the page's side of it) ----------------------


def scaled(e: Explanation, factor: float) -> Explanation:
    return dataclasses.replace(e, values=e.values * factor)


class ProgressiveClient:
    """A stand-in for a client with `explain_progressive`: `messages` refinements of one
    explanation (None: without end), or a refusal before the first; records the close."""

    target = "stub:0"

    def __init__(self, messages: int | None, refuse: bool = False) -> None:
        self.messages, self.refuse = messages, refuse
        self.closed = threading.Event()
        self.asked: dict[str, Any] = {}

    def explain_progressive(self, text: str, **options: Any) -> Iterator[Any]:
        self.asked = {"text": text, **options}
        base = NonFiniteClient().explain([text])[0]
        base = dataclasses.replace(base, values=np.array([[0.0], [0.1], [0.2], [-0.3], [0.0]]))

        def stream() -> Iterator[Any]:
            try:
                if self.refuse:
                    raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "bad text", [("text", "bad")])
                for k in itertools.count(1):
                    final = self.messages is not None and k == self.messages
                    yield SimpleNamespace(explanation=scaled(base, k), evals=10 * k, final=final)
                    if final:
                        return
            finally:
                self.closed.set()

        return stream()


def progressive(ui: UIServer, body: dict[str, Any]) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection(ui.host, ui.port, timeout=30)
    connection.request("POST", "/api/explain/progressive", json.dumps(body),
                       {"Content-Type": "application/json"})
    return connection.getresponse()


def test_progressive_refinements_are_streamed_one_json_line_each() -> None:
    stub = ProgressiveClient(3)
    with UIServer(stub).start() as ui:  # type: ignore[arg-type]
        answer = progressive(ui, {"text": "bad model here", "model": "m", "max_evals": 30, "interval": 0})
        assert answer.status == 200
        assert answer.getheader("Content-Type") == "application/x-ndjson"
        lines = [json.loads(line) for line in answer.read().splitlines()]
    assert stub.asked == {"text": "bad model here", "model": "m", "max_evals": 30, "interval": 0.0}
    assert [(m["evals"], m["final"]) for m in lines] == [(10, False), (20, False), (30, True)]
    assert 'data-value="0.6000000000000001"' in lines[2]["html"]  # 0.2 × 3
    assert stub.closed.is_set()


def test_progressive_refused_before_the_first_message_is_an_ordinary_error() -> None:
    with UIServer(ProgressiveClient(3, refuse=True)).start() as ui:  # type: ignore[arg-type]
        answer = progressive(ui, {"text": "x"})
        body = json.loads(answer.read())
    assert (answer.status, body["error"]["code"]) == (400, "INVALID_ARGUMENT")
    assert body["error"]["field_violations"] == [["text", "bad"]]


def test_a_page_that_leaves_ends_the_progressive_stream() -> None:
    stub = ProgressiveClient(None)  # refinements without end
    with UIServer(stub).start() as ui:  # type: ignore[arg-type]
        with connect(ui) as sock:
            sock.sendall(head(ui, "POST", "/api/explain/progressive", {
                "Content-Type": "application/json", "Content-Length": "13"}) + b'{"text": "x"}')
            assert sock.recv(1 << 16).startswith(b"HTTP/1.1 200")
        wait_for(stub.closed.is_set, 30, message="the stream was not closed after the page left")


def test_progressive_without_the_client_call_says_so(ui: UIServer, client: whybert.Client) -> None:
    if hasattr(client, "explain_progressive"):
        pytest.skip("this whybert client has explain_progressive")
    status, body = call(ui, "api/explain/progressive", {"text": "x"})
    assert (status, body["error"]["code"]) == (501, "UNIMPLEMENTED")


# ---- entities and text pairs (the tiny NER and pair models) ------------------------------------

NER_TEXT = "Angela Merkel visited Paris and met the United Nations in New York."
PREMISE = "the cat sat on the mat while dogs barked loudly"
HYPOTHESIS = "a dog barked at strangers"


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_pair_bert(tmp_path_factory.mktemp("tiny-pair-bert"))


@pytest.fixture(scope="module")
def kinds_client(tiny_model_dir: Path, ner_dir: Path, pair_dir: Path) -> Iterator[whybert.Client]:
    """A client of a server of the three kinds: 'tiny' (sequence, the default), 'ner' (token
    classification), 'pairs' (text pairs)."""
    models = (f"tiny={tiny_model_dir}", f"ner={ner_dir}", f"pairs={pair_dir}")
    settings = tiny_settings(tiny_model_dir, model=models, default_model="tiny")
    with ServerThread(settings) as server, whybert.Client(server.target) as c:
        yield c


@pytest.fixture(scope="module")
def kinds(kinds_client: whybert.Client) -> Iterator[UIServer]:
    with UIServer(kinds_client).start() as server:
        yield server


def token_values(html: str) -> list[float]:
    """The value of every highlighted token of a rendering, in order."""
    return [float(v) for v in re.findall(r'class="wb-tok"[^>]*data-value="([^"]+)"', html)]


def shown_values(e: Explanation) -> list[float]:
    """The values the rendering shows: the first explained label's, special tokens left out,
    the text's tokens then the pair text's (each in offset order)."""
    order = sorted(
        (i for i, special in enumerate(e.special) if not special),
        key=lambda i: (e.segments[i] if e.segments else 0, e.offsets[i]),
    )
    return [float(e.values[i, 0]) for i in order]


def test_models_carry_their_kind(kinds: UIServer) -> None:
    status, body = call(kinds, "api/models")
    assert status == 200
    assert {m["name"]: m["kind"] for m in body["models"]} == {"tiny": "sequence", "ner": "token", "pairs": "text-pair"}


def test_predict_gives_a_token_models_entities(kinds: UIServer, kinds_client: whybert.Client) -> None:
    status, body = call(kinds, "api/predict", {"texts": [NER_TEXT], "model": "ner"})
    assert status == 200, body
    [prediction] = body["predictions"]
    expected = kinds_client.predict(NER_TEXT, model="ner")[0].entities
    assert len(expected) >= 3
    assert prediction["entities"] == [
        {"text": e.text, "label": e.label, "start": e.start, "end": e.end, "score": e.score} for e in expected
    ]
    assert [NER_TEXT[e["start"] : e["end"]] for e in prediction["entities"]] == [e.text for e in expected]
    assert (prediction["text"], prediction["pair"]) == (NER_TEXT, None)


def test_predict_takes_pairs(kinds: UIServer, kinds_client: whybert.Client) -> None:
    status, body = call(kinds, "api/predict", {"texts": [PREMISE], "pairs": [HYPOTHESIS], "model": "pairs"})
    assert status == 200, body
    expected = kinds_client.predict(PREMISE, model="pairs", pairs=HYPOTHESIS)[0]
    [prediction] = body["predictions"]
    assert (prediction["label"], prediction["scores"], prediction["pair"]) == (
        expected.label, expected.scores, HYPOTHESIS
    )


@pytest.mark.parametrize(
    ("explainer", "options"),
    [
        ("shap-partition", {"max_evals": 40}),
        ("lime", {"num_samples": 200}),
        ("integrated-gradients", {"n_steps": 8}),
        ("attention", {}),
    ],
)
def test_an_entity_is_explained_as_the_client_explains_it(
    kinds: UIServer, kinds_client: whybert.Client, explainer: str, options: dict[str, Any]
) -> None:
    body = {"texts": [NER_TEXT], "model": "ner", "explainer": explainer, "entity": 2, "targets": "predicted", **options}
    status, answer = call(kinds, "api/explain", body)
    assert status == 200, answer
    [expected] = kinds_client.explain(NER_TEXT, model="ner", explainer=explainer, entity=2, **options)
    entity = expected.entity
    assert entity is not None
    [summary] = answer["explanations"]
    assert summary["entity"] == {
        "text": entity.text, "label": entity.label, "start": entity.start, "end": entity.end, "score": entity.score
    }
    assert (summary["entity_index"], summary["text_index"], summary["labels"]) == (2, 0, [entity.label])
    html = answer["html"]
    assert f'class="wb-entity" data-entity="{entity.label}"' in html  # the explained entity, underlined
    assert f'<span class="wb-label">{entity.text}</span>' in html  # and named
    assert token_values(html) == pytest.approx(shown_values(expected), abs=1e-9)


def test_an_entity_by_its_span(kinds: UIServer, kinds_client: whybert.Client) -> None:
    entity = kinds_client.predict(NER_TEXT, model="ner")[0].entities[1]
    status, answer = call(
        kinds, "api/explain", {"texts": [NER_TEXT], "model": "ner", "entity": [entity.start, entity.end],
                               "max_evals": 40}
    )
    assert status == 200, answer
    assert answer["explanations"][0]["entity_index"] == 1


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"texts": [NER_TEXT], "model": "ner"}, 400, "INVALID_ARGUMENT", "entity"),
        ({"texts": [NER_TEXT], "model": "ner", "entity": "first"}, 400, "INVALID_REQUEST", None),
        ({"texts": [NER_TEXT], "model": "ner", "entity": 0, "targets": "all"}, 400, "INVALID_ARGUMENT", "target_mode"),
        ({"texts": ["x"], "model": "tiny", "pairs": ["y"]}, 400, "INVALID_ARGUMENT", "pairs"),
        ({"texts": ["x"], "model": "tiny", "entity": 0}, 400, "INVALID_ARGUMENT", "entity"),
        ({"texts": [PREMISE], "model": "pairs"}, 400, "INVALID_ARGUMENT", "pairs"),
        ({"texts": [PREMISE], "model": "pairs", "pairs": [HYPOTHESIS, "two"]}, 400, "INVALID_REQUEST", None),
        ({"texts": [PREMISE], "model": "pairs", "pairs": [3]}, 400, "INVALID_REQUEST", None),
        ({"texts": [PREMISE], "model": "pairs", "pairs": "   "}, 400, "INVALID_REQUEST", None),
    ],
)
def test_entity_and_pair_requests_that_do_not_fit_the_model_are_refused(
    kinds: UIServer, body: dict[str, Any], status: int, code: str, field: str | None
) -> None:
    got, answer = call(kinds, "api/explain", {**body, "max_evals": 40})
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert answer["error"]["message"]
    if field is not None:
        assert field in [v[0] for v in answer["error"]["field_violations"]]


def test_predict_refuses_a_pair_for_a_single_text_model(kinds: UIServer) -> None:
    got, answer = call(kinds, "api/predict", {"texts": ["x"], "pairs": ["y"], "model": "tiny"})
    assert (got, answer["error"]["code"]) == (400, "INVALID_ARGUMENT")
    assert "single texts" in answer["error"]["message"]
    got, answer = call(kinds, "api/predict", {"texts": ["x"], "model": "tiny", "entity": 0})
    assert (got, answer["error"]["code"]) == (400, "INVALID_REQUEST")


def test_a_pair_is_explained_as_the_client_explains_it(kinds: UIServer, kinds_client: whybert.Client) -> None:
    body = {"texts": [PREMISE], "pairs": [HYPOTHESIS], "model": "pairs", "max_evals": 40}
    status, answer = call(kinds, "api/explain", body)
    assert status == 200, answer
    [expected] = kinds_client.explain(PREMISE, model="pairs", pairs=[HYPOTHESIS], max_evals=40)
    assert set(expected.segments) == {0, 1}
    [summary] = answer["explanations"]
    assert (summary["text"], summary["pair"], summary["label"]) == (PREMISE, HYPOTHESIS, expected.prediction.label)
    html = answer["html"]
    assert html.count('class="wb-pair-sep"') == 1  # the page splits the rendering there: one row per text
    first = html.split('class="wb-pair-sep"')[0]
    text_tokens = [i for i, s in enumerate(expected.segments) if s == 0 and not expected.special[i]]
    assert len(token_values(first)) == len(text_tokens)
    assert token_values(html) == pytest.approx(shown_values(expected), abs=1e-9)


def test_side_by_side_of_an_entity(kinds: UIServer, kinds_client: whybert.Client) -> None:
    budgets = {"max_evals": 40, "num_samples": 200, "n_steps": 8}
    status, answer = call(kinds, "api/compare", {"text": NER_TEXT, "model": "ner", "entity": 1, **budgets})
    assert status == 200, answer
    explainers = ["shap-partition", "lime", "integrated-gradients"]
    assert [p["explainer"] for p in answer["panels"]] == explainers
    own = {"shap-partition": {"max_evals": 40}, "lime": {"num_samples": 200}, "integrated-gradients": {"n_steps": 8}}
    expected = [kinds_client.explain(NER_TEXT, model="ner", explainer=x, entity=1, **own[x])[0] for x in explainers]
    label = expected[0].labels[0]
    assert answer["label"] == label
    assert all(p["summary"]["entity_index"] == 1 for p in answer["panels"])
    agreed = agreement(expected[0], expected[1], label, 5)
    assert answer["agreement"][0]["spearman"] == pytest.approx(agreed.spearman, nan_ok=True)


def test_side_by_side_of_a_pair_reads_the_words_of_both_texts(kinds: UIServer) -> None:
    budgets = {"max_evals": 40, "num_samples": 200, "n_steps": 8}
    status, answer = call(kinds, "api/compare", {"text": PREMISE, "pair": HYPOTHESIS, "model": "pairs", **budgets})
    assert status == 200, answer
    words = len(word_spans(PREMISE)) + len(word_spans(HYPOTHESIS))
    assert [p["words"] for p in answer["agreement"]] == [words] * 3
    assert all('class="wb-pair-sep"' in p["html"] for p in answer["panels"])


def test_progressive_explains_an_entity_and_a_pair(kinds: UIServer, kinds_client: whybert.Client) -> None:
    for body, expected in (
        ({"text": NER_TEXT, "model": "ner", "entity": 0},
         kinds_client.explain(NER_TEXT, model="ner", entity=0, max_evals=60)[0]),
        ({"text": PREMISE, "pair": HYPOTHESIS, "model": "pairs"},
         kinds_client.explain(PREMISE, model="pairs", pairs=[HYPOTHESIS], max_evals=60)[0]),
    ):
        answer = progressive(kinds, {**body, "max_evals": 60, "interval": 0})
        assert answer.status == 200
        last = [json.loads(line) for line in answer.read().splitlines()][-1]
        assert last["final"]
        assert token_values(last["html"]) == pytest.approx(shown_values(expected), abs=1e-9)
        assert last["explanation"].get("pair") == body.get("pair")
        assert last["explanation"].get("entity_index") == body.get("entity")


PAIR_ROWS = [
    ("the cat sat on the mat", "a cat sat", "entailment"),
    ("dogs barked loudly at strangers", "the dogs were silent", "contradiction"),
    ("it never rains in London", "London is wet", "contradiction"),
    ("the movie was wonderful", "it is a question", "neutral"),
    ("Paris in 1999", "Paris in 1999", "entailment"),
    ("is it true", "the answer is 42", "neutral"),
]


def pair_csv(rows: list[tuple[str, str, str]]) -> bytes:
    return ("text,pair,label\n" + "".join(f'"{t}","{p}",{label}\n' for t, p, label in rows)).encode()


def test_a_dataset_with_a_pair_column_runs_through_a_pair_model(kinds: UIServer, kinds_client: whybert.Client) -> None:
    _, dataset = upload(kinds, pair_csv(PAIR_ROWS))
    body = {"kind": "predict", "dataset": dataset["id"], "text_column": "text", "label_column": "label",
            "pair_column": "pair", "model": "pairs"}
    status, job = call(kinds, "api/jobs", body)
    assert status == 200, job
    assert follow(kinds, job["id"])["state"] == "done"
    status, answer = call(kinds, f"api/jobs/{job['id']}/result")
    texts, pairs, truth = (list(column) for column in zip(*PAIR_ROWS, strict=True))
    predicted = [p.label for p in kinds_client.predict(texts, model="pairs", pairs=pairs)]
    result = answer["result"]
    assert [row[:3] for row in result["rows"]] == [list(r) for r in zip(texts, truth, predicted, strict=True)]
    assert result["pairs"] == pairs
    assert result["metrics"]["accuracy"] == pytest.approx(np.mean(np.array(truth) == np.array(predicted)))

    status, corpus = call(kinds, "api/jobs", {"kind": "explain", "source": job["id"], "sample": 3, "max_evals": 40})
    assert status == 200, corpus
    assert follow(kinds, corpus["id"])["state"] == "done"
    _, answer = call(kinds, f"api/jobs/{corpus['id']}/result")
    rows = sample_rows(len(PAIR_ROWS), 3)
    pooled = aggregate(
        kinds_client.explain([texts[r] for r in rows], model="pairs", pairs=[pairs[r] for r in rows],
                             targets="all", max_evals=40),
        lowercase=True,
    )
    for label in pooled.labels:
        assert [w["word"] for w in answer["result"]["top"][label]] == [w.word for w in pooled.top(label, k=10)]
    pair_only = {w.word for label in pooled.labels for w in pooled.for_label(label)} - {
        w.lower() for r in rows for w in re.findall(r"\w+", texts[r])
    }
    assert pair_only  # words only the pair texts hold were explained too


@pytest.mark.parametrize(
    ("model", "columns", "words"),
    [
        ("pairs", {}, "model 'pairs' classifies text pairs: choose the pair column among text, pair, label"),
        ("pairs", {"pair_column": "label"}, "the pair column must differ"),
        ("tiny", {"pair_column": "pair"}, "model 'tiny' classifies single texts: it takes no pair column"),
        ("ner", {}, "model 'ner' finds entities"),
    ],
)
def test_a_dataset_and_its_model_must_fit(kinds: UIServer, model: str, columns: dict[str, str], words: str) -> None:
    _, dataset = upload(kinds, pair_csv(PAIR_ROWS))
    body = {"kind": "predict", "dataset": dataset["id"], "text_column": "text", "label_column": "label",
            "model": model, **columns}
    status, answer = call(kinds, "api/jobs", body)
    assert status == 400
    assert words in answer["error"]["message"]


def test_an_empty_pair_text_names_its_row(kinds: UIServer) -> None:
    _, dataset = upload(kinds, pair_csv([*PAIR_ROWS[:2], ("a text", " ", "neutral")]))
    body = {"kind": "predict", "dataset": dataset["id"], "text_column": "text", "label_column": "label",
            "pair_column": "pair", "model": "pairs"}
    status, answer = call(kinds, "api/jobs", body)
    assert (status, answer["error"]["message"]) == (400, "empty pair text in row(s) 3")


# ---- hardening ------------------------------------------------------------------------------

SMALL_BODY = 64 << 10


@pytest.fixture(scope="module")
def tight(client: whybert.Client) -> Iterator[UIServer]:
    """A page server with small limits and short deadlines."""
    limits = Limits(max_body_bytes=SMALL_BODY, max_dataset_bytes=SMALL_BODY, header_timeout=1.0,
                    body_timeout=3.0)
    with UIServer(client, limits=limits).start() as server:
        yield server


def connect(ui: UIServer) -> socket.socket:
    return socket.create_connection((ui.host, ui.port), timeout=30)


def head(ui: UIServer, method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{ui.port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def response(sock: socket.socket) -> tuple[int, Any]:
    """The next answer on a raw connection: (status, decoded JSON)."""
    answer = http.client.HTTPResponse(sock)
    answer.begin()
    return answer.status, json.loads(answer.read())


def closed(sock: socket.socket) -> bool:
    """The server closed the connection (what it sends next is the end of the stream)."""
    try:
        return sock.recv(1 << 16) == b""
    except ConnectionResetError:
        return True


def test_a_content_length_over_the_limit_is_refused_before_the_body(tight: UIServer) -> None:
    """The header says a terabyte; 1 KiB of it is sent and the answer comes at once."""
    with connect(tight) as sock:
        sock.sendall(head(tight, "POST", "/api/explain", {
            "Content-Type": "application/json", "Content-Length": str(10**12)}) + b"[" * 1024)
        status, body = response(sock)
        assert status == 413
        assert f"over the limit of {SMALL_BODY} bytes: it says {10**12} bytes" in body["error"]["message"]
        assert closed(sock)


def test_a_lying_content_length_cannot_make_the_server_read_more(tight: UIServer) -> None:
    """Fewer bytes than announced: the body deadline ends the wait (408); more bytes than
    announced: only the announced ones are the body."""
    with connect(tight) as sock:
        sock.sendall(head(tight, "POST", "/api/jobs", {
            "Content-Type": "application/json", "Content-Length": "1000"}) + b'{"kind": ')
        status, body = response(sock)
        assert (status, body["error"]["code"]) == (408, "TIMEOUT")
        assert closed(sock)
    with connect(tight) as sock:
        data = b'{"kind": "neither"}'
        sock.sendall(head(tight, "POST", "/api/jobs", {
            "Content-Type": "application/json", "Content-Length": str(len(data))}) + data + b"x" * SMALL_BODY * 4)
        status, body = response(sock)
        assert status == 400 and "kind must be" in body["error"]["message"]


def test_a_chunked_body_is_counted_as_it_comes(tight: UIServer) -> None:
    """Chunked bodies are read (a small one works) and refused once over the limit, without
    waiting for their end (this one never ends)."""
    with connect(tight) as sock:
        data = b'{"kind": "neither"}'
        sock.sendall(head(tight, "POST", "/api/jobs", {
            "Content-Type": "application/json", "Transfer-Encoding": "chunked"})
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
        status, body = response(sock)
        assert status == 400 and "kind must be" in body["error"]["message"]
    with connect(tight) as sock:
        chunk = b"[" * (16 << 10)
        sock.sendall(head(tight, "POST", "/api/explain", {
            "Content-Type": "application/json", "Transfer-Encoding": "chunked"}))
        for _ in range(SMALL_BODY // len(chunk) + 1):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, body = response(sock)
        assert status == 413
        assert closed(sock)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 411),
        ({"Content-Length": "5", "Transfer-Encoding": "chunked"}, 400),
        ({"Content-Length": "-1"}, 400),
        ({"Content-Length": "0x10"}, 400),
        ({"Transfer-Encoding": "gzip"}, 501),
    ],
)
def test_bodies_framed_ambiguously_are_refused(tight: UIServer, headers: dict[str, str], status: int) -> None:
    with connect(tight) as sock:
        sock.sendall(head(tight, "POST", "/api/explain", {"Content-Type": "application/json", **headers}))
        got, body = response(sock)
        assert got == status, body
        assert closed(sock)


def test_a_body_nobody_reads_is_not_taken_for_a_request(tight: UIServer) -> None:
    """A post to no API: its body (here a request of its own) is never parsed; the answer
    closes the connection."""
    smuggled = f"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1:{tight.port}\r\n\r\n".encode()
    with connect(tight) as sock:
        sock.sendall(head(tight, "POST", "/nowhere", {
            "Content-Type": "application/json", "Content-Length": str(len(smuggled))}) + smuggled)
        status, _ = response(sock)
        assert status == 404
        assert closed(sock)


def test_slow_headers_time_out(tight: UIServer) -> None:
    """A slowloris client, one header line every 0.1 s, is cut off at the header deadline."""
    stop = threading.Event()
    with connect(tight) as sock:
        def drip() -> None:
            n = 0
            with_header = head(tight, "POST", "/api/explain", {}).removesuffix(b"\r\n")
            try:
                sock.sendall(with_header)
                while not stop.wait(0.1):  # the attack's own pace
                    sock.sendall(b"X-Slow-%d: 1\r\n" % n)
                    n += 1
            except OSError:
                return

        dripper = threading.Thread(target=drip, daemon=True)
        began = time.monotonic()
        dripper.start()
        try:
            status, body = response(sock)
        finally:
            stop.set()
            dripper.join()
        assert (status, body["error"]["code"]) == (408, "TIMEOUT")
        assert time.monotonic() - began < tight.limits.header_timeout + 5


def test_an_idle_connection_is_closed(tight: UIServer) -> None:
    with connect(tight) as sock:
        assert closed(sock)  # within the header deadline (the socket's own timeout is 30 s)


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("path", ["api/explain", "api/predict", "api/compare", "api/jobs", "api/explain/progressive"])
@pytest.mark.parametrize(
    "raw",
    [
        DEEP,
        b'{"a":' * 40 + b"1" + b"}" * 40,  # deeper than 32, shallower than Python's recursion limit
        b"{not json",
        b'{"texts": ["x"]',
        b"\xff\xfe{}",
        b'{"texts": [NaN]}',
        b'"a string"',
        b"[]",
        b'{"texts": [1], "text": 2}',
        b'{"texts": ["x"], "text": "x", "max_evals": 1e999}',
        b'{"texts": ["x"], "text": "x", "targets": 5, "kind": "predict"}',
        b'{"texts": ["x"], "text": "x", "output": [], "kind": "explain", "source": []}',
    ],
)
def test_bad_json_is_400_never_500(ui: UIServer, path: str, raw: bytes) -> None:
    status, body = call(ui, path, raw=raw)
    assert status in (400, 404, 409), body  # 404/409: an explain job of no (finished) predict job
    assert body["error"]["message"]


@pytest.fixture
def capped(client: whybert.Client) -> Iterator[UIServer]:
    with UIServer(client, limits=Limits(max_connections=2, header_timeout=60)).start() as server:
        yield server


def test_connections_over_the_cap_are_refused_at_once(capped: UIServer) -> None:
    held = [connect(capped) for _ in range(2)]
    try:
        wait_for(lambda: capped.httpd.open_connections == 2)
        with connect(capped) as extra:
            extra.sendall(head(capped, "GET", "/api/models", {}))
            status, body = response(extra)
            assert (status, body["error"]["code"]) == (503, "TOO_MANY_CONNECTIONS")
        held.pop().close()
        wait_for(lambda: capped.httpd.open_connections < 2)
        assert call(capped, "api/models")[0] == 200
    finally:
        for sock in held:
            sock.close()


def test_a_dataset_over_the_limit_is_refused_with_the_flag_named(tight: UIServer) -> None:
    status, body = upload(tight, b"text,label\n" + b"x,positive\n" * (SMALL_BODY // 10))
    assert status == 413
    assert f"the file is over the limit of {SMALL_BODY} bytes (--max-dataset-bytes)" in body["error"]["message"]
