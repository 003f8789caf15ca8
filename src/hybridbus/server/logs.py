"""Structured logs: one JSON object per line, or plain text for a terminal.

Owns: the log line format of `hybridbus serve` and how the root logger is set
up. Must not decide what is logged (modules log through `logging` as usual,
with `extra={...}` for fields).

A JSON line holds `time` (RFC 3339, UTC), `level`, `logger`, `message`, every
field passed in `extra`, and `exception` (the formatted traceback) if any. A
text line (`log_format = "text"`) is `time level logger: message key=value...`,
with the same `extra` fields (`TextFormatter`).

No line holds a credential: `RedactCredentials`, on the handler, rewrites every
record — message, arguments, `extra` fields, exception and stack text — with
`redact` before any formatter sees it. It hides the values of the query
parameters `token`, `key`, `api_key` and `access_token`, of the `Authorization`
and `X-Api-Key` headers (as header lines and in mappings), of JSON/dict fields
named like a credential, the credential after `Bearer`/`Basic`, anything
shaped like a JWT or an API key of this server, and the password of a URL.
aiohttp logs the raw start of a bad request line or header (`LineTooLong`):
that is where these shapes matter, as a header's value appears there without
its name.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from hybridbus.server.access import API_KEY_PREFIX

__all__ = [
    "REDACTED",
    "JsonFormatter",
    "RedactCredentials",
    "TextFormatter",
    "configure_logging",
    "redact",
]

# Attributes every LogRecord has; anything else came in through `extra`.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_encoder: Final = msgspec.json.Encoder(enc_hook=str)

REDACTED: Final = "[redacted]"
# A value runs to the end of its quoted string, header line or query parameter.
_RULES: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # ?token=…, &key=…: a credential in a URL's query
    (re.compile(r"(?i)([?&;](?:token|key|api_key|access_token)=)[^&#\s'\"\\]*"), REDACTED),
    # Authorization: …, 'X-Api-Key': '…' — a header line, or a header in a mapping
    (
        re.compile(
            r"(?i)((?:proxy-)?authorization|x-api-key)(['\"]?[ \t]*[:=][ \t]*['\"]?)[^'\"\r\n\\]*"
        ),
        REDACTED,
    ),
    # "token": "…" — a field of JSON or of a dict that holds a credential
    (
        re.compile(
            r"(?i)(['\"](?:token|api_key|access_token|secret|jwt_secret|password)['\"]"
            r"[ \t]*[:=][ \t]*['\"])[^'\"]*"
        ),
        REDACTED,
    ),
    # Bearer …, Basic …: a credential after its scheme, wherever it is (a header's value alone)
    (re.compile(r"(?i)\b(bearer|basic)[ \t]+[A-Za-z0-9._~+/=-]+"), " " + REDACTED),
    # A JWT (base64url JSON, "{\"" -> "eyJ") and an API key of this server, wherever they are
    (re.compile(r"eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){0,2}"), REDACTED),
    (re.compile(rf"\b({re.escape(API_KEY_PREFIX)})[A-Za-z0-9_-]{{8,}}"), REDACTED),
    # scheme://user:password@host
    (re.compile(r"([a-z][a-z0-9+.-]*://[^/\s:@'\"]+:)[^@\s/'\"]+@"), REDACTED + "@"),
)


def _replacer(suffix: str) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        # What precedes the secret (a parameter's name, a header's name and colon) stays.
        return "".join(match.groups()) + suffix

    return replace


_SUBSTITUTIONS: Final = tuple((pattern, _replacer(suffix)) for pattern, suffix in _RULES)


def redact(text: str) -> str:
    """`text` with every credential it shows replaced by `[redacted]`."""
    for pattern, replace in _SUBSTITUTIONS:
        text = pattern.sub(replace, text)
    return text


_CREDENTIAL_KEYS: Final = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "token", "api_key", "access_token"}
    | {"secret", "jwt_secret", "password"}
)


def _redact_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(item) for item in value]
    if isinstance(value, dict):
        return {
            key: REDACTED
            if isinstance(key, str) and key.lower() in _CREDENTIAL_KEYS
            else _redact_value(item)
            for key, item in value.items()
        }
    return redact(str(value))  # what the JSON line would show of it (`enc_hook=str`)


class RedactCredentials(logging.Filter):
    """Rewrites a record so that no credential reaches a formatter (see `redact`).

    Put it on a handler: a logger's filters do not see records of its children.
    The record is changed in place, for every handler after this one too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format: logging itself must not raise
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = redact(message), None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and not key.startswith("_"):
                setattr(record, key, _redact_value(value))
        if record.exc_info:
            # Formatted here, once, so that no formatter formats the raw exception again.
            record.exc_text = _formatter.formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_formatter: Final = logging.Formatter()


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


class TextFormatter(logging.Formatter):
    """Formats a record for a terminal: time, level, logger, message, then `key=value` fields.

    Every field passed in `extra` follows the message, in order, as `key=value`:
    a string bare when it has no space, quote or `=` (else as a JSON string), any
    other value as JSON — so `listening addresses=[["127.0.0.1",8080]]` tells the
    port of `--port 0`. A traceback follows on the next lines.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = [
            f"{key}={_text_value(value)}"
            for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_")
        ]
        return " ".join([super().formatMessage(record), *fields])


def _text_value(value: object) -> str:
    if isinstance(value, str) and value and not _NEEDS_QUOTES.search(value):
        return value
    return _encoder.encode(value).decode("utf-8")


_NEEDS_QUOTES: Final = re.compile(r'[\s"=\\]|[^\x21-\x7e]')


def configure_logging(level: str = "info", format: str = "json") -> None:
    """Send every log record of the process to stderr, as `format` ("json" or "text").

    Credentials are redacted from every record first (`RedactCredentials`).
    """
    if format not in ("json", "text"):
        raise ValueError(f"log_format must be 'json' or 'text', not {format!r}")
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log_level {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactCredentials())
    if format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
