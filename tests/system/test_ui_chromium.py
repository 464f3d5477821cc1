"""`whybert ui` end to end: the page driven in Debian's headless Chromium through Playwright
(type, submit, see highlighted tokens; compare; errors; a dataset from CSV to metrics,
confusion matrix, rows and corpus charts; explainers side by side; a SHAP explanation
refining live), and the CLI command that serves it until interrupted. (The page's JSON API
and its hardening: integration/test_ui.py.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import whybert
from playwright.sync_api import Locator, Page, expect
from whybert.aggregate import aggregate
from whybert.agreement import agreement
from whybert.evaluation import classification_report, confusion_matrix
from whybert.render import BLUE, RED
from whybert.ui import UIServer
from whybert.ui.jobs import sample_rows

TEXT = "The food was great, but the service was slow."
OTHER = "Awful place, rude staff."
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


# ---- a dataset ------------------------------------------------------------------------------

ROWS = [
    ("The food was great, but the service was slow.", "positive"),
    ("Awful place, rude staff.", "negative"),
    ("It was fine, nothing special.", "neutral"),
    ("I loved every minute of it!", "positive"),
    ("Cold soup and a long wait.", "negative"),
    ("The room was clean and quiet.", "positive"),
    ("We will not come back.", "negative"),
    ("Average prices, average taste.", "neutral"),
    ("Best pizza in town, friendly people.", "positive"),
    ("The train was late again.", "negative"),
    ("Open from nine to five.", "neutral"),
    ("Terrible noise all night long.", "negative"),
]


def data_values(cells: Locator) -> list[float]:
    """The exact numbers behind the shown figures (their data-value attributes)."""
    return [float(v) for v in cells.evaluate_all("cells => cells.map(c => c.dataset.value)")]


def test_dataset_from_csv_to_metrics_confusion_rows_and_corpus_charts(
    page: Page, ui: UIServer, client: whybert.Client
) -> None:
    """Load a CSV, run it, see the figures of whybert.evaluation; a confusion-matrix cell
    filters the table to exactly its rows; the corpus charts and a row's explanation."""
    csv = "text,label\n" + "".join(f'"{text}",{label}\n' for text, label in ROWS)
    page.goto(ui.url)
    expect(page.locator("#dataset-model")).to_have_value("tiny", timeout=SERVER_TIMEOUT_MS)
    page.locator("#tab-dataset").click()
    page.locator("#dataset-file").set_input_files(
        files=[{"name": "reviews.csv", "mimeType": "text/csv", "buffer": csv.encode()}]
    )
    expect(page.locator("#dataset-info")).to_contain_text(f"reviews.csv: {len(ROWS)} rows")
    expect(page.locator("#text-column")).to_have_value("text")
    expect(page.locator("#label-column")).to_have_value("label")
    page.locator("#run-dataset").click()
    expect(page.locator("#dataset-results")).to_be_visible(timeout=EXPLAIN_TIMEOUT_MS)
    expect(page.locator("#job-status")).to_contain_text(f"{len(ROWS)} of {len(ROWS)} rows")
    expect(page.locator("#job-progress")).to_have_js_property("value", len(ROWS))

    texts = [t for t, _ in ROWS]
    truth = [label for _, label in ROWS]
    predicted = [p.label for p in client.predict(texts, model="tiny")]
    model_labels = next(m.labels for m in client.list_models() if m.name == "tiny")
    labels = [label for label in model_labels if label in {*truth, *predicted}]
    report = classification_report(truth, predicted, labels)
    matrix = confusion_matrix(truth, predicted, labels)

    names = [*labels, "macro avg", "weighted avg"]
    report_rows = page.locator("#report tbody tr")
    expect(report_rows).to_have_count(len(names))
    assert report_rows.evaluate_all("rows => rows.map(r => r.dataset.label)") == names
    assert float(page.locator("#accuracy").get_attribute("data-value") or "nan") == report["accuracy"]
    for name, row in zip(names, report_rows.all(), strict=True):
        figures = data_values(row.locator("td"))
        expected = report[name]
        assert figures == [expected["precision"], expected["recall"], expected["f1-score"], expected["support"]]
    cells = page.locator("#confusion button.cell")
    assert data_values(cells) == matrix.ravel().tolist()

    table = page.locator("#rows tbody tr")
    expect(table).to_have_count(len(ROWS))
    # The cell with the most rows off the diagonal (else on it): the table shows exactly those.
    off = matrix - np.diag(np.diag(matrix)) if (matrix - np.diag(np.diag(matrix))).any() else matrix
    i, j = np.unravel_index(int(np.argmax(off)), matrix.shape)
    page.locator(f'#confusion button.cell[data-true="{labels[i]}"][data-predicted="{labels[j]}"]').click()
    wanted = [str(n + 1) for n in range(len(ROWS)) if truth[n] == labels[i] and predicted[n] == labels[j]]
    expect(table).to_have_count(len(wanted))
    assert table.evaluate_all("rows => rows.map(r => r.dataset.row)") == wanted
    expect(page.locator("#cell-filter")).to_be_visible()
    page.locator("#clear-cell").click()
    expect(table).to_have_count(len(ROWS))

    # Sorting by confidence (largest first), then filtering by text.
    page.locator('#rows th[data-key="confidence"]').click()
    confidences = data_values(page.locator("#rows tbody td[data-value]"))
    assert confidences == sorted(confidences, reverse=True)
    page.locator("#row-filter").fill("wait")
    expect(table).to_have_count(1)
    expect(table.locator("td.text")).to_have_text(exactly(ROWS[4][0]))

    # A row's explanation on click.
    table.first.click()
    explained = page.locator("#row-explanation .wb-text")
    expect(explained).to_have_text(exactly(ROWS[4][0]), timeout=EXPLAIN_TIMEOUT_MS)
    page.locator("#row-filter").fill("")

    # The words that drive each label over a sample of rows.
    page.locator("#corpus-budget").fill("40")
    page.locator("#sample-size").fill("5")
    page.locator("#explain-sample").click()
    charts = page.locator("#corpus-charts .corpus-chart")
    expect(charts).to_have_count(len(model_labels), timeout=EXPLAIN_TIMEOUT_MS)
    expect(page.locator("#corpus-status")).to_contain_text("5 of 5 rows explained")
    rows = sample_rows(len(ROWS), 5)
    expected_pool = aggregate(
        client.explain([texts[r] for r in rows], model="tiny", targets="all", max_evals=40), lowercase=True
    )
    for label in model_labels:
        bars = page.locator(f'#corpus-charts .corpus-chart[data-label="{label}"] g.bar')
        top = expected_pool.top(label, k=10)
        assert bars.evaluate_all("bars => bars.map(b => b.dataset.word)") == [w.word for w in top]
        assert data_values(bars) == pytest.approx([w.mean_abs for w in top], rel=1e-9)


