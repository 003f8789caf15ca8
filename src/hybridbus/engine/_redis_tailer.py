"""The Redis engine's tailers: one task per shard reading its stream into the listener.

Owns: following one shard's stream with blocking XREAD (this node's appends
and every other node's alike), handing each read's deliveries to the
listener in log order, resolving the acks waiting for a position once the
listener has seen it, and noticing when the shard begins a new epoch. Must
not append or decide epochs: it asks its engine (`Host`) to.

Theory of operation. A round is one pipeline: `XREAD BLOCK` from the last
position handed over, then the shard's meta (epoch, base, pos), which Redis
answers after the read, so it describes a state at least as new as the
entries. Entries written by one script call (an `append_many`, or a group
of appends the engine merged) are handed over in one listener call: an
entry names its call's last position, and the tailer reads on to it first.
When the meta names another epoch, entries up to its `base` still belong to
the old one; later ones to the new. If the tailer had already passed `base`
it reads again from there. A meta without an epoch means the shard lost its
data; the tailer asks the engine to establish a new epoch. A position
counter below what the tailer has seen in the same epoch (a failover to a
replica that missed writes) is a loss too.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from typing import Any, Final, Protocol

from hybridbus.core.event import Event
from hybridbus.core.log import Delivery
from hybridbus.engine import _redis_io as rio
from hybridbus.engine.base import Listener
from hybridbus.errors import BusClosed, EngineError, EngineUnavailable

__all__ = ["Host", "Tailer"]

log = logging.getLogger("hybridbus.engine.redis")

# Entries per XREAD, and how long one blocks (milliseconds) before the tailer
# checks the shard's epoch anyway.
_COUNT: Final = 1024
_BLOCK_MS: Final = 1000


class Host(Protocol):
    """What a tailer needs from its engine."""

    client: rio.Client
    listener: Listener

    @property
    def epoch(self) -> str:
        """The engine's current epoch."""
        ...

    def lost(self, epoch: str, shard: int, floor: int) -> Awaitable[None]:
        """Shard `shard` lost data seen in `epoch` (up to `floor`): begin a new epoch."""
        ...

    def moved(self) -> Awaitable[None]:
        """Another node began a new epoch: adopt it."""
        ...


class _Waiter:
    """`future` gets `result` once the listener has seen `position` of `epoch`."""

    __slots__ = ("deadline", "epoch", "future", "position", "result")

    def __init__(
        self,
        epoch: str,
        position: int,
        future: asyncio.Future[Any],
        result: Any,
        deadline: float,
    ) -> None:
        self.epoch = epoch
        self.position = position
        self.future = future
        self.result = result
        self.deadline = deadline


