"""Codecs: round trips over generated events, the formats' exact shapes, and bad input."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridbus.core.codecs import (
    JSON_BATCH_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    check_depth,
    decode_json,
    decode_json_batch,
    decode_msgpack,
    encode_json,
    encode_json_batch,
    encode_msgpack,
    from_http,
    is_json_content_type,
    to_http,
)
from hybridbus.core.event import CONTEXT_ATTRIBUTES, EXTENSION_ATTRIBUTES, MAX_DEPTH, Event
from hybridbus.errors import InvalidEvent

# Strategies ------------------------------------------------------------------

RESERVED = CONTEXT_ATTRIBUTES | EXTENSION_ATTRIBUTES | {"data"}
OFFSETS = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]

words = st.text(min_size=1, max_size=12)
times = st.datetimes(
    min_value=datetime(1900, 1, 1),
    max_value=datetime(9000, 1, 1),
    timezones=st.sampled_from(OFFSETS),
)
extension_names = st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True).filter(
    lambda name: name not in RESERVED
)
extension_values = st.text(max_size=10) | st.integers(-(2**31), 2**31 - 1) | st.booleans()
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
OPTIONAL_ATTRIBUTES: dict[str, st.SearchStrategy[Any]] = {
    "subject": words,
    "time": times,
    "dataschema": words,
    "tenantid": words,
    "appid": words,
    "partitionkey": words,
    "expirytime": times,
    "sequence": words,
    "lamport": st.integers(0, 2**63 - 1),
}


any_data = st.none() | json_values | st.binary(max_size=16)
any_extensions = st.dictionaries(extension_names, extension_values, max_size=3)
any_datacontenttype = st.none() | words


def events(
    data: st.SearchStrategy[Any] = any_data,
    extensions: st.SearchStrategy[dict[str, Any]] = any_extensions,
    datacontenttype: st.SearchStrategy[str | None] = any_datacontenttype,
) -> st.SearchStrategy[Event]:
    attributes = st.fixed_dictionaries(
        {"id": words, "source": words, "type": words}, optional=OPTIONAL_ATTRIBUTES
    )
    return st.builds(
        lambda attrs, data, extensions, dct: Event(
            **attrs, data=data, extensions=extensions, datacontenttype=dct
        ),
        attributes,
        data,
        extensions,
        datacontenttype,
    )


# What HTTP binary mode can carry: the content type travels as Content-Type and
# decides how the body is read back; extension values travel as text.
binary_payloads = st.one_of(
    st.tuples(
        st.sampled_from(
            ["application/json", "application/vnd.acme+json", "text/json; charset=utf-8"]
        ),
        json_values,
    ),
    st.tuples(
        st.sampled_from(["text/plain", "text/plain; charset=utf-8", "TEXT/CSV"]),
        st.none() | st.text(min_size=1),
    ),
    st.tuples(
        st.sampled_from(["application/octet-stream", "image/png"]),
        st.none() | st.binary(min_size=1, max_size=16),
    ),
)


@st.composite
def binary_mode_events(draw: st.DrawFn) -> Event:
    content_type, data = draw(binary_payloads)
    extensions = st.dictionaries(extension_names, st.text(max_size=10), max_size=3)
    return draw(
        events(data=st.just(data), extensions=extensions, datacontenttype=st.just(content_type))
    )


# A header value as the HTTP binding allows it: printable ASCII without space
# or '"', and '%' only as the start of an escape.
LEGAL_HEADER_VALUE = re.compile(r"(?:[\x21\x23-\x24\x26-\x7e]|%[0-9A-F]{2})*")


def header_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# Round trips -----------------------------------------------------------------


@given(events())
def test_json_round_trip(event: Event) -> None:
    assert decode_json(encode_json(event)) == event


@given(events())
def test_json_round_trip_from_str(event: Event) -> None:
    assert decode_json(encode_json(event).decode()) == event


@given(events())
def test_msgpack_round_trip(event: Event) -> None:
    assert decode_msgpack(encode_msgpack(event)) == event


@given(st.lists(events(), max_size=4))
def test_json_batch_round_trip(batch: list[Event]) -> None:
    assert decode_json_batch(encode_json_batch(batch)) == batch


@given(events())
def test_json_is_the_cloudevents_structured_format(event: Event) -> None:
    obj = json.loads(encode_json(event))
    assert obj["specversion"] == "1.0"
    assert (obj["id"], obj["source"], obj["type"]) == (event.id, event.source, event.type)
    assert "x-extensions" not in obj
    for name, value in event.extensions.items():
        assert obj[name] == value
    if isinstance(event.data, bytes):
        assert "data" not in obj
        assert obj["data_base64"] is not None
    else:
        assert "data_base64" not in obj
        if event.data is not None:
            assert obj["data"] == event.data


@given(binary_mode_events())
def test_http_binary_round_trip(event: Event) -> None:
    headers, body = to_http(event)
    assert from_http(headers, body) == event


@given(binary_mode_events())
def test_http_binary_headers_are_legal(event: Event) -> None:
    headers, _ = to_http(event)
    assert headers["content-type"] == event.datacontenttype
    for key, value in headers.items():
        assert key == key.lower()
        if key != "content-type":
            assert key.startswith("ce-")
            assert LEGAL_HEADER_VALUE.fullmatch(value), (key, value)


@given(binary_mode_events())
def test_http_binary_header_names_are_case_insensitive(event: Event) -> None:
    headers, body = to_http(event)
    shouted = {key.upper(): value for key, value in headers.items()}
    assert from_http(shouted, body) == event


@given(
    events(extensions=st.dictionaries(extension_names, extension_values, min_size=1, max_size=3))
)
def test_http_binary_carries_extension_values_as_text(event: Event) -> None:
    decoded = from_http(*to_http(event))
    assert decoded.extensions == {k: header_text(v) for k, v in event.extensions.items()}


# JSON details ----------------------------------------------------------------


def test_json_always_carries_specversion() -> None:
    # Both paths: the struct fast path and the dict path (extensions / bytes).
    plain = Event(id="1", source="s", type="t", data={"a": 1})
    extended = Event(id="1", source="s", type="t", extensions={"ext": "v"})
    binary = Event(id="1", source="s", type="t", data=b"\x00")
    for event in (plain, extended, binary):
        assert json.loads(encode_json(event))["specversion"] == "1.0"


def test_json_fields_and_extensions_are_top_level() -> None:
    event = Event(
        id="1",
        source="/s",
        type="t",
        time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        tenantid="acme",
        lamport=9,
        extensions={"traceparent": "00-1", "n": 3, "ok": True},
    )
    assert json.loads(encode_json(event)) == {
        "specversion": "1.0",
        "id": "1",
        "source": "/s",
        "type": "t",
        "time": "2024-01-02T03:04:05Z",
        "tenantid": "acme",
        "lamport": 9,
        "traceparent": "00-1",
        "n": 3,
        "ok": True,
    }


def test_bytes_data_travels_as_data_base64() -> None:
    event = Event(id="1", source="s", type="t", data=b"\x00\x01\xff")
    obj = json.loads(encode_json(event))
    assert obj["data_base64"] == "AAH/"
    assert "data" not in obj
    assert decode_json(encode_json(event)).data == b"\x00\x01\xff"


def test_data_base64_is_read() -> None:
    event = decode_json(
        b'{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"aGk="}'
    )
    assert event.data == b"hi"


def test_string_data_is_not_mistaken_for_base64() -> None:
    event = decode_json(b'{"specversion":"1.0","id":"1","source":"s","type":"t","data":"aGk="}')
    assert event.data == "aGk="


def test_batch_is_a_json_array() -> None:
    batch = [Event(id=str(i), source="s", type="t") for i in range(3)]
    encoded = encode_json_batch(batch)
    assert [item["id"] for item in json.loads(encoded)] == ["0", "1", "2"]
    assert encode_json_batch([]) == b"[]"
    assert decode_json_batch(b"[]") == []


def test_batch_error_names_the_index_and_attribute() -> None:
    buf = (
        b'[{"specversion":"1.0","id":"1","source":"s","type":"t"},'
        b'{"specversion":"1.0","id":"","source":"s","type":"t"}]'
    )
    with pytest.raises(InvalidEvent, match=r"event \[1\]") as info:
        decode_json_batch(buf)
    assert info.value.attribute == "id"


@pytest.mark.parametrize(
    "buf", [b"{}", b'{"id":"1","source":"s","type":"t"}', b"1", b"[1]", b"[", b""]
)
def test_bad_batch_is_refused(buf: bytes) -> None:
    with pytest.raises(InvalidEvent):
        decode_json_batch(buf)


def test_content_type_constants() -> None:
    assert JSON_CONTENT_TYPE == "application/cloudevents+json"
    assert JSON_BATCH_CONTENT_TYPE == "application/cloudevents-batch+json"


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (None, True),
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("text/json", True),
        ("application/cloudevents+json", True),
        ("application/vnd.api+json ; x=y", True),
        ("text/plain", False),
        ("application/octet-stream", False),
        ("application/jsonx", False),
        ("application/json-seq", False),
    ],
)
def test_is_json_content_type(content_type: str | None, expected: bool) -> None:
    assert is_json_content_type(content_type) is expected


# Bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "buf",
    [
        b"",
        b"{",
        b"nul",
        b"\xff\xfe",
        b'{"id":"1","source":"s","type":"t"',
        b'{"id":"1","source":"s","type":"t"} trailing',
        # The typed fast path stops at the wrong type before it sees the syntax error.
        b'{"id":1,',
        b'{"id":1,"source":"s","type":"t","data":1e400}',
    ],
)
def test_malformed_json_is_invalid_event(buf: bytes) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_json(buf)
    assert info.value.attribute is None


@pytest.mark.parametrize("buf", [b"[]", b"1", b'"event"', b"null", b"1e400", b"[{}]"])
def test_non_object_json_is_invalid_event(buf: bytes) -> None:
    with pytest.raises(InvalidEvent):
        decode_json(buf)


@pytest.mark.parametrize(
    ("buf", "attribute"),
    [
        (b'{"specversion":"1.0","source":"s","type":"t"}', "id"),
        (b'{"specversion":"1.0","id":"1","source":"","type":"t"}', "source"),
        (b'{"id":"1","source":"s","type":"t","specversion":"0.3"}', "specversion"),
        (
            b'{"specversion":"1.0","id":"1","source":"s","type":"t","time":"2024-01-01T00:00:00"}',
            "time",
        ),
        (b'{"specversion":"1.0","id":"1","source":"s","type":"t","lamport":-1}', "lamport"),
        (b'{"specversion":"1.0","id":"1","source":"s","type":"t","Ext":"v"}', "Ext"),
        (b'{"specversion":"1.0","id":"1","source":"s","type":"t","ext":1.5}', "ext"),
        (b'{"specversion":"1.0","id":"1","source":"s","type":"t","ext":2147483648}', "ext"),
        (
            b'{"specversion":"1.0","id":"1","source":"s","type":"t","data":1,"data_base64":"AA=="}',
            "data_base64",
        ),
        (
            b'{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"%%"}',
            "data_base64",
        ),
        # Not CloudEvents, even though it is the struct's own name for extensions.
        (
            b'{"specversion":"1.0","id":"1","source":"s","type":"t","x-extensions":{"a":"b"}}',
            "x-extensions",
        ),
    ],
)
def test_invalid_json_event_names_the_attribute(buf: bytes, attribute: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_json(buf)
    assert info.value.attribute == attribute


@pytest.mark.parametrize(
    "buf",
    [
        b"",
        b"\xc1",  # never-used opcode
        b"\x01",  # an int, not a map
        msgspec.msgpack.encode(["id", "1"]),
        encode_msgpack(Event(id="1", source="s", type="t"))[:-1],
    ],
)
def test_malformed_msgpack_is_invalid_event(buf: bytes) -> None:
    with pytest.raises(InvalidEvent):
        decode_msgpack(buf)


@pytest.mark.parametrize(
    ("fields", "attribute"),
    [
        ({"source": "s", "type": "t"}, "id"),
        ({"id": "1", "source": "s", "type": "t", "lamport": -1}, "lamport"),
        ({"id": "1", "source": "s", "type": "t", "x-extensions": {"Bad": 1}}, "Bad"),
        ({"id": "1", "source": "s", "type": "t", "x-extensions": {"data": 1}}, "data"),
        ({"id": "1", "source": "s", "type": "t", "x-extensions": {"big": 2**40}}, "big"),
        # msgspec's path does not name the key of a value of the wrong type.
        ({"id": "1", "source": "s", "type": "t", "x-extensions": {"f": 1.5}}, "extensions"),
    ],
)
def test_invalid_msgpack_event_names_the_attribute(fields: dict[str, Any], attribute: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_msgpack(msgspec.msgpack.encode(fields))
    assert info.value.attribute == attribute


def test_integer_beyond_64_bits_is_refused_by_msgpack_not_crashing() -> None:
    # JSON carries it, so an ingress accepts it; the log's encoding must refuse it cleanly.
    event = decode_json(
        b'{"specversion":"1.0","id":"1","source":"s","type":"t","data":{"n":100000000000000000000000}}'
    )
    with pytest.raises(InvalidEvent) as info:
        encode_msgpack(event)
    assert info.value.attribute == "data"
    huge_lamport = decode_json(
        b'{"specversion":"1.0","id":"1","source":"s","type":"t","lamport":18446744073709551616}'
    )
    with pytest.raises(InvalidEvent) as info:
        encode_msgpack(huge_lamport)
    assert info.value.attribute == "lamport"


def test_largest_64_bit_lamport_fits_msgpack() -> None:
    event = Event(id="1", source="s", type="t", lamport=2**64 - 1)
    assert decode_msgpack(encode_msgpack(event)) == event


# HTTP binary mode details ------------------------------------------------------

BASE_HEADERS = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "t"}


def test_header_values_are_percent_encoded() -> None:
    event = Event(
        id="id 1",
        source="100%",
        type='say "hi"',
        subject="café €",
        tenantid="line\nbreak",
        appid="a+b/c?d=e",
        extensions={"note": "x y"},
    )
    headers, _ = to_http(event)
    assert headers["ce-id"] == "id%201"
    assert headers["ce-source"] == "100%25"
    assert headers["ce-type"] == "say%20%22hi%22"
    assert headers["ce-subject"] == "caf%C3%A9%20%E2%82%AC"
    assert headers["ce-tenantid"] == "line%0Abreak"
    assert headers["ce-appid"] == "a+b/c?d=e"
    assert headers["ce-note"] == "x%20y"
    assert from_http(headers, b"") == event


def test_header_values_are_percent_decoded() -> None:
    headers = {**BASE_HEADERS, "ce-subject": "%E2%82%AC%20%25%22", "ce-ext": "a+b"}
    event = from_http(headers, b"")
    assert event.subject == '€ %"'
    assert event.extensions == {"ext": "a+b"}  # '+' is not a space in headers


def test_times_travel_as_rfc3339() -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    event = Event(id="1", source="s", type="t", time=when, expirytime=when, lamport=7)
    headers, _ = to_http(event)
    assert headers["ce-time"] == "2024-01-02T03:04:05.600000Z"
    assert headers["ce-expirytime"] == headers["ce-time"]
    assert headers["ce-lamport"] == "7"
    assert from_http(headers, b"") == event


@pytest.mark.parametrize(
    ("data", "content_type", "body"),
    [
        ({"a": [1, 2]}, "application/json", b'{"a":[1,2]}'),
        ("text", "application/json", b'"text"'),
        (b"\x00\xff", "application/octet-stream", b"\x00\xff"),
    ],
)
def test_data_without_datacontenttype_gets_a_content_type(
    data: Any, content_type: str, body: bytes
) -> None:
    event = Event(id="1", source="s", type="t", data=data)
    headers, sent = to_http(event)
    assert (headers["content-type"], sent) == (content_type, body)
    decoded = from_http(headers, sent)
    assert decoded.data == data
    assert decoded.datacontenttype == content_type


def test_no_data_means_no_body_and_no_content_type() -> None:
    headers, body = to_http(Event(id="1", source="s", type="t"))
    assert body == b""
    assert "content-type" not in headers


def test_unlabelled_body_is_json_if_it_parses_else_bytes() -> None:
    # CloudEvents SDKs send both without a Content-Type.
    assert from_http(BASE_HEADERS, b'{"a":1}').data == {"a": 1}
    unlabelled = from_http(BASE_HEADERS, b"\x00\xffnot json")
    assert unlabelled.data == b"\x00\xffnot json"
    assert unlabelled.datacontenttype is None


def test_text_body_is_read_as_text() -> None:
    event = from_http({**BASE_HEADERS, "Content-Type": "text/plain; charset=utf-8"}, b"h\xc3\xa9")
    assert event.data == "hé"
    assert event.datacontenttype == "text/plain; charset=utf-8"


def test_other_body_is_read_as_bytes() -> None:
    event = from_http({**BASE_HEADERS, "content-type": "image/png"}, b"\x89PNG")
    assert event.data == b"\x89PNG"


def test_non_ce_headers_are_ignored() -> None:
    event = from_http({**BASE_HEADERS, "host": "x", "x-ce-id": "2", "cE-Id": "3"}, b"")
    assert event.id == "3"
    assert event.extensions == {}


@pytest.mark.parametrize(
    ("extra", "body", "attribute"),
    [
        ({"ce-data": "x"}, b"", "data"),
        ({"ce-data_base64": "AA=="}, b"", "data_base64"),
        ({"ce-datacontenttype": "text/plain"}, b"", "datacontenttype"),
        ({"ce-my_ext": "v"}, b"", "my_ext"),
        ({"ce-" + "a" * 21: "v"}, b"", "a" * 21),
        ({"ce-lamport": "x"}, b"", "lamport"),
        ({"ce-lamport": "-1"}, b"", "lamport"),
        ({"ce-time": "2024-01-01T00:00:00"}, b"", "time"),
        ({"ce-specversion": "0.3"}, b"", "specversion"),
        ({"ce-id": ""}, b"", "id"),
        ({"content-type": "application/json"}, b"{", "data"),
        ({"content-type": "text/plain"}, b"\xff", "data"),
    ],
)
def test_invalid_binary_mode_names_the_attribute(
    extra: dict[str, str], body: bytes, attribute: str
) -> None:
    with pytest.raises(InvalidEvent) as info:
        from_http({**BASE_HEADERS, **extra}, body)
    assert info.value.attribute == attribute


@pytest.mark.parametrize("missing", ["ce-id", "ce-source", "ce-type"])
def test_binary_mode_without_required_header_names_it(missing: str) -> None:
    headers = {k: v for k, v in BASE_HEADERS.items() if k != missing}
    with pytest.raises(InvalidEvent) as info:
        from_http(headers, b"")
    assert info.value.attribute == missing.removeprefix("ce-")


def test_specversion_is_required_on_the_wire() -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_json(b'{"id":"1","source":"s","type":"t"}')
    assert info.value.attribute == "specversion"
    with pytest.raises(InvalidEvent) as info:
        decode_json('{"id":"1","source":"s","type":"t","x":"1"}')
    assert info.value.attribute == "specversion"
    with pytest.raises(InvalidEvent) as info:
        from_http({"ce-id": "1", "ce-source": "s", "ce-type": "t"}, b"")
    assert info.value.attribute == "specversion"


@pytest.mark.parametrize("value", ["+5", " 5", "-1", "\u0665", "5.0"])
def test_binary_mode_lamport_must_be_plain_digits(value: str) -> None:
    headers = {"ce-id": "1", "ce-source": "s", "ce-type": "t", "ce-specversion": "1.0"}
    with pytest.raises(InvalidEvent) as info:
        from_http({**headers, "ce-lamport": value}, b"")
    assert info.value.attribute == "lamport"


def test_binary_mode_refuses_undecodable_header_bytes() -> None:
    headers = {"ce-id": "1", "ce-source": "s", "ce-type": "t", "ce-specversion": "1.0"}
    with pytest.raises(InvalidEvent):
        from_http({**headers, "ce-subject": "bad\udcff"}, b"")


# Deep nesting --------------------------------------------------------------------


def nested_json(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def nested_msgpack(depth: int, kind: str) -> bytes:
    return (b"\x91" if kind == "list" else b"\x81\xa1a") * depth + b"\x01"


HEAD = b'{"specversion":"1.0","id":"1","source":"s","type":"t","data":'


@settings(max_examples=60, deadline=None)
@given(depth=st.integers(MAX_DEPTH, 200_000), kind=st.sampled_from(["list", "dict"]))
def test_any_nesting_is_decoded_or_refused_never_a_crash(depth: int, kind: str) -> None:
    """Every decoder and encoder answers InvalidEvent to nesting, however deep."""
    body = nested_json(depth, kind)
    binary = {**BASE_HEADERS, "content-type": "application/json"}
    bodies: list[Callable[[], object]] = [
        lambda: decode_json(body),  # the whole event nested
        lambda: decode_json(HEAD + body + b"}"),
        lambda: decode_json_batch(body),
        lambda: decode_json_batch(b"[" + HEAD + body + b"}]"),
        lambda: from_http(binary, body),
        lambda: from_http(BASE_HEADERS, body),  # unlabelled: JSON if it parses
        lambda: decode_msgpack(nested_msgpack(depth, kind)),
        lambda: decode_msgpack(
            b"\x85\xa2id\xa11\xa6source\xa1s\xa4type\xa1t\xabspecversion\xa31.0\xa4data"
            + nested_msgpack(depth, kind)
        ),
    ]
    for decode in bodies:
        try:
            decoded = decode()
        except InvalidEvent:
            continue
        for event in decoded if isinstance(decoded, list) else [decoded]:
            assert isinstance(event, Event)
            for encode in (encode_json, encode_msgpack):
                with contextlib.suppress(InvalidEvent):
                    encode(event)


def deep(depth: int) -> object:
    data: object = 1
    for _ in range(depth):
        data = [data]
    return data


def test_an_event_nested_past_the_recursion_limit_is_refused_by_the_encoders() -> None:
    event = Event(id="1", source="s", type="t", data=deep(100_000))
    for encode in (encode_json, encode_msgpack):
        with pytest.raises(InvalidEvent) as info:
            encode(event)
        assert info.value.attribute == "data"


def test_check_depth_refuses_data_past_max_depth() -> None:
    for depth in (0, 1, MAX_DEPTH):
        event = Event(id="1", source="s", type="t", data=deep(depth), extensions={"x": "é" * 300})
        assert check_depth(event, encode_msgpack(event)) is event
    for data in (deep(MAX_DEPTH + 1), {"a": [deep(MAX_DEPTH)]}):
        event = Event(id="1", source="s", type="t", data=data)
        with pytest.raises(InvalidEvent) as info:
            check_depth(event, encode_msgpack(event))
        assert info.value.attribute == "data"
        assert str(MAX_DEPTH) in str(info.value)


# MessagePack attributes ----------------------------------------------------------

MSGPACK_BASE = {"id": "1", "source": "s", "type": "t"}


def test_msgpack_takes_extensions_as_top_level_keys_like_json() -> None:
    """A map written from the JSON format's attribute names is a MessagePack event."""
    flat = decode_msgpack(msgspec.msgpack.encode({**MSGPACK_BASE, "traceparent": "00-ab", "n": 3}))
    nested = decode_msgpack(
        msgspec.msgpack.encode({**MSGPACK_BASE, "x-extensions": {"traceparent": "00-ab", "n": 3}})
    )
    expected = Event(id="1", source="s", type="t", extensions={"traceparent": "00-ab", "n": 3})
    assert flat == nested == expected
    both = decode_msgpack(
        msgspec.msgpack.encode({**MSGPACK_BASE, "a": True, "x-extensions": {"b": "x"}})
    )
    assert both.extensions == {"a": True, "b": "x"}
    # The encoder keeps one form: what the log stores and a reader decodes fast.
    assert msgspec.msgpack.decode(encode_msgpack(flat))["x-extensions"] == flat.extensions