def test_a_csv_over_the_limit_is_refused_in_the_page(page: Page, client: whybert.Client) -> None:
    from whybert.ui import Limits

    with UIServer(client, limits=Limits(max_dataset_bytes=1000)).start() as small:
        page.goto(small.url)
        expect(page.locator("#dataset-model")).to_have_value("tiny", timeout=SERVER_TIMEOUT_MS)
        page.locator("#tab-dataset").click()
        page.locator("#dataset-file").set_input_files(
            files=[{"name": "big.csv", "mimeType": "text/csv", "buffer": b"text,label\n" + b"x,positive\n" * 200}]
        )
        error = page.locator("#dataset-error")
        expect(error).to_be_visible()
        expect(error).to_contain_text("big.csv is 2.2 kB: this page takes files of at most 1.0 kB")
        expect(error).to_contain_text("--max-dataset-bytes")
        expect(page.locator("#columns")).to_be_hidden()


# ---- one text, three explainers -----------------------------------------------------------


def test_explainers_side_by_side_with_their_agreement(page: Page, ui: UIServer, client: whybert.Client) -> None:
    page.goto(ui.url)
    expect(page.locator("#model")).to_have_value("tiny", timeout=SERVER_TIMEOUT_MS)
    page.locator("#text-a").fill(TEXT)
    page.locator("#side-by-side").check()
    page.locator("#sbs-max-evals").fill("60")
    page.locator("#sbs-num-samples").fill("200")
    page.locator("#sbs-n-steps").fill("16")
    page.locator("#submit").click()
    panels = page.locator("#panels .panel")
    expect(panels).to_have_count(3, timeout=EXPLAIN_TIMEOUT_MS)
    explainers = ["shap-partition", "lime", "integrated-gradients"]
    assert panels.evaluate_all("ps => ps.map(p => p.dataset.explainer)") == explainers
    expect(panels.locator(".wb-text")).to_have_text([exactly(TEXT)] * 3)

    budgets = {
        "shap-partition": {"max_evals": 60}, "lime": {"num_samples": 200}, "integrated-gradients": {"n_steps": 16}
    }
    explanations = [
        client.explain(TEXT, model="tiny", explainer=x, targets="predicted", output="probability", **budgets[x])[0]
        for x in explainers
    ]
    label = explanations[0].prediction.label
    pairs = page.locator("#agreement tbody tr")
    expect(pairs).to_have_count(3)
    shown = pairs.evaluate_all("rows => rows.map(r => [r.dataset.a, r.dataset.b])")
    expected_pairs = [(0, 1), (0, 2), (1, 2)]
    assert shown == [[explainers[a], explainers[b]] for a, b in expected_pairs]
    for row, (a, b) in zip(pairs.all(), expected_pairs, strict=True):
        agreed = agreement(explanations[a], explanations[b], label, 5)
        assert data_values(row.locator("td")) == pytest.approx([agreed.spearman, agreed.top_k_overlap], nan_ok=True)
    expect(page.locator("#agreement-caption")).to_contain_text(label)


