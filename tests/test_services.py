"""Smoke tests of the real servers in tests/services, each through a real client.

One test per service starts it with its fixture and talks to it the way a bridge will; two
more check what fault tests rely on: kill -9 and restart keep the port and the acked data,
SIGSTOP leaves the sockets open and unanswered.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable

import aio_pika
import aiomqtt
import asyncpg
import httpx
import nats
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from tests.services import (
    REQUIRE_ENV,
    EtcdServer,
    KafkaServer,
    MosquittoServer,
    NatsServer,
    PostgresServer,
    RabbitMQServer,
    RedisCluster,
    RedisServer,
    ValkeyServer,
    require,
)

pytestmark = pytest.mark.slow


async def test_redis(redis_server: Callable[..., RedisServer]) -> None:
    server = redis_server()
    client = aioredis.Redis.from_url(server.url)
    try:
        assert await client.set("k", "v")
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()


async def _get(url: str, key: str) -> bytes | None:
    """GET on a fresh connection (a pooled one dies with the server it talked to)."""
    client = aioredis.Redis.from_url(url)
    try:
        return await client.get(key)  # type: ignore[no-any-return]
    finally:
        await client.aclose()


async def test_redis_kill_and_restart_keep_port_and_data(
    redis_server: Callable[..., RedisServer],
) -> None:
    server = redis_server("--appendonly", "yes", "--appendfsync", "always")
    port, pid = server.port, server.pid
    client = aioredis.Redis.from_url(server.url)
    try:
        await client.set("k", "acked")
    finally:
        await client.aclose()
    server.kill()
    assert not server.running
    server.start()
    assert (server.port, server.running) == (port, True)
    assert server.pid != pid
    assert await _get(server.url, "k") == b"acked"  # AOF always: the ack survived kill -9
    server.restart()  # a clean stop (SIGTERM), then the same port and directory again
    assert await _get(server.url, "k") == b"acked"


async def test_redis_pause_and_resume(redis_server: Callable[..., RedisServer]) -> None:
    server = redis_server()
    client = aioredis.Redis.from_url(server.url, socket_timeout=0.5)
    try:
        await client.ping()
        server.pause()
        try:
            with pytest.raises(aioredis.TimeoutError):  # sockets open, nothing answered
                await client.ping()
        finally:
            server.resume()
        assert await client.ping()
    finally:
        await client.aclose()


async def test_valkey(valkey_server: Callable[..., ValkeyServer]) -> None:
    server = valkey_server()
    client = aioredis.Redis.from_url(server.url)
    try:
        info = await client.info("server")
        assert "valkey_version" in info or info.get("server_name") == "valkey"
        await client.xadd("s", {"n": "1"})
        assert await client.xlen("s") == 1
    finally:
        await client.aclose()


async def test_redis_cluster(redis_cluster: Callable[..., RedisCluster]) -> None:
    cluster = redis_cluster()
    client = AsyncRedisCluster.from_url(cluster.url)
    try:
        await client.initialize()
        nodes = client.get_nodes()
        assert sorted(node.port for node in nodes) == sorted(cluster.ports)
        keys = [f"k{i}" for i in range(30)]  # spread over all three masters' slots
        for key in keys:
            await client.set(key, key)
        assert [await client.get(key) for key in keys] == [k.encode() for k in keys]
        owners = {client.get_node_from_key(key).port for key in keys}
        assert owners == set(cluster.ports)
    finally:
        await client.aclose()


async def test_rabbitmq(rabbitmq: RabbitMQServer) -> None:
    connection = await aio_pika.connect(rabbitmq.url, timeout=10)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"smoke-{uuid.uuid4().hex}", auto_delete=True)
        await channel.default_exchange.publish(aio_pika.Message(b"hello"), queue.name)
        message = await queue.get(timeout=5)
        assert message is not None
        assert message.body == b"hello"
        await message.ack()
    finally:
        await connection.close()


async def test_mosquitto(mosquitto_server: Callable[..., MosquittoServer]) -> None:
    broker = mosquitto_server()
    options = {"hostname": "127.0.0.1", "port": broker.port, "protocol": aiomqtt.ProtocolVersion.V5}
    async with aiomqtt.Client(**options) as subscriber, aiomqtt.Client(**options) as publisher:
        await subscriber.subscribe("smoke/#", qos=1)
        await publisher.publish("smoke/1", b"hello", qos=1)
        async with asyncio.timeout(10):
            message = await anext(subscriber.messages)
        assert (str(message.topic), message.payload) == ("smoke/1", b"hello")


async def test_postgres(postgres_server: Callable[..., PostgresServer]) -> None:
    db = postgres_server()
    connection = await asyncpg.connect(db.url, timeout=10)
    try:
        await connection.execute("CREATE TABLE t (id int PRIMARY KEY, body jsonb)")
        await connection.execute("INSERT INTO t VALUES (1, $1)", '{"x": 1}')
        assert await connection.fetchval("SELECT body->>'x' FROM t WHERE id = 1") == "1"
    finally:
        await connection.close()


async def test_etcd(etcd_server: Callable[..., EtcdServer]) -> None:
    etcd = etcd_server()

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    async with httpx.AsyncClient(base_url=etcd.url, timeout=10) as http:
        put = await http.post("/v3/kv/put", json={"key": b64("nodes/a"), "value": b64("up")})
        assert put.status_code == 200, put.text
        got = (await http.post("/v3/kv/range", json={"key": b64("nodes/a")})).json()
        assert base64.b64decode(got["kvs"][0]["value"]) == b"up"


async def test_nats(nats_server: Callable[..., NatsServer]) -> None:
    server = nats_server()
    client = await nats.connect(server.url, connect_timeout=10)
    try:
        subscription = await client.subscribe("smoke.>")
        await client.publish("smoke.1", b"hello")
        message = await subscription.next_msg(timeout=5)
        assert (message.subject, message.data) == ("smoke.1", b"hello")
    finally:
        await client.close()


async def test_kafka(kafka: KafkaServer) -> None:
    topic = f"smoke-{uuid.uuid4().hex}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.url)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka.url, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b"hello", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka.url, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        async with asyncio.timeout(20):
            record = await consumer.getone()
    finally:
        await consumer.stop()
    assert (record.offset, record.key, record.value) == (sent.offset, b"k", b"hello")


def test_missing_binary_skips_or_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-server not installed"):
        require("no-such-server")
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="HYBRIDBUS_REQUIRE_SERVICES=1"):
        require("no-such-server")
    require("sh")  # present: nothing happens
