"""What only the Redis engine can get wrong about retention: state other versions and settings left.

The behaviour every engine shares is in test_conformance_retention.py (run on Redis and on a
Redis Cluster too). Here, against the session's redis-server: a topic whose bytes an older
version never counted, topics appended to before the rules (or before a rule changed), and
every retention key under the shard's hash tag.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from tests.services import RedisServer
from tests.support import FakeClock, append, make_event, read_all

from hybridbus.core.codecs import encode_msgpack
from hybridbus.core.event import Event
from hybridbus.engine.base import EngineConfig, RetentionRule
from hybridbus.engine.redis import RedisEngine

_prefixes = itertools.count()
_ids = itertools.count()

Open = Callable[..., Any]


def sized() -> Event:
    return make_event(id=f"r{next(_ids):09d}")


UNIT = len(encode_msgpack(sized()))


@pytest.fixture
def prefix() -> str:
    return f"retention{next(_prefixes)}"


@pytest.fixture
async def open_engine(
    shared_redis: RedisServer, clock: FakeClock, prefix: str
) -> AsyncIterator[Open]:
    """`await open_engine(config)`: a started engine on this test's key prefix."""
    opened: list[RedisEngine] = []

    async def make(config: EngineConfig) -> RedisEngine:
        engine = RedisEngine(f"{shared_redis.url}?prefix={prefix}", config, clock)
        await engine.start(lambda deliveries: None)
        opened.append(engine)
        return engine

    yield make
    for engine in opened:
        with contextlib.suppress(Exception):
            await engine.close()


@pytest.fixture
async def admin(shared_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    async with aioredis.Redis.from_url(shared_redis.url) as client:
        yield client


async def offsets(engine: RedisEngine, topic: str) -> list[int]:
    return [d.offset for d in await read_all(engine, topic)]


async def test_a_topic_an_older_version_did_not_count_is_counted_from_its_events(
    open_engine: Open, admin: aioredis.Redis, prefix: str
) -> None:
    engine = await open_engine(EngineConfig())
    for _ in range(5):
        await append(engine, "acme/logs/a", sized())
    sizes = f"{{hb:{prefix}:0}}:bytes"
    assert int(await admin.hget(sizes, "acme/logs/a")) == 5 * UNIT
    await engine.close()
    await admin.hdel(sizes, "acme/logs/a")  # what an older version left: no count

    engine = await open_engine(EngineConfig(max_bytes=3 * UNIT))
    await append(engine, "acme/logs/a", sized())
    assert await offsets(engine, "acme/logs/a") == [4, 5, 6]
    assert int(await admin.hget(sizes, "acme/logs/a")) == 3 * UNIT


async def test_rules_age_the_topics_appended_before_them(
    open_engine: Open, admin: aioredis.Redis, clock: FakeClock, prefix: str
) -> None:
    engine = await open_engine(EngineConfig(sweep_interval=3600))
    for topic in ("acme/logs/a", "acme/logs/a", "acme/docs/a", "acme/other"):
        await append(engine, topic)
    await engine.close()
    clock.advance(100)

    rules = (RetentionRule(pattern="+/logs/#", max_age=10),)
    engine = await open_engine(EngineConfig(retention=rules, sweep_interval=3600))
    assert await engine.sweep() == 2
    assert await offsets(engine, "acme/logs/a") == []
    assert await offsets(engine, "acme/docs/a") == [1]
    assert await offsets(engine, "acme/other") == [1]
    await append(engine, "acme/logs/a")
    await append(engine, "acme/other")
    await engine.close()

    # A rule changed: the old age no longer applies, the new one does, from the start.
    clock.advance(50)
    rules = (RetentionRule(pattern="+/logs/#"), RetentionRule(pattern="acme/#", max_age=40))
    engine = await open_engine(EngineConfig(retention=rules, sweep_interval=3600))
    assert await engine.sweep() == 3  # the docs and both of acme/other, not the log line
    assert await offsets(engine, "acme/logs/a") == [3]
    assert await offsets(engine, "acme/docs/a") == []
    await engine.close()

    # Without rules the per-topic ages are dropped, and the engine-wide age (none) holds.
    clock.advance(1000)
    engine = await open_engine(EngineConfig(sweep_interval=3600))
    assert await engine.sweep() == 0
    tag = f"{{hb:{prefix}:0}}"
    assert await admin.exists(f"{tag}:age", f"{tag}:due") == 0
    assert await offsets(engine, "acme/logs/a") == [3]


async def test_every_retention_key_is_under_the_shards_hash_tag(
    open_engine: Open, admin: aioredis.Redis, clock: FakeClock, prefix: str
) -> None:
    rules = (RetentionRule(pattern="+/logs/#", max_age=10, max_bytes=2 * UNIT),)
    config = EngineConfig(retention=rules, max_per_topic=2, shards=3, sweep_interval=3600)
    engine = await open_engine(config)
    for n in range(30):
        event = sized()
        await engine.append(f"t{n % 7}/logs/a", event, encode_msgpack(event))
        await append(engine, f"t{n % 5}/other")
    keys = [key.decode() async for key in admin.scan_iter(match=f"*hb:{prefix}:*")]
    tags = {key.partition("}")[0] + "}" for key in keys}
    assert tags <= {f"{{hb:{prefix}:{shard}}}" for shard in range(3)}
    assert {key.rpartition(":")[2] for key in keys} >= {"bytes", "age", "due"}
    clock.advance(11)
    assert await engine.sweep() == 7 * 2  # two log lines are kept per topic (size), then aged
    keys = [key.decode() async for key in admin.scan_iter(match=f"*hb:{prefix}:*")]
    assert not [key for key in keys if key.endswith((":age", ":due"))]  # no aged topic left
