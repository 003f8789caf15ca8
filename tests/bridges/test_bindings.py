"""core.bindings: binary mode checked against the CloudEvents SDK's Kafka binding (the same
attributes with a `ce_` prefix), structured mode, the wrap rule's ids, topic templates."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from cloudevents.core.bindings import kafka as sdk_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as SdkEvent
from hypothesis import given
from hypothesis import strategies as st

from hybridbus.bridges.settings import AnyBridge
from hybridbus.core.bindings import (
    TopicTemplate,
    Wrap,
    from_binary,
    from_structured,
    looks_structured,
    to_binary,
    to_structured,
)
from hybridbus.core.event import Event, event_from_dict
from hybridbus.errors import InvalidEvent

WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def event(**fields: object) -> Event:
    base = {"id": "e1", "source": "/s", "type": "com.acme.t", "data": {"a": 1}}
    return event_from_dict({**base, **fields}, require_specversion=False)


def test_binary_attributes_are_the_sdk_kafka_headers_without_prefix() -> None:
    ours = event(subject="doc 42 %é", time=WHEN.isoformat(), datacontenttype="application/json",
                 region="eu")  # fmt: skip
    sdk = SdkEvent(
        {"id": "e1", "source": "/s", "type": "com.acme.t", "specversion": "1.0",
         "subject": "doc 42 %é", "time": WHEN, "datacontenttype": "application/json",
         "region": "eu"},
        {"a": 1},
    )  # fmt: skip
    message = sdk_kafka.to_binary(sdk, JSONFormat())
    attributes, content_type, payload = to_binary(ours)
    headers = {k: v.decode() for k, v in message.headers.items()}
    assert content_type == headers.pop("content-type")
    assert {f"ce_{k}": v for k, v in attributes.items()} == headers
    assert msgspec.json.decode(payload) == msgspec.json.decode(message.value)
    # ... and the SDK's message read back by ours is the same event.
    back = from_binary({k[3:]: v for k, v in headers.items()}, content_type, message.value)
    assert back == ours


def test_binary_round_trip_of_bytes_text_and_typed_attributes() -> None:
    for one in (
        event(
            data=b"\x00\xff",
            datacontenttype="application/octet-stream",
            partitionkey="k",
            lamport=7,
            expirytime=WHEN.isoformat(),
        ),
        event(data="plain", datacontenttype="text/plain", sequence="3", flag=True, n=5),
        event(data=None),
    ):
        attributes, content_type, payload = to_binary(one)
        back = from_binary(attributes, content_type, payload)
        # Extensions travel as text in binary mode (as in HTTP headers).
        assert msgspec.structs.replace(back, extensions={}) == msgspec.structs.replace(
            one, extensions={}
        )
        assert back.extensions == {k: str(v).lower() if isinstance(v, bool) else str(v)
                                   for k, v in one.extensions.items()}  # fmt: skip


def test_binary_without_specversion_is_not_an_event() -> None:
    with pytest.raises(InvalidEvent, match="specversion"):
        from_binary({"id": "1", "source": "/s", "type": "t"}, None, b"")


def test_structured_round_trip_and_detection() -> None:
    one = event(region="eu", data=b"\x01")
    payload = to_structured(one)
    assert looks_structured(payload)
    assert from_structured(payload) == one
    assert JSONFormat().read(None, payload).get_extension("region") == "eu"
    assert not looks_structured(b"[1, 2]") and not looks_structured(b"21.5")


@given(payload=st.binary(max_size=64), topic=st.sampled_from(["a/b", "a/c"]))
def test_a_wrapped_message_keeps_its_id_on_redelivery(payload: bytes, topic: str) -> None:
    wrap = Wrap()
    first = wrap.event("br", topic, payload, {})
    again = wrap.event("br", topic, payload, {})
    assert (first.id, first.source) == (again.id, again.source)
    assert first.source == f"/bridges/br/{topic}"
    other = wrap.event("br", topic, payload + b"!", {})
    assert other.id != first.id


def test_wrap_ids_from_a_property_json_or_position() -> None:
    by_property = Wrap(id="property:msgid")
    assert by_property.event("b", "t", b"x", {"msgid": "m-1"}).id == "m-1"
    assert by_property.event("b", "t", b"x", {}).id == Wrap().event("b", "t", b"x", {}).id
    by_json = Wrap(id="json:meta.id", type="com.acme.{topic}")
    wrapped = by_json.event("b", "t1", b'{"meta": {"id": 42}, "v": 1}', {})
    assert (wrapped.id, wrapped.type, wrapped.data) == ("42", "com.acme.t1", {"meta": {"id": 42},
                                                                              "v": 1})  # fmt: skip
    assert Wrap(id="position").event("b", "t", b"x", {}, position="t-0-17").id == "t-0-17"
    raw = Wrap().event("b", "t", b"\xff\xfe", {})
    assert (raw.data, raw.datacontenttype) == (b"\xff\xfe", "application/octet-stream")


def test_bad_templates_and_wrap_rules_are_refused_with_their_place() -> None:
    with pytest.raises(ValueError, match=r"wrap\.id"):
        Wrap(id="header")
    with pytest.raises(ValueError, match="unknown placeholder"):
        TopicTemplate("a/{nope}", ("topic",), "topic")
    with pytest.raises(msgspec.ValidationError, match=r"\$\[0\]\.wrap"):
        msgspec.convert([{"kind": "mqtt", "name": "a", "direction": "in", "url": "mqtt://h",
                          "topic": "acme/{topic}", "subscribe": ["#"],
                          "wrap": {"id": "x"}}], list[AnyBridge])  # fmt: skip


def test_templates_keep_wildcards() -> None:
    template = TopicTemplate("acme/iot/{topic}", ("topic",), "topic")
    assert template.render({"topic": "sensors/+/temp"}) == "acme/iot/sensors/+/temp"
    assert template.render({"topic": "#"}) == "acme/iot/#"
    assert template.prefix_and_suffix("topic") == ("acme/iot/", "")
