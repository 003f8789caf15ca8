"""Where consumer groups are kept: the one writer of their state, its stored form, loading it.

Owns: the stored form of a group (`StoredState`, its pending entries and dead
letters as `GroupWrite` entries), loading a stored group back into a running
one (`restore`: its pending set rebuilt from the log), and the one writer
that batches every group's changes into one `Engine.write_groups` per round: an `ack` returns
once the round holding it is durable (`durable`); changes nobody waits for
(handing out, a moved cursor) are written within `WRITE_EVERY` seconds
(`flush_later`). Must not decide anything about a group: `core.groups`
says what changed (`GroupCore.changes`).

Failure. A round that fails (`EngineUnavailable`) fails every `durable`
waiting on it; each group of the round is then written whole in the next
round (`Group.rewrite`: drop, state, every entry), and the writer tries again
after `RETRY` seconds by itself, so a change is never lost to a failed round
while the group lives. A delete that failed is tried again too.

Fences. On an engine with leases each write carries the fence of the lease
this node holds on its group (`Group.fence`). A round refused for a stale
fence (`NotCoordinator` naming the groups: nothing was written) hands those
groups to `on_fenced` (the registry drops them: another node coordinates
them now) and writes the others' changes again at once, in the same round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Final

import msgspec

from hybridbus.core.groups import GroupSettings, PendingRecord, entry_key
from hybridbus.core.log import MAX_POSITION, Delivery, Position, is_exact
from hybridbus.engine.base import Engine, GroupWrite, StoredGroup
from hybridbus.errors import BusClosed, BusError, InvalidSettings, NotCoordinator
from hybridbus.hub.group import DLQ_ROOT, DeadLetter

if TYPE_CHECKING:
    from hybridbus.hub.group import Group
    from hybridbus.hub.groups import Groups

__all__ = [
    "DEAD",
    "WRITE_EVERY",
    "GroupWriter",
    "StoredState",
    "between",
    "cursor_at",
    "read_one",
    "restore",
    "start_cursor",
    "undead",
]

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

    def __init__(
        self,
        engine: Engine,
        groups: Callable[[], Iterable[Group]],
        on_fenced: Callable[[set[str]], None] = lambda stale: None,
    ) -> None:
        self._engine = engine
        self._groups = groups
        self._on_fenced = on_fenced
        self._dropped: list[tuple[str, int | None]] = []
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

    def drop(self, gid: str, fence: int | None = None) -> None:
        """Delete group `gid` from the store in the next round (`fence`: of its lease)."""
        self._dropped.append((gid, fence))

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
        writes = [GroupWrite(group=gid, drop=True, fence=fence) for gid, fence in dropped]
        written: list[Group] = []
        for group in self._groups():
            write = self._write_of(group)
            if write is not None:
                writes.append(write)
                written.append(group)
        try:
            while writes:
                try:
                    await self._engine.write_groups(writes)
                    break
                except NotCoordinator as exc:  # stale fences: nothing was written
                    stale = set(exc.groups)
                    if not stale:
                        raise
                    writes = [w for w in writes if w.group not in stale]
                    dropped = [d for d in dropped if d[0] not in stale]
                    written = [g for g in written if g.id not in stale]
                    self._on_fenced(stale)
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
            return GroupWrite(
                group=group.id, drop=True, state=state_of(group), put=puts, fence=group.fence
            )
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
        return GroupWrite(group=group.id, state=state, put=put, delete=delete, fence=group.fence)


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


# -- loading ------------------------------------------------------------------------

_DLQ_EXTENSIONS: Final = (
    "dlqgroup",
    "dlqtopic",
    "dlqoffset",
    "dlqreason",
    "dlqattempts",
    "dlqerror",
    "dlqfirst",
    "dlqlast",
)


def undead(delivery: Delivery) -> Delivery:
    """A dead letter's copy as the original: its topic and event without the `dlq*` attributes."""
    event = delivery.event
    ext = event.extensions
    tenant = delivery.topic.split("/", 2)[1]
    topic = f"{tenant}/{ext.get('dlqtopic', '')}"
    offset = ext.get("dlqoffset", delivery.offset)
    extensions = {k: v for k, v in ext.items() if k not in _DLQ_EXTENSIONS}
    return msgspec.structs.replace(
        delivery,
        topic=topic,
        offset=int(offset),
        event=msgspec.structs.replace(event, extensions=extensions),
    )


