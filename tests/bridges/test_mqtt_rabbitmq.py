"""The MQTT bridge with protocol 3.1.1 against RabbitMQ's MQTT plugin (issue 13: "RabbitMQ's
plugin for 3.1.1"), with mosquitto_pub / mosquitto_sub -V mqttv311 as the other side.

Both ways in structured JSON (3.1.1 has no user properties); a message that is not a
CloudEvent wrapped; the plugin's topic translation (MQTT `/` is AMQP `.` and back, so a `.`
in an MQTT topic comes out as `/`); the persistent session (clean session false: the plugin
keeps a durable queue per client id) across a bridge restart: QoS 1 messages published while
the bridge was down arrive, each once, in per-topic order; and an MQTT 5 bridge refused by
the plugin (3.10 speaks 3.1.1 only) staying in `reconnecting` with the error shown.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest
from cloudevents.core.formats.json import JSONFormat
from tests.bridges.support import MosquittoSub, eventually, mosquitto_pub
from tests.services import RabbitMQMqttServer

import hybridbus
from hybridbus.bridges.registry import Bridges
from hybridbus.bridges.settings import AnyBridge, MqttBridge
from hybridbus.hub.bus import Bus

pytestmark = pytest.mark.slow

KEYS = [f"k{i}" for i in range(4)]


def mqtt(**fields: Any) -> MqttBridge:
    return msgspec.convert({"kind": "mqtt", **fields}, AnyBridge)  # type: ignore[return-value]


def structured(n: int, prefix: str = "e") -> str:
    return json.dumps(
        {"specversion": "1.0", "id": f"{prefix}{n}", "source": "/dev", "type": "t", "data": n}
    )


async def history(bus: Bus, pattern: str) -> list[Any]:
    page = await bus.history(pattern, limit=10_000)
    return page.deliveries


async def test_in_structured_311_and_wrapped(rabbitmq_mqtt: RabbitMQMqttServer) -> None:
    port = rabbitmq_mqtt.mqtt_port
    async with hybridbus.open("memory://") as bus:
        bridges = Bridges(
            bus,
            [mqtt(name="rin", direction="in", url=rabbitmq_mqtt.mqtt_url, protocol="3.1.1",
                  topic="acme/rmq/{topic}", subscribe=["rin/#"], client_id="rin-1")],
        )  # fmt: skip
        await bridges.start()
        try:
            await eventually(lambda: bridges.all()[0].state == "running", what="running")
            event = {"specversion": "1.0", "id": "s-1", "source": "/x", "type": "com.acme.t",
                     "subject": "hall", "region": "eu", "data": {"n": 1}}  # fmt: skip
            mosquitto_pub(port, "rin/a", message=json.dumps(event), version="3.1.1")
            mosquitto_pub(port, "rin/plain", message="21.5", version="3.1.1")
            mosquitto_pub(port, "rin/room.7", message="hello", version="3.1.1")

            async def arrived() -> bool:
                return len(await history(bus, "acme/rmq/#")) >= 3

            await eventually(arrived, what="3 events on the bus")
            by_topic = {d.topic: d.event for d in await history(bus, "acme/rmq/#")}
        finally:
            await bridges.close()
    one = by_topic["acme/rmq/rin/a"]
    assert (one.id, one.source, one.type, one.subject) == ("s-1", "/x", "com.acme.t", "hall")
    assert (one.data, one.extensions) == ({"n": 1}, {"region": "eu"})
    wrapped = by_topic["acme/rmq/rin/plain"]
    assert (wrapped.type, wrapped.data) == ("hybridbus.bridge.message", 21.5)
    assert wrapped.source == "/bridges/rin/rin/plain"
    # The plugin maps MQTT "/" to AMQP "." and "." to "/": a dot comes back as a slash.
    dotted = by_topic["acme/rmq/rin/room/7"]
    assert dotted.data == b"hello" and dotted.source == "/bridges/rin/rin/room/7"


async def test_out_structured_311_read_by_mosquitto_sub(
    rabbitmq_mqtt: RabbitMQMqttServer,
) -> None:
    port = rabbitmq_mqtt.mqtt_port
    watcher = MosquittoSub(port, "rout/#", "rout-watch", version="3.1.1")
    await watcher.start()
    total = 200
    async with hybridbus.open("memory://") as bus:
        bridges = Bridges(
            bus,
            [mqtt(name="rout", direction="out", url=rabbitmq_mqtt.mqtt_url, protocol="3.1.1",
                  mode="structured", pattern="acme/rout/#", mqtt_topic="{relative}",
                  client_id="rout-1")],
        )  # fmt: skip
        await bridges.start()
        try:
            await bus.publish(
                "acme/rout/alerts/fire",
                {"id": "a1", "source": "/alarm", "type": "com.acme.alarm", "subject": "hall",
                 "datacontenttype": "application/json", "data": {"level": 3}, "region": "eu"},
            )  # fmt: skip
            for n in range(total):
                body = {"id": f"o{n}", "source": "/t", "type": "t", "data": n}
                await bus.publish(f"acme/rout/{KEYS[n % 4]}", body)
            seen = await watcher.wait_for(total + 1, timeout=60)
            info = bridges.infos()[0]
        finally:
            await bridges.close()
            await watcher.stop()
    [fire] = [m for m in seen if m["topic"] == "rout/alerts/fire"]
    # The structured payload, read by the CloudEvents SDK.
    event = JSONFormat().read(None, fire["payload"].encode())
    assert (event.get_id(), event.get_type(), event.get_data()) == ("a1", "com.acme.alarm",
                                                                    {"level": 3})  # fmt: skip
    assert (event.get_subject(), event.get_extension("region")) == ("hall", "eu")
    # Every event once (no failure: no resend), each key's in log order.
    numbers = [json.loads(m["payload"])["data"] for m in seen if m["topic"] != fire["topic"]]
    assert sorted(numbers) == list(range(total))
    for key in KEYS:
        mine = [json.loads(m["payload"])["data"] for m in seen if m["topic"] == f"rout/{key}"]
        assert mine == sorted(mine), key
    assert info.delivered == total + 1 and info.errors == 0


async def test_session_kept_across_a_bridge_restart(rabbitmq_mqtt: RabbitMQMqttServer) -> None:
    """Clean session false: what is published while the bridge is down waits in its queue."""
    port = rabbitmq_mqtt.mqtt_port
    settings = mqtt(name="rses", direction="in", url=rabbitmq_mqtt.mqtt_url, protocol="3.1.1",
                    topic="acme/rses/{topic}", subscribe=["rses/#"], client_id="rses-1",
                    batch=50)  # fmt: skip
    total = 400

    def publish(first: int, last: int) -> None:
        for key in KEYS:
            lines = [structured(n) for n in range(first, last) if KEYS[n % 4] == key]
            mosquitto_pub(port, f"rses/{key}", lines, version="3.1.1")

    async def on_bus(bus: Bus, count: int) -> bool:
        return len(await history(bus, "acme/rses/#")) >= count

    async with hybridbus.open("memory://") as bus:
        first = Bridges(bus, [settings])
        await first.start()
        try:
            await eventually(lambda: first.all()[0].state == "running", what="running")
            await asyncio.to_thread(publish, 0, total // 2)
            await eventually(lambda: on_bus(bus, total // 2), what="the first half")
        finally:
            await first.close()
        # The bridge is down: QoS 1 messages to its subscription wait in its session.
        await asyncio.to_thread(publish, total // 2, total)
        await asyncio.sleep(0.5)
        assert len(await history(bus, "acme/rses/#")) == total // 2
        second = Bridges(bus, [settings])
        await second.start()
        try:
            await eventually(lambda: on_bus(bus, total), timeout=60, what="the second half")
            await asyncio.sleep(0.5)  # nothing more comes (no second copy)
            info = second.infos()[0]
        finally:
            await second.close()
        events = await history(bus, "acme/rses/#")
    numbers = [d.event.data for d in events]
    assert sorted(numbers) == list(range(total))  # each exactly once
    for key in KEYS:
        mine = [d.event.data for d in events if d.topic == f"acme/rses/rses/{key}"]
        assert mine == sorted(mine), key
    # The restarted bridge got the second half from its session, and not the first again.
    assert info.delivered - info.duplicates == total // 2


async def test_mqtt_5_is_refused_by_the_plugin(rabbitmq_mqtt: RabbitMQMqttServer) -> None:
    async with hybridbus.open("memory://") as bus:
        bridges = Bridges(
            bus,
            [mqtt(name="r5", direction="in", url=rabbitmq_mqtt.mqtt_url, topic="acme/r5/{topic}",
                  subscribe=["r5/#"], client_id="r5-1")],
        )  # fmt: skip
        await bridges.start()
        try:
            info = await eventually(
                lambda: next((i for i in bridges.infos() if i.errors), None),
                what="the refused connection",
            )
        finally:
            await bridges.close()
    assert info.state == "reconnecting"
    assert "MqttError" in info.last_error
