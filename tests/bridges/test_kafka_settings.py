"""Kafka and AMQP `[[bridges]]` tables: defaults, refusals, and the pure mapping both ways."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hybridbus.bridges.settings import AmqpBridge, AnyBridge, KafkaBridge
from hybridbus.core.bindings import Wrap
from hybridbus.core.event import Event
from hybridbus.server.config import load_config

SETTINGS = """
engine = "memory://"

[[bridges]]
kind = "kafka"
name = "orders"
direction = "in"
url = "kafka://127.0.0.1:9092,127.0.0.1:9093"
topics = ["orders", "refunds"]
topic = "acme/orders/{topic}"
wrap = { type = "com.acme.order" }

[[bridges]]
kind = "amqp"
name = "alerts"
direction = "out"
url = "amqp://guest:secret@127.0.0.1:5672/"
pattern = "acme/alerts/#"
exchange = "amq.topic"
"""


def bridge(**fields: Any) -> Any:
    return msgspec.convert(fields, AnyBridge)


def test_from_the_settings_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SETTINGS)
    kafka, amqp = load_config(path).bridges
    assert isinstance(kafka, KafkaBridge) and isinstance(amqp, AmqpBridge)
    assert kafka.servers == ["127.0.0.1:9092", "127.0.0.1:9093"]
    assert kafka.consumer_group == "hybridbus-orders" and kafka.offset_reset == "earliest"
    # A wrap table on Kafka: the id is the record's position unless it says otherwise.
    assert kafka.wrapper is not None and (kafka.wrapper.type, kafka.wrapper.id) == (
        "com.acme.order", "position"
    )  # fmt: skip
    assert (amqp.routing_key, amqp.prefix, amqp.mandatory, amqp.persistent) == (
        "{dotted}", "cloudEvents:", True, True
    )  # fmt: skip
    assert amqp.shown()["url"] == "amqp://guest:***@127.0.0.1:5672/"
    plain = bridge(kind="amqp", name="q", direction="in", url="amqp://h", queues=["q"],
                   topic="acme/{topic}")  # fmt: skip
    assert plain.wrapper.id == "property:message_id"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "kafka", "direction": "in", "url": "kafka://h:1", "topic": "acme/{topic}"},
         "needs topics or topics_regex"),
        ({"kind": "kafka", "direction": "in", "url": "kafka://h:1", "topic": "acme/{topic}",
          "topics": ["a"], "topics_regex": "a.*"}, "needs topics or topics_regex"),
        ({"kind": "kafka", "direction": "in", "url": "kafka://h:1", "topic": "acme/{topic}",
          "topics": ["a/b"]}, "not a Kafka topic name"),
        ({"kind": "kafka", "direction": "in", "url": "kafka://h:1", "topic": "acme/{topic}",
          "topics_regex": "("}, "topics_regex"),
        ({"kind": "kafka", "direction": "out", "url": "kafka://h:1", "pattern": "acme/#"},
         "needs kafka_topic"),
        ({"kind": "kafka", "direction": "out", "url": "kafka://h:1", "pattern": "acme/#",
          "kafka_topic": "{nope}"}, "unknown placeholder"),
        ({"kind": "kafka", "direction": "out", "url": "http://h:1", "pattern": "acme/#",
          "kafka_topic": "t"}, "kafka"),
        ({"kind": "amqp", "direction": "in", "url": "amqp://h", "topic": "acme/{topic}"},
         "needs queues"),
        ({"kind": "amqp", "direction": "in", "url": "amqp://h", "topic": "acme/{topic}",
          "queues": ["q"], "declare": False, "bindings": [{"exchange": "x"}]},
         "declare = true"),
        ({"kind": "amqp", "direction": "out", "url": "amqp://h", "pattern": "acme/#"},
         "needs exchange"),
        ({"kind": "amqp", "direction": "out", "url": "amqp://h", "pattern": "acme/#",
          "exchange": "x", "prefix": "ce_"}, "prefix"),
    ],
)  # fmt: skip
def test_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        bridge(name="b", **fields)


def test_wrap_id_from_the_key() -> None:
    wrap = Wrap(id="key")
    assert wrap.event("b", "t", b"1", {}, "t-0-5", key="order-7").id == "order-7"
    assert wrap.event("b", "t", b"1", {}, "t-0-5").id == Wrap().event("b", "t", b"1", {}).id


def test_kafka_record_both_ways() -> None:
    from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]

    from hybridbus.bridges.kafka import decode, encode, record_key
    from hybridbus.core.bindings import TopicTemplate

    event = msgspec.convert(
        {
            "id": "e1",
            "source": "/s",
            "type": "t",
            "partitionkey": "p",
            "time": "2024-01-02T03:04:05Z",
        },
        Event,
    )
    value, headers = encode(event, "binary")
    assert value is None  # no data: a record without a value (a tombstone, as the binding says)
    assert dict(headers)["ce_partitionkey"] == b"p" and record_key(event, "acme/x") == b"p"
    settings = bridge(kind="kafka", name="k", direction="in", url="kafka://h:1", topics=["a"],
                      topic="acme/{topic}")  # fmt: skip
    record = ConsumerRecord("a", 0, 7, 0, 0, None, None, None, 0, 0, headers)
    back = decode(record, settings, TopicTemplate("acme/{topic}", ("topic",), "t"))
    assert back.event is not None and (back.topic, back.event.id, back.event.data) == (
        "acme/a", "e1", None
    )  # fmt: skip
    assert back.event.time == datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def test_a_batch_decodes_as_its_records_do() -> None:
    """`decode_batch` (what the in bridge runs per poll) gives what `decode` gives per record:
    every form, several topics, a wrapped record with headers, and a refused one."""
    from aiokafka.structs import ConsumerRecord

    from hybridbus.bridges.kafka import decode, decode_batch, encode
    from hybridbus.core.bindings import TopicTemplate, to_structured

    event = Event(id="e1", source="/s", type="t", data={"n": 1})
    value, headers = encode(event, "binary")
    forms: list[tuple[bytes | None, list[tuple[str, bytes]]]] = [
        (value, headers),
        encode(event, "structured"),
        (to_structured(event), []),
        (b'{"n": 2}', [("Trace", b"x")]),
        (b"raw", [("content-type", b"application/octet-stream")]),
        (b"[1]", [("ce_specversion", b"1.0")]),  # binary mode, id missing: refused
    ]
    records = [
        ConsumerRecord(topic, 0, offset, 0, 0, b"k", value, None, 0, 0, headers)
        for offset, (topic, (value, headers)) in enumerate(
            (topic, form) for topic in ("a", "b") for form in forms
        )
    ]
    template = TopicTemplate("acme/{topic}/in", ("topic",), "t")
    for wrap in (True, False):
        settings = bridge(kind="kafka", name="k", direction="in", url="kafka://h:1",
                          topics=["a", "b"], topic="acme/{topic}/in", wrap=wrap)  # fmt: skip
        batch = decode_batch(records, settings, template)
        assert batch == [decode(record, settings, template) for record in records]
        expected = ([True] * 3 + [wrap] * 2 + [False]) * 2  # wrapped, or refused without wrap
        assert [item.event is not None for item in batch] == expected
    first = batch[6].event
    assert batch[6].topic == "acme/b/in" and first is not None and (first.id, first.data) == (
        "e1", {"n": 1}
    )  # fmt: skip
