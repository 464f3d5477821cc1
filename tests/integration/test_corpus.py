"""`whybert explain-corpus` and `whybert.explain_corpus` against a tiny-model server: the
files it writes and what they hold (the server's own explanations, `whybert.aggregate` and
`whybert.agreement` over them), a text holding HTML escaped in the report, a run resumed
after losing lines that asks the server for those rows only, and the explainers' ranking."""

from __future__ import annotations

import contextlib
import csv
import html
import io
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import whybert
from PIL import Image
from whybert import cli
from whybert.agreement import agreement
from whybert.corpus import RECORDS, CorpusStore

WORDS = ["the", "food", "service", "staff", "was", "great", "awful", "slow", "fast", "cosy", "rude", "not", "very"]
HOSTILE = '<script>alert("boo")</script> the <b>food</b> & service were great'
SHAP = ["--max-evals", "100"]


def corpus(n: int = 12, seed: int = 3) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 10)))) for _ in range(n)]
    texts[4] = HOSTILE
    labels = [str(rng.choice(["negative", "neutral", "positive"])) for _ in range(n)]
    return texts, labels


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str]]:
    texts, labels = corpus()
    path = tmp_path_factory.mktemp("corpus") / "reviews.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "review", "sentiment"])
        writer.writerows((i, t, lb) for i, (t, lb) in enumerate(zip(texts, labels, strict=True)))
    return path, texts, labels


