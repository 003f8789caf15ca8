"""Consumer groups of a bus: the registry, their stored state, and what operators do with them.

Owns: every group of a bus by id (`<tenant>/<name>`), creating, joining,
listing, seeking and deleting them, loading them from the engine at start
(and resuming each from its cursor with its pending set; the writer of their
state is `hub.group_store.GroupWriter`), routing the bus's live
deliveries to the groups whose pattern matches, and the dead letters:
list, show, replay, purge. Must not know any wire protocol or principal: the
guard checks who may do what, the gateways speak for the callers.

A group lives in one tenant: its pattern's first segment is a literal
tenant, and its dead letters go to `$dlq/<tenant>/<name>/<relative topic>`,
which no pattern of the tenant's reaches (a `$` segment is only matched by
name) and which an admin can subscribe to.

Epochs. A group stores the epoch its cursor belongs to. When the log begins
a new epoch (history lost: `reset`, a memory engine's restart), the group's
pending entries and cursor mean nothing: it starts over at the beginning of
the new epoch, keeping its settings and dead letters.

Many nodes. On an engine with leases (Redis: `engine.base.Leases`) one node
at a time coordinates each group (`hub.group_leases.Coordination`): none is
loaded at start; the first operation that reaches a group on a node claims
its lease there and loads it fresh from the engine (`acquire`, `ensure`),
and a node that does not hold it answers `NotCoordinator` naming the one that
does. A lease lost (taken over after this node paused, its writes fenced off)
drops the group here: its members end with `NotCoordinator`. Without leases
(memory, sqlite) this node coordinates every group, loaded at start.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec

from hybridbus.core.codecs import encode_msgpack
from hybridbus.core.groups import LEASED, GroupSettings
from hybridbus.core.log import Delivery, Position, is_exact
from hybridbus.core.topics import tenant_of, validate_pattern
from hybridbus.core.trie import Trie
from hybridbus.engine.base import Clock, StoredGroup
from hybridbus.errors import (
    BusClosed,
    EngineCorrupt,
    GroupConflict,
    InvalidPattern,
    InvalidSettings,
    NotCoordinator,
    UnknownDeadLetter,
    UnknownGroup,
)
from hybridbus.hub.group import DeadLetter, Group
from hybridbus.hub.group_leases import Coordination
from hybridbus.hub.group_store import (
    DEAD,
    GroupWriter,
    StoredState,
    cursor_at,
    read_one,
    restore,
    start_cursor,
    undead,
)
from hybridbus.hub.member import Listener, Member

if TYPE_CHECKING:
    from hybridbus.hub.bus import Bus

__all__ = ["GroupInfo", "Groups", "PendingInfo", "check_group_name", "settings_from"]

log = logging.getLogger("hybridbus.groups")

_NAME: Final = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


class GroupInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What `Groups.info` tells of a group.

    `lag` is how far the group's cursor is behind the head of the log, in
    log positions summed over shards: an upper bound on the events it has not
    taken yet (other topics' events count too). `pending` is every event
    taken and not settled (`leased` of them handed to a member now),
    `redelivered`, `acked`, `dead` and `expired` count since the group was
    loaded (`dead_letters` is how many are listed now).
    """

    id: str
    tenant: str
    name: str
    settings: GroupSettings
    position: str
    created: float
    members: list[str]
    pending: int
    leased: int
    lag: int
    dead_letters: int
    redelivered: int
    acked: int
    dead: int
    expired: int


class PendingInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One pending entry: its event's place, who holds it, how often it was tried.

    `idle` is seconds since its last delivery (None: never delivered);
    `due` when its lease or wait ends (None: being buried).
    """

    topic: str
    offset: int
    member: str
    attempts: int
    idle: float | None
    due: float | None
    error: str


def check_group_name(name: str) -> str:
    """Return `name` if it is a legal group name (1-128 of A-Z a-z 0-9 _ . -), else raise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidSettings(f"a group name is 1-128 of A-Z a-z 0-9 _ . -, not {name!r:.140}")
    return name


