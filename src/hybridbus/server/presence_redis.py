"""Presence across nodes: each node's members copied into the Redis the nodes share.

Owns: this node's copy of its members in Redis (a member's state, ACTIVE or
DEGRADED, travels in its `ClientInfo`: a change of state is a join of the same
id with the new info), its presence heartbeat,
telling the other nodes of each join and leave (Redis pub/sub), feeding what
the others tell into the node's `PresenceRegistry` (`apply`, `replace`,
`drop`), and noticing nodes that stopped beating. Must not decide who is
present (`server.presence` does) nor block a join or a leave: changes are
queued and written by a task, several per Redis round trip.

Keys (one hash tag, so a Redis Cluster keeps them in one slot; `P` is the
prefix of `server.redis_shared`, e.g. `hybridbus:main:`):

    {Ppresence}:members:<node>  hash: member id -> [topic, ClientInfo] (JSON); PX = ttl·3/4
    {Ppresence}:sessions:<node> hash: session id -> SessionRecord (JSON: digest, presence id,
                                grace, deadline); PX = ttl·3/4
    {Ppresence}:claim:<node>    the node adopting a lapsed node's sessions (SET NX), PX = ttl·3/2
    {Ppresence}:alive:<node>    the node's heartbeat, PX = ttl·3/4, written every ttl/4
    {Ppresence}:nodes           a set of the node ids that beat
    {Ppresence}:changes         the channel (SPUBLISH on a Cluster): {"node", "changes"} per
                                write, {"node", "sync": true} after a full write,
                                {"node", "gone": true} at a graceful shutdown,
                                "took": [session ids] taken from their nodes (after the
                                changes holding their places here), "adopted": [lapsed nodes]

Theory of operation. A node writes its members and publishes the changes in
one pipeline, in order, on one connection: whoever reads the channel and then
the hash sees the hash at least as new as the message. A node reading the
channel subscribes first, then loads every live node's hash (`replace`), then
applies the messages in order (those older than the load as well: applied in
order they end where the load was, or later). Its own messages it ignores.
A lost subscription is taken again the same way, so nothing heard is missed
for long. Every ttl/4 a node beats (`SET alive PX ... GET`): an alive key
that was gone (first beat, or the node lapsed while paused, or Redis lost
it) makes the node write all of its members anew and publish `sync`, so the
others load it. In the same pass it reads the others' alive keys: a node
whose key lapsed is dropped, its members leave (watchers are told), and its
hash is removed. A node killed with `kill -9` thus loses its members within
`registry_ttl`: its key lapses ttl·3/4 after its last beat, and the next
check of a live node comes within ttl/4. A graceful shutdown removes them
at once (`gone`).

Sessions across nodes (docs/scale-out.md). Each node mirrors its sessions
(`server.sessions` calls `saved`) into its sessions hash, in the same writes.
A lapsed node's members that belong to a session are not dropped but shown
"degraded" (`PresenceRegistry.lapsed`); every node that notices the lapse
tries `SET claim NX`, and the one that wins adopts the node's sessions (their
places become its held places, `Sessions.adopted`), writes them, then
removes the node's keys and publishes `adopted` in the same pipeline: the
others drop the node only then, so a session's member never leaves between.
The adopter ends what nobody resumes when its grace is over (a `leave` on
every node). A connect presenting a session of another node (`lookup`)
holds its places here first, then publishes `took`: the node that held it
lets it go without a leave. A claim whose adopter died lapses, and the next
node that looks claims again.

Redis unreachable: this node answers for its own members as ever and keeps
the other nodes' as they were last heard (they may be stale); it retries
with backoff, then writes everything anew and loads everything again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any, Final

import msgspec

from hybridbus.core.backoff import Backoff
from hybridbus.proto.frames import ClientInfo
from hybridbus.server.presence import PresenceRegistry
from hybridbus.server.redis_shared import Channel, SharedRedis, connect, driver_errors
from hybridbus.server.sessions import SessionRecord, Sessions
from hybridbus.tasks import stop

__all__ = ["RedisPresence"]

log = logging.getLogger("hybridbus.presence")

_TIMEOUT: Final = 3.0  # seconds for one command
_CLOSE_TIMEOUT: Final = 2.0  # seconds a graceful shutdown gives the goodbye
_REPORT_EVERY: Final = 30.0  # seconds between two warnings while Redis is unreachable
_READ_WAIT: Final = 1.0  # seconds one read of the channel waits for a message
_MOST_CHANGES: Final = 1000  # changes in one write and one message (a herd joining)


class _Change(msgspec.Struct, array_like=True):
    joined: bool
    id: str
    topic: str
    info: ClientInfo


class _Message(msgspec.Struct, omit_defaults=True):
    node: str
    changes: list[_Change] = msgspec.field(default_factory=list)
    sync: bool = False  # the node wrote all of its members anew: load them
    gone: bool = False  # the node shut down: its members left
    took: list[str] = msgspec.field(default_factory=list)  # sessions taken from their nodes
    adopted: list[str] = msgspec.field(default_factory=list)  # lapsed nodes, sessions adopted


class _Member(msgspec.Struct, array_like=True):
    topic: str
    info: ClientInfo


_encode = msgspec.json.Encoder().encode
_message = msgspec.json.Decoder(_Message)
_member = msgspec.json.Decoder(_Member)
_record = msgspec.json.Decoder(SessionRecord)


class RedisPresence:
    """The `Mirror` of a node's `PresenceRegistry` in the Redis at `shared`."""

    def __init__(
        self,
        registry: PresenceRegistry,
        shared: SharedRedis,
        *,
        node: str,
        ttl: float,
        sessions: Sessions | None = None,
    ) -> None:
        self._registry = registry
        self._sessions = sessions
        self._saved: dict[str, SessionRecord | None] = {}  # session changes to write
        self._took: list[tuple[str, str]] = []  # (session, its node) to tell
        self._adopted: list[str] = []  # lapsed nodes whose sessions this node adopted
        self._shared = shared
        self.node = node
        self._beat_every = ttl / 4
        self._lapse_ms = max(1, round(ttl * 750))
        tag = "{" + shared.prefix + "presence}"
        self._tag = tag
        self._nodes = f"{tag}:nodes"
        self._channel = f"{tag}:changes"
        self._redis: Any = None
        self._pubsub: Any = None  # a Channel once started
        self._errors = driver_errors()
        self._pending: list[_Change] = []
        self._full = True  # write every member anew (first, and after a failure)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._backoff = Backoff(base=0.1, cap=max(0.2, ttl / 4))
        self._rng = random.Random()
        self._last_report = float("-inf")

    def _alive(self, node: str) -> str:
        return f"{self._tag}:alive:{node}"

    def _members(self, node: str) -> str:
        return f"{self._tag}:members:{node}"

    def _sessions_of(self, node: str) -> str:
        return f"{self._tag}:sessions:{node}"

    # -- life ---------------------------------------------------------------------

    async def start(self) -> None:
        """Mirror the registry from now on; write, beat and listen in the background."""
        if self._tasks:
            return
        self._redis = connect(self._shared, _TIMEOUT, "hybridbus-presence")
        self._pubsub = Channel(self._redis, self._shared, self._channel)
        self._registry.mirror = self
        if self._sessions is not None:
            self._sessions.mirror = self
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._write_loop(), name="presence: writer"),
            loop.create_task(self._read_loop(), name="presence: reader"),
        ]

    async def close(self) -> None:
        """Stop; remove this node's members at once and tell the others (graceful shutdown)."""
        if self._registry.mirror is self:
            self._registry.mirror = None
        if self._sessions is not None and self._sessions.mirror is self:
            self._sessions.mirror = None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await stop(task)
        if self._redis is None:
            return
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.delete(
                        self._members(self.node), self._sessions_of(self.node),
                        self._alive(self.node),
                    )  # fmt: skip
                    pipe.srem(self._nodes, self.node)
                    self._publish(pipe, _Message(self.node, gone=True))
                    await pipe.execute()
        except self._errors as exc:  # they lapse by themselves within the ttl
            log.warning("cannot remove this node's presence: %s", exc, extra={"node": self.node})
        with contextlib.suppress(*self._errors):
            await self._redis.aclose()

    # -- this node's changes ----------------------------------------------------------

    def changed(self, joined: bool, member: str, topic: str, info: ClientInfo) -> None:
        """A member of this node joined or left: written and told by the writer, soon."""
        if not self._full:  # a full write takes every member as it is then
            self._pending.append(_Change(joined, member, topic, info))
        self._wake.set()

    def saved(self, id: str, record: SessionRecord | None) -> None:
        """A session of this node changed (None: it ended): written by the writer, soon."""
        if not self._full:
            self._saved.pop(id, None)  # the latest, in the order of the changes
            self._saved[id] = record
        self._wake.set()

    def take(self, id: str, node: str) -> None:
        """This node took the session `id` from `node`: tell it after the places held here."""
        self._took.append((id, node))
        self._wake.set()

    async def lookup(self, id: str) -> tuple[str, SessionRecord | None]:
        """The other node holding the session `id` (alive or lapsed, not yet adopted)."""
        try:
            async with asyncio.timeout(_TIMEOUT):
                found = await self._redis.smembers(self._nodes)
                others = sorted(n.decode() for n in found if n.decode() != self.node)
                if not others:
                    return "", None
                async with self._redis.pipeline(transaction=False) as pipe:
                    for node in others:
                        pipe.hget(self._sessions_of(node), id)
                    values = await pipe.execute()
        except self._errors as exc:  # a new session, as if nobody held it
            self._failed(f"looking a session up: {type(exc).__name__}: {exc}")
            return "", None
        for node, value in zip(others, values, strict=True):
            if value is not None:
                try:
                    return node, _record.decode(value)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    log.warning("skipped a session entry that cannot be read", extra={"node": node})
        return "", None

    def _told(self, pipe: Any) -> tuple[list[str], list[str]]:
        """Add to `pipe` what taking sessions and adopting nodes remove; their ids and nodes."""
        took, self._took = self._took, []
        adopted, self._adopted = self._adopted, []
        for id, node in took:
            pipe.hdel(self._sessions_of(node), id)
        if adopted:
            pipe.srem(self._nodes, *adopted)
            pipe.delete(*(self._members(n) for n in adopted),
                        *(self._sessions_of(n) for n in adopted))  # fmt: skip
        return [id for id, _ in took], adopted

    def _publish(self, pipe: Any, message: _Message) -> None:
        self._pubsub.publish(pipe, _encode(message))

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        beat = loop.time()
        failures = 0
        while True:
            try:
                if loop.time() >= beat:
                    beat = loop.time() + self._beat_every
                    await self._beat()
                if self._full:
                    await self._write_all()
                elif self._pending or self._saved or self._took or self._adopted:
                    await self._write_changes()
                if failures:
                    log.info("presence is shared again", extra={"node": self.node})
                failures = 0
            except self._errors as exc:
                self._failed(f"writing: {type(exc).__name__}: {exc}")
                self._full, self._pending, self._saved = True, [], {}  # written whole again
                await asyncio.sleep(self._backoff.delay(failures, self._rng))
                failures += 1
                continue
            if self._pending or self._saved or self._took or self._adopted:
                continue  # more than one write takes
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, beat - loop.time())):
                    await self._wake.wait()
            self._wake.clear()

    async def _write_all(self) -> None:
        """Write every member of this node anew, then tell the others to load them."""
        members = {id: _encode(_Member(topic, info)) for id, topic, info in self._registry.local()}
        records = self._sessions.records() if self._sessions is not None else {}
        self._full, self._pending, self._saved = False, [], {}  # later changes follow this write
        key, sessions = self._members(self.node), self._sessions_of(self.node)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(key, sessions)
            if members:
                pipe.hset(key, mapping=members)
                pipe.pexpire(key, self._lapse_ms)
            if records:
                pipe.hset(sessions, mapping={id: _encode(r) for id, r in records.items()})
                pipe.pexpire(sessions, self._lapse_ms)
            pipe.set(self._alive(self.node), b"1", px=self._lapse_ms)
            pipe.sadd(self._nodes, self.node)
            took, adopted = self._told(pipe)
            self._publish(pipe, _Message(self.node, sync=True, took=took, adopted=adopted))
            await pipe.execute()

    async def _write_changes(self) -> None:
        changes = self._pending[:_MOST_CHANGES]
        del self._pending[:_MOST_CHANGES]
        saved, self._saved = self._saved, {}
        key, sessions = self._members(self.node), self._sessions_of(self.node)
        async with self._redis.pipeline(transaction=False) as pipe:
            for id, record in saved.items():  # before the places: a lookup finds the session
                if record is not None:
                    pipe.hset(sessions, id, _encode(record))
                else:
                    pipe.hdel(sessions, id)
            if saved:
                pipe.pexpire(sessions, self._lapse_ms)
            for change in changes:
                if change.joined:
                    pipe.hset(key, change.id, _encode(_Member(change.topic, change.info)))
                else:
                    pipe.hdel(key, change.id)
            pipe.pexpire(key, self._lapse_ms)
            # Taken sessions and adopted nodes go after the last of the changes holding them.
            took, adopted = self._told(pipe) if not self._pending else ([], [])
            self._publish(pipe, _Message(self.node, changes=changes, took=took, adopted=adopted))
            await pipe.execute()

    async def _beat(self) -> None:
        """Keep this node alive; write all anew if it lapsed; drop the nodes that lapsed."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._alive(self.node), b"1", px=self._lapse_ms, get=True)
            pipe.pexpire(self._members(self.node), self._lapse_ms)
            pipe.pexpire(self._sessions_of(self.node), self._lapse_ms)
            pipe.sadd(self._nodes, self.node)
            pipe.smembers(self._nodes)
            was, _, _, _, found = await pipe.execute()
        if was is None:
            self._full = True  # the others dropped us (or never knew us)
        others = sorted(n.decode() for n in found if n.decode() != self.node)
        alive = await self._redis.mget([self._alive(n) for n in others]) if others else []
        live = {n for n, value in zip(others, alive, strict=True) if value is not None}
        lapsed = sorted((set(others) | set(self._registry.nodes())) - live)
        for node in lapsed:
            self._registry.lapsed(node)  # its sessions' places "degraded", the rest leave
            await self._claim(node)

    async def _claim(self, node: str) -> None:
        """Adopt the lapsed `node`'s sessions if no other node does (`SET NX`)."""
        claim = f"{self._tag}:claim:{node}"
        if not await self._redis.set(claim, self.node, nx=True, px=self._lapse_ms * 2):
            return  # another node adopts them (or did: its `adopted` drops the node here)
        found = await self._redis.hgetall(self._sessions_of(node))
        records: dict[str, SessionRecord] = {}
        for id, value in found.items():
            try:
                records[id.decode()] = _record.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("skipped a session entry that cannot be read", extra={"node": node})
        log.info("node lapsed: its members left, its sessions are adopted here",
                 extra={"lapsed": node, "sessions": len(records)})  # fmt: skip
        if self._sessions is not None:
            self._sessions.adopted(node, records)
        self._registry.drop(node)  # its sessions' places are held here now: no leave
        self._adopted.append(node)  # written after the adopted places, then dropped everywhere
        self._wake.set()

    # -- the other nodes' changes -----------------------------------------------------

    async def _read_loop(self) -> None:
        failures = 0
        while True:
            pubsub = None
            try:
                pubsub, read = await self._pubsub.subscribe()
                await self._load_all()
                failures = 0
                while True:
                    data = await read(_READ_WAIT)
                    if data is not None:
                        await self._heard(data)
            except self._errors as exc:
                self._failed(f"listening: {type(exc).__name__}: {exc}")
            finally:
                if pubsub is not None:
                    with contextlib.suppress(*self._errors):
                        await pubsub.aclose()
            await asyncio.sleep(self._backoff.delay(failures, self._rng))
            failures += 1

    async def _load_all(self) -> None:
        """Load every live node's members; drop the nodes held that are gone."""
        others = sorted(
            n.decode() for n in await self._redis.smembers(self._nodes) if n.decode() != self.node
        )
        alive = await self._redis.mget([self._alive(n) for n in others]) if others else []
        live = [n for n, value in zip(others, alive, strict=True) if value is not None]
        for node in set(self._registry.nodes()) - set(live):
            self._registry.drop(node)
        for node in live:
            await self._load(node)

    async def _load(self, node: str) -> None:
        found = await self._redis.hgetall(self._members(node))
        members: dict[str, tuple[str, ClientInfo]] = {}
        for id, value in found.items():
            try:
                member = _member.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("skipped a presence entry that cannot be read: %s", exc,
                            extra={"node": node})  # fmt: skip
                continue
            members[id.decode()] = (member.topic, member.info)
        self._registry.replace(node, members)

    async def _heard(self, data: bytes) -> None:
        try:
            message = _message.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("skipped a presence message that cannot be read: %s", exc)
            return
        node = message.node
        if node == self.node:
            return
        if message.gone:
            self._registry.drop(node)
        elif message.sync:
            await self._load(node)
        for change in message.changes:
            self._registry.apply(node, change.joined, change.id, change.topic, change.info)
        if self._sessions is not None:
            for id in message.took:
                self._sessions.taken(id)
        for lapsed in message.adopted:
            if lapsed != self.node:
                self._registry.drop(lapsed)

    def _failed(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._last_report >= _REPORT_EVERY:
            self._last_report = now
            log.warning("presence cannot reach its Redis; retrying: %s", reason,
                        extra={"node": self.node})  # fmt: skip
