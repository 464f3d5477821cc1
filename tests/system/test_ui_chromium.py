"""`whybert ui` end to end: the page driven in Debian's headless Chromium through Playwright
(type, submit, see highlighted tokens; compare; errors; a dataset from CSV to metrics,
confusion matrix, rows and corpus charts; explainers side by side; a SHAP explanation
refining live; a token model's entities, underlined and explained on click; a text-pair
model's pair text and its two rows; hostile text staying text), and the CLI command that
serves it until interrupted. (The page's JSON API and its hardening: integration/test_ui.py.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import whybert
from _pairs import make_tiny_pair_bert
from _servers import ServerThread, tiny_settings
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


def _default_sigint() -> None:
    """In the child before it starts: Ctrl-C raises KeyboardInterrupt there even when this
    run ignores SIGINT (a shell's background job does, and a child inherits that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_cli_ui_serves_the_page_until_interrupted(target: str) -> None:
    """`whybert ui --port 0` prints its address, serves the page, and exits 0 on Ctrl-C."""
    command = [sys.executable, "-m", "whybert.cli", "ui", "--target", target, "--port", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, preexec_fn=_default_sigint) as process:
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


# ---- entities and text pairs (the tiny NER and pair models) ------------------------------------

NER_TEXT = "Angela Merkel visited Paris and met the United Nations in New York."
PREMISE = "the cat sat on the mat while dogs barked loudly"
HYPOTHESIS = "a dog barked at strangers"
XSS = '<img src=x onerror="window.__xss=1"> Renée met <b>Microsoft</b> in São Paulo 😀 & co'
XSS_PAIR = '<script>window.__xss=2</script><img src=y onerror="window.__xss=3">'


@pytest.fixture(scope="module")
def kinds_client(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, ner_dir: Path
) -> Iterator[whybert.Client]:
    """A client of a server of the three kinds: 'tiny' (sequence, the default), 'ner' (token
    classification), 'pairs' (text pairs)."""
    pair_dir = make_tiny_pair_bert(tmp_path_factory.mktemp("tiny-pair-bert"))
    models = (f"tiny={tiny_model_dir}", f"ner={ner_dir}", f"pairs={pair_dir}")
    settings = tiny_settings(tiny_model_dir, model=models, default_model="tiny")
    with ServerThread(settings) as server, whybert.Client(server.target) as c:
        yield c


@pytest.fixture(scope="module")
def kinds(kinds_client: whybert.Client) -> Iterator[UIServer]:
    with UIServer(kinds_client).start() as server:
        yield server


def visible_in_order(e: whybert.Explanation, segment: int = 0) -> list[int]:
    """The tokens a rendering shows of one text (segment), in the order of their offsets."""
    segments = e.segments or [0] * len(e.tokens)
    shown = [i for i, special in enumerate(e.special) if not special and segments[i] == segment]
    return sorted(shown, key=lambda i: e.offsets[i])


def no_script_ran(page: Page) -> None:
    """No markup of the hostile texts became elements, and none of their scripts ran."""
    expect(page.locator("img")).to_have_count(0)
    expect(page.locator("script:not([src])")).to_have_count(0)
    expect(page.locator("b", has_text=re.compile("Microsoft|bold"))).to_have_count(0)
    assert page.evaluate("window.__xss") is None


def test_entities_are_underlined_with_their_type_and_explained_on_click(
    page: Page, kinds: UIServer, kinds_client: whybert.Client
) -> None:
    page.goto(kinds.url)
    expect(page.locator("#model")).to_have_value("tiny", timeout=SERVER_TIMEOUT_MS)
    page.locator("#model").select_option("ner")
    expect(page.locator("#submit")).to_have_text("Find entities")
    expect(page.locator("#targets-field")).to_be_hidden()  # an entity explains its own type
    expect(page.locator("#pair-field")).to_be_hidden()
    page.locator("#text-a").fill(NER_TEXT)
    page.locator("#budget").fill("60")
    page.locator("#submit").click()

    entities = kinds_client.predict(NER_TEXT, model="ner")[0].entities
    assert len(entities) >= 3
    buttons = page.locator("#entities button.entity")
    expect(buttons).to_have_count(len(entities), timeout=EXPLAIN_TIMEOUT_MS)
    expect(buttons.locator(".entity-span")).to_have_text([exactly(e.text) for e in entities])
    expect(buttons.locator(".entity-type")).to_have_text([exactly(e.label) for e in entities])
    expect(page.locator("#entities .entity-text")).to_have_text(
        exactly("".join(_marked(NER_TEXT, [(e.start, e.end, e.label) for e in entities])))
    )
    for button, e in zip(buttons.all(), entities, strict=True):
        expect(button).to_have_attribute("title", re.compile(rf"^{e.label} · score {e.score:.3f}"))
        expect(button).to_have_css("text-decoration-line", "underline")
    expect(page.locator("#results .wb-explanation")).to_have_count(0)  # nothing explained before a click

    clicks = [(2, "shap-partition", {"max_evals": 60}), (0, "integrated-gradients", {"n_steps": 8})]
    for k, explainer, options in clicks:
        page.locator("#explainer").select_option(explainer)
        page.locator("#budget").fill(str(next(iter(options.values()))))
        buttons.nth(k).click()
        entity = entities[k]
        title = page.locator("#entity-title")
        expect(title).to_have_attribute("data-entity", str(k), timeout=EXPLAIN_TIMEOUT_MS)
        expect(title).to_contain_text(f"Why “{entity.text}” is {entity.label}: entity {k + 1} of {len(entities)}")
        expect(buttons.nth(k)).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#results .wb-label")).to_have_text(exactly(entity.text))
        expect(page.locator("#results .wb-entity").first).to_have_attribute("data-entity", entity.label)
        expected = kinds_client.explain(NER_TEXT, model="ner", explainer=explainer, entity=k, **options)[0]
        shown = visible_in_order(expected)
        tokens = page.locator("#results .wb-tok")
        expect(tokens).to_have_count(len(shown))
        expect(tokens).to_have_text([exactly(NER_TEXT[slice(*expected.offsets[i])]) for i in shown])
        assert data_values(tokens) == pytest.approx([float(expected.values[i, 0]) for i in shown], abs=1e-9)


def _marked(text: str, spans: list[tuple[int, int, str]]) -> list[str]:
    """The text as the entity view reads: each entity followed by its type."""
    parts, cursor = [], 0
    for start, end, label in spans:
        parts += [text[cursor:start], text[start:end], label]
        cursor = end
    return [*parts, text[cursor:]]


def test_an_entitys_explanation_side_by_side_and_live(
    page: Page, kinds: UIServer, kinds_client: whybert.Client
) -> None:
    page.goto(kinds.url)
    expect(page.locator("#model")).to_have_value("tiny", timeout=SERVER_TIMEOUT_MS)
    page.locator("#model").select_option("ner")
    page.locator("#text-a").fill(NER_TEXT)
    page.locator("#side-by-side").check()
    page.locator("#sbs-max-evals").fill("40")
    page.locator("#sbs-num-samples").fill("200")
    page.locator("#sbs-n-steps").fill("8")
    page.locator("#submit").click()
    buttons = page.locator("#entities button.entity")
    expect(buttons.first).to_be_visible(timeout=EXPLAIN_TIMEOUT_MS)
    buttons.nth(1).click()
    panels = page.locator("#panels .panel")
    expect(panels).to_have_count(3, timeout=EXPLAIN_TIMEOUT_MS)
    entity = kinds_client.predict(NER_TEXT, model="ner")[0].entities[1]
    expect(page.locator("#entity-title")).to_contain_text(f"“{entity.text}” is {entity.label}")
    expect(panels.locator(".wb-label")).to_have_text([exactly(entity.text)] * 3)

    if not hasattr(kinds_client, "explain_progressive"):
        return
    page.locator("#live").check()
    page.locator("#budget").fill("60")
    page.locator("#interval").fill("0")
    buttons.nth(1).click()
    expect(page.locator("#results")).to_have_attribute("data-final", "true", timeout=EXPLAIN_TIMEOUT_MS)
    expected = kinds_client.explain(NER_TEXT, model="ner", entity=1, max_evals=60)[0]
    shown = visible_in_order(expected)
    assert data_values(page.locator("#results .wb-tok")) == pytest.approx(
        [float(expected.values[i, 0]) for i in shown], abs=1e-9
    )
    expect(page.locator("#entity-title")).to_contain_text(f"“{entity.text}” is {entity.label}")


def test_a_pair_model_takes_a_pair_text_and_explains_both_texts(
    page: Page, kinds: UIServer, kinds_client: whybert.Client
) -> None:
    page.goto(kinds.url)
    expect(page.locator("#model")).to_have_value("tiny", timeout=SERVER_TIMEOUT_MS)
    expect(page.locator("#pair-field")).to_be_hidden()
    page.locator("#compare").check()
    page.locator("#model").select_option("pairs")
    expect(page.locator("#pair-field")).to_be_visible()
    expect(page.locator("#compare-field")).to_be_hidden()
    expect(page.locator("#text-b-field")).to_be_hidden()
    page.locator("#text-a").fill(PREMISE)
    page.locator("#text-pair").fill(HYPOTHESIS)
    page.locator("#budget").fill("60")
    page.locator("#submit").click()

    expected = kinds_client.explain(PREMISE, model="pairs", pairs=[HYPOTHESIS], max_evals=60)[0]
    j = expected.labels.index(expected.prediction.label)
    rows = page.locator("#results .wb-pair-row")
    expect(rows).to_have_count(2, timeout=EXPLAIN_TIMEOUT_MS)
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.segment)") == ["0", "1"]
    for segment, source in ((0, PREMISE), (1, HYPOTHESIS)):
        shown = visible_in_order(expected, segment)
        assert shown
        tokens = rows.nth(segment).locator(".wb-tok")
        expect(tokens).to_have_text([exactly(source[slice(*expected.offsets[i])]) for i in shown])
        assert data_values(tokens) == pytest.approx([float(expected.values[i, j]) for i in shown], abs=1e-9)
        expect(rows.nth(segment)).to_contain_text(source)
    expect(page.locator("#results .wb-label")).to_have_text(exactly(expected.prediction.label))

    # Back to a single-text model: no pair box, and no pair sent (the server would refuse one).
    page.locator("#model").select_option("tiny")
    expect(page.locator("#pair-field")).to_be_hidden()
    page.locator("#submit").click()
    expect(page.locator("#results .wb-explanation")).to_have_count(1, timeout=EXPLAIN_TIMEOUT_MS)
    expect(page.locator("#results .wb-text")).to_have_text(exactly(PREMISE))
    expect(page.locator("#results .wb-pair-row")).to_have_count(0)
    expect(page.locator("#error")).to_be_hidden()