def settings_from(pattern: str, raw: dict[str, Any] | None) -> GroupSettings:
    """Group settings from a pattern and a dict (TOML, JSON); `InvalidSettings` if bad."""
    try:
        return msgspec.convert({**(raw or {}), "pattern": pattern}, GroupSettings)
    except (msgspec.ValidationError, ValueError) as exc:
        raise InvalidSettings(f"group settings: {exc}") from None


def _tenant(pattern: str) -> str:
    validate_pattern(pattern)
    tenant = tenant_of(pattern)
    if tenant in ("+", "#") or tenant.startswith("$"):
        raise InvalidPattern(f"a group's pattern starts with a tenant, not {pattern!r}")
    return tenant


def _dead_order(dead: DeadLetter) -> tuple[float, int, int]:
    """Oldest first: by time, then by the copy's place in the log (ids compare as numbers)."""
    shard, _, position = dead.id.partition(".")
    return dead.time, int(position), int(shard)


class Groups:
    """The consumer groups of one bus (see the module docstring)."""

    def __init__(self, bus: Bus, clock: Clock, rng: random.Random | None = None) -> None:
        self.bus = bus
        self.engine = bus.engine
        self._clock = clock
        self._rng = rng or random.Random()
        self._groups: dict[str, Group] = {}
        self._trie: Trie[Group] = Trie()
        self._routes: dict[str, tuple[Group, ...]] = {}
        # The one writer of every group's state (hub/group_store.py).
        self.writer = GroupWriter(self.engine, self._groups.values, self._fenced)
        # Which groups this node coordinates, with an engine that has leases.
        self.coordination = Coordination(self.engine)
        self.coordination.on_lost = self._lost
        self._stopping: set[asyncio.Future[Any]] = set()
        self._closed = True

    @property
    def active(self) -> bool:
        """True if any group exists (the bus routes to groups only then)."""
        return bool(self._groups)

    # -- life --------------------------------------------------------------------

    async def start(self) -> None:
        """Load every stored group and resume it."""
        self._closed = False
        self.writer.start()
        self.coordination.start()
        if self.coordination.enabled:
            return  # each is loaded where it is first used (see the module docstring)
        for stored in await self.engine.groups():
            if stored.group.startswith("$"):
                continue  # another registry's (engine/base.py): not a consumer group
            await self._restore(stored, None)

    async def _restore(self, stored: StoredGroup, fence: int | None) -> Group:
        try:
            return await restore(self, stored, fence)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            raise EngineCorrupt(f"group {stored.group!r} cannot be read: {exc}") from exc

    async def close(self) -> None:
        """End every member (`BusClosed`), write what is left, stop."""
        if self._closed:
            return
        self._closed = True
        tasks: list[asyncio.Task[None]] = []
        for group in self._groups.values():
            tasks.extend(group.stop(BusClosed("the bus is closed")))
        await self.writer.close()
        await self.coordination.close()  # the leases go at once: another node may take them
        await asyncio.gather(*tasks, *self._stopping, return_exceptions=True)

    def now(self) -> float:
        """The groups' clock."""
        return self._clock()

    def make(
        self, gid: str, settings: GroupSettings, epoch: str, cursor: tuple[int, ...], created: float
    ) -> Group:
        """A group, not yet running (`register` starts it)."""
        return Group(self, gid, settings, epoch, cursor, created, self._clock, self._rng)

    def register(self, group: Group) -> None:
        """Start `group` and route the bus's deliveries to it."""
        self._groups[group.id] = group
        self._trie.add(group.settings.pattern, group)
        self._routes.clear()
        group.start()
        self.writer.flush_soon()

    # -- routing ---------------------------------------------------------------------

    def route(self, deliveries: Sequence[Delivery]) -> None:
        """Hand each appended delivery to every group whose pattern matches it."""
        routes = self._routes
        for delivery in deliveries:
            topic = delivery.topic
            targets = routes.get(topic)
            if targets is None:
                if len(routes) >= 65_536:
                    routes.clear()
                targets = routes[topic] = tuple(self._trie.match(topic))
            for group in targets:
                group.route(delivery)

    def new_epoch(self, group: Group, epoch: str) -> None:
        """The log began `epoch` under `group`: it starts over (see the module docstring)."""
        log.warning(
            "group %s: the log began a new epoch; starting over from its beginning", group.id
        )
        group.reset(epoch, (0,) * self.engine.shards)

    # -- groups ------------------------------------------------------------------------

    def get(self, gid: str) -> Group:
        """The group `gid` (`<tenant>/<name>`) as loaded here; `UnknownGroup` if it is not.

        With leases, a group this node does not coordinate is not loaded: `acquire` it.
        """
        group = self._groups.get(gid)
        if group is None:
            raise UnknownGroup(f"no group {gid!r}")
        return group

    async def acquire(self, gid: str) -> Group:
        """The group `gid`, claimed and loaded here if another node does not coordinate it.

        `UnknownGroup` if there is none; `NotCoordinator` (naming the node)
        if another node holds its lease.
        """
        group = self._groups.get(gid)
        if group is not None or not self.coordination.enabled:
            return group if group is not None else self.get(gid)
        if self._closed:
            raise BusClosed("the bus is closed")
        found = await self._claimed(gid, None)
        if found is None:
            raise UnknownGroup(f"no group {gid!r}")
        return found

    async def _claimed(self, gid: str, create: GroupSettings | None) -> Group | None:
        """Claim `gid`'s lease and load it fresh from the engine, or create it with `create`.

        None when it is not stored and `create` is None (the lease is given up again).
        """
        coordination = self.coordination
        assert coordination.engine is not None
        async with coordination.lock(gid):
            group = self._groups.get(gid)
            if group is not None:
                return group
            fence = await coordination.claim(gid)
            try:
                stored = await coordination.engine.group(gid)
                if stored is not None:
                    return await self._restore(stored, fence)
                if create is None:
                    await coordination.release(gid)
                    return None
                group = await self._create(gid, create)
                group.fence = fence
                self.register(group)
            except BaseException:
                if gid not in self._groups:
                    await coordination.release(gid)
                raise
        await self.writer.durable()
        return group

    async def _create(self, gid: str, settings: GroupSettings) -> Group:
        cursor = await start_cursor(self.engine, settings.start)
        return self.make(gid, settings, self.engine.epoch, cursor, self._clock())

    async def ensure(self, name: str, settings: GroupSettings, *, update: bool = True) -> Group:
        """The group `name` of the pattern's tenant, created with `settings` if there is none.

        An existing group keeps its cursor and pending entries; with `update`
        its settings become `settings` (but for `start`, which only matters at
        creation). A different pattern is a `GroupConflict`; a different
        `ordered` is `InvalidSettings` (delete the group and create it again).
        """
        if self._closed:
            raise BusClosed("the bus is closed")
        check_group_name(name)
        gid = f"{_tenant(settings.pattern)}/{name}"
        group = self._groups.get(gid)
        if group is None and self.coordination.enabled:
            group = await self._claimed(gid, settings)  # loaded, or created with `settings`
        if group is not None:
            if group.settings.pattern != settings.pattern:
                raise GroupConflict(
                    f"group {gid!r} consumes {group.settings.pattern!r}, not {settings.pattern!r}"
                )
            wanted = msgspec.structs.replace(settings, start=group.settings.start)
            if update and wanted != group.settings:
                if wanted.ordered != group.settings.ordered:
                    raise InvalidSettings(
                        f"group {gid!r}: ordered cannot change; delete the group, create it again"
                    )
                group.settings = wanted
                group.core.settings = wanted
                group.state_dirty = True
                self.writer.flush_soon()
            return group
        group = await self._create(gid, settings)
        if gid in self._groups:  # made by a concurrent call while this one awaited the head
            return await self.ensure(name, settings, update=update)
        self.register(group)
        await self.writer.durable()
        return group

    def join(self, gid: str, member: str | None = None, listener: Listener | None = None) -> Member:
        """A new member of group `gid` (named `member`, or a made-up name)."""
        if self._closed:
            raise BusClosed("the bus is closed")
        return self.get(gid).join(member, listener)

    async def delete(self, gid: str) -> None:
        """Delete the group, its state and its dead-letter list (their events stay in the log)."""
        group = await self.acquire(gid)
        self._unregister(group)
        await asyncio.gather(
            *group.stop(UnknownGroup(f"group {gid!r} was deleted")), return_exceptions=True
        )
        self.writer.drop(gid, group.fence)
        await self.writer.durable()
        await self.coordination.release(gid)

    def _unregister(self, group: Group) -> None:
        del self._groups[group.id]
        self._trie.remove(group.settings.pattern, group)
        self._routes.clear()

    def _lost(self, gid: str, holder: str) -> None:
        """This node no longer holds `gid`'s lease: drop it here; its members end (module doc)."""
        group = self._groups.get(gid)
        if group is None:
            return
        self._unregister(group)
        self.coordination.forget(gid)
        if holder:
            message = f"node {holder} coordinates group {gid!r} now: join it there"
        else:
            message = f"this node no longer coordinates group {gid!r}: join it again"
        group.lost = NotCoordinator(message, node=holder)
        task = asyncio.gather(*group.stop(group.lost), return_exceptions=True)
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def _fenced(self, stale: set[str]) -> None:
        """The engine refused writes of `stale` groups: another node took their leases."""
        for gid in stale:
            log.warning("group %s: its writes were fenced off: another node coordinates it", gid)
            self._lost(gid, "")

    def all(self, prefix: str = "") -> list[GroupInfo]:
        """Every group whose id starts with `prefix`, by id."""
        return [
            self._info(g, None) for gid, g in sorted(self._groups.items()) if gid.startswith(prefix)
        ]

    async def listing(self, prefix: str = "") -> list[GroupInfo]:
        """`all`, and with leases also the groups other nodes coordinate, as stored.

        Those stored figures are approximate: `members` is empty, `pending`
        counts the entries stored one by one, the counters since load are 0.
        """
        infos = self.all(prefix)
        if not self.coordination.enabled:
            return infos
        here = {info.id for info in infos}
        for stored in await self.engine.groups():
            gid = stored.group
            if gid.startswith("$") or gid in here or not gid.startswith(prefix):
                continue
            try:
                state = msgspec.msgpack.decode(stored.state, type=StoredState)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            dead = sum(key.startswith(DEAD) for key in stored.entries)
            tenant, _, name = gid.partition("/")
            position = str(Position(state.epoch, state.cursor))
            infos.append(
                GroupInfo(id=gid, tenant=tenant, name=name, settings=state.settings,
                          position=position, created=state.created, members=[],
                          pending=len(stored.entries) - dead, leased=0, lag=0, dead_letters=dead,
                          redelivered=0, acked=0, dead=0, expired=0)
            )  # fmt: skip
        return sorted(infos, key=lambda info: info.id)

    async def info(self, gid: str) -> GroupInfo:
        """What is known of group `gid` now (see `GroupInfo`)."""
        group = self.get(gid)
        return self._info(group, await self.engine.head())

    def _info(self, group: Group, head: Sequence[int] | None) -> GroupInfo:
        core = group.core
        lag = 0
        if head is not None and group.epoch == self.engine.epoch:
            lag = sum(max(0, h - c) for h, c in zip(head, core.cursor, strict=False))
        return GroupInfo(
            id=group.id,
            tenant=group.tenant,
            name=group.name,
            settings=group.settings,
            position=str(Position(group.epoch, tuple(core.cursor))),
            created=group.created,
            members=sorted(group.members),
            pending=len(core.entries),
            leased=core.leased,
            lag=lag,
            dead_letters=len(group.dead),
            redelivered=core.redelivered,
            acked=group.acked_total,
            dead=group.dead_total,
            expired=group.expired_total,
        )

    def pending(self, gid: str, limit: int = 1000) -> list[PendingInfo]:
        """Up to `limit` pending entries of the group, oldest first, with who holds each."""
        group = self.get(gid)
        now = self._clock()
        entries = sorted(group.core.pending(), key=lambda e: (e.position, e.shard))[:limit]
        return [
            PendingInfo(
                # a replayed dead letter's entry is at its copy; show the original
                topic=e.delivery.topic if e.delivery is not None else e.topic,
                offset=e.delivery.offset if e.delivery is not None else e.offset,
                member=e.member if e.state == LEASED else "",
                attempts=e.attempts,
                idle=round(now - e.last, 3) if e.last else None,
                due=e.due if math.isfinite(e.due) else None,
                error=e.error,
            )
            for e in entries
        ]

    async def seek(
        self, gid: str, position: Position | str | None = None, time: float | None = None
    ) -> str:
        """Move the group to a position or to the first event at or after Unix `time` (replay).

        Pending entries are dropped: the group hands out the log again from
        there. Returns the group's new position token.
        """
        group = self.get(gid)
        engine = self.engine
        if (position is None) == (time is None):
            raise InvalidSettings("seek takes a position or a time, not both or neither")
        if position is not None:
            token = Position.parse(position) if isinstance(position, str) else position.checked()
            cursor = token.positions if is_exact(token, engine.epoch, engine.shards) else None
            if cursor is None:
                cursor = (0,) * engine.shards
        else:
            assert time is not None
            cursor = await cursor_at(self.engine, group.settings.pattern, time)
        group.reset(engine.epoch, tuple(cursor))
        await self.writer.durable()
        return str(Position(engine.epoch, tuple(cursor)))

    # -- dead letters --------------------------------------------------------------------

    def dead_letters(self, gid: str, after: str = "", limit: int = 100) -> list[DeadLetter]:
        """Up to `limit` dead letters of the group, oldest first, after the one of id `after`."""
        group = self.get(gid)
        letters = sorted(group.dead.values(), key=_dead_order)
        if after:
            ids = [d.id for d in letters]
            letters = letters[ids.index(after) + 1 :] if after in ids else []
        return letters[:limit]

    async def dead_letter(self, gid: str, dead_id: str) -> tuple[DeadLetter, Delivery | None]:
        """A dead letter and its copy in the log (None once retention removed it)."""
        group = self.get(gid)
        dead = group.dead.get(dead_id)
        if dead is None:
            raise UnknownDeadLetter(f"group {gid!r} has no dead letter {dead_id!r:.100}")
        shard, _, position = dead.id.partition(".")
        return dead, await read_one(self.engine, dead.dlq_topic, int(shard), int(position))

    async def replay(
        self, gid: str, ids: Sequence[str] | None = None, to: Literal["topic", "group"] = "topic"
    ) -> int:
        """Replay dead letters (`ids`, or all): appended again to their topic, or into the group.

        `topic`: the original event is appended to its original topic again
        with its `source` and `id`, past the dedupe check (`append(...,
        dedupe=False)`): every subscriber and group sees it. `group`: only
        this group gets it again, as a new pending entry (attempts from 0).
        A replayed dead letter leaves the list; one whose copy retention has
        removed cannot be replayed (it is left in the list and not counted).
        Returns how many were replayed.
        """
        group = self.get(gid)
        chosen = self._chosen(group, ids)
        found: list[tuple[DeadLetter, Delivery]] = []
        for dead in chosen:
            _, copy = await self.dead_letter(gid, dead.id)
            if copy is not None:
                found.append((dead, copy))
        if not found:
            return 0
        if to == "topic":
            batch = [
                (undead(copy).topic, undead(copy).event, encode_msgpack(undead(copy).event))
                for _, copy in found
            ]
            await self.bus.append(batch, dedupe=False)
        else:
            now = self._clock()
            for _, copy in found:
                original = undead(copy)
                event = original.event
                key = event.partitionkey if event.partitionkey is not None else original.topic
                entry = group.core.inject(copy, key, now)
                entry.delivery = original
            self.writer.flush_soon()
        for dead, _ in found:
            group.dead.pop(dead.id, None)
            group.dead_dirty[dead.id] = None
        group._kick()
        await self.writer.durable()
        return len(found)

    async def purge(self, gid: str, ids: Sequence[str] | None = None) -> int:
        """Remove dead letters (`ids`, or all) from the list; their copies age out of the log."""
        group = self.get(gid)
        chosen = self._chosen(group, ids)
        for dead in chosen:
            group.dead.pop(dead.id, None)
            group.dead_dirty[dead.id] = None
        await self.writer.durable()
        return len(chosen)

    @staticmethod
    def _chosen(group: Group, ids: Sequence[str] | None) -> list[DeadLetter]:
        if ids is None:
            return list(group.dead.values())
        out = []
        for dead_id in ids:
            dead = group.dead.get(dead_id)
            if dead is None:
                raise UnknownDeadLetter(f"group {group.id!r} has no dead letter {dead_id!r:.100}")
            out.append(dead)
        return out
