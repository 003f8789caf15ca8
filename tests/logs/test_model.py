"""The log model (core/logs.py): levels, records, parsing a line, the `log` CloudEvent."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from cloudevents.v1.conversion import to_structured
from cloudevents.v1.http import from_http
from hypothesis import given
from hypothesis import strategies as st

from hybridbus.core.codecs import decode_json, encode_json
from hybridbus.core.logs import (
    LEVELS,
    LogRecord,
    level_rank,
    log_event,
    log_topic,
    normalize_level,
    record_from_data,
    record_from_line,
    record_to_data,
    rfc3339,
    traceparent,
)
from hybridbus.errors import InvalidInput, InvalidTopic

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("given_", "expected"),
    [
        ("trace", "trace"),
        ("DEBUG", "debug"),
        ("Info", "info"),
        ("warn", "warn"),
        ("WARNING", "warn"),
        ("critical", "fatal"),
        ("err", "error"),
        ("notice", "info"),
        ("PANIC", "fatal"),
        (" error ", "error"),
        (5, "trace"),
        (10, "debug"),
        (20, "info"),
        (25, "info"),
        (30, "warn"),
        (40, "error"),
        (50, "fatal"),
        (60, "fatal"),
        (1, "trace"),
        ("30", "warn"),
    ],
)
def test_normalize_level(given_: str | int, expected: str) -> None:
    assert normalize_level(given_) == expected


@pytest.mark.parametrize("bad", ["", "verbose", "warnings", 0, -10, True, 2.5, None, "٣"])
def test_normalize_level_refuses(bad: Any) -> None:
    with pytest.raises(InvalidInput):
        normalize_level(bad)


def test_level_rank_orders_levels() -> None:
    assert [level_rank(name) for name in LEVELS] == list(range(6))
    assert level_rank("WARNING") == level_rank(30) == 3


def test_record_normalizes_its_level_and_refuses_an_unknown_one() -> None:
    assert LogRecord(message="m", level="WARNING").level == "warn"
    with pytest.raises(InvalidInput):
        LogRecord(message="m", level="loud")


def test_fields_default_is_not_shared() -> None:
    a, b = LogRecord(message="a"), LogRecord(message="b")
    a.fields["k"] = 1
    assert b.fields == {}


def test_log_topic() -> None:
    assert log_topic("api", "host-1-42") == "logs/api/host-1-42"
    for service, instance in [
        ("a/b", "i"),
        ("a", "+"),
        ("a", "x#"),
        ("", "i"),
        ("a", "with space"),
    ]:
        with pytest.raises(InvalidTopic):
            log_topic(service, instance)
    assert issubclass(InvalidTopic, InvalidInput)


# -- parsing lines ------------------------------------------------------------------------


def test_json_line_maps_known_keys_and_keeps_the_rest_as_fields() -> None:
    line = json.dumps(
        {
            "msg": "disk full",
            "severity": "WARNING",
            "name": "app.disk",
            "@timestamp": "2026-03-01T10:00:00+01:00",
            "traceId": TRACE,
            "spanId": SPAN,
            "free": 12,
            "path": "/var",
        }
    )
    record = record_from_line(line + "\n")
    assert record == LogRecord(
        message="disk full",
        level="warn",
        logger="app.disk",
        time="2026-03-01T09:00:00.000000Z",
        trace_id=TRACE,
        span_id=SPAN,
        fields={"free": 12, "path": "/var"},
    )


def test_first_synonym_wins_and_the_others_stay_in_fields() -> None:
    record = record_from_line('{"message": "a", "msg": "b", "level": "error", "lvl": "debug"}')
    assert (record.message, record.level) == ("a", "error")
    assert record.fields == {"msg": "b", "lvl": "debug"}


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (1_700_000_000, "2023-11-14T22:13:20.000000Z"),
        (1_700_000_000.5, "2023-11-14T22:13:20.500000Z"),
        (1_700_000_000_123, "2023-11-14T22:13:20.123000Z"),
        (1_700_000_000_123_456, "2023-11-14T22:13:20.123456Z"),
        (1_700_000_000_123_456_000, "2023-11-14T22:13:20.123456Z"),
        ("2023-11-14T22:13:20Z", "2023-11-14T22:13:20.000000Z"),
    ],
)
def test_times_become_rfc3339_utc(ts: Any, expected: str) -> None:
    assert record_from_line(json.dumps({"msg": "m", "ts": ts})).time == expected


@pytest.mark.parametrize("value", ["yesterday", "2023-11-14T22:13:20", 1e30, True, [1]])
def test_a_time_that_cannot_be_read_stays_in_fields(value: Any) -> None:
    record = record_from_line(json.dumps({"msg": "m", "time": value}))
    assert record.time == ""
    assert record.fields == {"time": value}


def test_an_unknown_level_stays_in_fields() -> None:
    record = record_from_line('{"msg": "m", "level": "loud"}')
    assert record.level == "info"
    assert record.fields == {"level": "loud"}


def test_a_non_string_message_is_json_text() -> None:
    assert record_from_line('{"message": {"a": [1, 2]}}').message == '{"a":[1,2]}'


@pytest.mark.parametrize(
    ("line", "level", "message"),
    [
        ("ERROR boom", "error", "boom"),
        ("error: boom", "error", "boom"),
        ("WARNING: low disk", "warn", "low disk"),
        ("[warn] x y", "warn", "x y"),
        ("[INFO] started", "info", "started"),
        ("<debug> detail", "debug", "detail"),
        ("W: disk", "warn", "disk"),
        ("e: failed", "error", "failed"),
        ("F: gone", "fatal", "gone"),
        ("Error handling improved", "info", "Error handling improved"),
        ("ERROR", "info", "ERROR"),
        ("just text", "info", "just text"),
        ("[main] started", "info", "[main] started"),
        ("HTTP 200 OK", "info", "HTTP 200 OK"),
        ("", "info", ""),
        ("{not json", "info", "{not json"),
        ("[1, 2]", "info", "[1, 2]"),
        ('"a string"', "info", '"a string"'),
    ],
)
def test_plain_lines(line: str, level: str, message: str) -> None:
    record = record_from_line(line)
    assert (record.level, record.message, record.fields) == (level, message, {})


def test_a_json_object_nested_too_deep_is_plain_text() -> None:
    line = '{"a":' * 200 + "1" + "}" * 200
    record = record_from_line(line)
    assert record.message == line
    assert record.fields == {}


@given(st.text())
def test_record_from_line_never_raises_and_its_event_encodes(line: str) -> None:
    record = record_from_line(line)
    assert record.level in LEVELS
    event = log_event(record, service="api", instance="i", source="/s", id="1")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in line):
        return  # a lone surrogate is no text JSON can carry
    assert decode_json(encode_json(event)).data == record_to_data(record)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
keys = st.sampled_from(
    [
        "message",
        "msg",
        "level",
        "severity",
        "lvl",
        "levelname",
        "logger",
        "name",
        "time",
        "ts",
        "timestamp",
        "@timestamp",
        "trace_id",
        "traceId",
        "trace.id",
        "span_id",
        "spanId",
        "other",
    ]
) | st.text(max_size=8)


@given(st.dictionaries(keys, json_values, max_size=8))
def test_any_json_object_line_is_read(obj: dict[str, Any]) -> None:
    line = json.dumps(obj)
    record = record_from_line(line)
    assert record.level in LEVELS
    # Nothing is lost: every key is a record attribute or a field.
    assert set(obj) - set(record.fields) <= {
        "message",
        "msg",
        "level",
        "severity",
        "lvl",
        "levelname",
        "logger",
        "name",
        "time",
        "ts",
        "timestamp",
        "@timestamp",
        "trace_id",
        "traceId",
        "trace.id",
        "span_id",
        "spanId",
    }
    assert record_from_data(record_to_data(record)) == record


# -- event data and the CloudEvent -------------------------------------------------------


def test_data_round_trip_leaves_defaults_out() -> None:
    record = LogRecord(message="m")
    assert record_to_data(record) == {"message": "m"}
    full = LogRecord(
        message="m",
        level="error",
        logger="l",
        fields={"a": [1]},
        trace_id=TRACE,
        span_id=SPAN,
        time="2026-01-01T00:00:00.000000Z",
    )
    assert record_from_data(record_to_data(full)) == full
    assert record_from_data(json.loads(json.dumps(record_to_data(full)))) == full


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "text",
        [1],
        {},
        {"msg": "m"},
        {"message": 1},
        {"message": "m", "level": "loud"},
        {"message": "m", "fields": []},
        {"message": "m", "time": "noon"},
    ],
)
def test_record_from_data_refuses_other_shapes(bad: Any) -> None:
    with pytest.raises(InvalidInput):
        record_from_data(bad)


def test_log_event() -> None:
    record = LogRecord(
        message="m", level="warn", time="2026-01-02T03:04:05.000006Z", trace_id=TRACE, span_id=SPAN
    )
    event = log_event(record, service="api", instance="h-1", source="/logs/api/h-1", id="boot-1")
    assert event.type == "log"
    assert event.id == "boot-1"
    assert event.source == "/logs/api/h-1"
    assert event.datacontenttype == "application/json"
    assert event.time == datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert event.extensions == {"traceparent": f"00-{TRACE}-{SPAN}-00"}
    assert record_from_data(event.data) == record
    # A CloudEvents SDK we did not write reads it, traceparent included.
    body = encode_json(event)
    parsed = from_http({"content-type": "application/cloudevents+json"}, body)
    assert parsed["type"] == "log"
    assert parsed["traceparent"] == f"00-{TRACE}-{SPAN}-00"
    assert parsed.data == record_to_data(record)
    _, again = to_structured(parsed)
    assert decode_json(again).data == event.data


def test_log_event_without_time_or_trace() -> None:
    event = log_event(LogRecord(message="m"), service="a", instance="b", source="/s", id="1")
    assert event.time is None
    assert event.extensions == {}
    with pytest.raises(InvalidTopic):
        log_event(LogRecord(message="m"), service="a/b", instance="c", source="/s", id="1")
    with pytest.raises(InvalidInput):
        log_event(
            LogRecord(message="m", time="noon"), service="a", instance="b", source="/s", id="1"
        )


@pytest.mark.parametrize(
    ("trace", "span", "expected"),
    [
        (TRACE, SPAN, f"00-{TRACE}-{SPAN}-00"),
        (TRACE.upper(), SPAN.upper(), f"00-{TRACE}-{SPAN}-00"),
        ("a3ce929d0e0e4736", SPAN, f"00-0000000000000000a3ce929d0e0e4736-{SPAN}-00"),
        ("0" * 32, SPAN, None),
        (TRACE, "0" * 16, None),
        (TRACE, "", None),
        ("xyz", SPAN, None),
        (TRACE[:-1] + "g", SPAN, None),
    ],
)
def test_traceparent(trace: str, span: str, expected: str | None) -> None:
    assert traceparent(trace, span) == expected


def test_rfc3339() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    assert rfc3339(datetime(2026, 5, 1, 12, tzinfo=UTC)) == "2026-05-01T12:00:00.000000Z"
    assert msgspec.json.decode(b'"' + rfc3339(1.25).encode() + b'"', type=datetime) == datetime(
        1970, 1, 1, 0, 0, 1, 250000, tzinfo=UTC
    )


def test_a_time_before_the_year_1000_keeps_four_digits() -> None:
    """Found by hypothesis: strftime's %Y wrote year 999 as '999', which no parser takes back."""
    record = record_from_line('{"message": "m", "time": "0999-12-31T23:59:59Z"}')
    assert record.time == "0999-12-31T23:59:59.000000Z"
