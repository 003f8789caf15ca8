"""`hybridbus bridge CONFIG` with a Kafka bridge killed with -9 mid-stream, both ways.

In: kcat produces plain records (4 keys, 4 partitions) while the bridge process is killed and
started again; it commits offsets only after the durable append, and reads again from the last
commit; the default wrap rule gives each record the id `<topic>-<partition>-<offset>`, so the
bus drops what comes again: every record exactly once on the bus, each key's in order. Out:
the events are in the log before the bridge starts; it is killed while producing; kcat reads
every event from the topic (at least once: a resend keeps its `ce_id`), each key's in order.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from tests.bridges.kafka_support import (
    committed,
    create_topics,
    headers_of,
    kcat_consume,
    kcat_produce,
)
from tests.bridges.support import BridgeProcess, bus_events, eventually
from tests.services import KafkaServer

import hybridbus

pytestmark = pytest.mark.slow

KEYS = [f"k{i}" for i in range(4)]


def config(path: Path, engine: str, table: str) -> Path:
    path.write_text(f'engine = "{engine}"\nlog_level = "info"\n\n{table}')
    return path


def running_lines(bridge: BridgeProcess) -> int:
    return bridge.log.read_text().count("running") if bridge.log.exists() else 0


async def test_in_bridge_killed_mid_stream(kafka: KafkaServer, tmp_path: Path) -> None:
    topic = f"kill-in-{uuid.uuid4().hex[:8]}"
    await create_topics(kafka.url, {topic: 4})
    engine = f"sqlite://{tmp_path}/data"
    path = config(
        tmp_path / "bridge.toml",
        engine,
        f"""[[bridges]]
kind = "kafka"
name = "orders"
direction = "in"
url = "kafka://{kafka.url}"
topics = ["{topic}"]
topic = "acme/in/{{topic}}"
batch = 100
""",
    )
    bridge = BridgeProcess(path)
    total = 3000

    def produce(first: int, last: int) -> None:
        for start in range(first, last, 250):
            lines = [f"{KEYS[n % 4]}:{n}" for n in range(start, min(last, start + 250))]
            kcat_produce(kafka.url, topic, lines, keyed=True)

    try:
        bridge.start()
        await eventually(lambda: running_lines(bridge) >= 1, what="the bridge running")
        producing = asyncio.create_task(asyncio.to_thread(produce, 0, total // 2))
        await asyncio.sleep(1.5)
        bridge.kill()  # mid-stream: some appended and committed, some appended only, some not
        await producing
        assert 0 < len(await bus_events(engine, "acme/in/#")) < total
        bridge.start()
        await asyncio.to_thread(produce, total // 2, total)

        async def all_committed() -> bool:  # committed only once appended
            return sum((await committed(kafka.url, "hybridbus-orders")).values()) >= total

        # The killed member stays in the consumer group until its session times out (10 s).
        await eventually(all_committed, timeout=60, what="every offset committed")
        assert bridge.stop() == 0  # the bridge owns the data directory: stop it to look
    finally:
        bridge.close()
    found = [event.data for _, event in await bus_events(engine, "acme/in/#")]
    assert sorted(found) == list(range(total))  # each exactly once
    for key in range(4):
        mine = [n for n in found if n % 4 == key]
        assert mine == sorted(mine), key


async def test_out_bridge_killed_mid_stream(kafka: KafkaServer, tmp_path: Path) -> None:
    topic = f"kill-out-{uuid.uuid4().hex[:8]}"
    await create_topics(kafka.url, {topic: 4})
    engine = f"sqlite://{tmp_path}/data"
    total = 2000
    async with hybridbus.open(engine) as bus:
        await bus.publish_many(
            (f"acme/out/{KEYS[n % 4]}", {"id": f"o{n}", "source": "/t", "type": "t", "data": n})
            for n in range(total)
        )
    path = config(
        tmp_path / "bridge.toml",
        engine,
        f"""[[bridges]]
kind = "kafka"
name = "alerts"
direction = "out"
url = "kafka://{kafka.url}"
pattern = "acme/out/#"
start = "earliest"
kafka_topic = "{topic}"
concurrency = 16
""",
    )
    bridge = BridgeProcess(path)
    try:
        bridge.start()
        await eventually(
            lambda: len(kcat_consume(kafka.url, topic, 100)) >= 100, what="100 records out"
        )
        bridge.kill()
        assert len(kcat_consume(kafka.url, topic, total)) < total  # killed mid-stream
        bridge.start()

        def complete() -> bool:
            records = kcat_consume(kafka.url, topic, total * 2)
            return len({headers_of(r)["ce_id"] for r in records}) >= total

        await eventually(complete, timeout=60, what="every event in the topic")
        assert bridge.stop() == 0
    finally:
        bridge.close()
    records = kcat_consume(kafka.url, topic, total * 2)
    assert {int(headers_of(r)["ce_id"][1:]) for r in records} == set(range(total))
    for key in KEYS:
        mine = sorted(
            (r["partition"], r["offset"], int(headers_of(r)["ce_id"][1:]))
            for r in records
            if r["key"] == f"acme/out/{key}"
        )
        assert len({p for p, _, _ in mine}) == 1, key  # one key, one partition
        firsts: list[int] = []
        for _, _, n in mine:
            if n not in firsts:
                firsts.append(n)
        assert firsts == sorted(firsts), key
    async with hybridbus.open(engine) as bus:
        info = await bus.groups.info("acme/bridge.alerts")
    assert info.lag == 0 and info.pending <= 16
