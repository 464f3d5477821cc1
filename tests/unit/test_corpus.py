"""`whybert.corpus` without a server: an explanation survives the trip through its JSON
record exactly, and a run's directory resumes what it holds (and only that), cuts off a
half-written last line, and refuses other settings, other data or a second writer."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import whybert
from _explanations import CORPUS, explanation
from whybert.corpus import (
    RECORDS,
    CorpusCSV,
    CorpusStore,
    Record,
    explain_corpus_rows,
    explanation_from_dict,
    explanation_to_dict,
    parse_record,
    record_line,
    scan,
)
from whybert.v1 import explainer_pb2 as pb

LABELS = ["negative", "neutral", "positive"]
INFO = whybert.ModelInfo("fake", LABELS, 128, True, ["shap-partition", "lime"], weights_sha256="ab" * 32)


def assert_same(a: whybert.Explanation, b: whybert.Explanation) -> None:
    """Field by field: arrays equal in value (NaN where NaN) and both float64; the others
    by repr, which tells every float apart (and NaN equals NaN)."""
    for f in dataclasses.fields(whybert.Explanation):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray) and y.dtype == np.float64, f.name
            assert x.shape == y.shape and np.array_equal(x, y, equal_nan=True), f.name
        else:
            assert repr(x) == repr(y), f.name


def full_explanation() -> whybert.Explanation:
    """Every optional field set, awkward floats included (NaN, ±inf, a denormal, 0.1)."""
    base = explanation(["[CLS]", "so ", "<b>good</b>", "[SEP]"],
                       [[0.0, 1.0], [0.1, float("nan")], [float("inf"), -float("inf")], [5e-324, -0.0]],
                       ["positive", "negative"])
    return dataclasses.replace(
        base,
        prediction=whybert.Prediction("positive", {"positive": 0.7, "negative": 0.3},
                                      {"positive": 1.25, "negative": -2.5}, truncated=True, token_count=4),
        base_values=np.array([0.25, float("nan")]),
        convergence_delta=np.array([1e-7, -3.0]),
        faithfulness=whybert.Faithfulness(0.123456789, float("nan")),
        additivity_error=float("inf"),
        model_rows=17, queue_seconds=0.5, compute_seconds=1.75, cached=True,
        truncated=True, explained_chars=9,
        entity=whybert.Entity("good", "positive", 4, 15, 0.875), entity_index=1, text_index=2, entity_position=2,
        attention_position=0,
        attention=whybert.AttentionMaps([0, 3], [1], np.arange(32, dtype=np.float32).reshape(2, 1, 4, 4) / 7),
        pair="a second <text>", segments=[0, 0, 1, 1], explained_pair_chars=8,
    )


def from_a_server_message() -> whybert.Explanation:
    """An explanation as the client builds one from the wire (float32 probabilities)."""
    msg = pb.TextExplanation(
        tokens=[pb.Token(text="", start=0, end=0, special=True), pb.Token(text="fine ", start=0, end=5),
                pb.Token(text="day", start=5, end=8), pb.Token(text="", start=8, end=8, special=True)],
        labels=["neutral"], values=[0.0, 0.3, -0.1, 0.0], base_values=[0.2], output_values=[0.4],
        prediction=pb.Prediction(label="neutral", scores=[pb.LabelScore(label=lb, probability=p, logit=p * 3)
                                                          for lb, p in zip(LABELS, [0.1, 0.6, 0.3], strict=True)]),
        explainer=pb.EXPLAINER_KIND_LIME, output=pb.OUTPUT_SPACE_PROBABILITY, model_rows=500,
    )
    return whybert.Explanation.from_proto("fine day", msg)


@pytest.mark.parametrize("e", [*CORPUS, full_explanation(), from_a_server_message()],
                         ids=["corpus0", "corpus1", "corpus2", "every-field", "from-proto"])
def test_an_explanation_survives_its_json_record_exactly(e: whybert.Explanation) -> None:
    # Through a standard JSON text (no NaN tokens), as the file holds it.
    text = json.dumps(explanation_to_dict(e), allow_nan=False)
    assert_same(explanation_from_dict(json.loads(text)), e)
    record = Record(7, e.explainer, "positive", e)
    back = parse_record(record_line(record))
    assert (back.row, back.explainer, back.label) == (7, e.explainer, "positive")
    assert_same(back.explanation, e)


def test_the_record_holds_every_field_of_an_explanation() -> None:
    """A field added to Explanation must be added to the record too, or this fails."""
    assert set(explanation_to_dict(full_explanation())) == {f.name for f in dataclasses.fields(whybert.Explanation)}


def test_non_finite_values_are_written_as_protobuf_json_strings() -> None:
    data = explanation_to_dict(full_explanation())
    assert data["values"][1][1] == "NaN" and data["values"][2] == ["Infinity", "-Infinity"]
    assert data["faithfulness"]["sufficiency"] == "NaN" and data["additivity_error"] == "Infinity"
    with pytest.raises(ValueError, match="not an explanation"):
        explanation_from_dict({k: v for k, v in data.items() if k != "labels"})


# ---- the store -----------------------------------------------------------------------------


def settings(explainers: list[str] | None = None, **options: Any) -> dict[str, Any]:
    return {"format": "whybert-corpus/1", "model": "fake", "weights_sha256": "ab" * 32,
            "explainers": explainers or ["shap-partition"], "options": options}


def text_of(row: int) -> str:
    return f"text number {row} was fine"


def row_explanation(text: str, explainer: str = "shap-partition") -> whybert.Explanation:
    """An explanation of `text`: its words as tokens between [CLS] and [SEP]."""
    words, offsets, cursor = [], [], 0
    for word in text.split(" "):
        words.append(word + " ")
        offsets.append((cursor, min(cursor + len(word) + 1, len(text))))
        cursor += len(word) + 1
    values = np.linspace(-1, 1, len(words) + 2).reshape(-1, 1) * (1 + len(text) % 5)
    return whybert.Explanation(
        text=text, tokens=["", *words, ""], offsets=[(0, 0), *offsets, (len(text), len(text))],
        special=[True, *[False] * len(words), True], values=values, base_values=np.zeros(1),
        output_values=values.sum(axis=0), labels=["positive"],
        prediction=whybert.Prediction("positive", {"negative": 0.1, "neutral": 0.2, "positive": 0.7}),
        explainer=explainer, output="probability",
    )


def fill(store: CorpusStore, rows: range, explainer: str = "shap-partition") -> None:
    for row in rows:
        store.append(Record(row, explainer, "positive", row_explanation(text_of(row), explainer)))


def test_a_reopened_store_says_what_it_holds(tmp_path: Path) -> None:
    store = CorpusStore(tmp_path / "run")
    assert store.open(settings(), extra={"source": {"data": "x.csv"}}).records == 0
    fill(store, range(1, 6))
    store.close()
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())
    assert recorded["source"] == {"data": "x.csv"} and recorded["explainers"] == ["shap-partition"]
    again = CorpusStore(tmp_path / "run")
    done = again.open(settings())
    again.close()
    assert done.records == 5 and done.rows == {"shap-partition": {1, 2, 3, 4, 5}} and not done.dropped_tail
    assert [r.row for r in again.records()] == [1, 2, 3, 4, 5]


def test_a_half_written_last_line_is_cut_off_and_its_row_redone(tmp_path: Path) -> None:
    store = CorpusStore(tmp_path)
    store.open(settings())
    fill(store, range(1, 4))
    store.close()
    path = tmp_path / RECORDS
    whole = path.read_bytes()
    line = record_line(Record(4, "shap-partition", "positive", row_explanation(text_of(4)))).encode()
    path.write_bytes(whole + line[: len(line) // 2])  # the process died while writing row 4
    done = scan(path)
    assert done.dropped_tail and done.rows["shap-partition"] == {1, 2, 3}
    assert path.read_bytes() == whole  # the torn line is gone, the others untouched
    # A whole line lacking only its newline is torn too: its row is redone.
    path.write_bytes(whole + line[:-1])
    assert scan(path).rows["shap-partition"] == {1, 2, 3} and path.read_bytes() == whole


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda lines: [lines[0], b"{not json\n", *lines[1:]], "line 2 is not an explanation record"),
        (lambda lines: [*lines, lines[1]], "row 2 of shap-partition is there twice"),
        (lambda lines: [*lines, lines[1].replace(b"text number 2", b"text number X")],
         "row 2 of shap-partition is there twice"),
    ],
    ids=["garbage", "duplicate", "duplicate-other-text"],
)
def test_a_file_that_was_not_written_by_a_run_is_refused(tmp_path: Path, damage: Any, message: str) -> None:
    store = CorpusStore(tmp_path)
    store.open(settings())
    fill(store, range(1, 4))
    store.close()
    path = tmp_path / RECORDS
    path.write_bytes(b"".join(damage(path.read_bytes().splitlines(keepends=True))))
    with pytest.raises(ValueError, match=message):
        CorpusStore(tmp_path).open(settings())


def test_two_texts_for_one_row_are_refused(tmp_path: Path) -> None:
    store = CorpusStore(tmp_path)
    store.open(settings(["shap-partition", "lime"]))
    fill(store, range(1, 3))
    store.append(Record(2, "lime", "positive", row_explanation("another text", "lime")))
    store.close()
    with pytest.raises(ValueError, match="row 2 holds two different texts"):
        scan(tmp_path / RECORDS)


def test_other_settings_are_refused_unless_restarted(tmp_path: Path) -> None:
    store = CorpusStore(tmp_path)
    store.open(settings(max_evals=200))
    fill(store, range(1, 3))
    store.close()
    (tmp_path / "report.html").write_text("old report")
    (tmp_path / "notes.txt").write_text("the user's own file")
    with pytest.raises(ValueError, match=r'options: \{"max_evals": 200\} there, \{"max_evals": 100\} now') as caught:
        CorpusStore(tmp_path).open(settings(max_evals=100))
    assert "--restart" in str(caught.value)
    with pytest.raises(ValueError, match='explainers: \\["shap-partition"\\] there, \\["lime"\\] now'):
        CorpusStore(tmp_path).open(settings(["lime"], max_evals=200))
    fresh = CorpusStore(tmp_path)
    assert fresh.open(settings(max_evals=100), restart=True).records == 0
    fresh.close()
    assert (tmp_path / RECORDS).read_bytes() == b"" and not (tmp_path / "report.html").exists()
    assert (tmp_path / "notes.txt").exists()  # not the run's: left alone
    assert json.loads((tmp_path / "run.json").read_text())["options"] == {"max_evals": 100}


def test_records_without_settings_are_refused(tmp_path: Path) -> None:
    (tmp_path / RECORDS).write_text(record_line(Record(1, "lime", None, row_explanation("a b"))))
    with pytest.raises(ValueError, match=r"run\.json does not"):
        CorpusStore(tmp_path).open(settings())


def test_a_second_writer_is_refused_while_the_first_is_open(tmp_path: Path) -> None:
    first = CorpusStore(tmp_path)
    first.open(settings())
    with pytest.raises(ValueError, match="another run is writing"):
        CorpusStore(tmp_path).open(settings())
    first.close()
    second = CorpusStore(tmp_path)
    second.open(settings())
    second.close()


# ---- the run, against a stand-in for the client ----------------------------------------------


class FakeClient:
    """Explains by `row_explanation`, answering each stream's texts in reverse order, and
    records every text it was asked for; `fail_after` explanations, it raises (a crash)."""

    timeout = 60.0

    def __init__(self, fail_after: int | None = None) -> None:
        self.asked: list[str] = []
        self.fail_after = fail_after
        self.timeouts: list[float | None] = []

    def explain_stream(self, texts: list[str], model: str | None = None, explainer: str = "shap-partition",
                       *, timeout: float | None = None, **options: Any) -> Iterator[tuple[int, whybert.Explanation]]:
        self.timeouts.append(timeout)
        for i in reversed(range(len(texts))):
            if self.fail_after is not None and len(self.asked) >= self.fail_after:
                raise whybert.UnavailableError(grpc.StatusCode.UNAVAILABLE, "the server went away")
            self.asked.append(texts[i])
            yield i, row_explanation(texts[i], explainer)


def run(client: FakeClient, out: Path, n: int = 10, **kwargs: Any) -> whybert.corpus.CorpusResult:
    rows = [(text_of(r), "positive") for r in range(1, n + 1)]
    return explain_corpus_rows(client, INFO, rows, out_dir=out, chunk_size=4, charts=False,  # type: ignore[arg-type]
                               **kwargs)


def test_a_stopped_run_resumes_with_only_the_missing_rows(tmp_path: Path) -> None:
    crashing = FakeClient(fail_after=6)
    with pytest.raises(whybert.UnavailableError):
        run(crashing, tmp_path)
    assert crashing.timeouts[0] == 4 * FakeClient.timeout  # per text: a stream of 4 gets 4 times
    kept = {r.row for r in CorpusStore(tmp_path).records()}
    assert len(kept) == 6
    resumed = FakeClient()
    result = run(resumed, tmp_path)
    assert sorted(resumed.asked) == sorted(text_of(r) for r in range(1, 11) if r not in kept)
    assert (result.explained, result.resumed, result.rows) == (4, 6, 10)
    assert sorted(r.row for r in CorpusStore(tmp_path).records()) == list(range(1, 11))
    again = FakeClient()
    assert run(again, tmp_path).explained == 0 and again.asked == []


def test_changed_or_shorter_data_is_refused(tmp_path: Path) -> None:
    run(FakeClient(), tmp_path, n=6)
    rows = [(text_of(r), "positive") for r in range(1, 7)]
    rows[2] = (text_of(3), "negative")  # row 3's true label changed
    with pytest.raises(ValueError, match="row 3's text or true label is not the one explained"):
        explain_corpus_rows(FakeClient(), INFO, rows, out_dir=tmp_path, charts=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="holds explanations up to row 6 but the data has 4 rows"):
        run(FakeClient(), tmp_path, n=4)
    with pytest.raises(ValueError, match="holds explanations up to row 6 but the data has 4 rows"):
        run(FakeClient(), tmp_path, n=4, total=4)  # known up front: refused before anything is sent


def test_bad_rows_and_explainers_are_named(tmp_path: Path) -> None:
    client = FakeClient()
    rows = [("fine", "positive"), ("  ", "positive")]
    with pytest.raises(ValueError, match="row 2: the text is empty"):
        explain_corpus_rows(client, INFO, rows, out_dir=tmp_path / "a", charts=False)  # type: ignore[arg-type]
    rows = [("fine", "positive"), ("good", "great")]
    with pytest.raises(ValueError, match="row 2: label 'great' is not a label of model 'fake'"):
        explain_corpus_rows(client, INFO, rows, out_dir=tmp_path / "b", charts=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least two different explainers"):
        run(client, tmp_path / "c", compare_explainers=["shap", "shap-partition"])
    with pytest.raises(ValueError, match="unknown explainer 'sharp'"):
        run(client, tmp_path / "d", explainer="sharp")


# ---- the scatter of a corpus's confidence ----------------------------------------------------


def test_the_scatter_colours_right_wrong_and_unknown_and_counts_what_it_cannot_draw(tmp_path: Path) -> None:
    from whybert import charts

    correct: list[bool | None] = [True, True, False, None, True]
    figure = charts.confidence_scatter([0.9, 0.8, 0.6, 0.7, float("nan")], [0.3, 0.1, 0.2, -0.05, 0.4], correct)
    ax = figure.axes[0]
    drawn = {text.get_text(): len(c.get_offsets()) for text, c in
             zip(ax.get_legend().get_texts(), ax.collections, strict=True)}
    assert drawn == {"right (2)": 2, "wrong (1)": 1, "true label unknown (1)": 1}  # the NaN point is left out
    assert "4 texts (1 not finite, not shown)" in ax.get_title(loc="left")
    colours = {tuple(np.round(c.get_facecolor()[0][:3], 3)) for c in ax.collections}
    assert len(colours) == 3
    charts.save_png(figure, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="2 confidences, 1 attributions"):
        charts.confidence_scatter([0.5, 0.6], [0.1], [True, False])


# ---- text pairs ------------------------------------------------------------------------------

PAIR_INFO = whybert.ModelInfo("nli", ["entailment", "neutral", "contradiction"], 64, True, ["shap-partition"],
                              weights_sha256="cd" * 32, kind="text-pair")


def pair_explanation(text: str, pair: str, explainer: str = "shap-partition") -> whybert.Explanation:
    """`row_explanation` of a text pair: the text's words (segment 0), [SEP], the pair's words
    (segment 1, offsets into the pair), the pair's largest in |value|."""
    first, second = row_explanation(text, explainer), row_explanation(pair, explainer)
    n1, n2 = len(first.tokens) - 1, len(second.tokens) - 1
    values = np.concatenate([first.values[:-1] * 0.1, np.zeros((1, 1)), second.values[1:]])
    return dataclasses.replace(
        first, tokens=[*first.tokens[:-1], "[SEP]", *second.tokens[1:]],
        offsets=[*first.offsets[:-1], (len(text), len(text)), *second.offsets[1:]],
        special=[*first.special[:-1], True, *second.special[1:]], values=values,
        labels=["neutral"], prediction=whybert.Prediction("neutral", {"neutral": 0.6, "entailment": 0.4}),
        pair=pair, segments=[0] * n1 + [0] + [1] * n2,
    )


