"""`whybert.evaluate` without a server: its figures against scikit-learn's on random label
arrays, the checks of a labelled CSV, and the request plan (batch sizes, requests in flight,
order, the server's limit, errors by row) against a stand-in client."""

from __future__ import annotations

import csv
import io
import re
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from sklearn import metrics
from whybert import InvalidArgumentError, ModelInfo, Prediction
from whybert.evaluation import (
    Batch,
    EvalCSV,
    Evaluation,
    OutputFiles,
    classification_report,
    confusion_matrix,
    evaluate,
)

LABELS = ["anger", "joy", "fear", "love", "none"]


def _sklearn_report(y_true: list[str], y_pred: list[str], labels: list[str] | None = None) -> dict[str, Any]:
    return metrics.classification_report(y_true, y_pred, labels=labels, output_dict=True, zero_division=0)


def _random_labels(seed: int) -> tuple[list[str], list[str]]:
    """True and predicted labels from different random subsets of LABELS, so some labels are
    never predicted and some never present; some runs are perfect, some all wrong."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    present = rng.choice(LABELS, size=int(rng.integers(1, 5)), replace=False)
    guessed = rng.choice(LABELS, size=int(rng.integers(1, 5)), replace=False)
    y_true = list(rng.choice(present, size=n))
    y_pred = [t if rng.random() < rng.random() else str(rng.choice(guessed)) for t in y_true]
    return y_true, y_pred


@pytest.mark.parametrize("seed", range(40))
def test_report_equals_scikit_learn_on_random_labels(seed: int) -> None:
    y_true, y_pred = _random_labels(seed)
    # The labels that occur (scikit-learn's default), and every label, with some that
    # neither occur nor are predicted: the figures are equal floats, not close ones.
    assert classification_report(y_true, y_pred) == _sklearn_report(y_true, y_pred)
    assert classification_report(y_true, y_pred, LABELS) == _sklearn_report(y_true, y_pred, LABELS)
    assert np.array_equal(
        confusion_matrix(y_true, y_pred, LABELS), metrics.confusion_matrix(y_true, y_pred, labels=LABELS)
    )


def test_labels_never_predicted_or_never_present_score_zero() -> None:
    y_true = ["joy", "joy", "fear", "fear"]
    y_pred = ["joy", "love", "joy", "joy"]
    report = classification_report(y_true, y_pred)
    assert report["fear"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 2}  # never predicted
    assert report["love"]["support"] == 0 and report["love"]["precision"] == 0.0  # never present
    assert report["accuracy"] == 0.25
    assert report == _sklearn_report(y_true, y_pred)


def test_evaluation_reports_the_labels_that_occur_in_the_models_order() -> None:
    y_true, y_pred = _random_labels(7)
    codes = {label: i for i, label in enumerate(LABELS)}
    result = Evaluation(
        model="m",
        model_labels=LABELS,
        true=np.array([codes[t] for t in y_true]),
        predicted=np.array([codes[p] for p in y_pred]),
        scores=np.full((len(y_true), len(LABELS)), 0.2),
        truncated=np.zeros(len(y_true), dtype=bool),
        seconds=0.0,
    )
    occurring = set(y_true) | set(y_pred)
    assert result.labels == [label for label in LABELS if label in occurring]
    assert result.report == _sklearn_report(y_true, y_pred)
    assert np.array_equal(result.confusion, metrics.confusion_matrix(y_true, y_pred, labels=result.labels))
    assert list(result.misclassified()) == [i for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True)) if t != p]
    assert result.metrics()["confusion_matrix"] == result.confusion.tolist()


def test_a_label_outside_the_list_is_refused() -> None:
    with pytest.raises(ValueError, match="'sad'"):
        classification_report(["joy", "sad"], ["joy", "joy"], labels=["joy"])
    with pytest.raises(ValueError, match="no rows"):
        classification_report([], [])


# ---- the CSV -------------------------------------------------------------------------------

MODEL = ModelInfo(name="tiny", labels=["negative", "neutral", "positive"], max_tokens=128, is_default=True,
                  explainers=[])


def _csv(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(content, encoding="utf-8")
    return path


def test_csv_is_read_with_quotes_newlines_and_a_bom(tmp_path: Path) -> None:
    path = _csv(tmp_path, '\ufeffid,review,stars\n1,"good, really\nvery good",positive\n2,bad,negative \n')
    data = EvalCSV.check(path, "review", "stars", MODEL)
    assert data.rows == 2
    assert list(data) == [("good, really\nvery good", "positive"), ("bad", "negative")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("text,label\n", "no rows"),
        ("body,label\nhi,positive\n", "no column 'text'; its columns: 'body', 'label'"),
        ("text,label\nhi\n", "row 1 .*fewer fields"),
        ("text,label\nhi,positive\nyes,positive,extra\n", "row 2 .*more fields"),
        ("text,text,label\ngood,bad,positive\n", "columns named twice: 'text'"),
        ("text,label\n  ,positive\nok,neutral\n\t,neutral\n", r"empty text in row\(s\) 1, 3"),
    ],
)
def test_csv_problems_are_named(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EvalCSV.check(_csv(tmp_path, content), "text", "label", MODEL)


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncaf\u00e9,positive\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: not UTF-8 text"):
        EvalCSV.check(path, "text", "label", MODEL)
    path.write_bytes("t\u00e9xt,label\nx,positive\n".encode("latin-1"))  # in the header
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: not UTF-8 text"):
        EvalCSV.check(path, "text", "label", MODEL)


def test_empty_trailing_fields_are_no_extra_columns(tmp_path: Path) -> None:
    data = EvalCSV.check(_csv(tmp_path, "text,label\nhi,positive,\nyes,neutral, ,\n"), "text", "label", MODEL)
    assert list(data) == [("hi", "positive"), ("yes", "neutral")]


def test_labels_the_model_lacks_are_all_named_with_their_rows(tmp_path: Path) -> None:
    rows = ["a,positive", "b,pos", "c,neutral", "d,pos", "e,Negative"]
    path = _csv(tmp_path, "text,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError) as caught:
        EvalCSV.check(path, "text", "label", MODEL)
    message = str(caught.value)
    assert "'pos' (2 rows, first row 2)" in message and "'Negative' (1 row, first row 5)" in message
    assert "negative, neutral, positive" in message and "'tiny'" in message


# ---- the run, against a stand-in client ------------------------------------------------------


class StandInClient:
    """Answers like a server of MODEL: each text's label is its first word; records the
    requests, how many were in flight at once, and refuses more than `limit` texts as the
    server does."""

    def __init__(self, limit: int = 64, delay: float = 0.0, refuse: str | None = None) -> None:
        self.limit = limit
        self.delay = delay
        self.refuse = refuse
        self.requests: list[list[str]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()

    def list_models(self, timeout: Any = None) -> list[ModelInfo]:
        return [MODEL]

    def predict(self, texts: list[str], model: str | None = None, timeout: Any = None) -> list[Prediction]:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.requests.append(list(texts))
        try:
            time.sleep(self.delay)
            if len(texts) > self.limit:
                raise InvalidArgumentError(
                    grpc.StatusCode.INVALID_ARGUMENT, "bad request",
                    [("texts", f"{len(texts)} texts given; at most {self.limit} per request")],
                )
            if self.refuse is not None and self.refuse in texts:
                i = texts.index(self.refuse)
                violation = (f"texts[{i}]", "20001 characters; at most 20000")
                raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "bad request", [violation])
            return [self._prediction(t) for t in texts]
        finally:
            with self.lock:
                self.in_flight -= 1

    @staticmethod
    def _prediction(text: str) -> Prediction:
        label = text.split()[0]
        scores = {name: (0.8 if name == label else 0.1) for name in MODEL.labels}
        return Prediction(label=label, scores=scores)


def _corpus(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    predicted = rng.choice(MODEL.labels, size=n)
    true = [p if rng.random() < 0.6 else str(rng.choice(MODEL.labels)) for p in predicted]
    return [f"{p} text {i}" for i, p in enumerate(predicted)], true


def test_requests_are_bounded_in_size_and_in_flight_and_answered_in_order() -> None:
    texts, labels = _corpus(530)
    client = StandInClient(delay=0.01)
    seen: list[Batch] = []
    result = evaluate(client, iter(texts), iter(labels), batch_size=50, concurrency=3, on_batch=seen.append)
    assert sorted(len(r) for r in client.requests) == [30] + [50] * 10
    assert 1 < client.most_in_flight <= 3
    assert [b.start for b in seen] == list(range(0, 530, 50))
    assert [t for b in seen for t in b.texts] == texts
    assert result.y_true == labels and result.y_pred == [t.split()[0] for t in texts]
    assert np.allclose(result.confidence, 0.8)
    assert result.report == _sklearn_report(labels, result.y_pred)


def test_batches_shrink_to_a_lower_server_limit() -> None:
    texts, labels = _corpus(23)
    client = StandInClient(limit=5)
    result = evaluate(client, texts, labels)
    assert len(client.requests[0]) == 23  # refused: says its limit
    assert [len(r) for r in client.requests[1:]] == [5, 5, 5, 5, 3]
    assert result.y_pred == [t.split()[0] for t in texts]


def test_a_refused_text_is_named_by_its_row_and_nothing_more_is_sent() -> None:
    texts, labels = _corpus(400)
    client = StandInClient(refuse=texts[137])
    with pytest.raises(ValueError, match="row 138: 20001 characters"):
        evaluate(client, texts, labels, batch_size=10, concurrency=2)
    assert len(client.requests) < 20


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["positive", "pos"], "row 2: label 'pos' is not a label of model 'tiny' \\(negative, neutral, positive\\)"),
        (["positive"], "fewer labels than texts: none for row 2"),
        (["positive", "neutral", "neutral"], "more labels than texts"),
    ],
)
def test_label_problems_stop_the_run(labels: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(StandInClient(), ["positive a", "neutral b"], labels)


def test_progress_bar_counts_rows_and_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    texts, labels = _corpus(12)
    stream = io.StringIO()
    evaluate(StandInClient(), texts, labels, batch_size=4, progress=stream)
    assert "12/12" in stream.getvalue()  # the total comes from len(texts)
    monkeypatch.setitem(__import__("sys").modules, "tqdm", None)  # tqdm not installed
    result = evaluate(StandInClient(), texts, labels, batch_size=4, progress=True)
    assert len(result.true) == 12


# ---- text pairs: the CSV's pair column and the pairs sent ------------------------------------

PAIR_MODEL = ModelInfo(name="nli", labels=["entailment", "neutral", "contradiction"], max_tokens=64,
                       is_default=True, explainers=[], kind="text-pair")


def test_a_pair_models_csv_gives_each_row_its_pair_text(tmp_path: Path) -> None:
    content = 'premise,gold,hypothesis\n"A cat, here",entailment,"an animal\nsits"\nrain,contradiction,sun\n'
    path = _csv(tmp_path, content)
    data = EvalCSV.check(path, "premise", "gold", PAIR_MODEL, "hypothesis")
    assert (data.rows, data.pair_column) == (2, "hypothesis")
    assert list(data) == [("A cat, here", "entailment", "an animal\nsits"), ("rain", "contradiction", "sun")]
    (tmp_path / "default").mkdir()
    default = _csv(tmp_path / "default", "text,pair,label\nA,B,neutral\n")
    assert list(EvalCSV.check(default, "text", "label", PAIR_MODEL)) == [("A", "neutral", "B")]
    assert EvalCSV.check(default, "text", "label", PAIR_MODEL).pair_column == "pair"


@pytest.mark.parametrize(
    ("content", "model", "column", "message"),
    [
        ("text,label\nA,neutral\n", PAIR_MODEL, None,
         "model 'nli' classifies text pairs, but the file has no pair column 'pair' "
         r"\(--pair-column names .*\); its columns: 'text', 'label'"),
        ("text,pair,label\nA,B,neutral\n", PAIR_MODEL, "hypothesis", "no pair column 'hypothesis'"),
        ("text,pair,label\nA,B,positive\n", MODEL, None,
         r"a pair column \('pair'\) holds the second texts of text pairs, but model 'tiny' classifies single texts"),
        ("text,label\nA,positive\n", MODEL, "hypothesis", r"a pair column \('hypothesis'\) .* model 'tiny'"),
        ("text,pair,label\nA,B,neutral\nC,  ,neutral\n", PAIR_MODEL, None, r"empty text or pair text in row\(s\) 2"),
        ("text,pair,label\nA,B\n", PAIR_MODEL, None, "row 1 .*fewer fields"),
    ],
)
def test_pair_column_problems_name_the_column_and_the_model(
    tmp_path: Path, content: str, model: ModelInfo, column: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        EvalCSV.check(_csv(tmp_path, content), "text", "label", model, column)


class PairStandIn(StandInClient):
    """A server of PAIR_MODEL: each pair's label is its pair text's first word."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pairs: list[list[str] | None] = []

    def list_models(self, timeout: Any = None) -> list[ModelInfo]:
        return [PAIR_MODEL]

    def predict(
        self, texts: list[str], model: str | None = None, pairs: list[str] | None = None, timeout: Any = None
    ) -> list[Prediction]:
        with self.lock:
            self.requests.append(list(texts))
            self.pairs.append(None if pairs is None else list(pairs))
        assert pairs is not None and len(pairs) == len(texts)
        return [
            Prediction(q.split()[0], {k: (0.9 if k == q.split()[0] else 0.05) for k in PAIR_MODEL.labels})
            for q in pairs
        ]


