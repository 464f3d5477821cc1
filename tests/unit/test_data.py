"""Training data (`training/data.py`): reading a labelled CSV (bytes that are not UTF-8,
labels, confidences, clear errors naming file, row and column) and the fixed split."""

from __future__ import annotations

from pathlib import Path

import pytest
from whybert_service.training import data
from whybert_service.training.data import DataError, Example


def _csv(tmp_path: Path, body: bytes) -> Path:
    path = tmp_path / "rows.csv"
    path.write_bytes(body)
    return path


def test_decode_skips_the_bom_and_replaces_bad_bytes() -> None:
    assert data.decode("\ufefftext,sentiment\n".encode()) == "text,sentiment\n"
    assert data.decode(b"caf\xe9 ok") == "caf\ufffd ok"
    assert data.decode("café".encode()) == "café"


def test_read_csv_labels_confidence_and_blank_rows(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        b'text,sentiment,confidence\n"good, really",pos,0.9\nbad \xff day,neg,\n  ,pos,0.1\nmeh,,0.5\r\nfine,pos,1\n',
    )
    dataset = data.read_csv(path, confidence_column="confidence")
    assert dataset.labels == ["neg", "pos"]  # sorted distinct values
    assert dataset.examples == [
        Example("good, really", 1, 0.9),
        Example("bad \ufffd day", 0, None),  # an empty confidence is no confidence
        Example("fine", 1, 1.0),
    ]  # the rows without text or label are skipped
    ordered = data.read_csv(path, labels=["pos", "neg"])
    assert ordered.labels == ["pos", "neg"] and [e.label for e in ordered.examples] == [0, 1, 0]
    assert all(e.confidence is None for e in ordered.examples)  # no confidence column asked for


@pytest.mark.parametrize(
    ("body", "kwargs", "match"),
    [
        (b"review,stars\na,pos\nb,neg\n", {}, r"no column text, sentiment"),
        (b"text,sentiment\na,pos\nb,pos\n", {}, "at least two labels"),
        (b"text,sentiment\na,pos\nb,meh\n", {"labels": ["pos", "neg"]}, r"labels \['meh'\] are not among"),
        (
            b"text,sentiment,c\na,pos,high\nb,neg,1\n",
            {"confidence_column": "c"},
            r"rows.csv:2: c 'high' is not a number",
        ),
    ],
)
def test_read_csv_errors_name_what_is_wrong(tmp_path: Path, body: bytes, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(DataError, match=match):
        data.read_csv(_csv(tmp_path, body), **kwargs)  # type: ignore[arg-type]


def test_a_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        data.read_csv(tmp_path / "none.csv")


def test_every_label_with_three_rows_gets_a_row_in_each_part() -> None:
    examples = [Example(f"common {i}", 0) for i in range(40)] + [Example(f"rare {i}", 1) for i in range(3)]
    split = data.split_stratified(examples, validation_fraction=0.05, test_fraction=0.05)
    assert [e.label for e in split.test].count(1) == 1
    assert [e.label for e in split.validation].count(1) == 1
    assert sum(split.sizes().values()) == len(examples)
    two = data.split_stratified([Example("a", 0), Example("b", 0)], validation_fraction=0.1, test_fraction=0.1)
    assert two.sizes() == {"train": 2, "validation": 0, "test": 0}  # too few to spare one


def test_the_split_does_not_depend_on_row_order_and_keys_on_the_seed() -> None:
    examples = [Example(f"t{i}", i % 2) for i in range(50)]
    a = data.split_stratified(examples, seed=1)
    b = data.split_stratified(examples[::-1], seed=1)
    assert a == b
    assert data.split_key("x", 1) != data.split_key("x", 2)


@pytest.mark.parametrize(("validation", "test"), [(-0.1, 0.1), (0.5, 0.5), (0.9, 0.2)])
def test_fractions_must_leave_rows_to_train_on(validation: float, test: float) -> None:
    with pytest.raises(DataError, match="fractions"):
        data.split_stratified([Example("a", 0)], validation_fraction=validation, test_fraction=test)