class PairFakeClient(FakeClient):
    """Explains each (text, pair) as `pair_explanation`, recording the pairs of each stream."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[list[str] | None] = []

    def explain_stream(self, texts: list[str], model: str | None = None, explainer: str = "shap-partition",
                       *, timeout: float | None = None, **options: Any) -> Iterator[tuple[int, whybert.Explanation]]:
        pairs = options.get("pairs")
        self.pairs.append(pairs)
        for i in reversed(range(len(texts))):
            self.asked.append(texts[i])
            yield i, pair_explanation(texts[i], pairs[i] if pairs else "", explainer)


def pair_rows(n: int, changed: int | None = None) -> list[tuple[str, str | None, str]]:
    return [(text_of(r), "neutral", f"second text {r}" + (" changed" if r == changed else "")) for r in range(1, n + 1)]


def test_a_pair_run_sends_each_rows_pair_and_resumes_only_the_same_pairs(tmp_path: Path) -> None:
    client = PairFakeClient()
    result = explain_corpus_rows(client, PAIR_INFO, pair_rows(6), out_dir=tmp_path, chunk_size=4,  # type: ignore[arg-type]
                                 charts=False, pair_column="hypothesis")
    assert result.explained == 6
    assert client.pairs == [[f"second text {r}" for r in range(1, 5)], ["second text 5", "second text 6"]]
    back = {r.row: r.explanation for r in CorpusStore(tmp_path).records()}
    assert {n: (e.text, e.pair) for n, e in back.items()} == {r: (text_of(r), f"second text {r}") for r in range(1, 7)}
    assert json.loads((tmp_path / "run.json").read_text())["pairs"] == "hypothesis"

    # Per-token outputs say which text a word is of; the words pool both texts.
    rows = {int(r["row"]): r for r in read_csv(tmp_path / "rows.csv")}
    assert "(pair)" in rows[1]["top_words"].split(",")[0]  # the pair's words are the strongest here
    words = {w["word"] for w in json.loads((tmp_path / "words.json").read_text())["words"]}
    assert {"text", "second", "number"} <= words
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert '<span class="wb-pair-part">pair</span>second text 3</span>' in page
    assert page.count('class="wb-pair-sep"') == 6  # each row's explanation: both texts, apart

    again = PairFakeClient()
    explain_corpus_rows(again, PAIR_INFO, pair_rows(6), out_dir=tmp_path, charts=False,  # type: ignore[arg-type]
                        pair_column="hypothesis")
    assert again.asked == []
    with pytest.raises(ValueError, match='pairs: "hypothesis" there, "premise2" now'):
        explain_corpus_rows(again, PAIR_INFO, pair_rows(6), out_dir=tmp_path, charts=False,  # type: ignore[arg-type]
                            pair_column="premise2")
    with pytest.raises(ValueError, match="row 3's text, pair text or true label is not the one explained"):
        explain_corpus_rows(again, PAIR_INFO, pair_rows(6, changed=3), out_dir=tmp_path,  # type: ignore[arg-type]
                            charts=False, pair_column="hypothesis")
    assert again.asked == []


def test_pairs_that_do_not_fit_the_model_are_refused_before_any_stream(tmp_path: Path) -> None:
    client = PairFakeClient()
    with pytest.raises(ValueError, match="model 'nli' classifies text pairs: row 1 has no pair text"):
        explain_corpus_rows(client, PAIR_INFO, [("a b", None)], out_dir=tmp_path / "a", charts=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model 'fake' classifies single texts: row 1 has a pair text"):
        explain_corpus_rows(client, INFO, [("a b", None, "c")], out_dir=tmp_path / "b", charts=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="row 2: the pair text is empty"):
        rows = [("a b", None, "c"), ("d", None, " ")]
        explain_corpus_rows(client, PAIR_INFO, rows, out_dir=tmp_path / "c", charts=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="go with its rows"):
        explain_corpus_rows(client, PAIR_INFO, pair_rows(2), out_dir=tmp_path / "d", charts=False,  # type: ignore[arg-type]
                            pairs=["x", "y"])
    assert client.asked == []


def test_a_corpus_csv_reads_the_pair_column_with_or_without_labels(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text("text,hypothesis,label\nA cat,an animal,entailment\nrain,sun,contradiction\n", encoding="utf-8")
    labelled = CorpusCSV.check(path, "text", "label", PAIR_INFO, "hypothesis")
    assert list(labelled) == [("A cat", "entailment", "an animal"), ("rain", "contradiction", "sun")]
    bare = CorpusCSV.check(path, "text", None, PAIR_INFO, "hypothesis")
    assert (bare.rows, bare.pair_column, list(bare)) == (2, "hypothesis", [("A cat", None, "an animal"),
                                                                           ("rain", None, "sun")])
    with pytest.raises(ValueError, match="model 'nli' classifies text pairs, but the file has no pair column 'pair'"):
        CorpusCSV.check(path, "text", None, PAIR_INFO)
    with pytest.raises(ValueError, match=r"a pair column \('hypothesis'\) .* model 'fake' classifies single texts"):
        CorpusCSV.check(path, "text", None, INFO, "hypothesis")


def read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
