"""A log of several shards for tests: one `MemoryEngine` per shard, one epoch for all.

No engine shipped today has more than one shard, but the protocol, resume
tokens and recovery are specified for N. `ShardedEngine` implements the
`Engine` protocol over N memory engines: a topic always lands in the shard
`shard_of(topic)`, each shard numbers its positions on its own, and a read
walks the shards in order. Serve it with `sharded_server(...)`.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import pytest
from tests.servers import Server, running_server

import hybridbus.app
from hybridbus.core.event import Event
from hybridbus.core.log import Ack, Delivery, Page
from hybridbus.core.revocation import Revocation
from hybridbus.engine.base import Clock, EngineConfig, Listener, TopicInfo
from hybridbus.engine.memory import MemoryEngine
from hybridbus.errors import InvalidPosition


def shard_of(topic: str, shards: int) -> int:
    """The shard a topic lives in."""
    return zlib.crc32(topic.encode()) % shards


def topic_in(shard: int, shards: int, prefix: str) -> str:
    """The first topic `<prefix><n>` that lives in `shard` (the prefix is absolute)."""
    n = 0
    while shard_of(f"{prefix}{n}", shards) != shard:
        n += 1
    return f"{prefix}{n}"


class ShardedEngine:
    """An `Engine` with `shards` shards, each a `MemoryEngine`."""

    def __init__(self, shards: int, config: EngineConfig, clock: Clock) -> None:
        self._parts = [MemoryEngine(config, clock) for _ in range(shards)]

    @property
    def epoch(self) -> str:
        return self._parts[0].epoch

    @property
    def shards(self) -> int:
        return len(self._parts)

    async def start(self, listener: Listener) -> None:
        for shard, part in enumerate(self._parts):

            def relay(deliveries: Sequence[Delivery], shard: int = shard) -> None:
                listener([msgspec.structs.replace(d, shard=shard) for d in deliveries])

            await part.start(relay)

    async def close(self) -> None:
        for part in self._parts:
            await part.close()

    async def append(self, topic: str, event: Event, payload: bytes) -> Ack:
        shard = shard_of(topic, self.shards)
        heads = await self.head()  # every shard's head, as the ack's token needs
        ack = await self._parts[shard].append(topic, event, payload)
        return msgspec.structs.replace(ack, shard=shard, epoch=self.epoch, heads=heads)

    async def append_many(
        self, items: Sequence[tuple[str, Event, bytes]], *, dedupe: bool = True
    ) -> list[Ack]:
        # One by one: the memory shards never fail, so the batch is all or nothing here too.
        # (`dedupe=False` is not honoured: the client tests never replay dead letters.)
        return [await self.append(topic, event, payload) for topic, event, payload in items]

    async def read(self, pattern: str, after: Sequence[int] | None, limit: int) -> Page:
        if after is not None and len(after) != self.shards:
            raise InvalidPosition(f"this engine has {self.shards} shards, not {len(after)}")
        start = list(after) if after is not None else [0] * self.shards
        found: list[Delivery] = []
        exact = True
        for shard, part in enumerate(self._parts):
            page = await part.read(pattern, (start[shard],), limit - len(found))
            exact = exact and page.exact
            found += [msgspec.structs.replace(d, shard=shard) for d in page.deliveries]
            start[shard] = page.positions[0]
            if page.more:  # the later shards stay where they were
                return Page(self.epoch, found, tuple(start), True, exact)
        return Page(self.epoch, found, tuple(start), False, exact)

    async def topics(self, prefix: str, after: str, limit: int) -> list[TopicInfo]:
        found = [t for part in self._parts for t in await part.topics(prefix, after, limit)]
        return sorted(found, key=lambda t: t.topic)[:limit]

    async def head(self) -> tuple[int, ...]:
        return tuple([(await part.head())[0] for part in self._parts])

    async def sweep(self) -> int:
        return sum([await part.sweep() for part in self._parts])

    async def reset(self) -> str:
        raise NotImplementedError("a test engine")

    async def revoke(self, revocation: Revocation) -> None:
        await self._parts[0].revoke(revocation)

    async def revocations(self) -> list[Revocation]:
        return await self._parts[0].revocations()

    def __getattr__(self, name: str) -> Any:
        # Whatever else the Engine protocol holds apart from the log (revocations...)
        # is kept by shard 0.
        if name == "_parts":
            raise AttributeError(name)
        return getattr(self._parts[0], name)


@contextlib.asynccontextmanager
async def sharded_server(shards: int, **settings: Any) -> AsyncIterator[Server]:
    """`running_server(...)` whose `memory://` engine is a `ShardedEngine`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            hybridbus.app,
            "open_engine",
            lambda scheme, path, config, clock: ShardedEngine(shards, config, clock),
        )
        async with running_server(**settings) as server:
            yield server
