"""The Redis engine with several shards, on one Redis and on a 3-master Redis Cluster; its URLs.

The conformance suite runs with one shard (its positions are 1-tuples); here the log
has three, whose tenants hash to different streams (and Cluster slots).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence

import pytest
from tests.support import FakeClock, append, make_event

from hybridbus.app import parse_url
from hybridbus.core.codecs import encode_msgpack
from hybridbus.core.log import Delivery
from hybridbus.engine._redis_io import shard_of
from hybridbus.engine.base import EngineConfig
from hybridbus.engine.redis import RedisEngine
from hybridbus.errors import EngineError, InvalidInput, InvalidPosition

TENANTS = [f"t{n}" for n in range(8)]
_prefixes = itertools.count()


@pytest.fixture(params=["redis", "cluster"])
def server_url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("shared_redis").url)
    return str(request.getfixturevalue("shared_redis_cluster").url).replace(
        "redis://", "redis+cluster://"
    )


class Sharded:
    def __init__(self, engine: RedisEngine, seen: list[Delivery], url: str) -> None:
        self.engine = engine
        self.seen = seen
        self.url = url


@pytest.fixture
async def sharded(server_url: str, clock: FakeClock) -> AsyncIterator[Sharded]:
    url = f"{server_url}?prefix=shards{next(_prefixes)}"
    engine = RedisEngine(url, EngineConfig(shards=3), clock)
    seen: list[Delivery] = []

    def listener(deliveries: Sequence[Delivery]) -> None:
        seen.extend(deliveries)

    await engine.start(listener)
    yield Sharded(engine, seen, url)
    with contextlib.suppress(Exception):
        await engine.close()


def test_tenants_spread_over_the_shards() -> None:
    assert {shard_of(f"{t}/a", 3) for t in TENANTS} == {0, 1, 2}
    assert shard_of("t1/a/b", 3) == shard_of("t1/c", 3)  # one tenant, one shard
    assert shard_of("anything", 1) == 0


async def test_positions_offsets_heads_and_tokens_per_shard(sharded: Sharded) -> None:
    engine = sharded.engine
    assert engine.shards == 3
    acks = [await append(engine, f"{t}/a") for t in TENANTS for _ in range(2)]
    for shard in range(3):
        mine = [a.position for a in acks if a.shard == shard]
        assert mine == list(range(1, len(mine) + 1))  # dense per shard
    assert all(a.shard == shard_of(a.topic, 3) and a.offset in (1, 2) for a in acks)
    head = await engine.head()
    assert head == tuple(max(a.position for a in acks if a.shard == s) for s in range(3))
    # Every ack carries every shard's head as this node saw it.
    assert all(a.heads is not None and len(a.heads) == 3 for a in acks)
    assert acks[-1].token.positions == head
    # Resuming from an ack's token: the events appended after it, none before.
    first = await append(engine, "t0/x")
    later = [await append(engine, "t0/x"), await append(engine, "t1/y")]
    page = await engine.read("#", first.token.positions, 100)
    assert {(d.topic, d.offset) for d in page.deliveries} == {(a.topic, a.offset) for a in later}
    assert len(page.deliveries) == 2
    assert sorted(d.position for d in sharded.seen) == sorted(
        a.position for a in [*acks, first, *later]
    )


async def test_pattern_reads_page_across_shards(sharded: Sharded) -> None:
    engine = sharded.engine
    acks = [await append(engine, f"{t}/{k}") for k in ("a", "b") for t in TENANTS]
    found: list[Delivery] = []
    after: tuple[int, ...] | None = None
    while True:
        page = await engine.read("+/a", after, 3)
        assert len(page.deliveries) <= 3
        found += page.deliveries
        after = page.positions
        if not page.more:
            break
    assert sorted((d.topic, d.offset) for d in found) == sorted(
        (a.topic, a.offset) for a in acks if a.topic.endswith("/a")
    )
    for shard in range(3):
        positions = [d.position for d in found if d.shard == shard]
        assert positions == sorted(positions)
    assert after == await engine.head()
    # A plain topic reads its own shard; the others move to their heads.
    page = await engine.read("t3/b", None, 10)
    assert [d.topic for d in page.deliveries] == ["t3/b"]
    assert page.positions == await engine.head()
    with pytest.raises(InvalidPosition):
        await engine.read("#", (0,), 10)


async def test_topics_merge_every_shard_by_name(sharded: Sharded) -> None:
    engine = sharded.engine
    for t in reversed(TENANTS):
        await append(engine, f"{t}/a")
        await append(engine, f"{t}/a")
    listed = await engine.topics("", "", 100)
    assert [(i.topic, i.offset) for i in listed] == [(f"{t}/a", 2) for t in TENANTS]
    assert [i.topic for i in await engine.topics("t", "t2/a", 3)] == ["t3/a", "t4/a", "t5/a"]


async def test_append_many_across_shards_acks_in_item_order(sharded: Sharded) -> None:
    engine = sharded.engine
    events = [make_event() for _ in TENANTS]
    items = [(f"{t}/m", e, encode_msgpack(e)) for t, e in zip(TENANTS, events, strict=True)]
    acks = await engine.append_many(items)
    assert [a.topic for a in acks] == [f"{t}/m" for t in TENANTS]
    assert all(a.shard == shard_of(a.topic, 3) and a.offset == 1 for a in acks)
    seen = {(d.topic, d.event.id) for d in sharded.seen}
    assert {(t, e.id) for t, e, _ in items} <= seen
    again = await engine.append_many(items)
    assert all(a.duplicate for a in again)


async def test_reset_empties_every_shard_and_the_shard_count_is_fixed(
    sharded: Sharded, clock: FakeClock
) -> None:
    engine = sharded.engine
    for t in TENANTS:
        await append(engine, f"{t}/a")
    epoch = engine.epoch
    assert await engine.reset() != epoch
    assert (await engine.read("#", None, 100)).deliveries == []
    assert await engine.topics("", "", 10) == []
    ack = await append(engine, "t5/a")
    assert (ack.offset, ack.epoch) == (1, engine.epoch)
    other = RedisEngine(sharded.url, EngineConfig(shards=2), clock)
    with pytest.raises(EngineError, match="3 shards"):
        await other.start(lambda deliveries: None)


def test_redis_urls() -> None:
    scheme, path, engine, _ = parse_url("redis://127.0.0.1:6390/2?shards=4&prefix=prod&timeout=2")
    assert (scheme, engine.shards) == ("redis", 4)
    assert path == "127.0.0.1:6390/2?prefix=prod&timeout=2"
    assert parse_url("rediss://user:pw@cache:6380/0")[0] == "rediss"
    assert parse_url("redis+cluster://127.0.0.1:7000?dedupe_window=60")[2].dedupe_window == 60
    with pytest.raises(InvalidInput, match="unknown setting"):
        parse_url("redis://127.0.0.1/0?nope=1")
    with pytest.raises(InvalidInput, match="prefix"):
        parse_url("redis://127.0.0.1/0?prefix=a{b}")
    with pytest.raises(InvalidInput, match="timeout"):
        parse_url("redis://127.0.0.1/0?timeout=0")
    with pytest.raises(InvalidInput, match="unknown setting"):
        parse_url("sqlite://data?prefix=x")  # a Redis setting is no sqlite setting


async def test_a_shard_that_lost_its_data_begins_a_new_epoch(
    sharded: Sharded, server_url: str
) -> None:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster

    engine = sharded.engine
    acks = {t: await append(engine, f"{t}/a") for t in TENANTS}
    epoch = engine.epoch
    lost = next(t for t in TENANTS if shard_of(f"{t}/a", 3) == 1)
    kept = next(t for t in TENANTS if shard_of(f"{t}/a", 3) == 0)
    # What a Cluster master failing over to an empty replica does to shard 1's keys.
    prefix = sharded.url.rpartition("prefix=")[2]

    async def lose(shard: int) -> None:
        admin = (
            RedisCluster.from_url(server_url.replace("redis+cluster://", "redis://"))
            if server_url.startswith("redis+cluster")
            else aioredis.Redis.from_url(server_url)
        )
        async with admin:
            keys = [k async for k in admin.scan_iter(match=f"{{hb:{prefix}:{shard}}}*")]
            assert keys
            for key in keys:
                await admin.delete(key)

    await lose(1)
    after = await append(engine, f"{lost}/a")
    assert after.epoch == engine.epoch != epoch
    assert after.offset == 1
    # Shard 0 kept its events; a token of the old epoch no longer resumes exactly.
    page = await engine.read(f"{kept}/a", None, 10)
    assert [d.offset for d in page.deliveries] == [acks[kept].offset]
    assert acks[kept].token.epoch != engine.epoch
    # Found when a node starts, too.
    await engine.close()
    await lose(2)
    again = RedisEngine(sharded.url, EngineConfig(shards=3), FakeClock())
    await again.start(lambda deliveries: None)
    try:
        assert again.epoch != after.epoch
    finally:
        await again.close()


async def test_nodes_starting_together_on_a_new_log_agree_on_one_epoch(
    server_url: str, clock: FakeClock
) -> None:
    import asyncio

    url = f"{server_url}?prefix=together{next(_prefixes)}"
    engines = [RedisEngine(url, EngineConfig(shards=3), clock) for _ in range(4)]
    await asyncio.gather(*(e.start(lambda deliveries: None) for e in engines))
    try:
        assert len({e.epoch for e in engines}) == 1
        ack = await append(engines[0], "t1/a")
        assert ack.epoch == engines[3].epoch == engines[0].epoch
    finally:
        await asyncio.gather(*(e.close() for e in engines))
