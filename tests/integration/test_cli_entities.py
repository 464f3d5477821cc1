"""`whybert predict` and `whybert explain --entity` on a token model, and the terminal and
HTML renderings of an entity's explanation, against a server of the tiny NER model."""

from __future__ import annotations

import html
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import whybert
from _entities import generated_texts, make_tiny_ner
from _servers import ServerThread, tiny_settings
from whybert import cli
from whybert.render import html_fragment, mark_entities, terminal

TEXT = "Angela Merkel visited Paris and met Microsoft Corporation in São Paulo"


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_ner(tmp_path_factory.mktemp("tiny-ner"))


@pytest.fixture(scope="module")
def server(ner_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(tiny_settings(ner_dir, model=(f"ner={ner_dir}",))) as running:
        yield running


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    out, _ = capsys.readouterr()
    return code, out


def test_predict_lists_the_entities(server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    with whybert.Client(server.target) as client:
        (p,) = client.predict(TEXT, model="ner")
    assert p.entities
    code, out = _run(["predict", TEXT, "--model", "ner", "--target", server.target], capsys)
    assert code == 0
    first, *lines = out.strip().splitlines()
    assert first == mark_entities(TEXT, p.entities)  # not a terminal: [text]TYPE marks
    for i, (line, e) in enumerate(zip(lines, p.entities, strict=True)):
        assert line.split()[0] == str(i) and f"[{e.start}, {e.end})" in line and e.label in line
        assert line.endswith(e.text)
    code, out = _run(["predict", TEXT, "--model", "ner", "--json", "--target", server.target], capsys)
    (item,) = json.loads(out)
    listed = [(x["start"], x["end"], x["label"]) for x in item["entities"]]
    assert listed == [(e.start, e.end, e.label) for e in p.entities]


def test_explain_an_entity_by_index_span_and_all(server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    with whybert.Client(server.target) as client:
        (p,) = client.predict(TEXT, model="ner")
    target = ["--model", "ner", "--max-evals", "40", "--target", server.target]
    last = len(p.entities) - 1
    code, out = _run(["explain", TEXT, "--entity", str(last), "--json", *target], capsys)
    (item,) = json.loads(out)
    assert code == 0 and item["entity_index"] == last and item["entity"]["text"] == p.entities[last].text
    assert item["labels"] == [p.entities[last].label]
    e = p.entities[0]
    code, out = _run(["explain", TEXT, "--entity", f"{e.start}:{e.end}", *target], capsys)
    assert code == 0 and out.startswith(f"entity 0: {e.text!r} {e.label}")
    code, out = _run(["explain", TEXT, "--entity", "all", "--json", *target], capsys)
    assert [x["entity_index"] for x in json.loads(out)] == list(range(len(p.entities)))
    assert _run(["explain", TEXT, "--entity", "99", *target], capsys)[0] != 0
    # Several texts: each entity's explanation says whose text it is from.
    second = "Paris and Berlin"
    with whybert.Client(server.target) as client:
        (q,) = client.predict(second, model="ner")
    assert q.entities
    code = cli.main(["explain", TEXT, second, "--entity", "all", *target])
    out, _ = capsys.readouterr()
    assert code == 0 and out.startswith("text 0:\nentity 0:")
    assert (out.count("text 0:"), out.count("text 1:")) == (len(p.entities), len(q.entities))


def test_explain_says_when_no_text_has_an_entity(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # (The tiny model tags nearly every piece: no text of its is without an entity.)
    monkeypatch.setattr(whybert.Client, "explain", lambda *args, **kwargs: [])
    code = cli.main(["explain", "the", "--model", "ner", "--entity", "all", "--target", server.target])
    out, err = capsys.readouterr()
    assert code == 0 and out == "" and err.strip() == "no entity to explain in the text(s)"


def test_renderings_mark_the_explained_entity(server: ServerThread) -> None:
    with whybert.Client(server.target) as client:
        (e,) = client.explain(TEXT, model="ner", entity=0, max_evals=40)
    assert e.entity is not None
    page = html_fragment([e])
    marked = re.findall(r'<span class="wb-entity" data-entity="([A-Z]+)">', page)
    pieces = [i for i, (s, t) in enumerate(e.offsets) if not e.special[i] and s < e.entity.end and e.entity.start < t]
    assert marked == [e.entity.label] * len(pieces)
    assert page.count(f'<span class="wb-entity-type">{e.entity.label}</span>') == 1
    shown = terminal(e, colour=True)
    assert shown.count("\x1b[4m") == len(pieces)
    assert terminal(e, colour=False).startswith(f"entity 0: {e.entity.text!r}")


def test_mark_entities_without_a_terminal() -> None:
    entities = [whybert.Entity("Angela Merkel", "PER", 0, 13, 0.9), whybert.Entity("Paris", "LOC", 22, 27, 0.8)]
    assert mark_entities(TEXT, entities) == "[Angela Merkel]PER visited [Paris]LOC" + TEXT[27:]


def test_evaluate_reports_seqevals_entity_figures(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from _entities import generated_texts
    from seqeval.metrics import classification_report
    from whybert.entity_evaluation import tags_of

    rng = random.Random(0)
    sentences = [text.split() for text in generated_texts(70, seed=9)]  # more than one request may carry
    gold = [[rng.choice(["O", "B-PER", "I-PER", "B-LOC", "I-ORG", "B-MISC"]) for _ in s] for s in sentences]
    path = tmp_path / "test.txt"
    pairs = zip(sentences, gold, strict=True)
    blocks = ["\n".join(f"{t} NN {tag}" for t, tag in zip(s, g, strict=True)) for s, g in pairs]
    path.write_text("-DOCSTART- O\n\n" + "\n\n".join(blocks) + "\n")
    code, out = _run(["evaluate", "--data", str(path), "--model", "ner", "--json", "--target", server.target], capsys)
    assert code == 0
    result = json.loads(out)
    with whybert.Client(server.target) as client:
        predictions = dict(client.predict_stream([" ".join(s) for s in sentences], model="ner"))
    predicted = [tags_of(s, predictions[i].entities) for i, s in enumerate(sentences)]
    ref = classification_report(gold, predicted, output_dict=True, zero_division=0)
    assert result["sentences"] == len(sentences) and set(result["report"]) == set(ref)
    for name, row in ref.items():
        assert result["report"][name]["f1-score"] == pytest.approx(float(row["f1-score"]), abs=1e-12)
        assert result["report"][name]["support"] == row["support"]
    out_dir = tmp_path / "out"
    argv = ["evaluate", "--data", str(path), "--model", "ner", "--batch-size", "100", "--out", str(out_dir)]
    code, out = _run([*argv, "--target", server.target], capsys)
    assert code == 0 and "micro avg" in out and f"{len(sentences)} sentences" in out
    assert json.loads((out_dir / "entity_metrics.json").read_text()) == result
    written = (out_dir / "predictions.conll").read_text().split("\n\n")[:-1]
    assert len(written) == len(sentences)
    for block, tokens, tags, guesses in zip(written, sentences, gold, predicted, strict=True):
        lines = [line.split() for line in block.splitlines()]
        assert lines == [list(x) for x in zip(tokens, tags, guesses, strict=True)]
    (tmp_path / "empty.txt").write_text("-DOCSTART- O\n\n")
    argv = ["evaluate", "--data", str(tmp_path / "empty.txt"), "--model", "ner", "--target", server.target]
    assert _run(argv, capsys)[0] == 2  # no sentences: refused, not an all-zero report


def test_predict_and_explain_pictures_mark_the_entities(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image
    from whybert.render import entity_colour

    hostile = TEXT + ' <script>alert("x")</script>'
    with whybert.Client(server.target) as client:
        (p,) = client.predict(hostile, model="ner")
    assert p.entities
    html_out, png_out = tmp_path / "entities.html", tmp_path / "entities.png"
    target = ["--model", "ner", "--target", server.target]
    code, out = _run(["predict", hostile, "--html", str(html_out), "--png", str(png_out), *target], capsys)
    assert code == 0 and out.splitlines()[0] == mark_entities(hostile, p.entities)
    page = html_out.read_text(encoding="utf-8")
    assert "<script" not in page
    shown = re.search(r'<p class="wb-text">(.*?)</p>', page)
    assert shown is not None  # the text, escaped, once the type labels are taken out
    untyped = re.sub(r'<span class="wb-entity-type"[^>]*>[^<]*</span>', "", shown.group(1))
    assert html.unescape(re.sub(r"<[^>]+>", "", untyped)) == hostile
    marks = re.findall(r'<mark class="wb-ent" [^>]*data-label="([^"]+)" data-start="(\d+)" data-end="(\d+)"', page)
    assert marks == [(x.label, str(x.start), str(x.end)) for x in p.entities]
    typed = re.findall(r'<span class="wb-entity-type" style="[^"]*">([^<]+)</span></mark>', page)
    assert typed == [x.label for x in p.entities]
    with Image.open(png_out) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    for label in {x.label for x in p.entities}:  # each type's box colour is drawn
        assert np.any(np.all(np.abs(pixels - np.array(entity_colour(label))) <= 2, axis=-1)), label

    e = p.entities[1]
    pictures = ["--html", str(html_out), "--png", str(png_out)]
    code, out = _run(["explain", TEXT, "--entity", "1", "--max-evals", "40", *pictures, *target], capsys)
    assert code == 0 and out.startswith(f"entity 1: {e.text!r} {e.label} [{e.start}, {e.end})")
    page = html_out.read_text(encoding="utf-8")
    assert f"why <b>{e.label}</b> for <b>{e.text}</b> [{e.start}, {e.end})" in page
    assert re.findall(r'<span class="wb-entity" data-entity="([A-Z]+)">', page)
    with Image.open(png_out) as image:
        assert image.format == "PNG" and image.size[1] > 300


def test_pictures_of_no_entity_say_so(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--entity all on a text without entities (the tiny model finds some everywhere: the
    answer is made empty) gives nothing to draw, and says so."""
    monkeypatch.setattr(whybert.Client, "explain", lambda *args, **kwargs: [])
    target = ["--model", "ner", "--target", server.target]
    code = cli.main(["explain", "nothing", "--entity", "all", "--png", str(tmp_path / "x.png"), *target])
    assert code == 2 and "no explanation to draw: the texts have no entity to explain" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    assert cli.main(["explain", "nothing", "--entity", "all", *target]) == 0  # no picture asked: nothing to say


@pytest.mark.parametrize("stream_limit", [None, 3])
def test_explain_corpus_leaves_out_texts_without_the_entity(
    ner_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], stream_limit: int | None
) -> None:
    """A corpus of an entity model, explained at entity INDEX: the texts with fewer entities
    are left out and named by their CSV row, the others explained; a resumed run explains
    nothing again and names the same rows. A server that takes fewer texts per stream than
    the chunk (3 against 5) gets smaller chunks, for the entity check as for the rest."""
    limits = {} if stream_limit is None else {"max_stream_texts": stream_limit, "max_texts_per_request": 2}
    with ServerThread(tiny_settings(ner_dir, model=(f"ner={ner_dir}",), **limits)) as server:
        _explain_corpus_at_an_entity(server, tmp_path, capsys)


def _explain_corpus_at_an_entity(server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import csv

    from whybert.corpus import RECORDS

    texts = [*generated_texts(16, seed=5), "the", "and the", "TEXT"]
    with whybert.Client(server.target) as client:
        pieces = [client.predict(texts[i : i + 2], model="ner") for i in range(0, len(texts), 2)]
    counts = [len(p.entities) for piece in pieces for p in piece]
    index = sorted(counts)[len(counts) // 2]  # some texts have more entities, some not
    without = [n for n, c in enumerate(counts, start=1) if c <= index]
    assert 0 < len(without) < len(texts)
    data = tmp_path / "ner.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text"], *([t] for t in texts)])
    argv = ["explain-corpus", "--model", "ner", "--data", str(data), "--out", str(tmp_path / "out"),
            "--entity", str(index), "--max-evals", "30", "--chunk-size", "5", "--json",
            "--target", server.target]  # fmt: skip
    for _ in range(2):  # the run, then a resumed one
        code, out = _run(argv, capsys)
        assert code == 0, out
        summary = json.loads(out)
        assert summary["skipped_rows"] == without
        explained = [json.loads(line)["row"] for line in (tmp_path / "out" / RECORDS).read_text().splitlines()]
        assert sorted(explained) == [n for n in range(1, len(texts) + 1) if n not in without]
    assert summary["explained"] == 0 and summary["resumed"] == len(texts) - len(without)
