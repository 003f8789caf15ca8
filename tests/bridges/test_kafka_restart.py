"""The Kafka bridges, both ways, with the broker restarted mid-stream (a Kafka of their own).

In: records produced by kcat before and after the restart are each on the bus exactly once
(the consumer reads again from the last commit; the bus drops what it already has), each
key's in its partition's order. Out: every event reaches the topic (the idempotent producer
retries across the restart; a resend after an unconfirmed send keeps its `ce_id`), each key's
in one partition, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from tests.bridges.kafka_support import create_topics, headers_of, kcat_consume, kcat_produce
from tests.bridges.support import eventually
from tests.services import KafkaServer

import hybridbus
from hybridbus.bridges.registry import Bridges
from hybridbus.bridges.settings import AnyBridge, KafkaBridge

pytestmark = pytest.mark.slow

KEYS = [f"k{i}" for i in range(4)]


def kafka_bridge(**fields: Any) -> KafkaBridge:
    return msgspec.convert({"kind": "kafka", **fields}, AnyBridge)  # type: ignore[return-value]


async def test_broker_restarted_mid_stream_both_ways(
    kafka_server: Callable[..., KafkaServer],
) -> None:
    broker = kafka_server()
    servers = broker.url
    await create_topics(servers, {"devices": 4, "alerts": 4})
    async with hybridbus.open("memory://") as bus:
        bridges = Bridges(
            bus,
            [
                kafka_bridge(name="in", direction="in", url=f"kafka://{servers}",
                             topics=["devices"], topic="acme/in/{topic}", batch=50),
                kafka_bridge(name="out", direction="out", url=f"kafka://{servers}",
                             pattern="acme/out/#", kafka_topic="alerts", concurrency=20),
            ],
        )  # fmt: skip
        await bridges.start()
        try:
            await eventually(lambda: all(b.state == "running" for b in bridges.all()))

            def produce(first: int, last: int) -> None:
                lines = [f"{KEYS[n % 4]}:{n}" for n in range(first, last)]
                kcat_produce(servers, "devices", lines, keyed=True)

            async def publish(first: int, last: int) -> None:
                for n in range(first, last):
                    event = {"id": f"o{n}", "source": "/t", "type": "t", "data": n}
                    await bus.publish(f"acme/out/{KEYS[n % 4]}", event)

            await asyncio.to_thread(produce, 0, 300)
            await publish(0, 300)
            await asyncio.to_thread(broker.restart)
            await asyncio.to_thread(produce, 300, 600)
            await publish(300, 600)

            async def all_in() -> bool:
                page = await bus.history("acme/in/#", limit=10_000)
                return len(page.deliveries) >= 600

            await eventually(all_in, timeout=60, what="600 events in")

            def all_out() -> bool:
                records = kcat_consume(servers, "alerts", 2000)
                return len({headers_of(r)["ce_id"] for r in records}) >= 600

            await eventually(all_out, timeout=60, what="600 records out")
        finally:
            await bridges.close()
        events = (await bus.history("acme/in/#", limit=10_000)).deliveries
    numbers = [d.event.data for d in events]
    assert sorted(numbers) == list(range(600))  # exactly once
    produced = kcat_consume(servers, "devices", 2000)
    for key in range(4):
        mine = [n for n in numbers if n % 4 == key]
        theirs = [int(r["payload"]) for r in produced if r["key"] == KEYS[key]]
        assert mine == theirs, f"in: {KEYS[key]} not in its partition's order"
    records = kcat_consume(servers, "alerts", 2000)
    assert {int(headers_of(r)["ce_id"][1:]) for r in records} == set(range(600))
    for key in KEYS:
        mine = sorted(
            (r["partition"], r["offset"], int(headers_of(r)["ce_id"][1:]))
            for r in records
            if r["key"] == f"acme/out/{key}"
        )
        assert len({p for p, _, _ in mine}) == 1
        firsts: list[int] = []
        for _, _, n in mine:
            if n not in firsts:
                firsts.append(n)
        assert firsts == sorted(firsts), f"out: {key} not in log order"
