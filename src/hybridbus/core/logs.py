"""Log events, the pure part: levels, the log record, parsing a line, the CloudEvent.

Owns: the six levels and their aliases (`normalize_level`, `level_rank`),
`LogRecord` (what one log line carries: message, level, logger, fields,
trace and span ids, time), the topic a service instance logs on
(`log_topic`: `logs/<service>/<instance>`), `record_from_line` (a JSON
object line or plain text, as `hybridbus log` reads stdin), the event data
of a record and back, and `log_event` (the CloudEvent: `type` = `log`).
Must not do I/O: shipping lives in `hybridbus.logs`, filtering in
`core.filters`.

Levels are `trace < debug < info < warn < error < fatal`. Names are matched
without regard to case, with the aliases `warning`, `critical`, `err`,
`notice`, `panic`; numbers are Python `logging` numbers (5 trace, 10 debug,
20 info, 30 warn, 40 error, 50 critical; a number in between counts as the
level below it, as Python's own custom levels do).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from hybridbus.core.event import Event, nests_too_deep
from hybridbus.core.topics import validate_topic
from hybridbus.errors import InvalidInput, InvalidTopic

__all__ = [
    "EVENT_TYPE",
    "LEVELS",
    "LogRecord",
    "level_rank",
    "log_event",
    "log_topic",
    "normalize_level",
    "record_from_data",
    "record_from_line",
    "record_to_data",
    "rfc3339",
    "traceparent",
]

EVENT_TYPE: Final = "log"
LEVELS: Final = ("trace", "debug", "info", "warn", "error", "fatal")
_RANK: Final = {name: rank for rank, name in enumerate(LEVELS)}
_ALIASES: Final = {
    **{name: name for name in LEVELS},
    "warning": "warn",
    "critical": "fatal",
    "err": "error",
    "notice": "info",
    "panic": "fatal",
}
# Python logging's numbers, highest first: a number counts as the first level it reaches.
_NUMBERS: Final = ((50, "fatal"), (40, "error"), (30, "warn"), (20, "info"), (10, "debug"))


def normalize_level(value: str | int) -> str:
    """The canonical level (one of `LEVELS`) of a name, alias or Python logging number.

    Raises `InvalidInput` for anything else (a number below 1, an unknown name).
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidInput(f"a level is a name or a number, not {type(value).__name__}")
    if isinstance(value, str):
        text = value.strip()
        found = _ALIASES.get(text) or _ALIASES.get(text.lower())
        if found is not None:
            return found
        if not (text.isascii() and text.isdigit()):
            raise InvalidInput(
                f"unknown level {value!r:.40}: use one of {', '.join(LEVELS)} "
                "(or warning, critical, err, notice, panic, or a Python logging number)"
            )
        value = int(text)
    if value < 1:
        raise InvalidInput(f"level number {value} is below 1 (Python's TRACE is 5, DEBUG 10)")
    for number, name in _NUMBERS:
        if value >= number:
            return name
    return "trace"


def level_rank(level: str | int) -> int:
    """The rank of a level, 0 (trace) to 5 (fatal); aliases and numbers are normalized first."""
    rank = _RANK.get(level) if isinstance(level, str) else None
    return rank if rank is not None else _RANK[normalize_level(level)]


class LogRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One log line: the data of a `log` event.

    `level` is normalized on construction (`WARNING` becomes `warn`; an
    unknown level raises `InvalidInput`). `time` is RFC 3339 in UTC
    (`rfc3339`), empty when not known; `trace_id` and `span_id` are the
    W3C / OpenTelemetry ids in hex, empty when not known.
    """

    message: str
    level: str = "info"
    logger: str = ""
    fields: dict[str, Any] = msgspec.field(default_factory=dict)
    trace_id: str = ""
    span_id: str = ""
    time: str = ""

    def __post_init__(self) -> None:
        if self.level not in _RANK:
            self.level = normalize_level(self.level)


def rfc3339(when: float | datetime) -> str:
    """`when` (Unix seconds, or an aware datetime) as RFC 3339 UTC with microseconds and `Z`."""
    moment = (
        when.astimezone(UTC) if isinstance(when, datetime) else datetime.fromtimestamp(when, UTC)
    )
    # Not strftime: its %Y does not pad a year before 1000 to four digits.
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def log_topic(service: str, instance: str) -> str:
    """`logs/<service>/<instance>`; each must be one topic segment, else `InvalidTopic`."""
    for name, segment in (("service", service), ("instance", instance)):
        if not isinstance(segment, str) or not segment:
            raise InvalidTopic(f"the {name} of a log topic must be a non-empty string")
        if "/" in segment or "+" in segment or "#" in segment:
            raise InvalidTopic(
                f"the {name} {segment!r:.80} of a log topic must be one topic segment "
                "(no '/', '+' or '#')"
            )
    return validate_topic(f"logs/{service}/{instance}")


# -- parsing a line ---------------------------------------------------------------------

# The keys a JSON log line may use for the record's own attributes, first match wins;
# the others, and any later synonym, go to `fields`.
_KEYS: Final = {
    "message": ("message", "msg"),
    "level": ("level", "severity", "levelname", "lvl"),
    "logger": ("logger", "name"),
    "time": ("time", "timestamp", "ts", "@timestamp"),
    "trace_id": ("trace_id", "traceId", "trace.id"),
    "span_id": ("span_id", "spanId"),
}
# A plain line's leading level: a word in capitals (`ERROR`), any case before a
# colon (`error:`), in brackets (`[warn]`, `<info>`), or one of T D I W E F before
# a colon (`W: disk almost full`). "Error handling" is not a level, "ERROR handling" is.
_PLAIN_LEVEL: Final = re.compile(
    r"\s*(?:\[(?P<bracket>[A-Za-z]{1,8})\]|<(?P<angle>[A-Za-z]{1,8})>"
    r"|(?P<letter>[TDIWEFtdiwef]):|(?P<word>[A-Za-z]{3,8}):|(?P<upper>[A-Z]{3,8}))(?=\s|$)\s*"
)
_LETTERS: Final = {"t": "trace", "d": "debug", "i": "info", "w": "warn", "e": "error", "f": "fatal"}


def record_from_line(line: str) -> LogRecord:
    """A record from one line of text; never raises.

    A line holding a JSON object maps its keys (see `_KEYS`: `message`/`msg`,
    `level`/`severity`/`levelname`/`lvl`, `logger`/`name`,
    `time`/`timestamp`/`ts`/`@timestamp`, `trace_id`/`traceId`/`trace.id`,
    `span_id`/`spanId`); every other key goes to `fields`, as does a value
    that does not fit (a level no one knows, a time that cannot be read).
    A time may be RFC 3339 text or a Unix time in seconds, milliseconds,
    microseconds or nanoseconds; it is stored as RFC 3339 UTC. Any other line is plain
    text: a leading level (`ERROR`, `error:`, `[warn]`, `<info>`, `W:`; a bare
    word counts only in capitals) sets the level and is taken off the message;
    without one the level is `info`.
    """
    text = line.rstrip("\r\n")
    if text.lstrip().startswith("{"):
        try:
            decoded = msgspec.json.decode(text)
        except (msgspec.DecodeError, ValueError, UnicodeError, RecursionError):
            decoded = None
        if isinstance(decoded, dict) and not nests_too_deep(decoded):
            return _record_from_object(decoded)
    return _record_from_plain(text)


def _record_from_plain(text: str) -> LogRecord:
    found = _PLAIN_LEVEL.match(text)
    if found is not None:
        rest = text[found.end() :]
        letter = found["letter"]
        name = letter or found["bracket"] or found["angle"] or found["word"] or found["upper"]
        level = _LETTERS[letter.lower()] if letter else _ALIASES.get(name.lower())
        if level is not None and rest:
            return LogRecord(message=rest, level=level)
    return LogRecord(message=text)


def _record_from_object(obj: dict[str, Any]) -> LogRecord:
    taken: dict[str, Any] = {}
    for attribute, keys in _KEYS.items():
        for key in keys:
            if key in obj:
                taken[attribute] = (key, obj.pop(key))
                break
    fields = obj
    message = ""
    level = "info"
    logger = time = trace_id = span_id = ""
    if "message" in taken:
        value = taken["message"][1]
        message = value if isinstance(value, str) else _as_text(value)
    if "level" in taken:
        key, value = taken["level"]
        try:
            level = normalize_level(value)
        except InvalidInput:
            fields[key] = value
    if "logger" in taken:
        key, value = taken["logger"]
        if isinstance(value, str):
            logger = value
        else:
            fields[key] = value
    if "time" in taken:
        key, value = taken["time"]
        time = _time_of(value)
        if not time:
            fields[key] = value
    for attribute in ("trace_id", "span_id"):
        if attribute in taken:
            key, value = taken[attribute]
            if isinstance(value, str):
                if attribute == "trace_id":
                    trace_id = value
                else:
                    span_id = value
            else:
                fields[key] = value
    return LogRecord(
        message=message,
        level=level,
        logger=logger,
        fields=fields,
        trace_id=trace_id,
        span_id=span_id,
        time=time,
    )


def _as_text(value: Any) -> str:
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, ValueError, OverflowError):  # pragma: no cover - decoded JSON encodes
        return repr(value)


def _time_of(value: Any) -> str:
    """RFC 3339 UTC for a time given as text or a Unix number; "" if it is neither."""
    if isinstance(value, bool):
        return ""
    if isinstance(value, (int, float)):
        seconds = float(value)
        if not math.isfinite(seconds):
            return ""
        for scale in (1.0, 1e3, 1e6, 1e9):  # seconds, ms, µs, ns
            if abs(seconds) < 1e11 * scale:
                seconds /= scale
                break
        else:
            return ""
        try:
            return rfc3339(seconds)
        except (OverflowError, OSError, ValueError):
            return ""
    if isinstance(value, str):
        moment = _parse_time(value)
        return rfc3339(moment) if moment is not None else ""
    return ""


def _parse_time(text: str) -> datetime | None:
    """An aware datetime for RFC 3339 / ISO 8601 text with a zone (`Z` too), else None."""
    if not 10 <= len(text) <= 64:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


# -- the event --------------------------------------------------------------------------


def record_to_data(record: LogRecord) -> dict[str, Any]:
    """The `data` of the `log` event carrying `record` (defaults left out)."""
    data: dict[str, Any] = msgspec.to_builtins(record)
    return data


def record_from_data(data: Any) -> LogRecord:
    """The record a `log` event's `data` carries; `InvalidInput` if it has not that shape."""
    if not isinstance(data, dict):
        raise InvalidInput(f"log event data must be an object, not {type(data).__name__}")
    try:
        record = msgspec.convert(data, LogRecord)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"log event data is not a log record: {exc}") from None
    if record.time and _parse_time(record.time) is None:
        raise InvalidInput(f"log record time {record.time!r:.60} is not RFC 3339 with a zone")
    return record


