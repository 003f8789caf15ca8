"""The Event model: required attributes, extension rules, and errors that name the attribute."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from hybridbus.core.event import Event, check_event, event_from_dict, validate_extension_name
from hybridbus.errors import ErrorCode, InvalidEvent, InvalidInput

MINIMAL: dict[str, Any] = {"specversion": "1.0", "id": "e-1", "source": "/s", "type": "t.created"}


_DROP = object()


def with_(**changes: Any) -> dict[str, Any]:
    raw = dict(MINIMAL)
    for name, value in changes.items():
        if value is _DROP:
            del raw[name]
        else:
            raw[name] = value
    return raw


def refused(raw: object) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        event_from_dict(raw)
    return info.value


def test_minimal_event_has_spec_defaults() -> None:
    event = event_from_dict(MINIMAL)
    assert event == Event(id="e-1", source="/s", type="t.created")
    assert event.specversion == "1.0"
    assert event.data is None
    assert event.extensions == {}


def test_all_attributes_are_read() -> None:
    raw = with_(
        subject="doc-42",
        time="2024-05-06T07:08:09.5+02:00",
        datacontenttype="application/json",
        dataschema="https://example.com/schema",
        data={"k": [1, 2.5, None, "x"]},
        tenantid="acme",
        appid="docs",
        partitionkey="session-1",
        expirytime="2024-05-07T00:00:00Z",
        sequence="0007",
        lamport=12,
    )
    event = event_from_dict(raw)
    assert event.subject == "doc-42"
    assert event.time == datetime(2024, 5, 6, 5, 8, 9, 500000, tzinfo=UTC)
    assert event.expirytime == datetime(2024, 5, 7, tzinfo=UTC)
    assert event.datacontenttype == "application/json"
    assert event.dataschema == "https://example.com/schema"
    assert event.data == {"k": [1, 2.5, None, "x"]}
    assert (event.tenantid, event.appid, event.partitionkey) == ("acme", "docs", "session-1")
    assert (event.sequence, event.lamport) == ("0007", 12)
    assert event.extensions == {}


def test_event_is_immutable() -> None:
    event = Event(id="1", source="s", type="t")
    with pytest.raises(AttributeError):
        event.id = "2"  # type: ignore[misc]


def test_error_is_invalid_input_with_its_code() -> None:
    exc = refused(with_(id=""))
    assert isinstance(exc, InvalidInput)
    assert exc.code is ErrorCode.INVALID_EVENT
    assert exc.retriable is False


@pytest.mark.parametrize("name", ["id", "source", "type"])
def test_missing_required_attribute_is_named(name: str) -> None:
    assert refused(with_(**{name: _DROP})).attribute == name


@pytest.mark.parametrize("name", ["id", "source", "type"])
def test_empty_required_attribute_is_named(name: str) -> None:
    assert refused(with_(**{name: ""})).attribute == name


@pytest.mark.parametrize("name", ["id", "source", "type", "subject", "tenantid"])
def test_non_string_attribute_is_named(name: str) -> None:
    assert refused(with_(**{name: 7})).attribute == name


@pytest.mark.parametrize(
    "name", ["subject", "datacontenttype", "dataschema", "tenantid", "appid", "partitionkey"]
)
def test_empty_optional_attribute_is_named(name: str) -> None:
    assert refused(with_(**{name: ""})).attribute == name


@pytest.mark.parametrize("version", ["0.3", "1", "1.0.2", "", 1.0])
def test_specversion_other_than_1_0_is_refused(version: object) -> None:
    assert refused(with_(specversion=version)).attribute == "specversion"


@pytest.mark.parametrize("name", ["time", "expirytime"])
@pytest.mark.parametrize("value", ["2024-01-01T00:00:00", "2024-01-01T00:00:00.123"])
def test_time_without_timezone_is_refused(name: str, value: str) -> None:
    assert refused(with_(**{name: value})).attribute == name


@pytest.mark.parametrize("value", ["yesterday", "2024-13-01T00:00:00Z", 1700000000])
def test_unparseable_time_is_refused(value: object) -> None:
    assert refused(with_(time=value)).attribute == "time"


@pytest.mark.parametrize("value", [-1, -(2**40)])
def test_negative_lamport_is_refused(value: int) -> None:
    assert refused(with_(lamport=value)).attribute == "lamport"


@pytest.mark.parametrize("value", ["3", 1.5, True])
def test_lamport_of_wrong_type_is_refused(value: object) -> None:
    assert refused(with_(lamport=value)).attribute == "lamport"


def test_lamport_zero_is_accepted() -> None:
    assert event_from_dict(with_(lamport=0)).lamport == 0


@pytest.mark.parametrize(
    "name",
    [
        "Upper",  # upper case
        "camelCase",
        "a" * 21,  # over 20 characters
        "my-ext",
        "my_ext",
        "my.ext",
        "é",
        "",
    ],
)
def test_bad_extension_name_is_refused(name: str) -> None:
    assert refused(with_(**{name: "v"})).attribute == name
    with pytest.raises(InvalidEvent) as info:
        Event(id="1", source="s", type="t", extensions={name: "v"})
    assert info.value.attribute == name


@pytest.mark.parametrize(
    "name", ["data", "id", "specversion", "time", "tenantid", "lamport", "expirytime"]
)
def test_reserved_name_is_not_an_extension(name: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        Event(id="1", source="s", type="t", extensions={name: "v"})
    assert info.value.attribute == name
    with pytest.raises(InvalidEvent):
        validate_extension_name(name)


@pytest.mark.parametrize("value", [1.5, None, [1], {"a": 1}])
def test_extension_value_of_wrong_type_is_refused(value: object) -> None:
    assert refused(with_(ext=value)).attribute == "ext"
    with pytest.raises(InvalidEvent) as info:
        Event(id="1", source="s", type="t", extensions={"ext": value})  # type: ignore[dict-item]
    assert info.value.attribute == "ext"


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 2**64])
def test_integer_extension_outside_32_bits_is_refused(value: int) -> None:
    assert refused(with_(count=value)).attribute == "count"


@pytest.mark.parametrize("value", [2**31 - 1, -(2**31), 0])
def test_integer_extension_at_32_bit_bounds_is_accepted(value: int) -> None:
    assert event_from_dict(with_(count=value)).extensions == {"count": value}


def test_valid_extensions_are_accepted_and_typed() -> None:
    raw = with_(traceparent="00-abc-01", n=-5, flag=False, **{"a" * 20: "long", "x9": "v"})
    event = event_from_dict(raw)
    assert event.extensions == {
        "traceparent": "00-abc-01",
        "n": -5,
        "flag": False,
        "a" * 20: "long",
        "x9": "v",
    }
    assert event.extensions["flag"] is False  # a bool stays a bool, not 0


def test_typed_extension_attributes_are_fields_not_extensions() -> None:
    event = event_from_dict(with_(tenantid="acme", lamport=3))
    assert event.tenantid == "acme"
    assert event.lamport == 3
    assert event.extensions == {}


def test_x_extensions_key_is_refused() -> None:
    assert refused(with_(**{"x-extensions": {"a": "b"}})).attribute == "x-extensions"


@pytest.mark.parametrize("raw", [[MINIMAL], "event", 7, None, b"{}"])
def test_non_object_is_refused(raw: object) -> None:
    assert refused(raw).attribute is None


def test_data_base64_becomes_bytes() -> None:
    event = event_from_dict(with_(data_base64="AAH/"))
    assert event.data == b"\x00\x01\xff"


def test_data_and_data_base64_together_are_refused() -> None:
    assert refused(with_(data="x", data_base64="AA==")).attribute == "data_base64"


@pytest.mark.parametrize("value", ["not base64!", "AAA", 12])
def test_bad_data_base64_is_refused(value: object) -> None:
    assert refused(with_(data_base64=value)).attribute == "data_base64"


def test_input_dict_is_not_mutated() -> None:
    raw = with_(data_base64="AA==", ext="v")
    before = dict(raw)
    event_from_dict(raw)
    assert raw == before


def test_validation_error_keeps_the_msgspec_cause() -> None:
    exc = refused(with_(id=""))
    assert isinstance(exc.__cause__, msgspec.ValidationError)


@pytest.mark.parametrize(
    ("fields", "attribute"),
    [
        ({"id": ""}, "id"),
        ({"source": 5}, "source"),
        ({"type": None}, "type"),
        ({"specversion": "0.3"}, "specversion"),
        ({"subject": ""}, "subject"),
        ({"tenantid": 7}, "tenantid"),
        ({"time": datetime(2024, 1, 1)}, "time"),
        ({"expirytime": "2024-01-01T00:00:00Z"}, "expirytime"),
        ({"lamport": -1}, "lamport"),
        ({"lamport": True}, "lamport"),
        ({"extensions": None}, "extensions"),
    ],
)
def test_check_event_catches_what_python_construction_lets_through(
    fields: dict[str, object], attribute: str
) -> None:
    base: dict[str, object] = {"id": "1", "source": "/s", "type": "t"}
    event = Event(**{**base, **fields})  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent) as info:
        check_event(event)
    assert info.value.attribute == attribute


def test_check_event_passes_valid_events_through() -> None:
    event = Event(
        id="1",
        source="/s",
        type="t",
        time=datetime(2024, 1, 1, tzinfo=UTC),
        lamport=0,
        subject="x",
        extensions={"a": 1},
    )
    assert check_event(event) is event
