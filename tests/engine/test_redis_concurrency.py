"""The Redis engine under many concurrent calls: they wait for a connection, never fail.

A node serves thousands of connections: a burst of subscribes (each reads the
heads), history reads and publishes arrives at once. The driver's connection
pool has a bound; calls beyond it must queue for a free connection (bounded by
`timeout`) rather than fail with `EngineUnavailable` ("Too many connections").
Found by benchmarks/scale.py: 200 WebSocket clients subscribing at once to one
node got 100 refusals (1301).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import pytest
from tests.support import FakeClock, make_event

from hybridbus.core.codecs import encode_msgpack
from hybridbus.engine.redis import RedisEngine

_prefixes = itertools.count()
CONCURRENT = 500  # well over redis-py's default pool of 100 connections


@pytest.fixture(params=["redis", "cluster"])
def server_url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("shared_redis").url)
    return str(request.getfixturevalue("shared_redis_cluster").url).replace(
        "redis://", "redis+cluster://"
    )


async def test_a_burst_of_concurrent_reads_and_appends_all_succeed(
    server_url: str, clock: FakeClock
) -> None:
    engine = RedisEngine(f"{server_url}?prefix=burst{next(_prefixes)}", clock=clock)
    await engine.start(lambda deliveries: None)
    try:
        heads = await asyncio.gather(*(engine.head() for _ in range(CONCURRENT)))
        assert len(heads) == CONCURRENT
        events = [make_event(id=str(n)) for n in range(CONCURRENT)]
        acks = await asyncio.gather(
            *(engine.append("acme/t", e, encode_msgpack(e)) for e in events)
        )
        assert sorted(ack.offset for ack in acks) == list(range(1, CONCURRENT + 1))
        pages = await asyncio.gather(*(engine.read("acme/t", None, 10) for _ in range(CONCURRENT)))
        assert all(len(page.deliveries) == 10 for page in pages)
    finally:
        with contextlib.suppress(Exception):
            await engine.close()