class Tailer:
    """Follows shard `shard` from `position` in `epoch`."""

    def __init__(
        self,
        host: Host,
        keys: rio.ShardKeys,
        shard: int,
        epoch: str,
        position: int,
        patience: float,
    ) -> None:
        self.host = host
        self.patience = patience  # seconds an ack waits for its delivery before it fails
        self.keys = keys
        self.shard = shard
        self.epoch = epoch
        self.position = position  # everything up to here was handed to the listener
        self._previous = ("", 0)  # the epoch before, and how far it was handed over
        self._switch: tuple[str, int] | None = None  # a new epoch and its base, pending
        self._waiters: deque[_Waiter] = deque()
        # This node's own appends, by position, so the tailer need not decode them.
        self._known: dict[int, Delivery] = {}
        # The events of this node's script call in flight, by their stored bytes: the
        # tailer often reads the entries before the engine has the reply, and then
        # takes their events from here instead of decoding them.
        self.sending: dict[bytes, Event] = {}
        self._known_epoch = epoch
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.failures = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"redis-tailer-{self.shard}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            # redis-py may turn the cancellation of a blocked read into an
            # error; the loop then sees `_stopping` after at most one block.
            await asyncio.wait({self._task}, timeout=2 * _BLOCK_MS / 1000)
            self._task = None
        self._fail_all(BusClosed("the redis engine closed"))

    def wait(self, epoch: str, position: int, future: asyncio.Future[Any], result: Any) -> None:
        """Set `future` to `result` once the listener has seen `position` of `epoch`.

        It fails with `EngineUnavailable` if that does not happen within
        `patience` seconds, or if the shard lost the position (a new epoch).
        """
        deadline = asyncio.get_running_loop().time() + self.patience
        waiter = _Waiter(epoch, position, future, result, deadline)
        if not self._waiters and self._settle(waiter):
            return
        self._waiters.append(waiter)

    def _settle(self, waiter: _Waiter) -> bool:
        """Resolve or fail `waiter` if its fate is known; False if it must wait."""
        if waiter.epoch == self.epoch:
            if waiter.position > self.position:
                return False
            if not waiter.future.done():
                waiter.future.set_result(waiter.result)
            return True
        if waiter.epoch == self._previous[0]:
            if not waiter.future.done():
                if waiter.position <= self._previous[1]:
                    waiter.future.set_result(waiter.result)
                else:
                    waiter.future.set_exception(
                        EngineUnavailable("redis engine: the shard lost this append (new epoch)")
                    )
            return True
        return False  # a newer epoch this tailer has not reached yet

    def known(self, epoch: str, delivery: Delivery) -> None:
        """This node appended `delivery` in `epoch`: hand it over as is when it comes."""
        if epoch == self.epoch and delivery.position > self.position:
            if epoch != self._known_epoch:
                self._known.clear()
                self._known_epoch = epoch
            self._known[delivery.position] = delivery

    def _release(self) -> None:
        waiters = self._waiters
        while waiters and self._settle(waiters[0]):
            waiters.popleft()

    def _expire(self) -> None:
        """Fail the acks that waited too long for their delivery (Redis unreachable)."""
        waiters = self._waiters
        now = asyncio.get_running_loop().time()
        while waiters and waiters[0].deadline < now:
            future = waiters.popleft().future
            if not future.done():
                future.set_exception(
                    EngineUnavailable(
                        "redis engine: the append was not delivered in time; it may have "
                        "been appended (a retry with the same source and id is deduplicated)"
                    )
                )

    def _fail_all(self, error: Exception) -> None:
        while self._waiters:
            future = self._waiters.popleft().future
            if not future.done():
                future.set_exception(error)

    async def _run(self) -> None:
        backoff = 0.05
        while not self._stopping:
            if self._waiters:
                self._expire()
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except EngineError as exc:
                self.failures += 1
                if self.failures == 1 or self.failures % 100 == 0:
                    log.warning("redis tailer %d: %s (retrying)", self.shard, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            except Exception:  # the task's boundary: log, keep following
                log.exception("redis tailer %d failed", self.shard)
                await asyncio.sleep(1.0)
            else:
                if self.failures:
                    log.warning("redis tailer %d reads again", self.shard)
                self.failures = 0
                backoff = 0.05

    async def _round(self) -> None:
        keys = self.keys
        client = self.host.client
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.xread({keys.log: f"{self.position}-0"}, count=_COUNT, block=_BLOCK_MS)
                pipe.hmget(keys.meta, ["epoch", "base", "pos"])
                read, meta = await pipe.execute()
        except (asyncio.CancelledError, EngineError):
            raise
        except Exception as exc:
            raise rio.wrap(exc, f"cannot read shard {self.shard}") from exc
        entries: list[tuple[int, dict[bytes, bytes]]] = []
        if read:
            entries = [(rio.entry_position(i), f) for i, f in _stream_entries(read)]
            if entries and b"e" in entries[-1][1]:
                await self._read_to(entries, int(entries[-1][1][b"e"]))
        raw_epoch, raw_base, raw_pos = meta
        if raw_epoch is None:
            self._deliver(entries)
            await self.host.lost(self.epoch, self.shard, self.position)
            return
        epoch = raw_epoch.decode()
        if epoch != self.epoch and (self._switch is None or self._switch[0] != epoch):
            self._switch = (epoch, int(raw_base or 0))
        if self._switch is None and int(raw_pos or 0) < self.position:
            log.error(
                "redis shard %d: position %s is behind %d seen (a failover lost writes?)",
                self.shard,
                raw_pos,
                self.position,
            )
            await self.host.lost(self.epoch, self.shard, self.position)
            return
        if self._switch is not None:
            await self._deliver_switching(entries)
        else:
            self._deliver(entries)

    async def _read_to(self, entries: list[tuple[int, dict[bytes, bytes]]], end: int) -> None:
        """Read on to position `end` (the end of the last entry's script call)."""
        while entries[-1][0] < end:
            try:
                more: Any = await self.host.client.xrange(
                    self.keys.log, f"({entries[-1][0]}-0", f"{end}-0", count=_COUNT
                )
            except Exception as exc:
                raise rio.wrap(exc, f"cannot read shard {self.shard}") from exc
            if not more:
                return
            entries.extend((rio.entry_position(i), f) for i, f in more)

    async def _deliver_switching(self, entries: list[tuple[int, dict[bytes, bytes]]]) -> None:
        assert self._switch is not None
        epoch, base = self._switch
        old = [e for e in entries if e[0] <= base]
        self._deliver(old)
        if self.position < base and len(old) == len(entries):
            return  # entries of the old epoch may still come before the base
        if self.host.epoch != epoch:
            # Before any entry of the new epoch: the listener must see the engine in
            # it, to tell a subscription that missed entries of the old one (hub.bus).
            await self.host.moved()
        self._previous = (self.epoch, self.position)
        self.epoch = epoch
        self._switch = None
        self._known.clear()
        if self.position >= base:
            self.position = base  # read again from the base: those are the new epoch's
        else:
            self.position = base
            self._deliver([e for e in entries if e[0] > base])
        self._release()

    def _deliver(self, entries: list[tuple[int, dict[bytes, bytes]]]) -> None:
        """Hand `entries` (and this node's appends trimmed before they were read) over."""
        if not entries:
            return
        shard = self.shard
        deliveries: list[Delivery] = []
        known = self._known if self._known_epoch == self.epoch else {}
        for position, fields in entries:
            delivery = known.pop(position, None)
            if delivery is not None:
                deliveries.append(delivery)
                continue
            try:
                deliveries.append(rio.decode_entry(shard, position, fields, self.sending))
            except EngineError as exc:
                log.error("%s (skipped)", exc)  # noqa: TRY400 - the cause says it all
        last = entries[-1][0]
        if known and min(known) <= last:
            # Count retention removed them before this read: the listener still
            # sees every append of this node before its ack.
            trimmed = [known.pop(p) for p in sorted(p for p in known if p <= last)]
            deliveries = sorted([*deliveries, *trimmed], key=_by_position)
        self.position = last
        if deliveries:
            try:
                self.host.listener(deliveries)
            except Exception:
                log.exception("the listener failed on %d deliveries", len(deliveries))
        self._release()


def _by_position(delivery: Delivery) -> int:
    return delivery.position


def _stream_entries(read: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The (id, fields) of an XREAD reply for one stream (RESP2 list or RESP3 dict)."""
    if isinstance(read, dict):
        return [entry for stream in read.values() for entry in stream[0]]
    return [entry for _name, stream in read for entry in stream]
