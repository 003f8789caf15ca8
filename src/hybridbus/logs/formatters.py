"""Formatters: a log record as bytes — JSON, Protobuf, RFC 5424 syslog, plain text.

Owns: the `Formatter` interface and the four built-in formatters. The file
transport writes what a formatter returns, and `hybridbus tail --format`
prints it. Third-party formatters load by name from the entry point group
`hybridbus.log_formatters` (`hybridbus.logs.plugins`). Must not do I/O.

`format(record, service, instance)` returns the bytes of one record as they
are appended to a stream: a text format ends with a newline (`\\n`), and the
Protobuf format is length-delimited (a varint length, then a
`hybridbus.v1.LogRecord` message: protos/hybridbus/v1/logs.proto), so a
file of either is a sequence of records.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar, Final, Protocol, runtime_checkable

import msgspec

from hybridbus.core.logs import LEVELS, LogRecord, record_to_data, rfc3339

__all__ = [
    "BUILTIN",
    "Formatter",
    "JsonFormatter",
    "PlainFormatter",
    "ProtobufFormatter",
    "SyslogFormatter",
    "parse_protobuf",
    "read_delimited",
]


@runtime_checkable
class Formatter(Protocol):
    """Turns a record into the bytes appended to a stream (see the module docstring)."""

    def format(self, record: LogRecord, service: str, instance: str) -> bytes: ...


_json = msgspec.json.Encoder()


def _safe(value: Any) -> Any:
    """`value` if JSON can carry it, else its repr (a field an application set to anything)."""
    try:
        _json.encode(value)
    except (TypeError, ValueError, OverflowError):
        return repr(value)
    return value


class JsonFormatter:
    """One JSON object per line: the record's data with `service` and `instance` first."""

    name: ClassVar[str] = "json"

    def format(self, record: LogRecord, service: str, instance: str) -> bytes:
        try:
            data = {"service": service, "instance": instance, **record_to_data(record)}
            return _json.encode(data) + b"\n"
        except (TypeError, ValueError, OverflowError):
            fields = {k: _safe(v) for k, v in record.fields.items()}
            safe = msgspec.structs.replace(record, fields=fields)
            data = {"service": service, "instance": instance, **record_to_data(safe)}
            return _json.encode(data) + b"\n"


# -- plain ----------------------------------------------------------------------------------

_BARE: Final = re.compile(r"[^\s=\"\\]+")


def _logfmt(value: Any) -> str:
    if isinstance(value, str):
        return value if _BARE.fullmatch(value) else _json.encode(value).decode()
    try:
        return _json.encode(value).decode()
    except (TypeError, ValueError, OverflowError):
        return _json.encode(repr(value)).decode()


class PlainFormatter:
    """`time LEVEL logger: message k=v ...`, one line for people to read.

    No time: `-`; no logger: the service. Field values are logfmt: bare when
    they hold no space, `=`, quote or backslash, else JSON strings; other
    values JSON. A message with newlines keeps them (this format is for people).
    """

    name: ClassVar[str] = "plain"

    def format(self, record: LogRecord, service: str, instance: str) -> bytes:
        parts = [
            record.time or "-",
            f"{record.level.upper():5}",
            f"{record.logger or service}:",
            record.message,
        ]
        parts.extend(f"{_logfmt(key)}={_logfmt(value)}" for key, value in record.fields.items())
        if record.trace_id:
            parts.append(f"trace_id={_logfmt(record.trace_id)}")
        if record.span_id:
            parts.append(f"span_id={_logfmt(record.span_id)}")
        return (" ".join(parts) + "\n").encode("utf-8", "surrogateescape")


# -- RFC 5424 syslog ------------------------------------------------------------------------

# Level -> RFC 5424 severity (0 emergency ... 7 debug).
SEVERITY: Final = {"trace": 7, "debug": 7, "info": 6, "warn": 4, "error": 3, "fatal": 2}
_NOT_PRINTUSASCII: Final = re.compile(r"[^\x21-\x7e]")
_NOT_SD_NAME: Final = re.compile(r"[^\x21-\x7e]|[= \]\"]")
_SD_ESCAPE: Final = re.compile(r"([\"\\\]])")


def _header_field(text: str, limit: int) -> str:
    """A HEADER field: PRINTUSASCII (others become `_`), at most `limit` long; empty is `-`."""
    return _NOT_PRINTUSASCII.sub("_", text)[:limit] or "-"


def _sd_name(text: str) -> str:
    return _NOT_SD_NAME.sub("_", text)[:32] or "_"


