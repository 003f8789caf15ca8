"""Structured logs: one JSON object per line, or plain text for a terminal.

Owns: the log line format of `hybridbus serve` and how the root logger is set
up. Must not decide what is logged (modules log through `logging` as usual,
with `extra={...}` for fields).

A JSON line holds `time` (RFC 3339, UTC), `level`, `logger`, `message`, every
field passed in `extra`, and `exception` (the formatted traceback) if any.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

__all__ = ["JsonFormatter", "configure_logging"]

# Attributes every LogRecord has; anything else came in through `extra`.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_encoder: Final = msgspec.json.Encoder(enc_hook=str)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (no newline inside)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return _encoder.encode(line).decode("utf-8")


def configure_logging(level: str = "info", format: str = "json") -> None:
    """Send every log record of the process to stderr, as `format` ("json" or "text")."""
    if format not in ("json", "text"):
        raise ValueError(f"log_format must be 'json' or 'text', not {format!r}")
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log_level {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    if format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
