"""The Redis engine's writers: queues of requests, each taken a batch at a time by one task.

Owns: the request kinds the engine queues (`Append` for a shard's writer,
`Write` for the engine-wide writer of revocations and consumer groups), the
`Queue` whose task hands batches to a flush function in queued order, how
batches are cut, how a batch of appends is packed for the APPEND script and
how its reply is handed to the tailer. Must not talk to Redis: the engine's flush functions do.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from hybridbus.core.event import Event
from hybridbus.core.log import Delivery
from hybridbus.engine import _redis_io as rio
from hybridbus.engine._redis_tailer import Tailer
from hybridbus.errors import BusClosed
from hybridbus.tasks import stop

__all__ = ["Append", "Queue", "Step", "Write", "pack_appends", "settle_appends", "take_writes"]

log = logging.getLogger("hybridbus.engine.redis")

# What a shard's APPEND script answered for one item: duplicate, topic, offset, position.
Step = tuple[bool, str, int, int]


class Append:
    __slots__ = ("dedupe", "future", "items")

    def __init__(self, items: Sequence[tuple[str, Event, bytes]], dedupe: bool) -> None:
        self.items = items
        self.dedupe = dedupe
        self.future: asyncio.Future[tuple[str, list[Step]]] = (
            asyncio.get_running_loop().create_future()
        )


class Write:
    """A revocation or group write for the engine-wide writer."""

    __slots__ = ("future", "kind", "payload")

    def __init__(self, kind: str, payload: Any) -> None:
        self.kind = kind
        self.payload = payload
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Queue:
    """Requests taken by one task, a batch at a time, in queued order."""

    def __init__(self, name: str, flush: Callable[[list[Any]], Any], take: Callable[..., Any]):
        self.items: deque[Any] = deque()
        self._wake = asyncio.Event()
        self._flush = flush
        self._take = take
        self._task = asyncio.create_task(self._run(), name=name)

    def put(self, item: Any) -> None:
        self.items.append(item)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.items:
                batch = self._take(self.items)
                try:
                    await self._flush(batch)
                except Exception as exc:  # the task's boundary: fail the batch, go on
                    log.exception("the redis writer failed")
                    for request in batch:
                        if not request.future.done():
                            request.future.set_exception(rio.wrap(exc, "write failed"))

    async def stop(self) -> None:
        await stop(self._task)
        while self.items:
            future = self.items.popleft().future
            if not future.done():
                future.set_exception(BusClosed("the redis engine closed"))


def take_writes(queue: deque[Write]) -> list[Write]:
    """The next run of writes of one kind (revocations, or group writes)."""
    batch = [queue.popleft()]
    while queue and queue[0].kind == batch[0].kind and len(batch) < 1024:
        batch.append(queue.popleft())
    return batch


def pack_appends(
    batch: Sequence[Append], limits_of: Callable[[str], tuple[int, int, float]]
) -> tuple[bytes, bytes, dict[bytes, Event]]:
    """The APPEND script's items and topics arguments for `batch` (`engine._redis_lua_append`).

    Also each payload's event, for the tailer (`engine._redis_tailer.Tailer.sending`).
    """
    items: list[Any] = []  # 5 values per item
    topics: dict[str, tuple[int, int, float]] = {}
    sending: dict[bytes, Event] = {}
    lua_bytes, dedupe_key = rio.lua_bytes, rio.dedupe_key
    for request in batch:
        dedupe = request.dedupe
        for topic, event, payload in request.items:
            if topic not in topics:
                topics[topic] = limits_of(topic)
            expiry = event.expirytime
            items += (
                topic,
                lua_bytes(dedupe_key(topic, event.source, event.id)),
                dedupe,
                repr(expiry.timestamp()) if expiry is not None else "",
                lua_bytes(payload),
            )
            sending[payload] = event
    encode = msgspec.msgpack.encode
    return encode(items), encode(topics), sending


def settle_appends(
    batch: Sequence[Append],
    plan: Sequence[Any],
    first: int,
    epoch: str,
    now: float,
    shard: int,
    tailer: Tailer,
) -> None:
    """Hand the APPEND script's reply for `batch` to the tailer (`engine._redis_lua_append`).

    Each appended event goes to the tailer as it is (`Tailer.known`); each
    request's future resolves once the tailer has handed its last position to
    the listener (`Tailer.wait`).
    """
    steps = iter(plan)
    position = first
    for request in batch:
        mine: list[Step] = []
        top = 0
        for topic, event, payload in request.items:
            offset = next(steps)
            if offset.__class__ is not int:  # a duplicate: where its original is
                at, offset, original = offset
                mine.append((True, original.decode(), int(offset), int(at)))
                top = max(top, int(at))
                continue
            mine.append((False, topic, offset, position))
            top = max(top, position)
            expiry = event.expirytime
            tailer.known(
                epoch,
                Delivery(
                    topic,
                    offset,
                    shard,
                    position,
                    now,
                    event,
                    expiry.timestamp() if expiry is not None else None,
                    payload,
                ),
            )
            position += 1
        tailer.wait(epoch, top, request.future, (epoch, mine))