def test_a_server_refusal_of_a_pair_is_shown_as_errors_are(page: Page, kinds: UIServer) -> None:
    page.goto(kinds.url)
    expect(page.locator("#model")).to_have_value("tiny", timeout=SERVER_TIMEOUT_MS)
    page.locator("#model").select_option("pairs")
    page.locator("#text-a").fill(PREMISE)
    page.locator("#text-pair").fill("   ")
    page.locator("#submit").click()
    error = page.locator("#error")
    expect(error).to_be_visible(timeout=SERVER_TIMEOUT_MS)
    expect(error).to_contain_text("INVALID_ARGUMENT")
    expect(error).to_contain_text("pairs[0]")


def test_hostile_text_and_pair_text_stay_text(page: Page, kinds: UIServer, kinds_client: whybert.Client) -> None:
    page.goto(kinds.url)
    expect(page.locator("#model")).to_have_value("tiny", timeout=SERVER_TIMEOUT_MS)
    page.locator("#model").select_option("ner")
    page.locator("#text-a").fill(XSS)
    page.locator("#budget").fill("40")
    page.locator("#submit").click()
    entities = kinds_client.predict(XSS, model="ner")[0].entities
    buttons = page.locator("#entities button.entity")
    expect(buttons).to_have_count(len(entities), timeout=EXPLAIN_TIMEOUT_MS)
    # Offsets count code points: the emoji after "São Paulo" must not shift what follows it.
    expect(buttons.locator(".entity-span")).to_have_text([exactly(e.text) for e in entities])
    expect(page.locator("#entities .entity-text")).to_have_text(
        exactly("".join(_marked(XSS, [(e.start, e.end, e.label) for e in entities])))
    )
    k = next(i for i, e in enumerate(entities) if "<" in e.text or ">" in e.text or '"' in e.text)
    buttons.nth(k).click()
    expect(page.locator("#entity-title")).to_contain_text(f"“{entities[k].text}”", timeout=EXPLAIN_TIMEOUT_MS)
    end = entities[k].end  # the explanation types the explained entity after it
    expect(page.locator("#results .wb-text")).to_have_text(exactly(XSS[:end] + entities[k].label + XSS[end:]))
    no_script_ran(page)

    page.locator("#model").select_option("pairs")
    page.locator("#text-pair").fill(XSS_PAIR)
    page.locator("#submit").click()
    rows = page.locator("#results .wb-pair-row")
    expect(rows).to_have_count(2, timeout=EXPLAIN_TIMEOUT_MS)
    expect(rows.nth(0)).to_contain_text(XSS)
    expect(rows.nth(1)).to_contain_text(XSS_PAIR)
    no_script_ran(page)