@pytest.mark.parametrize(
    ("fields", "attribute"),
    [
        ({"x-extensions": {"tenantid": "acme"}}, "tenantid"),
        ({"x-extensions": {"sequence": "1"}}, "sequence"),
        ({"a": 1, "x-extensions": {"a": 2}}, "a"),
        ({"Bad": 1}, "Bad"),
        ({"big": 2**40}, "big"),
        ({"f": 1.5}, "f"),
        ({"x-extensions": ["a"]}, "extensions"),
        ({"sequence": 5}, "sequence"),
        ({"data_base64": "aGk="}, "data_base64"),
    ],
)
def test_msgpack_attribute_errors_name_the_attribute(
    fields: dict[str, Any], attribute: str
) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_msgpack(msgspec.msgpack.encode({**MSGPACK_BASE, **fields}))
    assert info.value.attribute == attribute


def test_own_extensions_in_x_extensions_say_where_they_go() -> None:
    with pytest.raises(InvalidEvent, match="top-level"):
        decode_msgpack(msgspec.msgpack.encode({**MSGPACK_BASE, "x-extensions": {"appid": "a"}}))


@pytest.mark.parametrize("value", [5, 1.5, True, ""])
def test_sequence_is_a_non_empty_string_in_every_format(value: object) -> None:
    raw = {"specversion": "1.0", **MSGPACK_BASE, "sequence": value}
    decoders: list[Callable[[], Event]] = [
        lambda: decode_json(json.dumps(raw).encode()),
        lambda: decode_msgpack(msgspec.msgpack.encode(raw)),
    ]
    for decode in decoders:
        with pytest.raises(InvalidEvent) as info:
            decode()
        assert info.value.attribute == "sequence"
    assert decode_json(json.dumps({**raw, "sequence": "5"})).sequence == "5"
