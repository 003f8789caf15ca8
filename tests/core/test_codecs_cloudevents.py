"""Interoperability of our codecs with the official CloudEvents Python SDK.

The SDK (`cloudevents` >= 2.2) has two APIs: the legacy one (`cloudevents.v1`,
what `cloudevents.http` / `cloudevents.conversion` were in 1.x) and the new
`cloudevents.core`. Events go both ways through both, in JSON structured mode
and HTTP binary mode, and must keep their attributes and data.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridbus.core.codecs import JSON_CONTENT_TYPE, decode_json, encode_json, from_http, to_http
from hybridbus.core.event import CONTEXT_ATTRIBUTES, EXTENSION_ATTRIBUTES, Event

pytest.importorskip("cloudevents", minversion="2.2", reason="the cloudevents SDK is a test extra")

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http as core_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as CoreEvent
from cloudevents.v1.conversion import to_binary as v1_to_binary
from cloudevents.v1.conversion import to_structured as v1_to_structured
from cloudevents.v1.http import CloudEvent as V1Event
from cloudevents.v1.http import from_http as v1_from_http

WHEN = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
_OPTIONAL = (
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "tenantid",
    "appid",
    "partitionkey",
    "expirytime",
    "sequence",
    "lamport",
)


def attributes_of(event: Event) -> dict[str, Any]:
    """Our event as the flat attribute dict an SDK event holds."""
    out: dict[str, Any] = {
        "specversion": event.specversion,
        "id": event.id,
        "source": event.source,
        "type": event.type,
    }
    for name in _OPTIONAL:
        value = getattr(event, name)
        if value is not None:
            out[name] = value
    out.update(event.extensions)
    return out


def sdk_attributes(attributes: Any) -> dict[str, Any]:
    """An SDK event's attributes, times as datetimes (the legacy API keeps strings)."""
    out = dict(attributes)
    for name in ("time", "expirytime"):
        if isinstance(out.get(name), str):
            out[name] = datetime.fromisoformat(out[name])
    return out


def as_text(attributes: dict[str, Any]) -> dict[str, Any]:
    """Attributes as binary mode carries extensions: as text (typed ones aside)."""
    typed = CONTEXT_ATTRIBUTES | EXTENSION_ATTRIBUTES
    return {
        k: v if k in typed else ("true" if v is True else "false" if v is False else str(v))
        for k, v in attributes.items()
    }


def on_the_wire(headers: dict[str, Any], body: bytes | str) -> tuple[dict[str, str], bytes]:
    """What an HTTP request carries of the legacy SDK's output: text headers, a bytes body.

    The legacy SDK leaves integer attributes as ints in its header dict and
    hands back JSON bodies as str.
    """
    text_headers = {key: str(value) for key, value in headers.items()}
    return text_headers, body.encode() if isinstance(body, str) else body


# The legacy API (cloudevents.v1) -------------------------------------------------

V1_EVENTS = [
    pytest.param(
        {"type": "doc.edited", "source": "/docs", "datacontenttype": "application/json"},
        {"ops": [1, 2], "by": "ann"},
        id="json-data",
    ),
    pytest.param({"type": "t", "source": "s"}, {"no": "content type"}, id="json-unlabelled"),
    pytest.param({"type": "t", "source": "s"}, b"\x00\x01\xfe\xff", id="bytes-unlabelled"),
    pytest.param({"type": "t", "source": "s", "datacontenttype": "text/plain"}, "hello", id="text"),
    pytest.param({"type": "t", "source": "s"}, None, id="no-data"),
    pytest.param(
        {
            "type": "t",
            "source": "s",
            "id": "fixed-id",
            "subject": "doc-42",
            "time": "2024-05-06T07:08:09.123Z",
            "dataschema": "https://example.com/schema.json",
            "tenantid": "acme",
            "appid": "docs",
            "partitionkey": "session-1",
            "sequence": "0001",
            "lamport": 17,
            "traceparent": "00-abc-01",
        },
        {"k": "v"},
        id="all-attributes",
    ),
]


@pytest.mark.parametrize(("attributes", "data"), V1_EVENTS)
def test_legacy_sdk_structured_decodes(attributes: dict[str, Any], data: Any) -> None:
    sdk_event = V1Event(attributes, data)
    headers, body = v1_to_structured(sdk_event)
    assert headers["content-type"] == JSON_CONTENT_TYPE
    ours = decode_json(body)
    assert attributes_of(ours) == sdk_attributes(sdk_event.get_attributes())
    assert ours.data == data


@pytest.mark.parametrize(("attributes", "data"), V1_EVENTS)
def test_legacy_sdk_binary_decodes(attributes: dict[str, Any], data: Any) -> None:
    sdk_event = V1Event(attributes, data)
    # The legacy SDK JSON-encodes any data unless told otherwise, text too.
    marshaller = str.encode if isinstance(data, str) else None
    ours = from_http(*on_the_wire(*v1_to_binary(sdk_event, data_marshaller=marshaller)))
    assert attributes_of(ours) == as_text(sdk_attributes(sdk_event.get_attributes()))
    assert ours.data == data


def test_legacy_sdk_binary_extension_values_arrive_as_text() -> None:
    attributes: dict[str, Any] = {"type": "t", "source": "s", "count": 5, "lamport": 6}
    sdk_event = V1Event(attributes, None)
    ours = from_http(*on_the_wire(*v1_to_binary(sdk_event)))
    assert ours.extensions == {"count": "5"}
    assert ours.lamport == 6  # a typed attribute gets its type back