def _pair_corpus(n: int) -> tuple[list[str], list[str], list[str]]:
    rng = np.random.default_rng(5)
    guessed = [str(x) for x in rng.choice(PAIR_MODEL.labels, size=n)]
    texts = [f"premise {i}" for i in range(n)]
    pairs = [f"{g} hypothesis {i}" for i, g in enumerate(guessed)]
    labels = [g if rng.random() < 0.5 else str(rng.choice(PAIR_MODEL.labels)) for g in guessed]
    return texts, pairs, labels


def test_a_pair_model_is_sent_each_texts_own_pair(tmp_path: Path) -> None:
    texts, pairs, labels = _pair_corpus(23)
    client = PairStandIn()
    files = OutputFiles(tmp_path, PAIR_MODEL.labels, pairs=True)
    seen: list[Batch] = []

    def keep(batch: Batch) -> None:
        seen.append(batch)
        files.batch(batch)

    result = evaluate(client, texts, labels, pairs=iter(pairs), batch_size=5, concurrency=2, on_batch=keep)
    files.finish(result, chart=False)
    for sent, second in zip(client.requests, client.pairs, strict=True):
        assert second is not None and [q.split()[-1] for q in second] == [t.split()[-1] for t in sent]
    assert [q for b in seen for q in (b.pairs or [])] == pairs
    y_pred = [q.split()[0] for q in pairs]
    assert result.y_pred == y_pred and result.report == _sklearn_report(labels, y_pred)
    with (tmp_path / "predictions.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["text"], r["pair"], r["true_label"], r["predicted_label"]) for r in rows] == list(
        zip(texts, pairs, labels, y_pred, strict=True)
    )
    with (tmp_path / "misclassified.csv").open(newline="", encoding="utf-8") as f:
        wrong = list(csv.DictReader(f))
    assert [r["pair"] for r in wrong] == [q for q, t, p in zip(pairs, labels, y_pred, strict=True) if t != p]
    assert list(wrong[0])[:4] == ["row", "text", "pair", "true_label"]


def test_pairs_that_do_not_fit_the_model_are_refused_before_any_request() -> None:
    texts, pairs, labels = _pair_corpus(6)
    pair_client = PairStandIn()
    with pytest.raises(ValueError, match="model 'nli' classifies text pairs: row 1 has no pair text"):
        evaluate(pair_client, texts, labels)
    single = StandInClient()
    with pytest.raises(ValueError, match="model 'tiny' classifies single texts: row 1 has a pair text"):
        evaluate(single, ["positive a"], ["positive"], pairs=["b"])
    with pytest.raises(ValueError, match="fewer pairs than texts: none for row 6"):
        evaluate(pair_client, texts, labels, pairs=pairs[:5])
    with pytest.raises(ValueError, match="row 1: the pair text is empty"):
        evaluate(pair_client, texts, labels, pairs=[" ", *pairs[1:]])
    assert pair_client.requests == [] and single.requests == []