PAIR_ROWS = [
    ("the cat sat on the mat", "a cat sat", "entailment"),
    ("dogs barked loudly at strangers", "the dogs were silent", "contradiction"),
    ("it never rains in London", "London is wet", "contradiction"),
    ("the movie was wonderful", "it is a question", "neutral"),
    ("Paris in 1999", "Paris in 1999", "entailment"),
    ("is it true", "the answer is 42", "neutral"),
]


def test_a_csv_with_a_pair_column_runs_through_a_pair_model(
    page: Page, kinds: UIServer, kinds_client: whybert.Client
) -> None:
    csv = "text,pair,label\n" + "".join(f'"{t}","{p}",{label}\n' for t, p, label in PAIR_ROWS)
    page.goto(kinds.url)
    expect(page.locator("#dataset-model")).to_have_value("tiny", timeout=SERVER_TIMEOUT_MS)
    names = page.locator("#dataset-model option").evaluate_all("options => options.map(o => o.value)")
    assert names == ["tiny", "pairs"]  # no dataset mode for an entity model
    page.locator("#tab-dataset").click()
    page.locator("#dataset-file").set_input_files(
        files=[{"name": "nli.csv", "mimeType": "text/csv", "buffer": csv.encode()}]
    )
    expect(page.locator("#dataset-info")).to_contain_text(f"nli.csv: {len(PAIR_ROWS)} rows")
    expect(page.locator("#pair-column-field")).to_be_hidden()
    page.locator("#dataset-model").select_option("pairs")
    expect(page.locator("#pair-column-field")).to_be_visible()
    expect(page.locator("#pair-column")).to_have_value("pair")
    expect(page.locator("#text-column")).to_have_value("text")
    expect(page.locator("#label-column")).to_have_value("label")
    page.locator("#run-dataset").click()
    expect(page.locator("#dataset-results")).to_be_visible(timeout=EXPLAIN_TIMEOUT_MS)

    texts, pairs, truth = (list(column) for column in zip(*PAIR_ROWS, strict=True))
    predicted = [p.label for p in kinds_client.predict(texts, model="pairs", pairs=pairs)]
    accuracy = float(np.mean(np.array(truth) == np.array(predicted)))
    assert float(page.locator("#accuracy").get_attribute("data-value") or "nan") == pytest.approx(accuracy)
    table = page.locator("#rows tbody tr")
    expect(table).to_have_count(len(PAIR_ROWS))
    expect(page.locator("#pair-head")).to_be_visible()
    expect(table.locator("td.pair")).to_have_text([exactly(p) for p in pairs])

    # A row's explanation covers its pair text.
    table.nth(1).click()
    rows = page.locator("#row-explanation .wb-pair-row")
    expect(rows).to_have_count(2, timeout=EXPLAIN_TIMEOUT_MS)
    expect(rows.nth(1)).to_contain_text(pairs[1])