OURS = [
    pytest.param(
        Event(id="1", source="/s", type="t", time=WHEN, data={"a": [1, None]}), id="json-data"
    ),
    pytest.param(Event(id="1", source="/s", type="t", time=WHEN, data=b"\x00\xfe\xff"), id="bytes"),
    pytest.param(
        Event(id="1", source="/s", type="t", time=WHEN, datacontenttype="text/plain", data="hi"),
        id="text",
    ),
    pytest.param(
        Event(
            id="1",
            source="/s",
            type="t",
            subject="doc-42",
            time=WHEN,
            dataschema="https://example.com/schema.json",
            tenantid="acme",
            appid="docs",
            partitionkey="session-1",
            expirytime=WHEN,
            sequence="0001",
            lamport=17,
            extensions={"traceparent": "00-abc-01", "count": 5, "flag": False},
        ),
        id="all-attributes",
    ),
]


@pytest.mark.parametrize("event", OURS)
def test_legacy_sdk_reads_our_structured(event: Event) -> None:
    sdk_event = v1_from_http({"content-type": JSON_CONTENT_TYPE}, encode_json(event))
    assert sdk_attributes(sdk_event.get_attributes()) == attributes_of(event)
    assert sdk_event.get_data() == event.data


@pytest.mark.parametrize("event", OURS)
def test_legacy_sdk_reads_our_binary(event: Event) -> None:
    headers, body = to_http(event)
    sdk_event = v1_from_http(headers, body)
    expected = attributes_of(event)
    if event.datacontenttype is None and event.data is not None:
        expected["datacontenttype"] = headers["content-type"]
    attributes = sdk_attributes(sdk_event.get_attributes())
    if "lamport" in attributes:
        attributes["lamport"] = int(attributes["lamport"])
    assert attributes == as_text(expected)
    data = sdk_event.get_data()
    if isinstance(event.data, str) and isinstance(data, bytes):
        data = data.decode()  # the legacy SDK leaves a non-JSON body as bytes
    assert data == event.data


# The new API (cloudevents.core), with header percent-encoding ------------------

JSON_FORMAT = JSONFormat()
header_text = st.text(min_size=1, max_size=12)  # spaces, '%', '"', non-ASCII...
extension_names = st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True).filter(
    lambda name: name not in CONTEXT_ATTRIBUTES | EXTENSION_ATTRIBUTES | {"data"}
)
core_payloads = st.one_of(
    st.tuples(st.just("application/json"), st.dictionaries(st.text(max_size=5), st.integers())),
    st.tuples(st.just("text/plain"), st.text(min_size=1)),
    st.tuples(st.just("application/octet-stream"), st.binary(min_size=1, max_size=8)),
)


@st.composite
def core_events(draw: st.DrawFn) -> CoreEvent:
    content_type, data = draw(core_payloads)
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": draw(header_text),
        "source": draw(header_text),
        "type": draw(header_text),
        "datacontenttype": content_type,
        "time": draw(st.datetimes(timezones=st.just(UTC), min_value=datetime(1970, 1, 1))),
    }
    if draw(st.booleans()):
        attributes["subject"] = draw(header_text)
    if draw(st.booleans()):
        attributes["tenantid"] = draw(header_text)
    attributes.update(draw(st.dictionaries(extension_names, header_text, max_size=3)))
    return CoreEvent(attributes, data)


def _core_attributes(event: BaseCloudEvent) -> dict[str, Any]:
    return dict(event.get_attributes())


@given(core_events())
def test_core_sdk_binary_decodes(sdk_event: CoreEvent) -> None:
    message = core_http.to_binary(sdk_event, JSON_FORMAT)
    ours = from_http(message.headers, message.body)
    assert attributes_of(ours) == _core_attributes(sdk_event)
    assert ours.data == sdk_event.get_data()


@given(core_events())
def test_core_sdk_structured_decodes(sdk_event: CoreEvent) -> None:
    message = core_http.to_structured(sdk_event, JSON_FORMAT)
    ours = decode_json(message.body)
    assert attributes_of(ours) == _core_attributes(sdk_event)
    assert ours.data == sdk_event.get_data()


@given(core_events())
def test_core_sdk_reads_our_binary(sdk_event: CoreEvent) -> None:
    sent = core_http.to_binary(sdk_event, JSON_FORMAT)
    ours = from_http(sent.headers, sent.body)
    headers, body = to_http(ours)
    back = core_http.from_binary(core_http.HTTPMessage(headers, body), JSON_FORMAT)
    assert _core_attributes(back) == _core_attributes(sdk_event)
    data = back.get_data()
    if isinstance(ours.data, bytes) and isinstance(data, str):
        data = data.encode()  # the SDK reads UTF-8 bytes of any content type as text
    assert data == ours.data


@given(core_events())
def test_core_sdk_reads_our_structured(sdk_event: CoreEvent) -> None:
    ours = decode_json(core_http.to_structured(sdk_event, JSON_FORMAT).body)
    message = core_http.HTTPMessage({"content-type": JSON_CONTENT_TYPE}, encode_json(ours))
    back = core_http.from_structured(message, JSON_FORMAT)
    assert _core_attributes(back) == _core_attributes(sdk_event)
    assert back.get_data() == ours.data
