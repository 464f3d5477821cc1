"""Text pairs through the commands, against a server of the tiny pair model (and the tiny
single-text one): `whybert evaluate` and `whybert explain-corpus` on a CSV with a pair
column, the errors when the column and the model do not fit, and `--html`/`--png` of
`predict` and `explain` showing both texts."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import whybert
from _pairs import PAIR_LABELS, make_tiny_pair_bert, random_pairs
from _servers import ServerThread, tiny_settings
from PIL import Image
from sklearn import metrics
from whybert import cli
from whybert.corpus import RECORDS, CorpusStore

PAIRS = random_pairs(40, seed=11, low=2, high=9)
PAIRS[5] = ('a <script>alert("x")</script> question?', "an answer & <b>more</b>")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[ServerThread]:
    pair_dir = make_tiny_pair_bert(tmp_path_factory.mktemp("tiny-pair-bert"))
    with ServerThread(tiny_settings(pair_dir, model=(f"pairs={pair_dir}", f"tiny={tiny_model_dir}"))) as running:
        yield running


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A CSV of the pairs (columns premise, hypothesis) with random true labels (gold)."""
    rng = random.Random(4)
    labels = [rng.choice(PAIR_LABELS) for _ in PAIRS]
    path = tmp_path_factory.mktemp("pairs") / "nli.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "premise", "hypothesis", "gold"])
        writer.writerows((i, a, b, g) for i, ((a, b), g) in enumerate(zip(PAIRS, labels, strict=True)))
    return path, labels


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_evaluate_sends_each_rows_pair_and_its_figures_are_scikit_learns(
    server: ServerThread, data: tuple[Path, list[str]], tmp_path: Path
) -> None:
    path, labels = data
    out = tmp_path / "report"
    code, stdout, err = run(
        [
            "evaluate",
            "--data",
            str(path),
            "--text-column",
            "premise",
            "--pair-column",
            "hypothesis",
            "--label-column",
            "gold",
            "--model",
            "pairs",
            "--batch-size",
            "16",
            "--out",
            str(out),
            "--json",
            "--target",
            server.target,
        ]
    )
    assert code == 0, err
    result = json.loads(stdout)
    with whybert.Client(server.target) as client:
        direct = client.predict([a for a, _ in PAIRS], model="pairs", pairs=[b for _, b in PAIRS])
        alone = client.predict([a for a, _ in PAIRS], model="pairs", pairs=["x"] * len(PAIRS))
    y_pred = [p.label for p in direct]
    assert result["report"] == metrics.classification_report(labels, y_pred, output_dict=True, zero_division=0)
    assert result["confusion_matrix"] == metrics.confusion_matrix(labels, y_pred, labels=result["labels"]).tolist()
    assert result["accuracy"] == metrics.accuracy_score(labels, y_pred) and result["rows"] == len(PAIRS)

    rows = read_csv(out / "predictions.csv")
    assert [(r["text"], r["pair"]) for r in rows] == PAIRS
    assert [r["predicted_label"] for r in rows] == y_pred
    for r, p in zip(rows, direct, strict=True):
        assert float(r["confidence"]) == pytest.approx(p.scores[p.label], rel=1e-5)
        assert [float(r[f"p_{k}"]) for k in PAIR_LABELS] == pytest.approx([p.scores[k] for k in PAIR_LABELS], rel=1e-5)
    # The pair texts were sent: without them (another pair text) the probabilities differ.
    got = np.array([[float(r[f"p_{k}"]) for k in PAIR_LABELS] for r in rows])
    assert np.abs(got - np.array([[q.scores[k] for k in PAIR_LABELS] for q in alone])).max() > 1e-3
    wrong = read_csv(out / "misclassified.csv")
    assert [(int(r["row"]), r["pair"]) for r in wrong] == [
        (i + 1, b) for i, ((_, b), t, p) in enumerate(zip(PAIRS, labels, y_pred, strict=True)) if t != p
    ]
    with Image.open(out / "confusion_matrix.png") as image:
        assert image.format == "PNG"

    # The default pair column is `pair`; the table says the same figures.
    renamed = tmp_path / "default.csv"
    renamed.write_text(path.read_text(encoding="utf-8").replace("hypothesis", "pair", 1), encoding="utf-8")
    code, stdout, _ = run(
        [
            "evaluate",
            "--data",
            str(renamed),
            "--text-column",
            "premise",
            "--label-column",
            "gold",
            "--model",
            "pairs",
            "--target",
            server.target,
        ]
    )
    assert code == 0 and f"accuracy {result['accuracy']:.4f}" in stdout.splitlines()[0]


@pytest.mark.parametrize("command", ["evaluate", "explain-corpus"])
def test_a_column_that_does_not_fit_the_model_is_refused_before_any_request(
    server: ServerThread, data: tuple[Path, list[str]], tmp_path: Path, command: str
) -> None:
    path, _ = data
    out = tmp_path / "out"
    base = [
        command,
        "--data",
        str(path),
        "--text-column",
        "premise",
        "--label-column",
        "gold",
        "--out",
        str(out),
        "--target",
        server.target,
    ]
    code, stdout, err = run([*base, "--model", "pairs"])  # no --pair-column, and no column named pair
    assert code == 2 and stdout == ""
    assert "model 'pairs' classifies text pairs, but the file has no pair column 'pair'" in err
    code, _, err = run([*base, "--model", "pairs", "--pair-column", "answer"])
    assert code == 2 and "no pair column 'answer'" in err
    code, _, err = run([*base, "--model", "tiny", "--pair-column", "hypothesis"])
    assert code == 2 and "a pair column ('hypothesis')" in err and "model 'tiny' classifies single texts" in err
    assert not out.exists()


