"""The Redis engine against real redis-server processes: data loss, crashes, pauses, two nodes.

The conformance suite (test_conformance*.py) checks the contract on Redis and on a
Redis Cluster; these tests check what only a shared, remote engine can get wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from tests.services import RedisServer, free_port
from tests.support import FakeClock, append, make_event, read_all

from hybridbus.core.codecs import encode_msgpack
from hybridbus.core.log import Ack, Delivery, is_exact
from hybridbus.engine.base import EngineConfig
from hybridbus.engine.redis import RedisEngine
from hybridbus.errors import EngineUnavailable

Opener = Callable[..., Any]


@pytest.fixture
async def open_redis(clock: FakeClock) -> AsyncIterator[Opener]:
    """`engine, seen = await open_redis(url, config)`: a started engine and its deliveries."""
    opened: list[RedisEngine] = []

    async def make(
        url: str, config: EngineConfig | None = None
    ) -> tuple[RedisEngine, list[Delivery]]:
        engine = RedisEngine(url, config or EngineConfig(), clock)
        seen: list[Delivery] = []

        def listener(deliveries: Sequence[Delivery]) -> None:
            seen.extend(deliveries)

        await engine.start(listener)
        opened.append(engine)
        return engine, seen

    yield make
    for engine in opened:
        with contextlib.suppress(Exception):
            await engine.close()


async def until_appended(engine: RedisEngine, topic: str, seconds: float = 10) -> Ack:
    """Append, retrying `EngineUnavailable` (retriable by contract) for up to `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    event = make_event()
    while True:
        try:
            return await engine.append(topic, event, encode_msgpack(event))
        except EngineUnavailable:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_flushall_begins_a_new_epoch(
    redis_server: Callable[..., RedisServer], open_redis: Opener
) -> None:
    server = redis_server()
    engine, seen = await open_redis(server.url)
    before = [await append(engine, "acme/a") for _ in range(3)]
    old = engine.epoch
    async with aioredis.Redis.from_url(server.url) as admin:
        await admin.flushall()
    after = await until_appended(engine, "acme/a")
    assert after.epoch == engine.epoch != old
    assert not is_exact(before[-1].token, engine.epoch, engine.shards)  # recovered=false
    assert (after.offset, after.duplicate) == (1, False)
    assert [d.event.id for d in await read_all(engine, "acme/#")] == [seen[-1].event.id]
    assert seen[-1].position == after.position  # the listener saw it, in the new epoch


async def test_a_restart_without_persistence_begins_a_new_epoch_on_every_node(
    redis_server: Callable[..., RedisServer], open_redis: Opener
) -> None:
    server = redis_server()
    first, first_seen = await open_redis(server.url)
    second, second_seen = await open_redis(server.url)
    assert first.epoch == second.epoch
    acked = await append(first, "acme/a")
    await asyncio.to_thread(server.restart)
    later = await until_appended(first, "acme/a")
    assert later.epoch != acked.epoch
    # The other node adopts the new epoch and follows the new log.
    ack = await until_appended(second, "acme/b")
    assert second.epoch == first.epoch == ack.epoch == later.epoch
    for _ in range(200):
        if {d.topic for d in first_seen[1:]} == {"acme/a", "acme/b"}:
            break
        await asyncio.sleep(0.02)
    assert [d.topic for d in first_seen] == ["acme/a", "acme/a", "acme/b"]
    assert [d.position for d in second_seen[-2:]] == [later.position, ack.position]
    # A node started afterwards agrees too.
    third, _ = await open_redis(server.url)
    assert third.epoch == first.epoch


async def test_kill_9_with_appendfsync_always_loses_no_acked_append(
    redis_server: Callable[..., RedisServer], open_redis: Opener
) -> None:
    server = redis_server("--appendonly", "yes", "--appendfsync", "always")
    engine, _ = await open_redis(server.url)
    epoch = engine.epoch
    acked: list[Ack] = []
    failed = 0

    async def publisher(p: int) -> None:
        nonlocal failed
        for n in range(10_000):
            event = make_event(source=f"/p{p}", id=str(n))
            try:
                acked.append(await engine.append(f"acme/t{p % 3}", event, encode_msgpack(event)))
            except EngineUnavailable:
                failed += 1
                return

    publishers = [asyncio.create_task(publisher(p)) for p in range(8)]
    while len(acked) < 300:
        await asyncio.sleep(0.01)
    server.kill()
    await asyncio.wait_for(asyncio.gather(*publishers), 30)
    assert failed == 8  # every publisher saw the crash as EngineUnavailable
    await asyncio.to_thread(server.start)
    reopened, _ = await open_redis(server.url)
    assert reopened.epoch == epoch  # nothing lost: the same epoch goes on
    stored = {(d.topic, d.offset) for d in await read_all(reopened, "acme/#", limit=1000)}
    assert {(a.topic, a.offset) for a in acked} <= stored
    for topic in ("acme/t0", "acme/t1", "acme/t2"):
        offsets = [d.offset for d in await read_all(reopened, topic, limit=1000)]
        assert offsets == list(range(1, len(offsets) + 1))


async def test_a_paused_redis_refuses_or_delays_appends_and_loses_no_acked_one(
    redis_server: Callable[..., RedisServer], open_redis: Opener
) -> None:
    server = redis_server()
    engine, seen = await open_redis(server.url + "?timeout=1")
    acked: list[Ack] = []
    keys: list[tuple[str, str]] = []  # (source, id) of each acked event
    refused = 0
    stop = asyncio.Event()

    async def publisher(p: int) -> None:
        nonlocal refused
        n = 0
        while not stop.is_set():
            n += 1
            event = make_event(source=f"/p{p}", id=str(n))
            try:
                acked.append(await engine.append("acme/t", event, encode_msgpack(event)))
            except EngineUnavailable:
                refused += 1
                await asyncio.sleep(0.05)
            else:
                keys.append((event.source, event.id))

    publishers = [asyncio.create_task(publisher(p)) for p in range(4)]
    while len(acked) < 50:
        await asyncio.sleep(0.01)
    server.pause()
    paused_at = len(acked)
    await asyncio.sleep(3)
    during = len(acked) - paused_at
    server.resume()
    resumed = len(acked)
    while len(acked) < resumed + 50:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*publishers), 30)
    assert refused > 0  # refused with the retriable error while paused ...
    assert during <= 4  # ... at most the appends already inside Redis were acked
    stored = await read_all(engine, "acme/t", limit=1000)
    # Every acked event is in the log, where its ack says (a refused one may be too).
    at = {(d.event.source, d.event.id): (d.offset, d.position) for d in stored}
    assert all(at[k] == (a.offset, a.position) for k, a in zip(keys, acked, strict=True))
    assert [d.offset for d in stored] == list(range(1, len(stored) + 1))
    assert {a.position for a in acked} <= {d.position for d in seen}


async def test_two_nodes_see_each_others_appends_in_one_order(
    redis_server: Callable[..., RedisServer], open_redis: Opener
) -> None:
    server = redis_server()
    config = EngineConfig(shards=2)
    one, one_seen = await open_redis(server.url, config)
    two, two_seen = await open_redis(server.url, config)

    async def publish(engine: RedisEngine, node: str) -> list[Ack]:
        acks = []
        for n in range(100):
            tenant = ("acme", "globex", "initech")[n % 3]
            event = make_event(source=f"/{node}", id=str(n))
            acks.append(await engine.append(f"{tenant}/doc", event, encode_msgpack(event)))
        return acks

    both = await asyncio.gather(publish(one, "a"), publish(two, "b"))
    acked = [a for acks in both for a in acks]
    for _ in range(200):
        if len(one_seen) == len(two_seen) == 200:
            break
        await asyncio.sleep(0.02)
    assert len(one_seen) == len(two_seen) == 200
    for seen in (one_seen, two_seen):
        for shard in (0, 1):
            mine = [(d.topic, d.offset, d.position) for d in seen if d.shard == shard]
            assert [p for _, _, p in mine] == sorted(p for _, _, p in mine)
        for topic in ("acme/doc", "globex/doc", "initech/doc"):
            offsets = [d.offset for d in seen if d.topic == topic]
            assert offsets == list(range(1, sum(a.topic == topic for a in acked) + 1))
    assert [(d.shard, d.position) for d in one_seen if d.shard == 0] == [
        (d.shard, d.position) for d in two_seen if d.shard == 0
    ]
    assert {(a.shard, a.position) for a in acked} == {(d.shard, d.position) for d in one_seen}


async def test_a_refused_connection_is_engine_unavailable(clock: FakeClock) -> None:
    engine = RedisEngine("redis://127.0.0.1:1/0?timeout=1", EngineConfig(), clock)
    with pytest.raises(EngineUnavailable):
        await engine.start(lambda deliveries: None)


def _certificates(directory: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl); the CA's path."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    subj = ["-nodes", "-newkey", "rsa:2048", "-subj"]
    run("req", "-x509", "-days", "1", *subj, "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.crt")
    run("req", *subj, "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (directory / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        *("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-days", "1", "-extfile", "ext", "-out", "server.crt"),
    )
    return directory / "ca.crt"


async def test_rediss_checks_the_servers_certificate(
    redis_server: Callable[..., RedisServer], open_redis: Opener, tmp_path: Path
) -> None:
    ca = _certificates(tmp_path)
    port = free_port()
    redis_server(
        *("--tls-port", str(port), "--tls-auth-clients", "no", "--tls-ca-cert-file", str(ca)),
        *("--tls-cert-file", str(tmp_path / "server.crt")),
        *("--tls-key-file", str(tmp_path / "server.key")),
    )
    engine, seen = await open_redis(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}")
    ack = await append(engine, "acme/a")
    assert seen[0].position == ack.position
    # Without the CA the certificate is not trusted: refused, retriable, nothing opened.
    with pytest.raises(EngineUnavailable):
        await open_redis(f"rediss://127.0.0.1:{port}/0?timeout=2")


async def test_two_buses_on_one_redis_share_live_events_and_resume_tokens(
    redis_server: Callable[..., RedisServer],
) -> None:
    """Two nodes' buses: a subscriber of one gets the other's publishes, in order, and a
    token from one node resumes exactly on the other (as after a reconnect elsewhere)."""
    import hybridbus

    url = f"{redis_server().url}?shards=2"
    async with hybridbus.open(url) as one, hybridbus.open(url) as two:
        async with two.subscribe("acme/#") as sub:
            acks = [
                await one.publish(f"acme/doc/{n % 2}", {"id": f"e{n}", "source": "/a", "type": "t"})
                for n in range(6)
            ]
            got = []
            async with asyncio.timeout(10):
                async for delivery in sub:
                    got.append(delivery)
                    if len(got) == 6:
                        break
        assert [(d.topic, d.offset) for d in got] == [(a.topic, a.offset) for a in acks]
        middle = acks[2].token
        later = [
            await two.publish("acme/doc/0", {"id": f"f{n}", "source": "/b", "type": "t"})
            for n in range(2)
        ]
        async with one.subscribe("acme/#", since=middle) as resumed:
            again = []
            async with asyncio.timeout(10):
                async for delivery in resumed:
                    again.append(delivery)
                    if len(again) == 5:
                        break
        assert resumed.recovered
        assert [(d.topic, d.offset) for d in again] == [
            (a.topic, a.offset) for a in [*acks[3:], *later]
        ]


async def test_a_full_redis_refuses_appends_whole_and_retriably(
    redis_server: Callable[..., RedisServer], open_redis: Opener
) -> None:
    server = redis_server()
    engine, _ = await open_redis(server.url)
    await append(engine, "acme/a")
    async with aioredis.Redis.from_url(server.url) as admin:
        await admin.config_set("maxmemory", "1")  # past maxmemory: writes are refused
        with pytest.raises(EngineUnavailable, match="maxmemory"):
            await engine.append_many(
                [("acme/a", e, encode_msgpack(e)) for e in (make_event(), make_event())]
            )
        await admin.config_set("maxmemory", "0")
    assert (await append(engine, "acme/a")).offset == 2  # nothing of the refused batch stayed
    assert [d.offset for d in await read_all(engine, "acme/a")] == [1, 2]