# ---- a SHAP explanation refining live -------------------------------------------------------

LONG = ("the food was great but the service was painfully slow, and the room was cold and loud; "
        "still, the staff tried hard and the view over the old harbour made up for a lot of it")

RECORD_RENDERINGS = """() => {
  window.renderings = [];
  const results = document.getElementById("results");
  new MutationObserver((records) => {
    for (const record of records) {
      for (const node of record.addedNodes) {
        if (node.nodeType !== 1 || !node.matches("section.wb-explanation")) continue;
        window.renderings.push([...node.querySelectorAll(".wb-tok")].map((t) => t.dataset.value));
      }
    }
  }).observe(results, { childList: true });
}"""


def test_a_shap_explanation_refines_live_to_the_final_values(
    page: Page, ui: UIServer, client: whybert.Client
) -> None:
    if not hasattr(client, "explain_progressive"):
        pytest.skip("this whybert client has no explain_progressive yet")
    page.goto(ui.url)
    expect(page.locator("#model")).to_have_value("tiny", timeout=SERVER_TIMEOUT_MS)
    expect(page.locator("#live-field")).to_be_visible()
    page.locator("#text-a").fill(LONG)
    page.locator("#live").check()
    page.locator("#budget").fill("600")
    page.locator("#interval").fill("0")
    page.evaluate(RECORD_RENDERINGS)
    page.locator("#submit").click()
    expect(page.locator("#results")).to_have_attribute("data-final", "true", timeout=EXPLAIN_TIMEOUT_MS)
    expect(page.locator("#status")).to_contain_text("final")

    renderings = [[float(v) for v in r] for r in page.evaluate("window.renderings")]
    before_final = {tuple(r) for r in renderings[:-1]}
    assert len(before_final - {tuple(renderings[-1])}) >= 2, renderings
    plain = client.explain(LONG, model="tiny", max_evals=600)[0]
    j = plain.labels.index(plain.prediction.label)
    visible = [i for i, special in enumerate(plain.special) if not special]
    assert renderings[-1] == plain.values[visible, j].tolist()


def test_attention_is_offered_and_drawn_as_a_heat_strip(page: Page, ui: UIServer, client: whybert.Client) -> None:
    """The model's explainers include attention; chosen, it has no budget, and its rollout
    is drawn over the text, the heaviest visible token in full red, captioned as attention."""
    page.goto(ui.url)
    expect(page.locator("#model")).to_have_value("tiny", timeout=SERVER_TIMEOUT_MS)
    page.locator("#explainer").select_option("attention")
    expect(page.locator("#budget-field")).to_be_hidden()
    page.locator("#text-a").fill(TEXT)
    page.locator("#submit").click()
    expected = client.explain(TEXT, model="tiny", explainer="attention")[0]
    visible = [i for i, special in enumerate(expected.special) if not special]
    tokens = page.locator("#results .wb-tok")
    expect(tokens.first).to_be_attached(timeout=EXPLAIN_TIMEOUT_MS)
    expect(tokens).to_have_text([exactly(TEXT[slice(*expected.offsets[i])]) for i in visible])
    top = int(np.argmax(expected.values[visible, 0]))
    expect(tokens.nth(top)).to_have_css("background-color", "rgb({}, {}, {})".format(*RED))
    expect(page.locator("#results .wb-caption")).to_contain_text("attention rollout read at token 0")
