"""The server-side filters (core/filters.py): what each condition looks at, limits, RE2."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from hybridbus.core.event import Event
from hybridbus.core.filters import (
    MAX_CONTAINS,
    MAX_FIELDS,
    MAX_REGEX,
    Filter,
    compile_filter,
    parse_field,
)
from hybridbus.core.logs import LogRecord, log_event
from hybridbus.errors import ErrorCode, InvalidInput


def log(message: str, level: str = "info", **fields: Any) -> Event:
    record = LogRecord(message=message, level=level, fields=fields)
    return log_event(record, service="api", instance="i1", source="/t", id=message)


def other(data: Any, type: str = "com.acme.thing") -> Event:
    return Event(id="x", source="/t", type=type, data=data)


def matches(spec: Filter | dict[str, Any], event: Event) -> bool:
    match = compile_filter(spec)
    assert match is not None
    return match(event)


def test_no_filter_or_an_empty_one_lets_everything_through() -> None:
    assert compile_filter(None) is None
    assert compile_filter(Filter()) is None
    assert compile_filter({}) is None


@pytest.mark.parametrize(
    ("level", "expected"),
    [("trace", True), ("info", True), ("warn", False), ("WARNING", False), ("30", False)],
)
def test_level_is_a_minimum_and_an_info_record_has_no_level_key(level: str, expected: bool) -> None:
    event = log("started")  # info: the default, left out of the event's data
    assert "level" not in event.data
    assert matches(Filter(level=level), event) is expected


def test_level_orders_the_six_levels() -> None:
    spec = Filter(level="warn")
    assert [matches(spec, log("m", lv)) for lv in ("debug", "info", "warn", "error", "fatal")] == [
        False,
        False,
        True,
        True,
        True,
    ]


def test_level_of_other_events_is_their_datas_level_else_no_match() -> None:
    spec = Filter(level="error")
    assert matches(spec, other({"level": "critical"}))
    assert not matches(spec, other({"level": "info"}))
    assert not matches(spec, other({"level": "no such level"}))
    assert not matches(spec, other({"x": 1}))
    assert not matches(spec, other("text"))


def test_fields_of_a_log_event_are_its_records_fields() -> None:
    event = log("done", status=500, user="42", ok=False, note=None, ratio=1.0)
    assert matches(Filter(fields={"status": 500}), event)
    assert matches(Filter(fields={"status": 500.0}), event)  # numbers by value
    assert matches(Filter(fields={"status": "500"}), event)  # text: the JSON text of it
    assert not matches(Filter(fields={"status": 404}), event)
    assert matches(Filter(fields={"user": "42"}), event)
    assert not matches(Filter(fields={"user": 42}), event)  # a number is not a string
    assert matches(Filter(fields={"ok": False}), event)
    assert not matches(Filter(fields={"ok": 0}), event)  # a boolean only equals a boolean
    assert matches(Filter(fields={"ok": "false"}), event)
    assert matches(Filter(fields={"note": None}), event)
    assert matches(Filter(fields={"note": "null"}), event)
    assert matches(Filter(fields={"ratio": 1}), event)
    assert not matches(Filter(fields={"missing": None}), event)  # a missing key never matches
    assert not matches(Filter(fields={"status": 500, "user": "43"}), event)  # all must hold
    assert not matches(Filter(fields={"message": "done"}), event)  # the record's own: not fields


def test_fields_of_other_events_are_the_datas_top_level_keys() -> None:
    assert matches(Filter(fields={"op": "insert"}), other({"op": "insert", "n": 1}))
    assert not matches(Filter(fields={"op": "insert"}), other({"op": "delete"}))
    assert not matches(Filter(fields={"op": "insert"}), other(["op", "insert"]))
    assert not matches(Filter(fields={"op": "insert"}), other({"op": {"x": 1}}))


def test_contains_and_regex_look_at_the_message_of_a_log_event() -> None:
    event = log("request timeout after 30s", "error", path="/api/timeout")
    assert matches(Filter(contains="timeout"), event)
    assert not matches(Filter(contains="Timeout"), event)  # case matters
    assert not matches(Filter(contains="/api"), event)  # the message only, not the fields
    assert matches(Filter(regex=r"timeout after \d+s$"), event)
    assert matches(Filter(regex=r"(?i)TIMEOUT"), event)
    assert not matches(Filter(regex=r"^timeout"), event)


def test_contains_and_regex_look_at_the_json_data_of_other_events() -> None:
    event = other({"op": "insert", "text": "héllo"})
    assert matches(Filter(contains='"op":"insert"'), event)
    assert matches(Filter(regex='"text":"h.llo"'), event)  # one character, UTF-8 or not
    assert matches(Filter(contains="bin"), other(b"binary\xff"))


def test_types_and_every_condition_together() -> None:
    spec = Filter(types=["log"], level="warn", contains="disk", fields={"host": "a"})
    assert matches(spec, log("disk full", "error", host="a"))
    assert not matches(spec, log("disk full", "error", host="b"))
    assert not matches(spec, log("disk full", "info", host="a"))
    assert not matches(spec, log("cpu hot", "error", host="a"))
    assert not matches(spec, other({"level": "error", "host": "a", "m": "disk"}))
    assert matches(Filter(types=["com.acme.thing"]), other(1))


def test_a_filter_decodes_from_json_and_refuses_unknown_keys() -> None:
    spec = msgspec.json.decode(b'{"level":"warn","fields":{"a":1}}', type=Filter)
    assert spec == Filter(level="warn", fields={"a": 1})
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"levle":"warn"}', type=Filter)
    with pytest.raises(InvalidInput):
        compile_filter({"levle": "warn"})


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        (Filter(level="loud"), "unknown level"),
        (Filter(contains="x" * (MAX_CONTAINS + 1)), "contains is over"),
        (Filter(regex="x" * (MAX_REGEX + 1)), "regex is over"),
        (Filter(regex="(unclosed"), "not a valid RE2 pattern"),
        (Filter(regex=r"(a)\1"), "not a valid RE2 pattern"),  # no backreferences
        (Filter(regex=r"(?=a)b"), "not a valid RE2 pattern"),  # no lookaround
        (Filter(fields={f"k{n}": n for n in range(MAX_FIELDS + 1)}), "at most 16 fields"),
        (Filter(fields={"": 1}), "must not be empty"),
        (Filter(fields={"k": [1]}), "string, number, boolean or null"),  # type: ignore[dict-item]
        (Filter(types=["t"] * 17), "at most 16 types"),
    ],
)
def test_a_bad_filter_is_invalid_input_saying_why(spec: Filter, said: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        compile_filter(spec)
    assert said in str(caught.value)
    assert caught.value.code is ErrorCode.INVALID_INPUT


def test_a_backtracking_pattern_takes_linear_time() -> None:
    # (a+)+$ on "aaa...b" takes exponential time with Python's re (backtracking);
    # RE2 answers at once, even over a whole 1 MiB event.
    match = compile_filter(Filter(regex=r"(a+)+$"))
    assert match is not None
    event = other("a" * (1 << 20) + "b")
    started = time.perf_counter()
    assert not match(event)
    assert time.perf_counter() - started < 1.0


def test_parse_field_splits_at_the_first_colon_or_equals() -> None:
    assert parse_field("status:500") == ("status", "500")
    assert parse_field("user=alice") == ("user", "alice")
    assert parse_field("url:http://x=y") == ("url", "http://x=y")
    assert parse_field("k=") == ("k", "")
    for bad in ("nokey", ":v", "=v"):
        with pytest.raises(InvalidInput):
            parse_field(bad)