HOSTILE_ENTITY = '<img src=x onerror="window.__xss=4">'
HOSTILE_TYPE = '<img src=y onerror="window.__xss=5">'
HOSTILE_TEXT = f"<script>window.__xss=6</script>Hello {HOSTILE_ENTITY} and <b>bold</b> 😀"


class HostileEntities:
    """A stand-in for a client of a server whose entity model answers markup: an entity
    whose text and type are tags, in a text whose other parts are tags too (the tiny NER
    model cuts tags into entities of a character or two, which no mistake could turn back
    into a tag)."""

    target = "stub:0"

    def list_models(self, **_: object) -> list[whybert.ModelInfo]:
        labels = ["O", f"B-{HOSTILE_TYPE}", f"I-{HOSTILE_TYPE}"]
        return [whybert.ModelInfo("marked", labels, 128, True, ["shap-partition"], kind="token")]

    @staticmethod
    def entities(text: str) -> list[whybert.Entity]:
        start = text.find(HOSTILE_ENTITY)  # Python counts code points, as the server does
        end = start + len(HOSTILE_ENTITY)
        return [whybert.Entity(HOSTILE_ENTITY, HOSTILE_TYPE, start, end, 0.75)] if start >= 0 else []

    def predict(self, texts: list[str], **_: object) -> list[whybert.Prediction]:
        return [whybert.Prediction("", {}, entities=self.entities(t)) for t in texts]

    def explain(
        self, texts: list[str], explainer: str = "shap-partition", **options: object
    ) -> list[whybert.Explanation]:
        text = texts[0]
        index = options["entity"]
        assert isinstance(index, int)
        entity = self.entities(text)[index]
        spans = [m.span() for m in re.finditer(r"\S+", text)]
        n = len(spans)
        return [whybert.Explanation(
            text=text, tokens=["[CLS]", *(text[a:b] for a, b in spans), "[SEP]"],
            offsets=[(0, 0), *spans, (0, 0)], special=[True, *[False] * n, True],
            values=np.linspace(-0.5, 0.5, n + 2).reshape(-1, 1), base_values=np.array([0.1]),
            output_values=np.array([0.1]), labels=[entity.label], prediction=whybert.Prediction("", {}),
            explainer=explainer, output="probability", entity=entity, entity_index=index,
        )]


