"""`hybridbus bridge CONFIG` with an AMQP bridge killed with -9 and RabbitMQ restarted, mid-stream.

In: pika publishes persistent messages to a durable queue while the bridge process is killed,
the broker restarted and the bridge started again; the bridge acknowledges only after the
durable append, the broker requeues what was unacknowledged, and the bus drops what comes
again (the wrap rule's id is the `message_id`): every message exactly once on the bus, each
routing key's in order. Out: the events are in the log; the bridge is killed while publishing
and the broker restarted; pika reads every event from a durable queue (at least once: a resend
keeps its `message_id`), each key's in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.bridges.amqp_support import Received, declare, drain, publish, queue_counts
from tests.bridges.support import BridgeProcess, bus_events, eventually
from tests.services import RabbitMQServer

import hybridbus

pytestmark = pytest.mark.slow

KEYS = [f"k{i}" for i in range(4)]


def config(path: Path, engine: str, table: str) -> Path:
    path.write_text(f'engine = "{engine}"\nlog_level = "info"\n\n{table}')
    return path


def running_lines(bridge: BridgeProcess) -> int:
    return bridge.log.read_text().count(' running"') if bridge.log.exists() else 0


async def test_in_bridge_killed_and_broker_restarted_mid_stream(
    rabbitmq_server: Callable[..., RabbitMQServer], tmp_path: Path
) -> None:
    broker = rabbitmq_server()
    declare(broker.url, "devices", [("amq.topic", "dev.#")])
    engine = f"sqlite://{tmp_path}/data"
    path = config(
        tmp_path / "bridge.toml",
        engine,
        f"""[[bridges]]
kind = "amqp"
name = "devices"
direction = "in"
url = "{broker.url}"
queues = ["devices"]
topic = "acme/in/{{topic}}"
batch = 50
prefetch = 200
""",
    )
    bridge = BridgeProcess(path)
    total = 2000

    def send(first: int, last: int) -> None:
        for start in range(first, last, 250):
            publish(
                broker.url,
                "amq.topic",
                [(f"dev.{KEYS[n % 4]}", str(n).encode(), {"message_id": f"m{n}"})
                 for n in range(start, min(last, start + 250))],
            )  # fmt: skip

    try:
        bridge.start()
        await eventually(lambda: running_lines(bridge) >= 1, what="the bridge running")
        sending = asyncio.create_task(asyncio.to_thread(send, 0, total // 2))
        await asyncio.sleep(0.5)
        bridge.kill()  # mid-stream: some appended and acked, some appended only, some queued
        await sending
        assert 0 < len(await bus_events(engine, "acme/in/#")) < total
        bridge.start()
        await eventually(lambda: running_lines(bridge) >= 2, what="the bridge running again")
        await asyncio.to_thread(send, total // 2, total - 250)
        await asyncio.to_thread(broker.restart)  # durable queue, persistent messages
        await asyncio.to_thread(send, total - 250, total)
        await eventually(
            lambda: queue_counts(broker, "devices") == (0, 0), timeout=60, what="all acked"
        )
        assert bridge.stop() == 0  # the bridge owns the data directory: stop it to look
    finally:
        bridge.close()
    assert "reconnecting" in bridge.log.read_text()  # the restart was seen
    events = await bus_events(engine, "acme/in/#")
    found = [event.data for _, event in events]
    assert sorted(found) == list(range(total))  # each exactly once
    for key in KEYS:
        mine = [event.data for topic, event in events if topic == f"acme/in/dev.{key}"]
        assert mine == sorted(mine), key


async def test_out_bridge_killed_and_broker_restarted_mid_stream(
    rabbitmq_server: Callable[..., RabbitMQServer], tmp_path: Path
) -> None:
    broker = rabbitmq_server()
    declare(broker.url, "watch", [("amq.topic", "out.#")])
    engine = f"sqlite://{tmp_path}/data"
    total = 3000
    async with hybridbus.open(engine) as bus:
        await bus.publish_many(
            (f"acme/out/{KEYS[n % 4]}", {"id": f"o{n}", "source": "/t", "type": "t", "data": n})
            for n in range(total)
        )
    path = config(
        tmp_path / "bridge.toml",
        engine,
        f"""[[bridges]]
kind = "amqp"
name = "alerts"
direction = "out"
url = "{broker.url}"
pattern = "acme/out/#"
start = "earliest"
exchange = "amq.topic"
routing_key = "out.{{dotted}}"
concurrency = 16
""",
    )
    bridge = BridgeProcess(path)
    seen: list[Received] = []
    try:
        bridge.start()
        await eventually(lambda: queue_counts(broker, "watch")[0] >= 100, what="100 published")
        bridge.kill()
        seen += await asyncio.to_thread(drain, broker.url, "watch")
        assert len(seen) < total  # killed mid-stream
        bridge.start()
        await eventually(lambda: queue_counts(broker, "watch")[0] >= 100, what="going again")
        await asyncio.to_thread(broker.restart)  # while it publishes

        async def complete() -> bool:
            seen.extend(await asyncio.to_thread(drain, broker.url, "watch"))
            return len({m.message_id for m in seen}) >= total

        await eventually(complete, timeout=60, what="every event in the queue")
        assert bridge.stop() == 0
    finally:
        bridge.close()
    assert "reconnecting" in bridge.log.read_text()  # the restart was seen
    assert {int(str(m.message_id)[1:]) for m in seen} == set(range(total))
    for key in KEYS:
        firsts: list[int] = []
        for m in seen:
            n = int(str(m.message_id)[1:])
            if m.routing_key == f"out.{key}" and n not in firsts:
                firsts.append(n)
        assert firsts == sorted(firsts), key
    async with hybridbus.open(engine) as bus:
        info = await bus.groups.info("acme/bridge.alerts")
    assert info.lag == 0 and info.pending <= 16