_HEX: Final = re.compile(r"[0-9a-f]+")


def traceparent(trace_id: str, span_id: str) -> str | None:
    """The W3C `traceparent` for the ids (hex, any case; a 16-digit trace id is padded).

    None when either is missing or not a valid id (wrong length, not hex, all zeros).
    """
    trace, span = trace_id.lower(), span_id.lower()
    if len(trace) == 16:
        trace = trace.rjust(32, "0")
    if len(trace) != 32 or len(span) != 16:
        return None
    if not (_HEX.fullmatch(trace) and _HEX.fullmatch(span)):
        return None
    if not trace.strip("0") or not span.strip("0"):
        return None
    return f"00-{trace}-{span}-00"


def log_event(record: LogRecord, *, service: str, instance: str, source: str, id: str) -> Event:
    """The CloudEvent for `record`, to publish on `log_topic(service, instance)`.

    `type` is `log`, `data` is `record_to_data(record)` (JSON), `time` the
    record's time (none if it has none), and a `traceparent` extension (W3C
    Trace Context) when the record has valid trace and span ids.
    Raises `InvalidInput` for a bad service, instance or time.
    """
    log_topic(service, instance)
    when = None
    if record.time:
        when = _parse_time(record.time)
        if when is None:
            raise InvalidInput(f"log record time {record.time!r:.60} is not RFC 3339 with a zone")
    parent = traceparent(record.trace_id, record.span_id) if record.trace_id else None
    return Event(
        id=id,
        source=source,
        type=EVENT_TYPE,
        time=when,
        datacontenttype="application/json",
        data=record_to_data(record),
        extensions={"traceparent": parent} if parent else {},
    )
