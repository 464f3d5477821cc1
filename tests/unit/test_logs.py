"""Structured logging (logs.py): one JSON object a line, with the fields passed in `extra`
and the traceback, and only warnings and up from libraries."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from whybert_service.logs import JsonFormatter, configure


def record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("whybert_service.test", logging.INFO, __file__, 1, msg, (), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_a_record_is_one_json_line_with_its_extra_fields() -> None:
    line = JsonFormatter().format(record("model loaded", model="tiny", rows=3, _private=1))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "info" and entry["logger"] == "whybert_service.test"
    assert entry["msg"] == "model loaded" and entry["model"] == "tiny" and entry["rows"] == 3
    assert "_private" not in entry and "lineno" not in entry
    assert entry["ts"].endswith("Z") and "T" in entry["ts"]


def test_an_exception_is_logged_with_its_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("failed")
        rec.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in entry["exc"]


def test_configure_sends_whybert_at_its_level_and_others_at_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    service = logging.getLogger("whybert_service")
    monkeypatch.setattr(service, "level", service.level)
    configure("info")
    (handler,) = root.handlers
    assert isinstance(handler.formatter, JsonFormatter)
    assert root.level == logging.WARNING and service.level == logging.INFO
