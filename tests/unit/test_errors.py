"""The service's errors (errors.py): each of a kind a caller tells apart, and every message
bounded, whatever the input it quotes, so that a status always fits in the trailers."""

from __future__ import annotations

from whybert_service.errors import (
    MAX_DESCRIPTION_BYTES,
    MAX_FIELD_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_VIOLATIONS,
    Cancelled,
    DeadlineExceeded,
    ErrorKind,
    InvalidArgument,
    ModelFailure,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    clip,
    quote,
    quote_some,
)


def size(text: str) -> int:
    return len(text.encode())


def test_each_error_has_its_kind() -> None:
    kinds = {
        InvalidArgument: ErrorKind.INVALID_ARGUMENT,
        NotFound: ErrorKind.NOT_FOUND,
        ResourceExhausted: ErrorKind.RESOURCE_EXHAUSTED,
        Unavailable: ErrorKind.UNAVAILABLE,
        DeadlineExceeded: ErrorKind.DEADLINE_EXCEEDED,
        Cancelled: ErrorKind.CANCELLED,
        ModelFailure: ErrorKind.INTERNAL,
        ServiceError: ErrorKind.INTERNAL,
    }
    for cls, kind in kinds.items():
        assert cls.kind is kind
    assert set(kinds.values()) == set(ErrorKind)


def test_clip_cuts_to_whole_characters_and_says_so() -> None:
    assert clip("short", 10) == "short"
    cut = clip("é" * 100, 11)
    assert cut == "é" * 4 + "…" and size(cut) <= 11
    assert clip("😀" * 3, 5) == "…"  # no room for a whole emoji


def test_quote_repr_s_a_value_and_cuts_long_ones() -> None:
    assert quote("label") == "'label'"
    long = quote("x" * 1000)
    assert long == repr("x" * 64) + "…"
    assert quote_some(["a", "b"]) == "'a', 'b'"
    assert quote_some(["a", "b", "c", "d", "e"]) == "'a', 'b', 'c' and 2 more"


def test_a_message_is_bounded_whatever_it_quotes() -> None:
    error = Unavailable("x" * 10_000)
    assert size(error.message) <= MAX_MESSAGE_BYTES and str(error) == error.message


def test_violations_are_cut_counted_and_joined_into_the_message() -> None:
    many = [("f" * 200, "d" * 1000) for _ in range(MAX_VIOLATIONS + 5)]
    error = InvalidArgument(many)
    assert len(error.violations) == MAX_VIOLATIONS and error.omitted == 5
    assert all(size(f) <= MAX_FIELD_BYTES and size(d) <= MAX_DESCRIPTION_BYTES for f, d in error.violations)
    assert size(error.message) <= MAX_MESSAGE_BYTES
    assert error.message.endswith("; and 5 more violations")
    one = InvalidArgument([("texts[0]", "the text is empty")])
    assert one.message == "texts[0]: the text is empty" and one.omitted == 0