def explain_cli(target: str, data: Path, out: Path, *extra: str, labels: bool = True) -> tuple[int, str, str]:
    argv = ["explain-corpus", "--data", str(data), "--text-column", "review", "--model", "tiny",
            "--out", str(out), "--target", target, *extra]
    if labels:
        argv += ["--label-column", "sentiment"]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(argv)
    return code, stdout.getvalue(), stderr.getvalue()


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / RECORDS).read_text(encoding="utf-8").splitlines()]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_the_run_writes_the_servers_explanations_and_their_report(
    target: str, data: tuple[Path, list[str], list[str]], tmp_path: Path
) -> None:
    path, texts, labels = data
    out = tmp_path / "run"
    code, stdout, err = explain_cli(target, path, out, *SHAP, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert (summary["rows"], summary["explained"], summary["resumed"]) == (12, 12, 0)

    # One record per row, each the server's explanation of that row's text and label.
    lines = records(out)
    assert sorted(r["row"] for r in lines) == list(range(1, 13))
    back = {r.row: r for r in CorpusStore(out).records()}
    assert all(back[n].explanation.text == texts[n - 1] and back[n].label == labels[n - 1] for n in back)
    with whybert.Client(target) as client:
        direct = client.explain(texts[:3], model="tiny", max_evals=100)
    for n, e in enumerate(direct, start=1):
        assert back[n].explanation.tokens == e.tokens
        np.testing.assert_array_equal(back[n].explanation.values, e.values)
        assert back[n].explanation.prediction.scores == e.prediction.scores

    # The word statistics are whybert.aggregate's over the explanations read back.
    agg = whybert.aggregate((back[n].explanation for n in sorted(back)), lowercase=True)
    assert json.loads((out / "words.json").read_text()) == json.loads(agg.to_json())
    assert read_rows(out / "words.csv") == read_rows_text(agg.to_csv())

    # rows.csv: the predictions and whether they are right, row by row.
    rows = read_rows(out / "rows.csv")
    assert [int(r["row"]) for r in rows] == list(range(1, 13))
    for r in rows:
        e = back[int(r["row"])].explanation
        assert r["predicted_label"] == e.prediction.label and r["true_label"] == labels[int(r["row"]) - 1]
        assert r["correct"] == str(int(r["true_label"] == r["predicted_label"]))
        assert float(r["confidence"]) == pytest.approx(e.prediction.scores[e.prediction.label], rel=1e-5)
        assert float(r["largest_attribution"]) == pytest.approx(e.values[1:-1, 0].max(), rel=1e-5)
    assert summary["accuracy"] == pytest.approx(np.mean([r["correct"] == "1" for r in rows]))

    for name in ("words_mean_abs.png", "words_mean.png", "words_count.png", "confidence.png"):
        with Image.open(out / name) as image:
            image.load()
            assert image.format == "PNG" and min(image.size) > 200, name
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "&lt;script&gt;" in page  # the text is data, not markup
    assert "<b>food</b>" not in page and "&lt;b&gt;" in page
    assert page.count("data:image/png;base64,") == 4 and 'src="http' not in page  # self-contained
    assert all(f'id="row-{n}"' in page for n in range(1, 13)) and "all 12 rows" in page
    assert set(summary["files"]) >= {str(out / n) for n in ("report.html", "rows.csv", "words.json", RECORDS)}


def read_rows_text(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(text.splitlines()))


class CountingClient(whybert.Client):
    """A client that records every text it sends for explanation."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.sent: list[str] = []

    def explain_stream(  # type: ignore[override]
        self, texts: Iterable[str], *args: Any, **kwargs: Any
    ) -> Iterator[tuple[int, whybert.Explanation]]:
        texts = list(texts)
        self.sent += texts
        return super().explain_stream(texts, *args, **kwargs)


def test_a_resumed_run_explains_only_the_rows_it_lost(
    target: str, data: tuple[Path, list[str], list[str]], tmp_path: Path
) -> None:
    _, texts, labels = data
    out = tmp_path / "run"
    with CountingClient(target) as client:
        first = whybert.explain_corpus(client, texts, labels, out_dir=out, model="tiny", max_evals=100, chunk_size=5)
        assert sorted(client.sent) == sorted(texts) and first.explained == 12

        # Lose two whole lines, and leave a third half-written, as a killed process would.
        lines = (out / RECORDS).read_text(encoding="utf-8").splitlines(keepends=True)
        lost = {json.loads(lines[i])["row"] for i in (2, 6, len(lines) - 1)}
        kept = [line for i, line in enumerate(lines) if i not in (2, 6, len(lines) - 1)]
        (out / RECORDS).write_text("".join(kept) + lines[-1][: len(lines[-1]) // 2], encoding="utf-8")

        client.sent.clear()
        again = whybert.explain_corpus(client, texts, labels, out_dir=out, model="tiny", max_evals=100,
                                       chunk_size=5, report_rows=5)
        assert sorted(client.sent) == sorted(texts[n - 1] for n in lost)
        assert (again.explained, again.resumed, again.rows) == (3, 9, 12)

        # Other options are refused, naming the difference, before anything is sent.
        client.sent.clear()
        with pytest.raises(ValueError, match=r'options: \{"max_evals": 100\} there, \{"max_evals": 50\} now'):
            whybert.explain_corpus(client, texts, labels, out_dir=out, model="tiny", max_evals=50)
        assert client.sent == []

    assert sorted(r["row"] for r in records(out)) == list(range(1, 13))
    agg = whybert.aggregate((r.explanation for r in sorted(CorpusStore(out).records(), key=lambda r: r.row)),
                            lowercase=True)
    assert json.loads((out / "words.json").read_text()) == json.loads(agg.to_json())
    # The report is bounded: the first 5 rows' explanations, and it says so.
    page = (out / "report.html").read_text(encoding="utf-8")
    assert [int(n) for n in re.findall(r'id="row-(\d+)"', page)] == [1, 2, 3, 4, 5]
    assert "the first 5 rows of 12" in page
    assert again.shown_rows == 5


def test_the_command_refuses_other_options_until_restarted(
    target: str, data: tuple[Path, list[str], list[str]], tmp_path: Path
) -> None:
    path, _, _ = data
    out = tmp_path / "run"
    assert explain_cli(target, path, out, *SHAP)[0] == 0
    code, stdout, err = explain_cli(target, path, out, "--max-evals", "60")
    assert code == 2 and stdout == ""
    assert "holds a run with other settings" in err and "--restart" in err
    code, stdout, err = explain_cli(target, path, out, "--max-evals", "60", "--restart")
    assert code == 0, err
    assert "12 explanations made" in stdout and f"wrote {out / 'report.html'}" in stdout
    assert json.loads((out / "run.json").read_text())["options"] == {"max_evals": 60}


def test_compared_explainers_are_ranked_on_faithfulness_and_agreement(
    target: str, data: tuple[Path, list[str], list[str]], tmp_path: Path
) -> None:
    path, texts, _ = data
    out = tmp_path / "compare"
    explainers = ["shap-partition", "lime", "integrated-gradients"]
    code, stdout, err = explain_cli(
        target, path, out, "--compare-explainers", ",".join(explainers), *SHAP, "--num-samples", "300",
        "--n-steps", "16", "--json", labels=False,
    )
    assert code == 0, err
    ranking = json.loads((out / "explainers.json").read_text())
    assert json.loads(stdout)["ranking"] == ranking and json.loads(stdout)["accuracy"] is None

    by_row: dict[int, dict[str, whybert.Explanation]] = {}
    for r in CorpusStore(out).records():
        by_row.setdefault(r.row, {})[r.explainer] = r.explanation
    assert sorted(by_row) == list(range(1, 13)) and all(set(v) == set(explainers) for v in by_row.values())
    assert ranking["rows"] == 12 and [x["explainer"] for x in ranking["explainers"]] == explainers

    for item in ranking["explainers"]:
        scores = [by_row[n][item["explainer"]].faithfulness for n in sorted(by_row)]
        assert all(s is not None for s in scores)
        assert item["comprehensiveness"] == pytest.approx(np.nanmean([s.comprehensiveness for s in scores]))
        assert item["sufficiency"] == pytest.approx(np.nanmean([s.sufficiency for s in scores]))
    best = max(ranking["explainers"], key=lambda x: x["comprehensiveness"])
    assert best["comprehensiveness_rank"] == 1
    assert min(ranking["explainers"], key=lambda x: x["sufficiency"])["sufficiency_rank"] == 1

    for pair in ranking["pairs"]:
        a, b = pair["explainers"]
        found = [agreement(by_row[n][a], by_row[n][b], by_row[n][a].prediction.label, 5)
                 for n in sorted(by_row)]
        spearman = [f.spearman for f in found]
        assert pair["rows"] == 12 and pair["spearman_undefined"] == int(np.isnan(spearman).sum())
        assert pair["spearman"] == pytest.approx(np.nanmean(spearman))
        assert pair["top_k_overlap"] == pytest.approx(np.mean([f.top_k_overlap for f in found]))
    for item in ranking["explainers"]:
        mine = [p["spearman"] for p in ranking["pairs"] if item["explainer"] in p["explainers"]]
        assert item["spearman"] == pytest.approx(np.mean(mine))

    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<h2>Explainers</h2>" in page and "integrated-gradients · lime" not in page
    assert "shap-partition · lime" in page and "<script" not in page.lower()
    rows = read_rows(out / "rows.csv")
    assert all(r["correct"] == "" and r["true_label"] == "" for r in rows)
    assert {f"{x}_comprehensiveness" for x in explainers} <= set(rows[0])
    assert texts[4] == HOSTILE and html.escape(HOSTILE, quote=False)[:20] in page
