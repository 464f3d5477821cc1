"""`whybert ui`: the page's JSON API against a real server, the page driven end to end in
headless Chromium (type, submit, see highlighted tokens; compare; errors), and the CLI command
that serves it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import whybert
from _chromium import CHROMIUM, browser
from whybert.render import BLUE, RED
from whybert.ui import UIServer

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
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request to the page's server: (HTTP status, decoded JSON)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(
        ui.url + path, data=data, headers={"Content-Type": "application/json", **(headers or {})}
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
    assert body["error"]["message"]


def test_server_errors_keep_their_field_violations(ui: UIServer) -> None:
    status, body = call(ui, "api/explain", {"texts": ["fine", " "]})
    assert status == 400
    assert [v[0] for v in body["error"]["field_violations"]] == ["texts[1]"]


def test_unknown_paths_are_404(ui: UIServer) -> None:
    assert call(ui, "nope")[0] == 404
    assert call(ui, "static/../__init__.py")[0] == 404


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/test installs it)")
def test_page_end_to_end_in_chromium(ui: UIServer, client: whybert.Client) -> None:
    """Type a text, submit, see its tokens highlighted; compare two texts; see an error."""
    tokens = "[...document.querySelectorAll('#results .wb-tok')]"
    with browser(width=1300, height=900) as b:
        b.navigate(ui.url)
        b.wait_for("document.querySelectorAll('#model option').length > 0")
        assert b.evaluate("document.querySelector('#model').value") == "tiny"
        b.type("#text-a", TEXT)
        b.type("#budget", "80")  # shap's max_evals
        b.click("#submit")
        b.wait_for(f"{tokens}.length > 0", timeout=120)

        expected = client.explain(TEXT, model="tiny", max_evals=80)[0]
        j = expected.labels.index(expected.prediction.label)
        assert b.evaluate("document.querySelector('#results .wb-label').textContent") == (
            expected.prediction.label
        )
        assert b.evaluate("document.querySelector('#results .wb-text').textContent") == TEXT
        shown = b.evaluate(
            f"{tokens}.map(s => [s.textContent, getComputedStyle(s).backgroundColor])"
        )
        visible = [i for i, special in enumerate(expected.special) if not special]
        assert [piece for piece, _ in shown] == [TEXT[slice(*expected.offsets[i])] for i in visible]
        top = int(np.argmax(np.abs(expected.values[visible, j])))
        assert shown[top][1] == "rgb({}, {}, {})".format(
            *(RED if expected.values[visible[top], j] > 0 else BLUE)
        )

        b.click("#compare")
        b.type("#text-b", OTHER)
        b.click("#submit")
        b.wait_for("document.querySelectorAll('#results .wb-explanation').length === 2", 120)
        texts = b.evaluate(
            "[...document.querySelectorAll('#results .wb-text')].map(p => p.textContent)"
        )
        assert texts == [TEXT, OTHER]
        assert b.evaluate("document.querySelector('#results').classList.contains('two')")

        b.evaluate("document.querySelector('#text-a').value = ''")
        b.click("#submit")
        error = b.wait_for("!document.querySelector('#error').hidden"
                           " && document.querySelector('#error').textContent", 60)
        assert "INVALID_ARGUMENT" in error and "texts[0]" in error


def test_cli_ui_serves_the_page_until_interrupted(target: str) -> None:
    """`whybert ui --port 0` prints its address, serves the page, and exits 0 on Ctrl-C."""
    command = [sys.executable, "-m", "whybert.cli", "ui", "--target", target, "--port", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            url = line.split(" on ", 1)[1].split()[0]
            assert url.startswith("http://127.0.0.1:")
            with urllib.request.urlopen(url, timeout=30) as response:
                assert b'id="explain-form"' in response.read()
            with urllib.request.urlopen(url + "api/models", timeout=30) as response:
                assert json.loads(response.read())["models"][0]["name"] == "tiny"
        finally:
            process.send_signal(signal.SIGINT)
            assert process.wait(30) == 0
