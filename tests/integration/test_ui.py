"""`whybert ui`: the page's JSON API against a real server, the page driven end to end in
headless Chromium (type, submit, see highlighted tokens; compare; errors), and the CLI command
that serves it."""

from __future__ import annotations

import json
import os
import re
import shutil
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
from playwright.sync_api import Page, expect, sync_playwright
from whybert.render import BLUE, RED
from whybert.ui import UIServer

TEXT = "The food was great, but the service was slow."
OTHER = "Awful place, rude staff."

CHROMIUM = shutil.which("chromium")
# Nothing that reaches for the network (updates, sync, QUIC probes): the tests run offline.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # tests run as root in containers
    "--disable-gpu",
    "--disable-quic",
    "--disable-dev-shm-usage",  # containers' /dev/shm is often too small for the renderer
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_TIMEOUT_MS = 30_000  # a click or a page answer that needs only the page's server
EXPLAIN_TIMEOUT_MS = 120_000  # an explanation computed on a busy CPU


@pytest.fixture(scope="module")
def client(target: str) -> Iterator[whybert.Client]:
    with whybert.Client(target) as c:
        yield c


@pytest.fixture(scope="module")
def ui(client: whybert.Client) -> Iterator[UIServer]:
    with UIServer(client).start() as server:
        yield server


@pytest.fixture
def page() -> Iterator[Page]:
    """A page in Debian's headless Chromium, driven by Playwright.

    Debian's binary, never `playwright install`: the tests run where nothing can be downloaded.
    """
    if CHROMIUM is None:
        pytest.skip("chromium is not on PATH (scripts/test installs Debian's chromium package)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.set_default_timeout(SERVER_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


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


def exactly(text: str) -> re.Pattern[str]:
    """A pattern for `to_have_text` that matches the whole text, whitespace included.

    A plain string there is matched after collapsing whitespace, which would hide a space
    the page adds or drops between tokens.
    """
    return re.compile(f"^{re.escape(text)}$")


def test_page_end_to_end_in_chromium(page: Page, ui: UIServer, client: whybert.Client) -> None:
    """Type a text, submit, see its tokens highlighted; compare two texts; see an error."""
    page.goto(ui.url)
    expect(page.locator("#model")).to_have_value("tiny", timeout=SERVER_TIMEOUT_MS)
    page.locator("#text-a").fill(TEXT)
    page.locator("#budget").fill("80")  # shap's max_evals
    page.locator("#submit").click()

    expected = client.explain(TEXT, model="tiny", max_evals=80)[0]
    j = expected.labels.index(expected.prediction.label)
    visible = [i for i, special in enumerate(expected.special) if not special]
    tokens = page.locator("#results .wb-tok")
    expect(tokens.first).to_be_attached(timeout=EXPLAIN_TIMEOUT_MS)
    expect(tokens).to_have_text([exactly(TEXT[slice(*expected.offsets[i])]) for i in visible])
    expect(page.locator("#results .wb-label")).to_have_text(exactly(expected.prediction.label))
    expect(page.locator("#results .wb-text")).to_have_text(exactly(TEXT))
    top = int(np.argmax(np.abs(expected.values[visible, j])))
    colour = RED if expected.values[visible[top], j] > 0 else BLUE
    expect(tokens.nth(top)).to_have_css("background-color", "rgb({}, {}, {})".format(*colour))

    page.locator("#compare").check()
    page.locator("#text-b").fill(OTHER)
    page.locator("#submit").click()
    results = page.locator("#results")
    expect(results.locator(".wb-explanation")).to_have_count(2, timeout=EXPLAIN_TIMEOUT_MS)
    expect(results.locator(".wb-text")).to_have_text([exactly(TEXT), exactly(OTHER)])
    expect(results).to_contain_class("two")

    page.locator("#text-a").fill("")
    page.locator("#submit").click()
    error = page.locator("#error")
    expect(error).to_be_visible(timeout=SERVER_TIMEOUT_MS)
    expect(error).to_contain_text("INVALID_ARGUMENT")
    expect(error).to_contain_text("texts[0]")


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
