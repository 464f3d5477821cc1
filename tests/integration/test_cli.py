"""The `whybert` command as a person uses it, against a server of the tiny model (the
command in processes of its own: system/test_cli_process.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from whybert import cli


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_prints_a_table_and_json(threaded_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    target = ["--target", threaded_server.target]
    code, out, _ = run_cli(["predict", "the food was great", "awful", *target], capsys)
    assert code == 0
    header, *rows = out.strip().splitlines()
    assert header.split()[:2] == ["text", "label"] and "positive" in header
    assert len(rows) == 2 and rows[0].startswith("the food was great")
    code, out, _ = run_cli(["predict", "the food was great", "--json", *target], capsys)
    (item,) = json.loads(out)
    assert item["text"] == "the food was great" and abs(sum(item["scores"].values()) - 1) < 1e-6


def test_models_health_and_explain(threaded_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    target = ["--target", threaded_server.target]
    code, out, _ = run_cli(["models", *target], capsys)
    assert code == 0 and out.startswith("tiny (default): labels negative, neutral, positive")
    code, out, _ = run_cli(["health", *target], capsys)
    assert code == 0 and out.strip() == "SERVING"
    code, out, _ = run_cli(["explain", "the food was great", "--max-evals", "40", "--json", *target], capsys)
    (item,) = json.loads(out)
    assert item["tokens"][1:-1] == ["the ", "food ", "was ", "great"]
    assert len(item["values"]) == len(item["tokens"]) and item["additivity_error"] < 1e-6
    code, out, _ = run_cli(["explain", "the food was great", "--max-evals", "40", "--targets", "all", *target], capsys)
    assert code == 0 and out.count("prediction:") == 3 and "explaining 'neutral'" in out


def test_errors_are_reported_not_raised(threaded_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    target = ["--target", threaded_server.target]
    code, _, err = run_cli(["predict", "", *target], capsys)
    assert code == 1 and "INVALID_ARGUMENT" in err and "texts[0]" in err
    code, _, err = run_cli(["predict", "x", "--model", "nope", *target], capsys)
    assert code == 1 and "NOT_FOUND" in err


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "soon"])
def test_a_timeout_that_cannot_be_met_is_refused_before_any_call(
    timeout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["predict", "hello", "--timeout", timeout, "--target", "127.0.0.1:9"])
    assert exit_.value.code == 2 and "--timeout" in capsys.readouterr().err


def test_the_table_keeps_long_labels_apart(capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    from whybert import Prediction

    labels = ["entailment", "neutral", "contradiction"]
    predictions = [
        Prediction(label="contradiction", scores=dict(zip(labels, (0.1, 0.2, 0.7), strict=True)), truncated=False)
    ]
    cli._print_table(SimpleNamespace(texts=["a man sleeps"], pair=None), predictions)
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["text", "label", *labels]  # every label a word of its own
    assert row.split() == ["a", "man", "sleeps", "contradiction", "0.100", "0.200", "0.700"]
    for label in labels:  # each score right-aligned under its label
        assert header.index(label) + len(label) == row.index(f"{predictions[0].scores[label]:.3f}") + 5


def test_a_picture_that_cannot_be_written_is_refused_before_any_call(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # No server at this target: the refusal comes before any call is tried.
    nowhere = ["--target", "127.0.0.1:9"]
    code, _, err = run_cli(["explain", "hi", "--html", str(tmp_path / "no" / "x.html"), *nowhere], capsys)
    assert code == 2 and "no such directory" in err
    code, _, err = run_cli(["predict", "hi", "--png", str(tmp_path / "no" / "x.png"), *nowhere], capsys)
    assert code == 2 and "no such directory" in err