class SyslogFormatter:
    """RFC 5424 syslog messages, one per line.

    `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG`, with PRI =
    facility * 8 + severity (fatal 2, error 3, warn 4, info 6, debug and
    trace 7), HOSTNAME the instance, APP-NAME the service, PROCID `-`,
    MSGID the logger (each PRINTUSASCII, other characters become `_`, cut to
    the RFC's lengths; empty is `-`). The fields and trace ids are one
    SD-ELEMENT `[<sd_id> name="value" ...]` (names cut to 32 characters,
    `"`, `\\` and `]` escaped in values; non-text values as JSON). A
    non-ASCII message starts with the UTF-8 BOM, as RFC 5424 §6.4 asks. CR
    and LF in the message are written `#015` and `#012` (as rsyslog does),
    so one record stays one line.
    """

    name: ClassVar[str] = "syslog"

    def __init__(self, facility: int = 1, sd_id: str = "hybridbus@32473") -> None:
        if not 0 <= facility <= 23:
            raise ValueError(f"a syslog facility is 0-23, not {facility}")
        if "@" not in sd_id or _sd_name(sd_id) != sd_id:
            raise ValueError(f"{sd_id!r} is not an SD-ID of the form name@number")
        self.facility = facility
        self.sd_id = sd_id

    def format(self, record: LogRecord, service: str, instance: str) -> bytes:
        pri = self.facility * 8 + SEVERITY[record.level]
        header = " ".join(
            (
                f"<{pri}>1",
                record.time or "-",
                _header_field(instance, 255),
                _header_field(service, 48),
                "-",
                _header_field(record.logger, 32),
            )
        )
        params = [(key, value) for key, value in record.fields.items()]
        if record.trace_id:
            params.append(("trace_id", record.trace_id))
        if record.span_id:
            params.append(("span_id", record.span_id))
        if params:
            sd = (
                f"[{self.sd_id} "
                + " ".join(f'{_sd_name(k)}="{_sd_value(v)}"' for k, v in params)
                + "]"
            )
        else:
            sd = "-"
        message = record.message.replace("\r", "#015").replace("\n", "#012")
        line = f"{header} {sd}"
        body = line.encode("utf-8", "surrogateescape")
        if message:
            text = message.encode("utf-8", "surrogateescape")
            bom = b"" if message.isascii() else b"\xef\xbb\xbf"
            body += b" " + bom + text
        return body + b"\n"


def _sd_value(value: Any) -> str:
    text = value if isinstance(value, str) else _logfmt_json(value)
    text = text.replace("\r", "#015").replace("\n", "#012")
    return _SD_ESCAPE.sub(r"\\\1", text)


def _logfmt_json(value: Any) -> str:
    try:
        return _json.encode(value).decode()
    except (TypeError, ValueError, OverflowError):
        return repr(value)


# -- Protobuf ------------------------------------------------------------------------------


def _messages() -> Any:
    try:
        from hybridbus.gateways.grpc_gen import logs_pb2
    except ImportError as exc:  # pragma: no cover - the install step generates it
        raise RuntimeError(
            "the Protobuf log format needs the code generated from protos/ "
            f"({exc}): run `make grpc` (pip install -e '.[grpc,grpc-build]')"
        ) from exc
    return logs_pb2


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte = number & 0x7F
        number >>= 7
        if number:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_delimited(buf: bytes) -> Iterator[bytes]:
    """The messages of a stream of length-delimited messages (what `ProtobufFormatter` writes).

    Raises `ValueError` on a truncated stream.
    """
    pos = 0
    while pos < len(buf):
        length = shift = 0
        while True:
            if pos >= len(buf) or shift > 63:
                raise ValueError("truncated length prefix")
            byte = buf[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if pos + length > len(buf):
            raise ValueError("truncated message")
        yield buf[pos : pos + length]
        pos += length


class ProtobufFormatter:
    """`hybridbus.v1.LogRecord` messages (protos/hybridbus/v1/logs.proto), length-delimited.

    The level is the `Level` enum, the time a `google.protobuf.Timestamp`,
    the fields a `google.protobuf.Struct` (so, as in protobuf's JSON
    mapping, every number is a double: `parse_protobuf` gives back a
    whole number as an int when it is one).
    """

    name: ClassVar[str] = "protobuf"

    def __init__(self) -> None:
        self._pb = _messages()

    def encode(self, record: LogRecord, service: str, instance: str) -> bytes:
        """The message alone, without its length prefix."""
        pb = self._pb
        message = pb.LogRecord(
            message=record.message,
            level=LEVELS.index(record.level) + 1,
            logger=record.logger,
            trace_id=record.trace_id,
            span_id=record.span_id,
            service=service,
            instance=instance,
        )
        if record.time:
            message.time.FromDatetime(datetime.fromisoformat(record.time))
        if record.fields:
            message.fields.update({k: _struct_value(v) for k, v in record.fields.items()})
        data: bytes = message.SerializeToString()
        return data

    def format(self, record: LogRecord, service: str, instance: str) -> bytes:
        data = self.encode(record, service, instance)
        return _varint(len(data)) + data


def _struct_value(value: Any) -> Any:
    """A value `Struct.update` takes: JSON-like, non-finite floats and big ints as text."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return float(value) if abs(value) < 2**53 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _struct_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_struct_value(v) for v in value]
    return repr(value)


def _plain(value: Any) -> Any:
    """A `Struct` value as plain Python: whole numbers as int, structs as dicts, lists as lists."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if value is None or isinstance(value, (bool, str)):
        return value
    if hasattr(value, "fields"):  # a Struct (a ListValue has `items` too, but no `fields`)
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value]  # a ListValue


def parse_protobuf(data: bytes) -> tuple[LogRecord, str, str]:
    """The record, service and instance of one `hybridbus.v1.LogRecord` message (no prefix)."""
    pb = _messages()
    message = pb.LogRecord.FromString(data)
    level = LEVELS[message.level - 1] if 1 <= message.level <= len(LEVELS) else "info"
    time = ""
    if message.HasField("time"):
        time = rfc3339(message.time.ToDatetime(tzinfo=UTC))
    fields = _plain(message.fields) if message.HasField("fields") else {}
    record = LogRecord(
        message=message.message,
        level=level,
        logger=message.logger,
        fields=fields,
        trace_id=message.trace_id,
        span_id=message.span_id,
        time=time,
    )
    return record, message.service, message.instance


BUILTIN: Final[dict[str, type[Formatter]]] = {
    "json": JsonFormatter,
    "plain": PlainFormatter,
    "syslog": SyslogFormatter,
    "protobuf": ProtobufFormatter,
}
