"""The MQTT bridge against a real Mosquitto, with mosquitto_pub / mosquitto_sub as the other side.

In: MQTT 5 binary mode (user properties), structured mode, MQTT 3.1.1 structured JSON,
messages that are not CloudEvents wrapped (the same message twice is one event) or
rejected to a topic. Out: events as MQTT 5 user properties, and as structured JSON over
3.1.1. The broker restarted mid-stream both ways: every message once, in per-topic order.
The bridges listed at /v1/bridges and in /metrics.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest
from cloudevents.core.formats.json import JSONFormat
from tests.bridges.support import MosquittoSub, eventually, mosquitto_pub
from tests.servers import running_server
from tests.services import MosquittoServer

import hybridbus
from hybridbus.bridges.registry import Bridges
from hybridbus.bridges.settings import AnyBridge, MqttBridge
from hybridbus.errors import EngineUnavailable
from hybridbus.hub.bus import Bus

pytestmark = pytest.mark.slow

PERSISTENT = ("persistence true", "autosave_interval 1", "max_queued_messages 100000")


def mqtt(**fields: Any) -> MqttBridge:
    return msgspec.convert({"kind": "mqtt", **fields}, AnyBridge)  # type: ignore[return-value]


async def history(bus: Bus, pattern: str) -> list[Any]:
    page = await bus.history(pattern, limit=10_000)
    return page.deliveries


async def test_in_binary_structured_311_wrapped_and_rejected(
    mosquitto_server: Callable[..., MosquittoServer],
) -> None:
    broker = mosquitto_server()
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with hybridbus.open("memory://") as bus:
        bridges = Bridges(
            bus,
            [
                mqtt(name="in5", direction="in", url=url, topic="acme/iot/{topic}",
                     subscribe=["v5/#"], rejected="acme/rejected"),
                mqtt(name="in3", direction="in", url=url, protocol="3.1.1",
                     topic="acme/old/{topic}", subscribe=["v3/#"], wrap=False,
                     rejected="acme/rejected"),
            ],
        )  # fmt: skip
        await bridges.start()
        try:
            await eventually(lambda: all(b.state == "running" for b in bridges.all()))
            binary = [
                ("user-property", "specversion", "1.0"),
                ("user-property", "id", "b-1"),
                ("user-property", "source", "/sensors/7"),
                ("user-property", "type", "com.acme.reading"),
                ("user-property", "subject", "temp é"),
                ("user-property", "time", "2024-05-06T07:08:09Z"),
                ("user-property", "region", "eu"),
                ("content-type", "application/json"),
            ]
            mosquitto_pub(broker.port, "v5/s7/temp", message='{"c": 21.5}', properties=binary)
            structured = {"specversion": "1.0", "id": "s-1", "source": "/x", "type": "t",
                          "data": {"n": 1}}  # fmt: skip
            mosquitto_pub(
                broker.port, "v5/s8", message=json.dumps(structured),
                properties=[("content-type", "application/cloudevents+json")],
            )  # fmt: skip
            mosquitto_pub(broker.port, "v5/plain", ["21.5", "21.5", "hello"])  # wrapped
            mosquitto_pub(broker.port, "v3/a", message=json.dumps(structured | {"id": "s-3"}),
                          version="3.1.1")  # fmt: skip
            mosquitto_pub(broker.port, "v3/a", message="not an event", version="3.1.1")

            async def arrived() -> bool:
                return len(await history(bus, "acme/#")) >= 6

            await eventually(arrived, what="6 events on the bus")
            by_topic: dict[str, list[Any]] = {}
            for d in await history(bus, "acme/#"):
                by_topic.setdefault(d.topic, []).append(d.event)
        finally:
            await bridges.close()
    [b] = by_topic["acme/iot/v5/s7/temp"]
    assert (b.id, b.source, b.type, b.subject) == ("b-1", "/sensors/7", "com.acme.reading",
                                                   "temp é")  # fmt: skip
    assert (b.data, b.datacontenttype, b.extensions) == ({"c": 21.5}, "application/json",
                                                         {"region": "eu"})  # fmt: skip
    assert b.time is not None and b.time.year == 2024
    [s] = by_topic["acme/iot/v5/s8"]
    assert (s.id, s.data) == ("s-1", {"n": 1})
    wrapped = by_topic["acme/iot/v5/plain"]
    # The same payload twice on one topic is one event (the id is its hash): dedupe.
    assert [w.data for w in wrapped] == [21.5, b"hello"]
    assert all(w.type == "hybridbus.bridge.message" for w in wrapped)
    assert wrapped[0].source == "/bridges/in5/v5/plain"
    [old] = by_topic["acme/old/v3/a"]
    assert old.id == "s-3"
    [rejected] = by_topic["acme/rejected"]
    assert rejected.type == "hybridbus.bridge.rejected"
    assert rejected.data["topic"] == "v3/a" and rejected.data["payload"] == "not an event"


async def test_out_binary_v5_and_structured_311(
    mosquitto_server: Callable[..., MosquittoServer],
) -> None:
    broker = mosquitto_server()
    url = f"mqtt://127.0.0.1:{broker.port}"
    sub5 = MosquittoSub(broker.port, "bus/#", "watch5")
    sub3 = MosquittoSub(broker.port, "old/#", "watch3", version="3.1.1")
    await sub5.start()
    await sub3.start()
    async with hybridbus.open("memory://") as bus:
        bridges = Bridges(
            bus,
            [
                mqtt(name="out5", direction="out", url=url, pattern="acme/alerts/#",
                     mqtt_topic="bus/{relative}"),
                mqtt(name="out3", direction="out", url=url, pattern="acme/alerts/#",
                     protocol="3.1.1", mode="structured", mqtt_topic="old/{tenant}/{relative}"),
            ],
        )  # fmt: skip
        await bridges.start()
        try:
            await bus.publish(
                "acme/alerts/fire",
                {"id": "a1", "source": "/alarm", "type": "com.acme.alarm", "subject": "hall",
                 "datacontenttype": "application/json", "data": {"level": 3}, "region": "eu"},
            )  # fmt: skip
            five = await sub5.wait_for(1)
            three = await sub3.wait_for(1)
        finally:
            await bridges.close()
            await sub5.stop()
            await sub3.stop()
    [m5] = five
    assert m5["topic"] == "bus/alerts/fire"
    assert json.loads(m5["payload"]) == {"level": 3}
    props = m5["properties"]
    assert props["content-type"] == "application/json"
    assert props["user-properties"] == {
        "specversion": "1.0", "id": "a1", "source": "/alarm", "type": "com.acme.alarm",
        "subject": "hall", "region": "eu",
    }  # fmt: skip
    [m3] = three
    assert m3["topic"] == "old/acme/alerts/fire"
    # The structured payload, read by the CloudEvents SDK.
    event = JSONFormat().read(None, m3["payload"].encode())
    assert (event.get_id(), event.get_type(), event.get_data()) == ("a1", "com.acme.alarm",
                                                                    {"level": 3})  # fmt: skip
    assert event.get_extension("region") == "eu"


async def test_broker_restarted_mid_stream_both_ways(
    mosquitto_server: Callable[..., MosquittoServer],
) -> None:
    broker = mosquitto_server(*PERSISTENT)
    url = f"mqtt://127.0.0.1:{broker.port}"
    watcher = MosquittoSub(broker.port, "out/#", "watcher")
    await watcher.start()
    keys = [f"k{i}" for i in range(4)]
    async with hybridbus.open("memory://") as bus:
        bridges = Bridges(
            bus,
            [
                mqtt(name="in", direction="in", url=url, topic="acme/in/{topic}",
                     subscribe=["dev/#"], batch=50),
                mqtt(name="out", direction="out", url=url, pattern="acme/out/#",
                     mqtt_topic="out/{relative}", concurrency=20),
            ],
        )  # fmt: skip
        await bridges.start()
        try:
            await eventually(lambda: all(b.state == "running" for b in bridges.all()))

            async def publish_out(first: int, last: int) -> None:
                for n in range(first, last):
                    key = keys[n % 4]
                    await bus.publish(f"acme/out/{key}", {"id": f"o{n}", "source": "/t",
                                                          "type": "t", "data": n})  # fmt: skip

            def publish_in(first: int, last: int) -> None:
                for key in keys:
                    lines = [json.dumps({"specversion": "1.0", "id": f"i{n}", "source": "/dev",
                                         "type": "t", "data": n})
                             for n in range(first, last) if keys[n % 4] == key]  # fmt: skip
                    mosquitto_pub(broker.port, f"dev/{key}", lines)

            await asyncio.to_thread(publish_in, 0, 200)
            await publish_out(0, 200)
            await asyncio.to_thread(broker.restart)  # persistence: queued messages survive
            await asyncio.to_thread(publish_in, 200, 400)
            await publish_out(200, 400)

            async def all_in() -> bool:
                return len(await history(bus, "acme/in/#")) >= 400

            await eventually(all_in, timeout=60, what="400 events in")
            seen = await watcher.wait_for(400, timeout=60)
            infos = {i.name: i for i in bridges.infos()}
        finally:
            await bridges.close()
            await watcher.stop()
        events_in = await history(bus, "acme/in/#")
    # In: every message exactly once on the bus (redeliveries deduped), in per-topic order.
    numbers = [d.event.data for d in events_in]
    assert sorted(numbers) == list(range(400))
    for key in keys:
        mine = [d.event.data for d in events_in if d.topic == f"acme/in/dev/{key}"]
        assert mine == sorted(mine)
    # Out: every event reached the subscriber (at least once: a redelivery keeps its id),
    # each key's in order of first arrival.
    ids = [m["properties"]["user-properties"]["id"] for m in seen]
    assert {int(i[1:]) for i in ids} == set(range(400))
    for key in keys:
        firsts = []
        for m in seen:
            n = int(m["properties"]["user-properties"]["id"][1:])
            if m["topic"] == f"out/{key}" and n not in firsts:
                firsts.append(n)
        assert firsts == sorted(firsts)
    assert infos["in"].errors >= 1 and infos["out"].errors >= 1  # the restart was seen
    assert infos["in"].delivered >= 400


async def test_a_failed_append_is_not_acknowledged(
    mosquitto_server: Callable[..., MosquittoServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker is told only after the durable append: a failed one brings the message back."""
    broker = mosquitto_server()
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with hybridbus.open("memory://") as bus:
        real_append = bus.append
        failures = [EngineUnavailable("the disk is gone")]

        async def append(batch: Any, **kwargs: Any) -> Any:
            if failures:
                raise failures.pop()
            return await real_append(batch, **kwargs)

        monkeypatch.setattr(bus, "append", append)
        bridges = Bridges(bus, [mqtt(name="in", direction="in", url=url, topic="acme/{topic}",
                                     subscribe=["d/#"])])  # fmt: skip
        await bridges.start()
        try:
            await eventually(lambda: bridges.all()[0].state == "running")
            mosquitto_pub(broker.port, "d/1", ["1", "2", "3"])

            async def three() -> bool:
                return len(await history(bus, "acme/#")) == 3

            await eventually(three, what="the three messages, after the failed append")
            info = bridges.infos()[0]
        finally:
            await bridges.close()
    assert not failures
    assert info.errors >= 1 and "the disk is gone" in info.last_error


