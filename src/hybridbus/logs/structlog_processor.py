"""A structlog processor that ships each event dict to the bus through a `Shipper`.

Owns: turning a structlog event dict into a `LogRecord` (`event` is the
message; `level` or the method name the level; `logger` / `logger_name`;
`timestamp` from `TimeStamper`, text or Unix seconds; `exception` /
`exc_info`; `trace_id` / `span_id`; everything else fields) and submitting
it. Must not block nor raise into the application, and must not import
structlog before it drops an event (structlog is an optional dependency:
`pip install 'hybridbus[logs]'`).

Put it before the renderer to ship and still print (it returns the event
dict unchanged), or last with `drop=True` to ship only (it raises
`structlog.DropEvent`, which structlog takes as "nothing to log here").
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Final

import msgspec

from hybridbus.core.logs import LogRecord, normalize_level, record_from_line
from hybridbus.errors import InvalidInput
from hybridbus.logs.shipper import Shipper

__all__ = ["ShipToBus", "record_from_event_dict"]

_TAKEN: Final = frozenset(
    {"event", "level", "logger", "logger_name", "timestamp", "trace_id", "span_id"}
)
_json = msgspec.json.Encoder()


def _jsonable(value: Any) -> Any:
    try:
        _json.encode(value)
    except (TypeError, ValueError, OverflowError):
        return repr(value)
    return value


def _level(event_dict: MutableMapping[str, Any], method_name: str) -> str:
    for value in (event_dict.get("level"), method_name):
        if isinstance(value, (str, int)):
            try:
                return normalize_level(value)
            except InvalidInput:
                continue
    return "info"


def _time(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return ""
    # The JSON line parser already reads RFC 3339 text and Unix numbers.
    return record_from_line(_json.encode({"time": value}).decode()).time


def record_from_event_dict(event_dict: MutableMapping[str, Any], method_name: str) -> LogRecord:
    """The log record for a structlog event dict (module docstring)."""
    message = event_dict.get("event", "")
    logger = event_dict.get("logger", event_dict.get("logger_name", ""))
    fields = {
        key: _jsonable(value)
        for key, value in event_dict.items()
        if key not in _TAKEN and key != "exc_info"
    }
    exc_info = event_dict.get("exc_info")
    if exc_info and "exception" not in fields:
        import traceback

        if exc_info is True:
            import sys

            exc_info = sys.exc_info()
        if isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        if isinstance(exc_info, tuple) and exc_info[0] is not None:
            fields["exception"] = "".join(traceback.format_exception(*exc_info))
    return LogRecord(
        message=message if isinstance(message, str) else repr(message),
        level=_level(event_dict, method_name),
        logger=logger if isinstance(logger, str) else repr(logger),
        fields=fields,
        trace_id=str(event_dict.get("trace_id") or ""),
        span_id=str(event_dict.get("span_id") or ""),
        time=_time(event_dict.get("timestamp")),
    )


class ShipToBus:
    """The processor: `structlog.configure(processors=[..., ShipToBus(shipper), renderer])`."""

    def __init__(self, shipper: Shipper, *, drop: bool = False) -> None:
        self.shipper = shipper
        self.drop = drop

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        try:
            self.shipper.submit(record_from_event_dict(event_dict, method_name))
        except Exception:  # noqa: BLE001 - never into the application
            self.shipper.dropped += 1
        if self.drop:
            import structlog

            raise structlog.DropEvent
        return event_dict