async def restore(groups: Groups, stored: StoredGroup, fence: int | None) -> Group:
    """Run the stored group again, registered with `groups`: its pending set rebuilt from the log.

    `fence` is the lease's this node holds on it (None: no leases). A group
    of another epoch (or shard count) starts over at the beginning of this one.
    """
    state = msgspec.msgpack.decode(stored.state, type=StoredState)
    engine = groups.engine
    group = groups.make(stored.group, state.settings, state.epoch, state.cursor, state.created)
    group.fence = fence
    records: list[PendingRecord] = []
    for key, value in stored.entries.items():
        if key.startswith(DEAD):
            dead = msgspec.msgpack.decode(value, type=DeadLetter)
            group.dead[dead.id] = dead
        else:
            records.append(msgspec.msgpack.decode(value, type=PendingRecord))
    group.state_dirty = False
    if state.epoch != engine.epoch or len(state.cursor) != engine.shards:
        group.reset(engine.epoch, (0,) * engine.shards)
        groups.register(group)
        return group
    floor = state.floor or state.cursor
    core = group.core
    core.load_state(floor, state.settled)
    # The pending set: the entries written on their own, and every event of the
    # pattern between floor and cursor not settled — restored in log order.
    pending: list[tuple[int, int, PendingRecord | Delivery]] = [
        (r.position, r.shard, r) for r in records
    ]
    written = {(r.shard, r.position) for r in records}
    settled = [set(s) for s in state.settled] or [set() for _ in floor]
    async for delivery in between(engine, state.settings.pattern, floor, state.cursor):
        ident = (delivery.shard, delivery.position)
        if ident not in written and delivery.position not in settled[delivery.shard]:
            pending.append((delivery.position, delivery.shard, delivery))
    pending.sort(key=lambda p: (p[0], p[1]))
    now = groups.now()
    for _, _, item in pending:
        if isinstance(item, Delivery):
            core.take(item, now)
            continue
        found = await read_one(engine, item.topic, item.shard, item.position)
        entry = core.restore(item, now)
        if found is None:  # retention removed it while it was pending
            log.warning(
                "group %s: pending %s#%s is gone from the log", group.id, item.topic, item.offset
            )
            core.ack(entry, now)
            continue
        entry.delivery = undead(found) if item.topic.startswith(f"{DLQ_ROOT}/") else found
    groups.register(group)
    group.bury_stored()
    return group


async def between(
    engine: Engine, pattern: str, floor: Sequence[int], cursor: Sequence[int]
) -> AsyncIterator[Delivery]:
    """The deliveries of `pattern` past `floor` and up to `cursor` (per shard), in log order."""
    after = list(floor)
    while any(a < c for a, c in zip(after, cursor, strict=True)):
        page = await engine.read(pattern, after, 1000)
        for delivery in page.deliveries:
            if delivery.position <= cursor[delivery.shard]:
                yield delivery
        if not page.more:
            return
        after = list(page.positions)


async def read_one(engine: Engine, topic: str, shard: int, position: int) -> Delivery | None:
    """The delivery at `position` of `shard` if it is `topic`'s and still retained."""
    after = [MAX_POSITION] * engine.shards
    after[shard] = position - 1
    page = await engine.read(topic, after, 1)
    for delivery in page.deliveries:
        if delivery.shard == shard and delivery.position == position:
            return delivery
    return None


async def start_cursor(engine: Engine, start: str) -> tuple[int, ...]:
    """Where a new group starts: `earliest`, `latest` or a position token (`InvalidSettings`)."""
    if start == "earliest":
        return (0,) * engine.shards
    if start == "latest":
        return tuple(await engine.head())
    try:
        token = Position.parse(start)
    except BusError:
        raise InvalidSettings(
            f"a group starts at 'earliest', 'latest' or a position token, not {start!r:.100}"
        ) from None
    if not is_exact(token, engine.epoch, engine.shards):
        return (0,) * engine.shards
    return token.positions


async def cursor_at(engine: Engine, pattern: str, time: float) -> tuple[int, ...]:
    """The cursor just before the first event of `pattern` appended at or after `time`."""
    after: list[int] = [0] * engine.shards
    while True:
        page = await engine.read(pattern, after, 1000)
        for delivery in page.deliveries:
            if delivery.time >= time:
                after[delivery.shard] = delivery.position - 1
                return tuple(after)
            after[delivery.shard] = delivery.position
        if not page.more:
            return tuple(page.positions)
        after = list(page.positions)
