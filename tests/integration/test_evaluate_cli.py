"""`whybert evaluate` and `whybert.evaluate` against a tiny-model server: the figures equal
scikit-learn's on the server's own predictions, the files it writes, a server whose
per-request limit is lower than the default batch, and the errors a person sees."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import whybert
from _servers import ServerThread, tiny_settings
from PIL import Image
from sklearn import metrics
from whybert import cli

WORDS = ["the", "food", "service", "staff", "was", "great", "awful", "slow", "fast", "cosy", "rude", "not", "very"]


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Random texts with random true labels; 'neutral' is never a true label."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 12)))) for _ in range(n)]
    labels = [str(rng.choice(["negative", "positive"])) for _ in range(n)]
    return texts, labels


def write_csv(path: Path, texts: list[str], labels: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "review", "sentiment"])
        writer.writerows((i, t, lb) for i, (t, lb) in enumerate(zip(texts, labels, strict=True)))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str]]:
    texts, labels = corpus(150)
    texts[3] = 'a "quoted", multi-line\ntext'
    return write_csv(tmp_path_factory.mktemp("eval") / "reviews.csv", texts, labels), texts, labels


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_figures_equal_scikit_learn_on_the_servers_predictions(
    target: str, data: tuple[Path, list[str], list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, texts, labels = data
    out = tmp_path / "report"
    code, stdout, err = run(
        ["evaluate", "--data", str(path), "--text-column", "review", "--label-column", "sentiment",
         "--model", "tiny", "--out", str(out), "--json", "--target", target, "--batch-size", "16"],
        capsys,
    )
    assert code == 0, err
    assert err == ""  # --json: no bar, nothing but the JSON
    result = json.loads(stdout)
    # The predictions are the server's: asked directly, it says the same.
    with whybert.Client(target) as client:
        direct = [p for i in range(0, len(texts), 64) for p in client.predict(texts[i : i + 64], model="tiny")]
    y_pred = [p.label for p in direct]
    assert result["report"] == metrics.classification_report(labels, y_pred, output_dict=True, zero_division=0)
    assert result["labels"] == [lb for lb in ["negative", "neutral", "positive"] if lb in {*labels, *y_pred}]
    assert result["confusion_matrix"] == metrics.confusion_matrix(labels, y_pred, labels=result["labels"]).tolist()
    assert result["accuracy"] == metrics.accuracy_score(labels, y_pred) and result["rows"] == len(texts)
    assert json.loads((out / "metrics.json").read_text()) == result

    rows = read_csv(out / "predictions.csv")
    assert [r["text"] for r in rows] == texts and [r["true_label"] for r in rows] == labels
    assert [r["predicted_label"] for r in rows] == y_pred
    assert [int(r["row"]) for r in rows] == list(range(1, len(texts) + 1))
    for r, p in zip(rows, direct, strict=True):
        assert float(r["confidence"]) == pytest.approx(p.scores[p.label], rel=1e-5)
        assert sum(float(r[f"p_{k}"]) for k in p.scores) == pytest.approx(1.0, abs=1e-4)
    wrong = read_csv(out / "misclassified.csv")
    expected = [i + 1 for i, (t, p) in enumerate(zip(labels, y_pred, strict=True)) if t != p]
    assert [int(r["row"]) for r in wrong] == expected
    assert all(r["true_label"] != r["predicted_label"] for r in wrong) and wrong
    assert [r["text"] for r in wrong] == [texts[int(r["row"]) - 1] for r in wrong]

    with Image.open(out / "confusion_matrix.png") as image:
        image.load()
        assert image.format == "PNG" and min(image.size) > 200


def test_cli_table_without_json(
    target: str, data: tuple[Path, list[str], list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _, _ = data
    code, stdout, _ = run(
        ["evaluate", "--data", str(path), "--text-column", "review", "--label-column", "sentiment",
         "--target", target], capsys,
    )
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0].startswith("model tiny: 150 rows") and "accuracy" in lines[0]
    assert any(line.startswith("weighted avg") for line in lines)
    assert "confusion matrix (rows: true, columns: predicted)" in stdout
    assert "wrote" not in stdout  # no --out, no files


def test_library_with_a_server_whose_limit_is_below_the_batch(tiny_model_dir: Path) -> None:
    texts, labels = corpus(23, seed=1)
    settings = tiny_settings(tiny_model_dir, max_texts_per_request=5)
    with ServerThread(settings) as server, whybert.Client(server.target) as client:
        with pytest.raises(whybert.InvalidArgumentError):
            client.predict(texts[:6])  # the limit holds
        result = whybert.evaluate(client, texts, labels, concurrency=3)
        direct = [p.label for i in range(0, 23, 5) for p in client.predict(texts[i : i + 5])]
    assert result.y_pred == direct and result.model == "tiny"
    assert result.report == metrics.classification_report(labels, direct, output_dict=True, zero_division=0)


def problem_csv(tmp_path: Path, content: str) -> str:
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("review,label\nhi,positive\n", [], "no column 'text'; its columns: 'review', 'label'"),
        ("", [], "the file is empty"),
        ("text,label\nok,positive\nbad,pos\nworse,pos\n", [],
         "labels that model 'tiny' does not have (negative, neutral, positive): 'pos' (2 rows, first row 2)"),
        ("text,label\nok,positive\n", ["--model", "nope"], "the server has no model 'nope'; it serves: tiny"),
    ],
)
def test_cli_errors_say_what_is_wrong(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, extra: list[str], message: str
) -> None:
    out = tmp_path / "out"
    code, stdout, err = run(
        ["evaluate", "--data", problem_csv(tmp_path, content), "--target", target, "--out", str(out), *extra], capsys
    )
    assert code == 2 and stdout == ""
    assert message in err
    assert not out.exists()  # checked before anything is written


def test_cli_without_matplotlib_writes_the_rest(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    texts, labels = corpus(10, seed=2)
    path = write_csv(tmp_path / "small.csv", texts, labels)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    out = tmp_path / "out"
    code, stdout, err = run(
        ["evaluate", "--data", str(path), "--text-column", "review", "--label-column", "sentiment",
         "--target", target, "--out", str(out)], capsys,
    )
    assert code == 0
    assert 'needs matplotlib, which is not installed: pip install "whybert[evaluate]"' in err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "misclassified.csv", "predictions.csv"]
    assert stdout.count("wrote ") == 3
