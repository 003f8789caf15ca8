"""The Kafka bridge against a real Kafka 4, with kcat and the CloudEvents SDK as the other side.

In: binary mode (`ce_` headers), structured mode (`content-type`), plain records wrapped (the
id is `<topic>-<partition>-<offset>`: the same payload twice is two events; or the record's
key), a regex of topics, rejects. Offsets are committed only after the durable append; when
the bus pushes back the partitions are paused and nothing is lost. Out: binary and
structured records the SDK reads, keyed by `partitionkey` (else the bus topic) so that a key
stays in one partition, in order. The lag per partition on /metrics.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import msgspec
import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from prometheus_client import CollectorRegistry, generate_latest
from tests.bridges.kafka_support import (
    committed,
    create_topics,
    headers_of,
    kcat_consume,
    kcat_produce,
)
from tests.bridges.support import eventually
from tests.services import KafkaServer

import hybridbus
from hybridbus.bridges.registry import Bridges
from hybridbus.bridges.settings import AnyBridge, KafkaBridge
from hybridbus.errors import EngineUnavailable
from hybridbus.hub.bus import Bus

pytestmark = pytest.mark.slow


def kafka_bridge(**fields: Any) -> KafkaBridge:
    return msgspec.convert({"kind": "kafka", **fields}, AnyBridge)  # type: ignore[return-value]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def history(bus: Bus, pattern: str) -> list[Any]:
    page = await bus.history(pattern, limit=10_000)
    return page.deliveries


async def test_in_binary_structured_wrapped_regex_and_rejected(kafka: KafkaServer) -> None:
    servers = kafka.url
    plain, events, keyed, odd = (unique(n) for n in ("plain", "ev", "keyed", "odd"))
    binary = [
        ("ce_specversion", "1.0"), ("ce_id", "b-1"), ("ce_source", "/orders"),
        ("ce_type", "com.acme.order"), ("ce_subject", "order é"),
        ("ce_time", "2024-05-06T07:08:09Z"), ("ce_region", "eu"),
        ("content-type", "application/json"),
    ]  # fmt: skip
    kcat_produce(servers, events, ['{"n": 1}'], headers=binary)
    structured = {"specversion": "1.0", "id": "s-1", "source": "/x", "type": "t", "data": [1]}
    as_json = [("content-type", "application/cloudevents+json; charset=UTF-8")]
    kcat_produce(servers, events, [json.dumps(structured)], headers=as_json)
    kcat_produce(servers, plain, ["21.5", "21.5", "hello"])  # wrapped, by position
    kcat_produce(servers, keyed, ["k1:1", "k1:1", "k2:2"], keyed=True)  # wrapped, id = key
    kcat_produce(servers, odd, ["not an event"])
    async with hybridbus.open("memory://") as bus:
        bridges = Bridges(
            bus,
            [
                kafka_bridge(name="by-list", direction="in", url=f"kafka://{servers}",
                             topics=[events, plain], topic="acme/k/{topic}"),
                kafka_bridge(name="by-key", direction="in", url=f"kafka://{servers}",
                             topics=[keyed], topic="acme/keyed",
                             wrap={"type": "com.acme.keyed", "id": "key"}),
                kafka_bridge(name="by-regex", direction="in", url=f"kafka://{servers}",
                             topics_regex=f"^{odd}$", topic="acme/odd/{topic}", wrap=False,
                             rejected="acme/rejected"),
            ],
        )  # fmt: skip
        await bridges.start()
        try:

            async def arrived() -> bool:
                return len(await history(bus, "acme/#")) >= 7

            await eventually(arrived, timeout=60, what="7 events on the bus")
            by_topic: dict[str, list[Any]] = {}
            for d in await history(bus, "acme/#"):
                by_topic.setdefault(d.topic, []).append(d.event)
            infos = {i.name: i for i in bridges.infos()}
        finally:
            await bridges.close()
    b, s = by_topic[f"acme/k/{events}"]
    assert (b.id, b.source, b.type, b.subject) == ("b-1", "/orders", "com.acme.order", "order é")
    assert (b.data, b.datacontenttype, b.extensions) == ({"n": 1}, "application/json",
                                                         {"region": "eu"})  # fmt: skip
    assert b.time is not None and b.time.year == 2024
    assert (s.id, s.data) == ("s-1", [1])
    wrapped = by_topic[f"acme/k/{plain}"]
    # By position: the same payload at two offsets is two events.
    assert [w.data for w in wrapped] == [21.5, 21.5, b"hello"]
    assert [w.id for w in wrapped] == [f"{plain}-0-{n}" for n in range(3)]
    assert wrapped[0].source == f"/bridges/by-list/{plain}"
    by_key = by_topic["acme/keyed"]
    assert [(e.id, e.data, e.type) for e in by_key] == [("k1", 1, "com.acme.keyed"),
                                                        ("k2", 2, "com.acme.keyed")]  # fmt: skip
    assert infos["by-key"].duplicates == 1  # the second k1 was dropped by the dedupe window
    [rejected] = by_topic["acme/rejected"]
    assert rejected.data["topic"] == odd and rejected.data["payload"] == "not an event"
    assert infos["by-regex"].rejected == 1


async def test_out_binary_and_structured_keyed_in_order(kafka: KafkaServer) -> None:
    servers = kafka.url
    binary, structured = unique("out-bin"), unique("out-json")
    await create_topics(servers, {binary: 4, structured: 1})
    async with hybridbus.open("memory://") as bus:
        bridges = Bridges(
            bus,
            [
                kafka_bridge(name="bin", direction="out", url=f"kafka://{servers}",
                             pattern="acme/orders/#", kafka_topic=binary, concurrency=50),
                kafka_bridge(name="json", direction="out", url=f"kafka://{servers}",
                             pattern="acme/orders/#", kafka_topic=structured,
                             mode="structured"),
            ],
        )  # fmt: skip
        await bridges.start()
        try:
            await bus.publish(
                "acme/orders/first",
                {"id": "a1", "source": "/shop", "type": "com.acme.order", "subject": "s",
                 "datacontenttype": "application/json", "data": {"total": 3}, "region": "eu",
                 "partitionkey": "customer-7"},
            )  # fmt: skip
            for n in range(60):
                await bus.publish(
                    f"acme/orders/k{n % 3}", {"id": f"o{n}", "source": "/shop", "type": "t",
                                             "data": n}
                )  # fmt: skip
            await eventually(lambda: all(b.delivered >= 61 for b in bridges.all()),
                             timeout=60, what="61 events acked by Kafka")  # fmt: skip
        finally:
            await bridges.close()
    records = kcat_consume(servers, binary, 61)
    first = next(r for r in records if r["key"] == "customer-7")
    # The SDK reads the record as the CloudEvents Kafka binding says.
    message = ce_kafka.KafkaMessage(
        headers={k: v.encode() for k, v in headers_of(first).items()},
        key=first["key"],
        value=first["payload"].encode(),
    )
    event = ce_kafka.from_kafka_event(message)
    assert (event.get_id(), event.get_type(), event.get_subject()) == ("a1", "com.acme.order", "s")
    assert event.get_data() == {"total": 3}
    assert event.get_extension("region") == "eu"
    assert headers_of(first)["content-type"] == "application/json"
    # Key = partitionkey, else the bus topic: a key's records are in one partition, in order.
    by_key: dict[str, list[tuple[int, int, int]]] = {}
    for r in records:
        if r["key"] != "customer-7":
            by_key.setdefault(r["key"], []).append(
                (r["partition"], r["offset"], int(headers_of(r)["ce_id"][1:]))
            )
    assert sorted(by_key) == ["acme/orders/k0", "acme/orders/k1", "acme/orders/k2"]
    for rows in by_key.values():
        assert len({p for p, _, _ in rows}) == 1
        assert [n for _, _, n in sorted(rows)] == sorted(n for _, _, n in rows)
        assert len(rows) == 20
    [as_json, *rest] = kcat_consume(servers, structured, 61)
    assert len(rest) == 60
    assert headers_of(as_json)["content-type"].startswith("application/cloudevents+json")
    read = ce_kafka.from_kafka_event(
        ce_kafka.KafkaMessage(headers={}, key=as_json["key"], value=as_json["payload"].encode())
    )
    assert (read.get_id(), read.get_data()) == ("a1", {"total": 3})


async def test_commits_only_after_the_append_and_pauses_on_push_back(
    kafka: KafkaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The offsets move only once the batch is in the log; a refused append loses nothing."""
    servers = kafka.url
    topic = unique("pushback")
    await create_topics(servers, {topic: 2})
    for partition in (0, 1):
        lines = [f"{n % 2}:{n}" for n in range(40) if n % 2 == partition]
        kcat_produce(servers, topic, lines, keyed=True, partition=partition)
    gate = asyncio.Event()
    failures = [EngineUnavailable("the engine is full"), EngineUnavailable("still full")]
    settings = kafka_bridge(name="gated", direction="in", url=f"kafka://{servers}",
                            topics=[topic], topic="acme/p/{topic}", batch=10)  # fmt: skip
    async with hybridbus.open("memory://") as bus:
        real_append = bus.append

        async def append(batch: Any, **kwargs: Any) -> Any:
            await gate.wait()
            if failures:
                raise failures.pop()
            return await real_append(batch, **kwargs)

        monkeypatch.setattr(bus, "append", append)
        bridges = Bridges(bus, [settings])
        await bridges.start()
        registry = CollectorRegistry()
        bridges.expose(registry)
        try:
            bridge = bridges.all()[0]
            await eventually(lambda: bridge.pending > 0, timeout=60, what="a batch taken")
            await eventually(lambda: sum(bridge.partition_lags().values()) >= 30,
                             what="the lag per partition")  # fmt: skip
            metrics = generate_latest(registry).decode()
            # The batch is held, not appended: nothing is committed yet.
            assert await committed(servers, settings.consumer_group) == {}
            gate.set()

            async def all_in() -> bool:
                return len(await history(bus, "acme/p/#")) >= 40

            await eventually(all_in, timeout=60, what="40 events after the push back")
            await eventually(lambda: sum(bridge.partition_lags().values()) == 0,
                             what="no lag left")  # fmt: skip
            offsets = await committed(servers, settings.consumer_group)
            info = bridge.info()
        finally:
            await bridges.close()
        events = await history(bus, "acme/p/#")
    labels = 'bridge="gated",direction="in",kind="kafka"'
    assert f'hybridbus_bridge_partition_lag{{{labels},partition="{topic}-0"}}' in metrics
    assert not failures
    assert "still full" in info.last_error or "the engine is full" in info.last_error
    assert info.received == 40 and info.delivered == 40  # retries counted once
    assert sorted(offsets) == [(topic, 0), (topic, 1)] and sum(offsets.values()) == 40
    numbers = [e.event.data for e in events]
    assert sorted(numbers) == list(range(40))
    for key in (0, 1):
        mine = [n for n in numbers if n % 2 == key]
        assert mine == sorted(mine)