async def test_listed_at_v1_bridges_and_in_metrics(
    mosquitto_server: Callable[..., MosquittoServer],
) -> None:
    broker = mosquitto_server()
    url = f"mqtt://user:secret@127.0.0.1:{broker.port}"
    settings = [
        mqtt(name="acme-in", direction="in", url=url, topic="acme/iot/{topic}", subscribe=["x/#"]),
        mqtt(name="other-out", direction="out", url=url, pattern="other/#"),
    ]
    async with (
        running_server(bridges=settings) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http,
    ):

        async def subscribed() -> bool:
            answer = (await http.get("/v1/bridges")).json()["bridges"]
            return bool(answer) and answer[0]["state"] == "running"

        await eventually(subscribed, what="the bridge running")
        mosquitto_pub(broker.port, "x/1", message="42")

        async def listed() -> Any:
            answer = (await http.get("/v1/bridges")).json()["bridges"]
            return answer if answer and answer[0]["delivered"] == 1 else None

        shown = await eventually(listed, what="the bridge listed with one message")
        metrics = (await http.get("/metrics")).text
    # An anonymous caller of tenant acme sees acme's bridge only, password hidden.
    assert [b["name"] for b in shown] == ["acme-in"]
    assert shown[0]["state"] == "running" and shown[0]["kind"] == "mqtt"
    assert shown[0]["settings"]["url"] == f"mqtt://user:***@127.0.0.1:{broker.port}"
    labels = '{bridge="acme-in",direction="in",kind="mqtt"}'
    assert f"hybridbus_bridge_messages_out_total{labels} 1.0" in metrics
    assert 'hybridbus_bridge_up{bridge="acme-in",direction="in",kind="mqtt"} 1.0' in metrics
    assert 'hybridbus_bridge_lag{bridge="other-out",direction="out",kind="mqtt"}' in metrics
