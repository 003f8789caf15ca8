"""Yjs awareness across nodes: Redis pub/sub between the nodes that share a Redis.

Owns: `AwarenessRelay` — telling the other nodes what this node's sockets
say about their awareness (conflated: the newest state of each client, at
most one message per `interval` per room), hearing what theirs say, the
beat that says this node is alive, and noticing nodes that stopped beating.
Must not decide which state wins (`server.rooms_awareness`) nor hold rooms
(`server.rooms`: the `RelayTarget` it is given).

Why pub/sub and not the bus (docs/collaboration.md, "Many nodes"): a state
moves at every keystroke and matters for seconds; a topic on the log would
store every cursor move (Redis streams or sqlite) to be trimmed later, and
still need a liveness rule for the states of a node that died. Pub/sub
stores nothing: memory is the states of the rooms loaded here, and a dead
node's states go when its beats stop.

One channel, `{P}yjs:awareness` (`P` the prefix of `server.redis_shared`;
SPUBLISH on a Cluster), carries JSON messages `{node, kind, ...}`:

    beat   every ttl/4: the node is alive
    states {topic, entries}: changes of the node's own clients in a room
    full   {topic, entries}: every state the node's clients hold in a room
           (replaces what the others held from it there)
    query  {topics}: "send me your `full` of these rooms" (a room just loaded,
           or this node (re)subscribed or heard a node it had dropped)
    gone   a graceful shutdown: the node's states go at once

A node that has not been heard for ttl·3/4 is dropped: its clients' states
are removed from every room here and the sockets told, so a `kill -9`ed
node's cursors disappear within `registry_ttl`. Pub/sub loses what is sent
while a subscription is down: after each (re)subscribe the node queries
every room it has loaded and sends its own `full` of each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

import msgspec

from hybridbus.core.backoff import Backoff
from hybridbus.core.yjs_protocol import AwarenessEntry
from hybridbus.server.redis_shared import Channel, SharedRedis, connect, driver_errors
from hybridbus.tasks import stop

__all__ = ["AwarenessRelay", "RelayTarget"]

log = logging.getLogger("hybridbus.server.rooms")

_TIMEOUT: Final = 3.0  # seconds for one command
_CLOSE_TIMEOUT: Final = 2.0  # seconds a graceful shutdown gives the goodbye
_REPORT_EVERY: Final = 30.0  # seconds between two warnings while Redis is unreachable
_TOPICS_PER_QUERY: Final = 500


class RelayTarget(Protocol):
    """What the relay feeds: the rooms of this node (`server.rooms_node.Rooms`)."""

    def topics(self) -> list[str]:
        """The rooms loaded here."""
        ...

    def local_states(self, topic: str) -> list[AwarenessEntry] | None:
        """The states this node's sockets hold in `topic` (None: not loaded here)."""
        ...

    def heard(self, node: str, topic: str, entries: list[AwarenessEntry], full: bool) -> None:
        """`node` says `entries` about its clients in `topic` (`full`: all of them)."""
        ...

    def drop(self, node: str) -> None:
        """`node` is gone: remove its clients' states everywhere."""
        ...


class _Message(msgspec.Struct, omit_defaults=True):
    node: str
    kind: str
    topic: str = ""
    topics: list[str] = msgspec.field(default_factory=list)
    entries: list[tuple[int, int, str]] = msgspec.field(default_factory=list)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Message).decode


def _entries(entries: list[AwarenessEntry]) -> list[tuple[int, int, str]]:
    return [(e.client, e.clock, e.state) for e in entries]