def test_explain_corpus_explains_both_texts_of_each_row(
    server: ServerThread, data: tuple[Path, list[str]], tmp_path: Path
) -> None:
    path, labels = data
    out = tmp_path / "run"
    n = 10
    small = tmp_path / "small.csv"
    small.write_text("\n".join(path.read_text(encoding="utf-8").splitlines()[: n + 1]) + "\n", encoding="utf-8")
    argv = [
        "explain-corpus",
        "--data",
        str(small),
        "--text-column",
        "premise",
        "--pair-column",
        "hypothesis",
        "--label-column",
        "gold",
        "--model",
        "pairs",
        "--max-evals",
        "60",
        "--out",
        str(out),
        "--json",
        "--target",
        server.target,
    ]
    code, stdout, err = run(argv)
    assert code == 0, err
    summary = json.loads(stdout)
    assert (summary["rows"], summary["explained"]) == (n, n)

    records = [json.loads(line) for line in (out / RECORDS).read_text(encoding="utf-8").splitlines()]
    assert sorted(r["row"] for r in records) == list(range(1, n + 1))
    back = {r.row: r.explanation for r in CorpusStore(out).records()}
    with whybert.Client(server.target) as client:
        direct = client.explain([a for a, _ in PAIRS[:3]], model="pairs", pairs=[b for _, b in PAIRS[:3]], max_evals=60)
    for row, e in enumerate(direct, start=1):
        assert back[row].pair == PAIRS[row - 1][1] and back[row].segments == e.segments
        np.testing.assert_array_equal(back[row].values, e.values)
    for row, e in back.items():
        text, pair = PAIRS[row - 1]
        assert e.text == text and e.pair == pair
        assert {0, 1} <= set(e.segments)  # entries for both texts, each token's offsets into its own
        for i, (start, end) in enumerate(e.offsets):
            if not e.special[i]:
                own = pair if e.segments[i] == 1 else text
                assert own[start:end].lower() == e.tokens[i].strip().lower()

    # The words pool both texts; rows.csv says which text a top word is of.
    words = {w["word"] for w in json.loads((out / "words.json").read_text())["words"]}
    only_pairs = {w.lower().strip(",.?!") for _, b in PAIRS[:n] for w in b.split()} - {
        w.lower().strip(",.?!") for a, _ in PAIRS[:n] for w in a.split()
    }
    assert only_pairs & words
    rows = read_csv(out / "rows.csv")
    assert [r["true_label"] for r in rows] == labels[:n]
    assert any("(pair)" in r["top_words"] for r in rows)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('class="wb-pair-sep"') == n  # each row's explanation shows its two texts apart
    assert "<script" not in page and "&lt;script&gt;" in page and "&lt;b&gt;more&lt;/b&gt;" in page
    assert json.loads((out / "run.json").read_text())["pairs"] == "hypothesis"

    # Resuming: the same options explain nothing again; another pair column is refused.
    code, stdout, _ = run(argv)
    assert code == 0 and json.loads(stdout)["explained"] == 0
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(small.read_text(encoding="utf-8").replace("hypothesis", "claim", 1), encoding="utf-8")
    other = [renamed.as_posix() if a == str(small) else ("claim" if a == "hypothesis" else a) for a in argv]
    code, _, err = run(other)
    assert code == 2 and 'pairs: "hypothesis" there, "claim" now' in err


def test_predict_and_explain_pictures_show_both_texts(server: ServerThread, tmp_path: Path) -> None:
    text, pair = 'where is "Paris" & <b>why</b>?', "Paris is in France"
    target = ["--model", "pairs", "--target", server.target]
    html_out, png_out = tmp_path / "p.html", tmp_path / "p.png"
    code, stdout, err = run(["predict", text, "--pair", pair, "--html", str(html_out), "--png", str(png_out), *target])
    assert code == 0, err
    with whybert.Client(server.target) as client:
        (p,) = client.predict(text, model="pairs", pairs=[pair])
    assert text in stdout and p.label in stdout
    page = html_out.read_text(encoding="utf-8")
    rows = re.findall(
        r'<span class="wb-segment" data-segment="(\d)"><span class="wb-pair-part">(\w+)</span>(.*?)</span>', page
    )
    assert rows == [("0", "text", "where is &quot;Paris&quot; &amp; &lt;b&gt;why&lt;/b&gt;?"), ("1", "pair", pair)]
    assert f'<span class="wb-label">{p.label}</span>' in page
    with Image.open(png_out) as image:
        assert image.format == "PNG"

    code, stdout, err = run(
        ["explain", text, "--pair", pair, "--max-evals", "60", "--html", str(html_out), "--png", str(png_out), *target]
    )
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[2].startswith("text: where") and lines[3].startswith("‖ pair: Paris")
    page = html_out.read_text(encoding="utf-8")
    assert page.count('class="wb-segment"') == 2 and "<b>why" not in page
    assert re.search(
        r'data-segment="1"><span class="wb-pair-part">pair</span><span class="wb-tok"[^>]*>Paris</span>', page
    )
    with Image.open(png_out) as image:
        assert image.format == "PNG" and image.size[1] > 300
