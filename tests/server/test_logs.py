"""Structured logs: one JSON object per line with the `extra` fields."""

from __future__ import annotations

import json
import logging

import pytest

from hybridbus.server.logs import JsonFormatter, configure_logging


def test_a_record_is_one_json_line_with_its_extra_fields() -> None:
    record = logging.LogRecord("hybridbus.x", logging.WARNING, __file__, 1, "hi %s", ("you",), None)
    record.port = 8080
    record.addresses = [["127.0.0.1", 8080]]
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "hi you"
    assert (data["level"], data["logger"]) == ("warning", "hybridbus.x")
    assert data["port"] == 8080 and data["addresses"] == [["127.0.0.1", 8080]]
    assert data["time"].endswith("+00:00")


def test_exceptions_are_kept_in_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    data = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in data["exception"]


def test_configure_logging_refuses_unknown_settings() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with pytest.raises(ValueError, match="log_level"):
            configure_logging("loud", "json")
        with pytest.raises(ValueError, match="log_format"):
            configure_logging("info", "xml")
        assert root.handlers == handlers  # nothing was changed
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
