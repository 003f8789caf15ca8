"""Where consumer groups are kept: the one writer of their state, and its stored form.

Owns: the stored form of a group (`StoredState`, its pending entries and dead
letters as `GroupWrite` entries), and the one writer that batches every
group's changes into one `Engine.write_groups` per round: an `ack` returns
once the round holding it is durable (`durable`); changes nobody waits for
(handing out, a moved cursor) are written within `WRITE_EVERY` seconds
(`flush_later`). Must not decide anything about a group: `core.groups`
says what changed (`GroupCore.changes`).

Failure. A round that fails (`EngineUnavailable`) fails every `durable`
waiting on it; each group of the round is then written whole in the next
round (`Group.rewrite`: drop, state, every entry), and the writer tries again
after `RETRY` seconds by itself, so a change is never lost to a failed round
while the group lives. A delete that failed is tried again too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

import msgspec

from hybridbus.core.groups import GroupSettings, entry_key
from hybridbus.engine.base import Engine, GroupWrite
from hybridbus.errors import BusClosed, BusError

if TYPE_CHECKING:
    from hybridbus.hub.group import Group

__all__ = ["DEAD", "WRITE_EVERY", "GroupWriter", "StoredState"]

log = logging.getLogger("hybridbus.groups")

DEAD: Final = "d"  # key prefix of a dead letter in the store
WRITE_EVERY: Final = 0.2  # seconds
RETRY: Final = 0.5  # seconds after a failed round
pack = msgspec.msgpack.Encoder().encode


class StoredState(msgspec.Struct, kw_only=True):
    """A group's stored state (`GroupWrite.state`)."""

    settings: GroupSettings
    epoch: str
    cursor: tuple[int, ...]
    created: float
    # see "Persistence" in core/groups.py
    floor: tuple[int, ...] = ()
    settled: tuple[tuple[int, ...], ...] = ()


class GroupWriter:
    """The one writer of every group's state (see the module docstring)."""

    def __init__(self, engine: Engine, groups: Callable[[], Iterable[Group]]) -> None:
        self._engine = engine
        self._groups = groups
        self._dropped: list[str] = []
        self._wake = asyncio.Event()
        self._next: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._later: asyncio.TimerHandle | None = None
        self._closed = True

    def start(self) -> None:
        """Start writing."""
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(
            self._write_forever(), name="groups writer"
        )

    async def close(self) -> None:
        """Write what is left, then stop."""
        self._closed = True
        if self._later is not None:
            self._later.cancel()
        try:
            await self._write_round()
        except BusError as exc:
            log.warning("groups: the last write failed (%s)", exc)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def drop(self, gid: str) -> None:
        """Delete group `gid` from the store in the next round."""
        self._dropped.append(gid)

    def flush_soon(self) -> None:
        """Write the groups' changes in the next round."""
        self._wake.set()

    def flush_later(self) -> None:
        """Write the groups' changes within `WRITE_EVERY` seconds (nobody waits for them)."""
        if self._later is None and not self._closed:
            self._later = asyncio.get_running_loop().call_later(WRITE_EVERY, self._write_later)

    def _write_later(self) -> None:
        self._later = None
        self._wake.set()

    async def durable(self) -> None:
        """Return once every change made before this call is durable (else raise why not)."""
        if self._closed:
            raise BusClosed("the bus is closed")
        future = self._next
        if future is None:
            future = self._next = asyncio.get_running_loop().create_future()
        self._wake.set()
        await asyncio.shield(future)

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._write_round()
            except BusError:
                await asyncio.sleep(RETRY)  # the waiters got the error; the next round retries
                self._wake.set()

    async def _write_round(self) -> None:
        future, self._next = self._next, None
        dropped, self._dropped = self._dropped, []
        writes = [GroupWrite(group=gid, drop=True) for gid in dropped]
        written: list[Group] = []
        for group in self._groups():
            write = self._write_of(group)
            if write is not None:
                writes.append(write)
                written.append(group)
        try:
            if writes:
                await self._engine.write_groups(writes)
        except BusError as exc:
            for group in written:
                group.rewrite = True
            self._dropped[:0] = dropped
            if future is not None and not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: a round nobody awaited is not an error
            raise
        if future is not None and not future.done():
            future.set_result(None)

    def _write_of(self, group: Group) -> GroupWrite | None:
        core = group.core
        changes = core.changes()
        dead = group.dead_dirty
        group.dead_dirty = {}
        if group.rewrite:
            group.rewrite = False
            group.state_dirty = False
            puts = []
            for e in core.pending():
                e.stored = True
                puts.append((entry_key(e.shard, e.position), pack(e.record())))
            puts += [(DEAD + d.id, pack(d)) for d in group.dead.values()]
            return GroupWrite(group=group.id, drop=True, state=state_of(group), put=puts)
        if not (changes.cursor or changes.put or changes.delete or dead or group.state_dirty):
            return None
        state = state_of(group) if changes.cursor or group.state_dirty else None
        group.state_dirty = False
        put = [(key, pack(record)) for key, record in changes.put]
        delete = list(changes.delete)
        for key, value in dead.items():
            if value is None:
                delete.append(DEAD + key)
            else:
                put.append((DEAD + key, pack(value)))
        return GroupWrite(group=group.id, state=state, put=put, delete=delete)


def state_of(group: Group) -> bytes:
    """The stored state of `group` now."""
    core = group.core
    state = StoredState(
        settings=group.settings,
        epoch=group.epoch,
        cursor=tuple(core.cursor),
        created=group.created,
        floor=tuple(core.floor),
        settled=core.settled_positions(),
    )
    return pack(state)
