"""Bridges (issue 13): events/s through the MQTT bridge both ways and the PostgreSQL sink,
each beside the same work done by the broker's own client alone.

A Mosquitto and a PostgreSQL 15 are started from their binaries (tests/services), on
loopback; the bus is sqlite (synchronous=full, the default) in this process.

- `bridges.mqtt.in`: `mosquitto_pub -l` publishes `EVENTS` structured CloudEvents (QoS 1,
  4 topics) to the broker; the in bridge appends them durably and PUBACKs; from the first
  publish to the last append. Peer `bridges.mqtt.in.aiomqtt`: an aiomqtt subscriber alone
  (QoS 1, a persistent session) receiving the same messages.
- `bridges.mqtt.out`: `EVENTS` events wait in the log; the out bridge (unordered,
  concurrency 100) publishes each with QoS 1 and acks it in its group on PUBACK; from its
  start to the last ack. Peer `bridges.mqtt.out.aiomqtt`: aiomqtt publishing the same
  payloads with QoS 1, 100 awaiting their PUBACK at once.
- `bridges.postgres.sink`: `EVENTS` events wait in the log; the sink writes them (upserts of
  1,000 rows, the position in the same transaction); start to the last commit. Peer
  `bridges.postgres.copy`: a bare asyncpg `copy_records_to_table` of the same rows.
- `bridges.kafka.in`: `EVENTS` plain records (4 keys, 4 partitions, written by kcat
  beforehand) read by the in bridge in its consumer group, appended durably (wrapped, id =
  topic-partition-offset) and committed; from its start to the last append. Peer
  `bridges.kafka.in.aiokafka`: an aiokafka consumer alone (a group of its own, committing
  after each batch) reading the same records.
- `bridges.kafka.out`: `EVENTS` events wait in the log; the out bridge (unordered, 100 in
  flight) produces each with the idempotent producer (`acks=all`) and acks it on Kafka's ack.
  Peer `bridges.kafka.out.aiokafka`: the same producer settings alone, 100 sends in flight.
- `bridges.amqp.in` / `bridges.amqp.in.aio_pika`: `EVENTS` persistent messages wait in a
  durable RabbitMQ queue; the in bridge (prefetch 1,000) appends each batch and acks it, vs an
  aio-pika consumer alone acking each batch the same way (`multiple`).
- `bridges.amqp.out` / `bridges.amqp.out.aio_pika`: `EVENTS` events published with publisher
  confirms (persistent, mandatory, 100 in flight) by the out bridge, vs aio-pika alone.
- `bridges.kafka.latency.p50` / `.p99`: end-to-end latency Kafka -> bus -> WebSocket: a
  `hybridbus serve` process (sqlite, a Kafka in bridge) and a WebSocket subscriber
  (`hybridbus.client`); aiokafka produces at half the rate `bridges.kafka.in` reached, each
  record stamped with its send time; the subscriber's receive time minus the stamp.

The bridge's figure over its peer's is the ratio `benchmarks.run` prints.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

import hybridbus
from benchmarks.harness import Result, Settings
from hybridbus.bridges.registry import Bridges
from hybridbus.bridges.settings import AnyBridge, BridgeSettings

EVENTS = 20_000
KEYS = 4


def _settings(**fields: Any) -> BridgeSettings:
    settings: BridgeSettings = msgspec.convert(fields, AnyBridge)
    return settings


def _event(n: int) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"e{n}",
        "source": "/bench",
        "type": "bench.reading",
        "data": {"n": n, "value": 21.5, "unit": "C"},
    }


def _publish_lines(port: int, events: int) -> None:
    procs = []
    for key in range(KEYS):
        lines = "\n".join(json.dumps(_event(n)) for n in range(key, events, KEYS)) + "\n"
        argv = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-V", "5"]
        proc = subprocess.Popen(
            [*argv, "-t", f"dev/k{key}", "-l"], stdin=subprocess.PIPE, text=True
        )
        procs.append((proc, lines))
    for proc, lines in procs:
        proc.communicate(lines, timeout=300)


async def _wait(check: Callable[[], bool], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark did not finish")
        await asyncio.sleep(0.005)


async def _mqtt_in(port: int, data: Path, events: int) -> float:
    async with hybridbus.open(f"sqlite://{data}") as bus:
        bridges = Bridges(
            bus,
            [
                _settings(
                    kind="mqtt",
                    name="in",
                    direction="in",
                    url=f"mqtt://127.0.0.1:{port}",
                    subscribe=["dev/#"],
                    topic="acme/in/{topic}",
                    client_id=f"bench-in-{data.name}",
                )
            ],
        )
        await bridges.start()
        try:
            bridge = bridges.all()[0]
            await _wait(lambda: bridge.state == "running", 30)
            began = time.perf_counter()
            await asyncio.to_thread(_publish_lines, port, events)
            await _wait(lambda: bridge.delivered >= events)
            return events / (time.perf_counter() - began)
        finally:
            await bridges.close()


async def _aiomqtt_in(port: int, events: int, name: str) -> float:
    import aiomqtt

    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=name,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
    ) as client:
        await client.subscribe("dev/#", qos=1)
        began = time.perf_counter()
        publishing = asyncio.create_task(asyncio.to_thread(_publish_lines, port, events))
        got = 0
        async for _ in client.messages:
            got += 1
            if got >= events:
                break
        elapsed = time.perf_counter() - began
        await publishing
        return events / elapsed


async def _mqtt_out(port: int, data: Path, events: int) -> float:
    async with hybridbus.open(f"sqlite://{data}") as bus:
        for first in range(0, events, 1000):
            await bus.publish_many(
                (f"acme/out/k{n % KEYS}", _event(n))
                for n in range(first, min(events, first + 1000))
            )
        bridges = Bridges(
            bus,
            [
                _settings(
                    kind="mqtt",
                    name="out",
                    direction="out",
                    url=f"mqtt://127.0.0.1:{port}",
                    pattern="acme/out/#",
                    start="earliest",
                    ordered=False,
                    concurrency=100,
                    client_id=f"bench-out-{data.name}",
                )
            ],
        )
        began = time.perf_counter()
        await bridges.start()
        try:
            bridge = bridges.all()[0]
            await _wait(lambda: bridge.delivered >= events)
            return events / (time.perf_counter() - began)
        finally:
            await bridges.close()


async def _aiomqtt_out(port: int, events: int) -> float:
    import aiomqtt

    payloads = [json.dumps(_event(n)["data"]).encode() for n in range(events)]
    async with aiomqtt.Client(
        "127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, max_inflight_messages=100
    ) as client:
        client.pending_calls_threshold = 1 << 30
        window = asyncio.Semaphore(100)

        async def one(n: int) -> None:
            async with window:
                await client.publish(f"out/k{n % KEYS}", payloads[n], qos=1)

        began = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(events)))
        return events / (time.perf_counter() - began)


async def _sink(url: str, data: Path, events: int) -> float:
    async with hybridbus.open(f"sqlite://{data}") as bus:
        for first in range(0, events, 1000):
            await bus.publish_many(
                (f"acme/k{n % KEYS}", _event(n)) for n in range(first, min(events, first + 1000))
            )
        table = f"sink_{data.name.replace('-', '_')}"
        bridges = Bridges(
            bus,
            [
                _settings(
                    kind="postgres",
                    name=table,
                    url=url,
                    patterns=["acme/#"],
                    table=table,
                )
            ],
        )
        began = time.perf_counter()
        await bridges.start()
        try:
            bridge = bridges.all()[0]
            await _wait(lambda: bridge.delivered >= events)
            return events / (time.perf_counter() - began)
        finally:
            await bridges.close()


async def _copy(url: str, events: int, table: str) -> float:
    import asyncpg  # type: ignore[import-untyped]

    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            f"CREATE TABLE {table} (source text, id text, type text, data jsonb, topic text, "
            "bus_offset bigint, PRIMARY KEY (source, id))"
        )
        rows = [
            (
                "/bench",
                f"e{n}",
                "bench.reading",
                json.dumps(_event(n)["data"]),
                f"acme/k{n % 4}",
                n // KEYS + 1,
            )
            for n in range(events)
        ]
        began = time.perf_counter()
        for first in range(0, events, 1000):
            async with connection.transaction():
                await connection.copy_records_to_table(table, records=rows[first : first + 1000])
        return events / (time.perf_counter() - began)
    finally:
        await connection.close()


# -- Kafka and AMQP ------------------------------------------------------------------------


def _plain_records(servers: str, topic: str, events: int) -> None:
    lines = "\n".join(f"k{n % KEYS}:{json.dumps(_event(n)['data'])}" for n in range(events))
    argv = ["kcat", "-b", servers, "-P", "-t", topic, "-K:", "-X", "acks=all"]
    subprocess.run(argv, input=lines + "\n", text=True, check=True, timeout=300)


async def _kafka_topics(servers: str, *names: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, num_partitions=KEYS, replication_factor=1)
                                   for n in names])  # fmt: skip
    finally:
        await admin.close()


async def _kafka_in(servers: str, topic: str, data: Path, events: int) -> float:
    async with hybridbus.open(f"sqlite://{data}") as bus:
        settings = _settings(kind="kafka", name="in", direction="in", url=f"kafka://{servers}",
                             topics=[topic], topic="acme/in/{topic}",
                             group_id=f"bench-{data.name}")  # fmt: skip
        bridges = Bridges(bus, [settings])
        began = time.perf_counter()
        await bridges.start()
        try:
            bridge = bridges.all()[0]
            await _wait(lambda: bridge.delivered >= events)
            return events / (time.perf_counter() - began)
        finally:
            await bridges.close()


async def _aiokafka_in(servers: str, topic: str, events: int, group: str) -> float:
    from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=servers, group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                max_poll_records=500)  # fmt: skip
    began = time.perf_counter()
    await consumer.start()
    try:
        got = 0
        while got < events:
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            if batch:
                got += sum(len(records) for records in batch.values())
                await consumer.commit({tp: r[-1].offset + 1 for tp, r in batch.items()})
        return events / (time.perf_counter() - began)
    finally:
        await consumer.stop()


async def _fill_log(bus: Any, events: int) -> None:
    for first in range(0, events, 1000):
        await bus.publish_many(
            (f"acme/out/k{n % KEYS}", _event(n)) for n in range(first, min(events, first + 1000))
        )


async def _out(data: Path, events: int, settings: BridgeSettings) -> float:
    async with hybridbus.open(f"sqlite://{data}") as bus:
        await _fill_log(bus, events)
        bridges = Bridges(bus, [settings])
        began = time.perf_counter()
        await bridges.start()
        try:
            bridge = bridges.all()[0]
            await _wait(lambda: bridge.delivered >= events)
            return events / (time.perf_counter() - began)
        finally:
            await bridges.close()


async def _aiokafka_out(servers: str, topic: str, events: int) -> float:
    from aiokafka import AIOKafkaProducer

    payloads = [json.dumps(_event(n)["data"]).encode() for n in range(events)]
    producer = AIOKafkaProducer(bootstrap_servers=servers, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        window = asyncio.Semaphore(100)

        async def one(n: int) -> None:
            async with window:
                await (await producer.send(topic, payloads[n], key=f"k{n % KEYS}".encode()))

        began = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(events)))
        return events / (time.perf_counter() - began)
    finally:
        await producer.stop()


async def _amqp_fill(url: str, queue: str, events: int) -> None:
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True)
        window = asyncio.Semaphore(500)

        async def one(n: int) -> None:
            async with window:
                body = json.dumps(_event(n)["data"]).encode()
                await channel.default_exchange.publish(
                    aio_pika.Message(body, message_id=f"e{n}", delivery_mode=2), queue
                )

        await asyncio.gather(*(one(n) for n in range(events)))


async def _amqp_in(url: str, queue: str, data: Path, events: int) -> float:
    await _amqp_fill(url, queue, events)
    async with hybridbus.open(f"sqlite://{data}") as bus:
        settings = _settings(kind="amqp", name="in", direction="in", url=url, queues=[queue],
                             topic="acme/in/{topic}")  # fmt: skip
        bridges = Bridges(bus, [settings])
        began = time.perf_counter()
        await bridges.start()
        try:
            bridge = bridges.all()[0]
            await _wait(lambda: bridge.delivered >= events)
            return events / (time.perf_counter() - began)
        finally:
            await bridges.close()


async def _aio_pika_in(url: str, queue: str, events: int) -> float:
    import aio_pika

    await _amqp_fill(url, queue, events)
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        began = time.perf_counter()
        await (await channel.declare_queue(queue, durable=True)).consume(inbox.put)
        got = 0
        while got < events:
            batch = [await inbox.get()]
            while len(batch) < 500 and not inbox.empty():
                batch.append(inbox.get_nowait())
            got += len(batch)
            await batch[-1].ack(multiple=True)
        return events / (time.perf_counter() - began)


async def _aio_pika_out(url: str, queue: str, events: int) -> float:
    import aio_pika

    payloads = [json.dumps(_event(n)["data"]).encode() for n in range(events)]
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.declare_queue(queue, durable=True)
        window = asyncio.Semaphore(100)

        async def one(n: int) -> None:
            async with window:
                message = aio_pika.Message(payloads[n], message_id=f"e{n}", delivery_mode=2)
                await channel.default_exchange.publish(message, queue, mandatory=True)

        began = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(events)))
        return events / (time.perf_counter() - began)


def _kafka_latency(servers: str, topic: str, tmp: Path, rate: float, seconds: float) -> list[float]:
    """Latencies (ms) Kafka -> bus -> WebSocket subscriber at `rate` records/s."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "latency.toml"
    config.write_text(
        f'engine = "sqlite://{tmp}/latency-data"\nanonymous_tenant = "public"\n'
        f'log_level = "warning"\nws_check_origin = false\n'
        f'[[roles.anonymous]]\nallow = "*"\ntopics = "#"\n\n'
        f'[[bridges]]\nkind = "kafka"\nname = "lat"\ndirection = "in"\n'
        f'url = "kafka://{servers}"\ntopics = ["{topic}"]\ntopic = "public/lat/{{topic}}"\n'
        f'offset_reset = "latest"\n'
    )
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "hybridbus"), "serve", "--config", str(config),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        return asyncio.run(_measure_latency(servers, topic, port, rate, seconds))
    finally:
        server.terminate()
        server.wait(30)