class AwarenessRelay:
    """This node's end of the awareness channel (see the module docstring)."""

    def __init__(
        self, shared: SharedRedis, *, node: str, ttl: float, interval: float = 0.05
    ) -> None:
        self._shared = shared
        self.node = node
        self._beat_every = ttl / 4
        self._lapse = ttl * 3 / 4
        self._interval = interval
        self._channel = "{" + shared.prefix + "yjs}:awareness"
        self._target: RelayTarget | None = None
        self._redis: Any = None
        self._pubsub: Any = None  # a Channel once started
        self._errors = driver_errors()
        self._pending: dict[str, dict[int, AwarenessEntry]] = {}  # topic -> client -> newest
        self._queries: set[str] = set()
        self._answers: set[str] = set()
        self._resync = False  # query every room loaded here and send the full of each
        self._heard: dict[str, float] = {}  # node -> when last heard (monotonic)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._backoff = Backoff(base=0.1, cap=max(0.2, ttl / 4))
        self._rng = random.Random()
        self._last_report = float("-inf")

    @property
    def started(self) -> bool:
        return bool(self._tasks)

    def start(self, target: RelayTarget) -> None:
        """Relay for `target` from now on (in the background; never waits for Redis)."""
        if self._tasks:
            return
        self._target = target
        self._redis = connect(self._shared, _TIMEOUT, "hybridbus-yjs")
        self._pubsub = Channel(self._redis, self._shared, self._channel)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._write_loop(), name="yjs awareness: writer"),
            loop.create_task(self._read_loop(), name="yjs awareness: reader"),
        ]

    async def close(self) -> None:
        """Stop; the others remove this node's states at once (`gone`)."""
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        with contextlib.suppress(*self._errors, TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self._flush()  # the removals of the sockets just closed
        for task in tasks:
            await stop(task)
        errors: tuple[type[BaseException], ...] = (*self._errors, TimeoutError)
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self._publish(_Message(self.node, "gone"))
        except errors as exc:  # the others drop it within the ttl
            log.warning("cannot tell the other nodes this one is gone: %s", exc)
        with contextlib.suppress(*self._errors):
            await self._redis.aclose()

    # -- this node's side ------------------------------------------------------------

    def publish(self, topic: str, entries: list[AwarenessEntry]) -> None:
        """This node's clients changed `entries` in `topic`: told to the others, soon."""
        if not self._tasks or not entries:
            return
        pending = self._pending.setdefault(topic, {})
        for entry in entries:
            pending[entry.client] = entry
        self._wake.set()

    def loaded(self, topic: str) -> None:
        """`topic` was loaded here: ask the others for the states they hold in it."""
        if self._tasks:
            self._queries.add(topic)
            self._wake.set()

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        beat = loop.time()
        failures = 0
        while True:
            try:
                if loop.time() >= beat:
                    beat = loop.time() + self._beat_every
                    await self._publish(_Message(self.node, "beat"))
                await self._flush()
                failures = 0
            except self._errors as exc:
                self._failed(f"writing: {type(exc).__name__}: {exc}")
                self._resync = True  # what was lost: everything again, once it is back
                await asyncio.sleep(self._backoff.delay(failures, self._rng))
                failures += 1
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, beat - loop.time())):
                    await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self._interval)  # conflate: one message a room an interval

    async def _flush(self) -> None:
        target = self._target
        if target is None:
            return
        messages: list[_Message] = []
        if self._resync:
            self._resync = False
            self._pending.clear()
            topics = target.topics()
            self._queries.update(topics)
            self._answers.update(topics)
        pending, self._pending = self._pending, {}
        for topic, changed in pending.items():
            messages.append(
                _Message(self.node, "states", topic, entries=_entries([*changed.values()]))
            )
        answers, self._answers = self._answers, set()
        for topic in answers:
            states = target.local_states(topic)
            if states is not None:
                messages.append(_Message(self.node, "full", topic, entries=_entries(states)))
        queries = sorted(self._queries)
        self._queries = set()
        for at in range(0, len(queries), _TOPICS_PER_QUERY):
            messages.append(
                _Message(self.node, "query", topics=queries[at : at + _TOPICS_PER_QUERY])
            )
        if messages:
            await self._publish(*messages)

    async def _publish(self, *messages: _Message) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for message in messages:
                self._pubsub.publish(pipe, _encode(message))
            await pipe.execute()

    # -- the other nodes' side ---------------------------------------------------------

    async def _read_loop(self) -> None:
        failures = 0
        while True:
            pubsub = None
            try:
                pubsub, read = await self._pubsub.subscribe()
                now = time.monotonic()
                self._heard = dict.fromkeys(self._heard, now)  # a fresh lapse after a gap
                self._resync = True
                self._wake.set()
                failures = 0
                while True:
                    data = await read(self._beat_every)
                    if data is not None:
                        self._hear(data)
                    self._lapsed()
            except self._errors as exc:
                self._failed(f"listening: {type(exc).__name__}: {exc}")
            finally:
                if pubsub is not None:
                    with contextlib.suppress(*self._errors):
                        await pubsub.aclose()
            await asyncio.sleep(self._backoff.delay(failures, self._rng))
            failures += 1

    def _hear(self, data: bytes) -> None:
        target = self._target
        try:
            message = _decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("skipped an awareness message that cannot be read: %s", exc)
            return
        node = message.node
        if node == self.node or target is None:
            return
        kind = message.kind
        if not self._node_said(node, kind, target.drop, target.topics):
            return
        if kind in ("states", "full"):
            entries = [AwarenessEntry(c, clock, state) for c, clock, state in message.entries]
            target.heard(node, message.topic, entries, kind == "full")
        elif kind == "query":
            loaded = set(target.topics())
            asked = loaded.intersection(message.topics)
            if asked:
                self._answers.update(asked)
                self._wake.set()

    def _node_said(
        self, node: str, kind: str, drop: Callable[[str], None], followed: Callable[[], list[str]]
    ) -> bool:
        """Book `node`'s message of `kind` (its beat); False if that was all (`gone`: dropped).

        A node heard anew (new, or dropped while it went on) is asked what it
        holds in the `followed()` topics.
        """
        if kind == "gone":
            self._heard.pop(node, None)
            drop(node)
            return False
        if node not in self._heard:
            topics = followed()
            if topics:
                self._queries.update(topics)
                self._wake.set()
        self._heard[node] = time.monotonic()
        return True

    def _lapsed(self) -> None:
        now = time.monotonic()
        lapsed = [node for node, at in self._heard.items() if now - at > self._lapse]
        target = self._target
        for node in lapsed:
            del self._heard[node]
            log.info("node %s stopped beating: its clients' awareness states go", node)
            if target is not None:
                target.drop(node)

    def _failed(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._last_report >= _REPORT_EVERY:
            self._last_report = now
            log.warning("Yjs awareness cannot reach its Redis; retrying: %s", reason)