def test_markup_from_the_server_stays_text_in_the_entity_view(page: Page) -> None:
    with UIServer(HostileEntities()).start() as ui:  # type: ignore[arg-type]
        page.goto(ui.url)
        expect(page.locator("#submit")).to_have_text("Find entities", timeout=SERVER_TIMEOUT_MS)
        page.locator("#text-a").fill(HOSTILE_TEXT)
        page.locator("#submit").click()
        button = page.locator("#entities button.entity")
        expect(button).to_have_count(1)
        expect(button.locator(".entity-span")).to_have_text(exactly(HOSTILE_ENTITY))
        expect(button.locator(".entity-type")).to_have_text(exactly(HOSTILE_TYPE))
        expect(button).to_have_attribute("title", f"{HOSTILE_TYPE} · score 0.750 · click to see why")
        start = HOSTILE_TEXT.index(HOSTILE_ENTITY)
        end = start + len(HOSTILE_ENTITY)
        expect(page.locator("#entities .entity-text")).to_have_text(
            exactly(HOSTILE_TEXT[:end] + HOSTILE_TYPE + HOSTILE_TEXT[end:])
        )
        expect(page.locator("#entities .entity-caption")).to_contain_text(f"1 entity ({HOSTILE_TYPE} 1)")
        button.click()
        expect(page.locator("#entity-title")).to_contain_text(f"Why “{HOSTILE_ENTITY}” is {HOSTILE_TYPE}")
        expect(page.locator("#results .wb-label")).to_have_text(exactly(HOSTILE_ENTITY))
        no_script_ran(page)