async def _measure_latency(
    servers: str, topic: str, port: int, rate: float, seconds: float
) -> list[float]:
    from aiokafka import AIOKafkaProducer

    import hybridbus.client

    deadline = time.monotonic() + 30
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    latencies: list[float] = []
    total = max(1, int(rate * seconds))
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=0)
    await producer.start()
    try:
        async with (
            hybridbus.client.connect(f"ws://127.0.0.1:{port}/v1/ws") as client,
            client.subscribe(f"lat/{topic}") as sub,
        ):
            await asyncio.sleep(3.0)  # the bridge has joined its group and reads the end

            async def receive() -> None:
                async for received in sub:
                    latencies.append((time.time() - received.event.data["t"]) * 1000)
                    if len(latencies) >= total:
                        return

            receiving = asyncio.create_task(receive())
            began = time.monotonic()
            for n in range(total):
                await asyncio.sleep(max(0.0, began + n / rate - time.monotonic()))
                body = json.dumps({"n": n, "t": time.time()}).encode()
                await producer.send(topic, body, key=f"k{n % KEYS}".encode())
            await asyncio.wait_for(receiving, 60)
    finally:
        await producer.stop()
    return latencies


def _kafka_amqp(settings: Settings, tmp: Path, events: int, note: Callable[[str, float], None],
                log: Callable[[str], None]) -> None:  # fmt: skip
    from tests.services.brokers import KafkaServer, RabbitMQServer

    kafka, rabbit = KafkaServer(), RabbitMQServer()
    kafka.start()
    rabbit.start()
    try:
        servers = kafka.url
        for index in range(settings.runs):
            t_in, t_peer, t_out, t_lat = (f"{n}-{index}" for n in ("in", "in-peer", "out", "lat"))
            asyncio.run(_kafka_topics(servers, t_in, t_out, t_lat))
            _plain_records(servers, t_in, events)
            rate = asyncio.run(_kafka_in(servers, t_in, tmp / f"kin{index}", events))
            note("kafka.in", rate)
            note("kafka.in.aiokafka", asyncio.run(_aiokafka_in(servers, t_in, events, t_peer)))
            out = _settings(kind="kafka", name="out", direction="out", url=f"kafka://{servers}",
                            pattern="acme/out/#", start="earliest", ordered=False,
                            kafka_topic=t_out)  # fmt: skip
            note("kafka.out", asyncio.run(_out(tmp / f"kout{index}", events, out)))
            note("kafka.out.aiokafka", asyncio.run(_aiokafka_out(servers, t_out, events)))
            latencies = sorted(_kafka_latency(servers, t_lat, tmp / f"klat{index}", rate / 2,
                                              2.0 if settings.smoke else 10.0))  # fmt: skip
            p50 = latencies[len(latencies) // 2]
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
            log(f"  bridges kafka latency at {rate / 2:,.0f}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
            note("kafka.latency.p50", p50)
            note("kafka.latency.p99", p99)
            url = rabbit.url
            note("amqp.in", asyncio.run(_amqp_in(url, f"in{index}", tmp / f"ain{index}", events)))
            note("amqp.in.aio_pika", asyncio.run(_aio_pika_in(url, f"peer{index}", events)))
            asyncio.run(_amqp_fill(url, f"out{index}", 0))  # the queue the events go to
            out = _settings(kind="amqp", name="out", direction="out", url=url,
                            pattern="acme/out/#", start="earliest", ordered=False,
                            exchange="", routing_key=f"out{index}")  # fmt: skip
            note("amqp.out", asyncio.run(_out(tmp / f"aout{index}", events, out)))
            note("amqp.out.aio_pika", asyncio.run(_aio_pika_out(url, f"pout{index}", events)))
    finally:
        kafka.close()
        rabbit.close()


def run(settings: Settings, log: Callable[[str], None]) -> list[Result]:
    """The MQTT bridge both ways and the PostgreSQL sink, each beside its client alone."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        from tests.services.brokers import MosquittoServer
        from tests.services.stores import PostgresServer
    except ImportError:
        log("  (tests/services missing: the bridges group is skipped)")
        return []
    events = 2_000 if settings.smoke else EVENTS
    figures: dict[str, list[float]] = {}

    def note(key: str, value: float) -> None:
        figures.setdefault(key, []).append(value)
        log(f"  bridges {key}: {value:,.0f} {'ms' if 'latency' in key else 'events/s'}")

    with tempfile.TemporaryDirectory(dir=settings.tmpdir) as tmp:
        broker = MosquittoServer("max_queued_messages 1000000", "max_inflight_messages 1000")
        db = PostgresServer()
        broker.start()
        db.start()
        try:
            for index in range(settings.runs):
                base = Path(tmp) / f"run{index}"
                note(
                    "mqtt.in",
                    asyncio.run(_mqtt_in(broker.port, base.with_name(f"in{index}"), events)),
                )
                note(
                    "mqtt.in.aiomqtt",
                    asyncio.run(_aiomqtt_in(broker.port, events, f"peer-in-{index}")),
                )
                note(
                    "mqtt.out",
                    asyncio.run(_mqtt_out(broker.port, base.with_name(f"out{index}"), events)),
                )
                note("mqtt.out.aiomqtt", asyncio.run(_aiomqtt_out(broker.port, events)))
                note(
                    "postgres.sink",
                    asyncio.run(_sink(db.url, base.with_name(f"sink{index}"), events)),
                )
                note("postgres.copy", asyncio.run(_copy(db.url, events, f"copy{index}")))
        finally:
            broker.close()
            db.close()
        _kafka_amqp(settings, Path(tmp), events, note, log)

    def result(key: str, label: str, peer: str | None = None) -> Result:
        return Result(
            id=f"bridges.{key}",
            group="bridges",
            label=label,
            unit="events/s",
            runs=figures[key],
            peer=f"bridges.{peer}" if peer else None,
            is_peer=peer is None and key.endswith(("aiomqtt", "copy", "aiokafka", "aio_pika")),
        )

    def latency(key: str, label: str) -> Result:
        return Result(
            id=f"bridges.{key}", group="bridges", label=label, unit="ms", runs=figures[key]
        )  # fmt: skip

    return [
        result("mqtt.in", "MQTT -> bus: QoS 1, durable append then PUBACK", "mqtt.in.aiomqtt"),
        result("mqtt.in.aiomqtt", "peer: an aiomqtt QoS 1 subscriber alone"),
        result(
            "mqtt.out",
            "bus -> MQTT: group, QoS 1, ack on PUBACK, 100 in flight",
            "mqtt.out.aiomqtt",
        ),
        result("mqtt.out.aiomqtt", "peer: aiomqtt QoS 1 publishes alone, 100 in flight"),
        result(
            "postgres.sink",
            "bus -> PostgreSQL: upserts + position, one txn per batch",
            "postgres.copy",
        ),
        result("postgres.copy", "peer: bare asyncpg COPY, 1,000 rows per transaction"),
        result("kafka.in", "Kafka -> bus: group, durable append then commit", "kafka.in.aiokafka"),
        result("kafka.in.aiokafka", "peer: an aiokafka consumer alone, commit per batch"),
        result(
            "kafka.out",
            "bus -> Kafka: group, idempotent acks=all, 100 in flight",
            "kafka.out.aiokafka",
        ),
        result("kafka.out.aiokafka", "peer: aiokafka idempotent producer alone, 100 in flight"),
        latency("kafka.latency.p50", "Kafka -> bus -> WebSocket at half load: p50"),
        latency("kafka.latency.p99", "Kafka -> bus -> WebSocket at half load: p99"),
        result(
            "amqp.in", "AMQP -> bus: durable append then ack, prefetch 1,000", "amqp.in.aio_pika"
        ),
        result("amqp.in.aio_pika", "peer: an aio-pika consumer alone, ack per batch"),
        result("amqp.out", "bus -> AMQP: group, confirms, 100 in flight", "amqp.out.aio_pika"),
        result("amqp.out.aio_pika", "peer: aio-pika publishes with confirms alone, 100 in flight"),
    ]
