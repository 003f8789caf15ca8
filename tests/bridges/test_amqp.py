"""The AMQP bridge against a real RabbitMQ, with pika, rabbitmqctl and the CloudEvents SDK.

In: binary mode with each prefix (`cloudEvents:`, `cloudEvents_`, the SDK's `ce-`) and AMQP
typed header values, structured mode, plain messages wrapped (the id is the `message_id`: the
same message twice is one event), rejects; a message is acknowledged only after the durable
append (rabbitmqctl sees it unacknowledged while the bus pushes back). Out: binary and
structured messages the SDK reads; an event no queue takes comes back (`mandatory`) and is a
dead letter at once.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from typing import Any

import msgspec
import pytest
from cloudevents.core.bindings import amqp as ce_amqp
from cloudevents.core.bindings import rabbitmq as ce_rabbitmq
from cloudevents.core.v1.event import CloudEvent
from tests.bridges.amqp_support import declare, drain, publish, queue_counts
from tests.bridges.support import eventually
from tests.services import RabbitMQServer

import hybridbus
from hybridbus.bridges.registry import Bridges
from hybridbus.bridges.settings import AmqpBridge, AnyBridge
from hybridbus.errors import EngineUnavailable
from hybridbus.hub.bus import Bus

pytestmark = pytest.mark.slow


def amqp_bridge(**fields: Any) -> AmqpBridge:
    return msgspec.convert({"kind": "amqp", **fields}, AnyBridge)  # type: ignore[return-value]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def history(bus: Bus, pattern: str) -> list[Any]:
    page = await bus.history(pattern, limit=10_000)
    return page.deliveries


async def test_in_binary_prefixes_structured_wrapped_and_rejected(rabbitmq: RabbitMQServer) -> None:
    url = rabbitmq.url
    events, plain, strict = unique("events"), unique("plain"), unique("strict")
    declare(url, strict)  # an existing queue: the bridge only checks it is there
    async with hybridbus.open("memory://") as bus:
        bridges = Bridges(
            bus,
            [
                amqp_bridge(name="in", direction="in", url=url, queues=[events],
                            bindings=[{"exchange": "amq.topic", "routing_key": "orders.#"}],
                            topic="acme/amqp/{topic}"),
                amqp_bridge(name="plain", direction="in", url=url, queues=[plain],
                            topic="acme/amqp/{topic}"),
                amqp_bridge(name="strict", direction="in", url=url, queues=[strict],
                            declare=False, wrap=False, topic="acme/strict",
                            rejected="acme/rejected"),
            ],
        )  # fmt: skip
        await bridges.start()
        try:
            await eventually(lambda: all(b.state == "running" for b in bridges.all()))
            when = datetime.datetime(2024, 5, 6, 7, 8, 9)
            colon = {
                "cloudEvents:specversion": "1.0", "cloudEvents:id": "b-1",
                "cloudEvents:source": "/orders", "cloudEvents:type": "com.acme.order",
                "cloudEvents:subject": "order é", "cloudEvents:time": when,
                "cloudEvents:urgent": True, "cloudEvents:count": 3,
            }  # fmt: skip
            underscore = {"cloudEvents_specversion": "1.0", "cloudEvents_id": "b-2",
                          "cloudEvents_source": "/orders", "cloudEvents_type": "t"}  # fmt: skip
            sdk = ce_rabbitmq.to_binary_event(
                CloudEvent({"id": "b-3", "source": "/sdk", "type": "t",
                            "datacontenttype": "application/json"}, {"n": 3})
            )  # fmt: skip
            structured = {"specversion": "1.0", "id": "s-1", "source": "/x", "type": "t",
                          "data": {"n": 4}}  # fmt: skip
            json_type = {"content_type": "application/json"}
            await asyncio.to_thread(
                publish,
                url,
                "amq.topic",
                [
                    ("orders.created", b'{"n": 1}', {"headers": colon, **json_type}),
                    ("orders.created", b"2", {"headers": underscore}),
                    ("orders.sdk", sdk.body, {"headers": sdk.headers,
                                             "content_type": "application/json"}),
                    ("orders.json", json.dumps(structured).encode(),
                     {"content_type": "application/cloudevents+json; charset=UTF-8"}),
                ],
            )  # fmt: skip
            await asyncio.to_thread(
                publish,
                url,
                "",
                [
                    (plain, b"21.5", {"message_id": "m-1"}),
                    (plain, b"21.5", {"message_id": "m-1"}),  # a redelivery: one event
                    (plain, b"21.5", {"message_id": "m-2"}),
                    (strict, b"not an event", {}),
                ],
            )

            async def arrived() -> bool:
                return len(await history(bus, "acme/#")) >= 7

            await eventually(arrived, what="7 events on the bus")
            by_topic: dict[str, list[Any]] = {}
            for d in await history(bus, "acme/#"):
                by_topic.setdefault(d.topic, []).append(d.event)
            infos = {i.name: i for i in bridges.infos()}
        finally:
            await bridges.close()
    b1, b2 = by_topic["acme/amqp/orders.created"]
    assert (b1.id, b1.source, b1.type, b1.subject) == ("b-1", "/orders", "com.acme.order",
                                                       "order é")  # fmt: skip
    assert b1.time == datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    assert (b1.data, b1.extensions) == ({"n": 1}, {"urgent": "true", "count": "3"})
    assert (b2.id, b2.data) == ("b-2", 2)
    [b3] = by_topic["acme/amqp/orders.sdk"]
    assert (b3.id, b3.source, b3.data) == ("b-3", "/sdk", {"n": 3})
    [s] = by_topic["acme/amqp/orders.json"]
    assert (s.id, s.data) == ("s-1", {"n": 4})
    wrapped = by_topic[f"acme/amqp/{plain}"]  # routed by the default exchange: the queue's name
    assert [(w.id, w.data) for w in wrapped] == [("m-1", 21.5), ("m-2", 21.5)]
    assert wrapped[0].source == f"/bridges/plain/{plain}"
    assert infos["plain"].duplicates == 1 and infos["in"].duplicates == 0
    [rejected] = by_topic["acme/rejected"]
    assert rejected.data["payload"] == "not an event" and infos["strict"].rejected == 1


async def test_out_binary_structured_and_returned(rabbitmq: RabbitMQServer) -> None:
    url = rabbitmq.url
    watch, watch_json = unique("watch"), unique("watch-json")
    declare(url, watch, [("amq.topic", "bus.alerts.*")])
    declare(url, watch_json, [("amq.topic", "json.#")])
    async with hybridbus.open("memory://") as bus:
        bridges = Bridges(
            bus,
            [
                amqp_bridge(name="bin", direction="out", url=url, pattern="acme/alerts/#",
                            exchange="amq.topic", routing_key="bus.{dotted}",
                            max_deliveries=3),
                amqp_bridge(name="json", direction="out", url=url, pattern="acme/alerts/fire",
                            exchange="amq.topic", routing_key="json.{type}",
                            mode="structured", prefix="cloudEvents_"),
            ],
        )  # fmt: skip
        await bridges.start()
        try:
            await bus.publish(
                "acme/alerts/fire",
                {"id": "a1", "source": "/alarm", "type": "com.acme.alarm", "subject": "hall",
                 "datacontenttype": "application/json", "data": {"level": 3}, "region": "eu"},
            )  # fmt: skip
            # "bus.alerts.*" is bound, but "acme/alerts" itself routes as "bus.alerts": no
            # queue takes it, the broker returns it, the event is a dead letter at once.
            await bus.publish("acme/alerts", {"id": "a2", "source": "/alarm", "type": "t"})
            await eventually(lambda: bridges.get("json").delivered >= 1)  # type: ignore[union-attr]

            def dead() -> list[Any]:
                return bus.groups.dead_letters("acme/bridge.bin")

            [letter] = await eventually(dead, what="the returned event a dead letter")
            received = await asyncio.to_thread(drain, url, watch)
            as_json = await asyncio.to_thread(drain, url, watch_json)
            info = bridges.get("bin").info()  # type: ignore[union-attr]
        finally:
            await bridges.close()
    [m] = received
    assert m.routing_key == "bus.alerts.fire" and m.delivery_mode == 2 and m.message_id == "a1"
    assert m.headers == {
        "cloudEvents:specversion": "1.0", "cloudEvents:id": "a1", "cloudEvents:source": "/alarm",
        "cloudEvents:type": "com.acme.alarm", "cloudEvents:subject": "hall",
        "cloudEvents:region": "eu",
    }  # fmt: skip
    # The SDK reads it as the CloudEvents AMQP binding says.
    event = ce_amqp.from_amqp_event(
        ce_amqp.AMQPMessage(
            properties={"content-type": m.content_type},
            application_properties=m.headers,
            application_data=m.body,
        )
    )
    assert (event.get_id(), event.get_type(), event.get_data()) == ("a1", "com.acme.alarm",
                                                                    {"level": 3})  # fmt: skip
    [j] = as_json
    assert j.routing_key == "json.com.acme.alarm"
    assert j.content_type is not None and j.content_type.startswith("application/cloudevents+json")
    read = ce_amqp.from_amqp_event(
        ce_amqp.AMQPMessage(properties={"content-type": j.content_type},
                            application_properties={}, application_data=j.body)
    )  # fmt: skip
    assert (read.get_id(), read.get_extension("region")) == ("a1", "eu")
    assert letter.topic == "acme/alerts" and letter.reason == "term"
    assert "returned by the broker: 312 NO_ROUTE" in letter.error
    assert info.delivered == 1 and info.errors == 1


async def test_acked_only_after_the_append(
    rabbitmq: RabbitMQServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the bus pushes back the messages stay unacknowledged; then each is once on the bus."""
    url = rabbitmq.url
    queue = unique("held")
    declare(url, queue)
    await asyncio.to_thread(
        publish, url, "", [(queue, str(n).encode(), {"message_id": f"m{n}"}) for n in range(30)]
    )
    gate = asyncio.Event()
    failures = [EngineUnavailable("the engine is full")]
    async with hybridbus.open("memory://") as bus:
        real_append = bus.append

        async def append(batch: Any, **kwargs: Any) -> Any:
            await gate.wait()
            if failures:
                raise failures.pop()
            return await real_append(batch, **kwargs)

        monkeypatch.setattr(bus, "append", append)
        bridges = Bridges(
            bus,
            [amqp_bridge(name="held", direction="in", url=url, queues=[queue], prefetch=20,
                         topic="acme/held")],
        )  # fmt: skip
        await bridges.start()
        try:
            bridge = bridges.all()[0]
            await eventually(lambda: bridge.pending > 0, what="a batch taken")
            # The prefetch bounds what the bridge holds; none of it is acknowledged yet.
            await eventually(lambda: queue_counts(rabbitmq, queue) == (10, 20), what="held")
            gate.set()

            async def all_in() -> bool:
                return len(await history(bus, "acme/held")) >= 30

            await eventually(all_in, what="30 events")
            await eventually(lambda: queue_counts(rabbitmq, queue) == (0, 0), what="all acked")
            info = bridge.info()
        finally:
            await bridges.close()
        events = await history(bus, "acme/held")
    assert [d.event.data for d in events] == list(range(30))
    assert not failures and "the engine is full" in info.last_error
    assert info.received == 30 and info.delivered == 30
