"""Formatters: JSON lines, plain text, RFC 5424 syslog (checked against its grammar), Protobuf."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridbus.core.logs import LEVELS, LogRecord
from hybridbus.logs import formatter
from hybridbus.logs.formatters import (
    JsonFormatter,
    PlainFormatter,
    ProtobufFormatter,
    SyslogFormatter,
    parse_protobuf,
    read_delimited,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
FULL = LogRecord(
    message="disk low",
    level="warn",
    logger="app.disk",
    fields={"free": 12, "path": "/var/lib", "ratio": 0.5, "tags": ["a", "b"], "ok": False},
    trace_id=TRACE,
    span_id=SPAN,
    time="2026-03-01T09:00:00.123456Z",
)


def test_json_is_one_line_with_service_and_instance() -> None:
    out = JsonFormatter().format(FULL, "api", "web-1")
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    data = json.loads(out)
    assert data == {
        "service": "api",
        "instance": "web-1",
        "message": "disk low",
        "level": "warn",
        "logger": "app.disk",
        "fields": FULL.fields,
        "trace_id": TRACE,
        "span_id": SPAN,
        "time": FULL.time,
    }
    odd = LogRecord(message="m\nnext", fields={"o": object()})
    assert json.loads(JsonFormatter().format(odd, "a", "b"))["fields"]["o"].startswith("<object")


def test_plain() -> None:
    out = PlainFormatter().format(FULL, "api", "web-1").decode()
    assert out == (
        "2026-03-01T09:00:00.123456Z WARN  app.disk: disk low free=12 path=/var/lib ratio=0.5 "
        f'tags=["a","b"] ok=false trace_id={TRACE} span_id={SPAN}\n'
    )
    bare = PlainFormatter().format(LogRecord(message="hi", fields={"q": "a b"}), "api", "i")
    assert bare == b'- INFO  api: hi q="a b"\n'


# -- RFC 5424 ------------------------------------------------------------------------------
# The grammar of RFC 5424 §6 as a regular expression (ABNF transcribed; SD-NAME excludes
# '=', SP, ']' and '"'; PARAM-VALUE escapes '"', '\' and ']').
PRINTUSASCII = r"[\x21-\x7e]"
SD_NAME = r"[!#-<>-\\^-~]"  # %d33-126 without '"' (34), '=' (61), ']' (93)
PARAM_VALUE = r'(?:[^"\\\]]|\\["\\\]])*'
SD_ELEMENT = rf'\[{SD_NAME}{{1,32}}(?: {SD_NAME}{{1,32}}="{PARAM_VALUE}")*\]'
TIMESTAMP = (
    r"(?:-|\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d:"
    r"(?:[0-5]\d|60)(?:\.\d{1,6})?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d))"
)
SYSLOG_MSG = re.compile(
    rf"<(?P<pri>\d{{1,3}})>(?P<version>[1-9]\d{{0,2}}) (?P<timestamp>{TIMESTAMP}) "
    rf"(?P<hostname>-|{PRINTUSASCII}{{1,255}}) (?P<app>-|{PRINTUSASCII}{{1,48}}) "
    rf"(?P<procid>-|{PRINTUSASCII}{{1,128}}) (?P<msgid>-|{PRINTUSASCII}{{1,32}}) "
    rf"(?P<sd>-|(?:{SD_ELEMENT})+)(?: (?P<msg>.*))?",
    re.DOTALL,
)


def parse_syslog(line: bytes) -> dict[str, Any]:
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    found = SYSLOG_MSG.fullmatch(line[:-1].decode("utf-8"))
    assert found is not None, line
    return found.groupdict()


def test_syslog_matches_the_rfc_grammar() -> None:
    parts = parse_syslog(SyslogFormatter().format(FULL, "api", "web-1"))
    assert parts["pri"] == str(1 * 8 + 4)  # facility user (1), severity warning (4)
    assert parts["version"] == "1"
    assert parts["timestamp"] == FULL.time
    assert (parts["hostname"], parts["app"], parts["procid"], parts["msgid"]) == (
        "web-1",
        "api",
        "-",
        "app.disk",
    )
    assert parts["sd"] == (
        '[hybridbus@32473 free="12" path="/var/lib" ratio="0.5" tags="[\\"a\\",\\"b\\"\\]" '
        f'ok="false" trace_id="{TRACE}" span_id="{SPAN}"]'
    )
    assert parts["msg"] == "disk low"


@pytest.mark.parametrize(
    ("level", "facility", "pri"),
    [("fatal", 1, 10), ("error", 1, 11), ("warn", 16, 132), ("info", 0, 6), ("trace", 23, 191)],
)
def test_syslog_pri(level: str, facility: int, pri: int) -> None:
    out = SyslogFormatter(facility=facility).format(LogRecord(message="m", level=level), "a", "b")
    assert parse_syslog(out)["pri"] == str(pri)


def test_syslog_nil_values_bom_and_line_breaks() -> None:
    out = SyslogFormatter().format(LogRecord(message="héllo\nwörld"), "", "")
    parts = parse_syslog(out)
    assert (parts["timestamp"], parts["hostname"], parts["app"], parts["msgid"], parts["sd"]) == (
        "-",
        "-",
        "-",
        "-",
        "-",
    )
    assert parts["msg"] == "\ufeffhéllo#012wörld"  # RFC 5424 §6.4: UTF-8 starts with a BOM
    spaced = SyslogFormatter().format(LogRecord(message="m", logger="my logger"), "my app", "h")
    assert parse_syslog(spaced)["msgid"] == "my_logger"


def test_syslog_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="facility"):
        SyslogFormatter(facility=24)
    with pytest.raises(ValueError, match="SD-ID"):
        SyslogFormatter(sd_id="no at sign")


printable = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@given(
    message=printable,
    logger=printable,
    service=printable,
    instance=printable,
    fields=st.dictionaries(printable, printable | st.integers() | st.none(), max_size=4),
    level=st.sampled_from(LEVELS),
)
def test_syslog_always_matches_the_grammar(
    message: str, logger: str, service: str, instance: str, fields: dict[str, Any], level: str
) -> None:
    record = LogRecord(message=message, level=level, logger=logger, fields=fields)
    parse_syslog(SyslogFormatter().format(record, service, instance))


def test_syslog_is_read_by_a_parser_we_did_not_write() -> None:
    parser = pytest.importorskip("syslog_rfc5424_parser", reason="optional: pip install it")
    message = parser.SyslogMessage.parse(
        SyslogFormatter().format(FULL, "api", "web-1").decode().rstrip("\n")
    )
    assert message.appname == "api" and message.hostname == "web-1"
    assert message.sd["hybridbus@32473"]["path"] == "/var/lib"
    assert message.msg == "disk low"


# -- Protobuf ------------------------------------------------------------------------------


def test_protobuf_round_trip() -> None:
    fmt = ProtobufFormatter()
    records = [
        FULL,
        LogRecord(message=""),
        LogRecord(message="ünïcode", level="fatal", fields={"nested": {"a": [1, None, "x"]}}),
    ]
    stream = b"".join(fmt.format(r, "api", f"i-{n}") for n, r in enumerate(records))
    got = [parse_protobuf(message) for message in read_delimited(stream)]
    assert got == [(r, "api", f"i-{n}") for n, r in enumerate(records)]


def test_protobuf_is_the_message_of_logs_proto() -> None:
    from hybridbus.gateways.grpc_gen import logs_pb2

    data = ProtobufFormatter().encode(FULL, "api", "web-1")
    message = logs_pb2.LogRecord.FromString(data)
    assert message.level == logs_pb2.LEVEL_WARN
    assert message.time.ToJsonString() == "2026-03-01T09:00:00.123456Z"
    assert message.fields["path"] == "/var/lib"
    assert (message.service, message.instance) == ("api", "web-1")


def test_read_delimited_refuses_a_truncated_stream() -> None:
    data = ProtobufFormatter().format(FULL, "a", "b")
    with pytest.raises(ValueError, match="truncated"):
        list(read_delimited(data[:-1]))


def test_formatters_by_name() -> None:
    assert isinstance(formatter("json"), JsonFormatter)
    assert isinstance(formatter("plain"), PlainFormatter)
    assert formatter("syslog", facility=16).facility == 16  # type: ignore[attr-defined]
    assert isinstance(formatter("protobuf"), ProtobufFormatter)
