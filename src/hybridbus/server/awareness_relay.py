"""Awareness on plain topics across nodes: Redis pub/sub between the nodes that share a Redis.

Owns: `TopicAwarenessRelay` — telling the other nodes the awareness updates
of this node's clients (already conflated to the rate by `core.awareness`;
at most one message per room per `interval`, the newest state of each
client), hearing theirs, and asking them for every state they hold in a
topic that got its first watcher here. Must not decide what a watcher is
sent (`server.awareness.AwarenessRooms`, its `AwarenessTarget`).

Shares the Yjs relay's machinery (`server.rooms_relay.AwarenessRelay`): the
connection, the beat every ttl/4, dropping a node not heard for ttl·3/4 (its
clients' states are removed everywhere: a `kill -9`ed node's cursors go
within `registry_ttl`), the `gone` of a graceful shutdown, the resync after
a (re)subscribe; only what is carried differs. Its own channel,
`{P}awareness}:topics`, carries JSON messages `{node, kind, ...}`:

    beat, gone  as the Yjs relay's
    states {topic, clients}: changes of the node's own clients in a topic
    full   {topic, clients}: every state the node's clients hold in a topic
    query  {topics}: "send me your `full` of these topics" (a topic watched
           here for the first time, or a node heard anew)
"""

from __future__ import annotations

from typing import Any, Protocol, cast

import msgspec

from hybridbus.server.redis_shared import SharedRedis
from hybridbus.server.rooms_relay import AwarenessRelay, RelayTarget

__all__ = ["AwarenessTarget", "Entry", "TopicAwarenessRelay"]

_TOPICS_PER_QUERY = 500


class Entry(msgspec.Struct, array_like=True, frozen=True):
    """One client's awareness in a topic, as the nodes tell each other."""

    client: str
    lamport: int
    state: dict[str, Any]
    user: str | None = None
    removed: bool = False


class AwarenessTarget(Protocol):
    """What the relay feeds: `server.awareness.AwarenessRooms`."""

    def watched(self) -> list[str]:
        """The topics watched here (their other nodes' states are followed)."""
        ...

    def held(self) -> list[str]:
        """The topics this node's clients hold a state in."""
        ...

    def local(self, topic: str) -> list[Entry]:
        """The states this node's clients hold in `topic`."""
        ...

    def heard(self, node: str, topic: str, entries: list[Entry], full: bool) -> None:
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
    clients: list[Entry] = msgspec.field(default_factory=list)


_decode = msgspec.json.Decoder(_Message).decode


class TopicAwarenessRelay(AwarenessRelay):
    """This node's end of the plain topics' awareness channel (see the module docstring)."""

    def __init__(
        self, shared: SharedRedis, *, node: str, ttl: float, interval: float = 0.05
    ) -> None:
        super().__init__(shared, node=node, ttl=ttl, interval=interval)
        self._channel = "{" + shared.prefix + "awareness}:topics"
        self._rooms: AwarenessTarget | None = None
        self._changed: dict[str, dict[str, Entry]] = {}  # topic -> client -> newest

    def follow(self, rooms: AwarenessTarget) -> None:
        """Relay for `rooms` from now on (in the background; never waits for Redis)."""
        self._rooms = rooms
        # The shared machinery calls only `drop` on its target: the rooms have it.
        self.start(cast(RelayTarget, rooms))

    def send(self, topic: str, entry: Entry) -> None:
        """A client of this node changed its state in `topic`: told to the others, soon."""
        if self.started:
            self._changed.setdefault(topic, {})[entry.client] = entry
            self._wake.set()

    def ask(self, topic: str) -> None:
        """`topic` got its first watcher here: ask the others for their states in it."""
        if self.started:
            self._queries.add(topic)
            self._wake.set()

    async def _flush(self) -> None:
        rooms = self._rooms
        if rooms is None:
            return
        messages: list[_Message] = []
        if self._resync:
            self._resync = False
            self._changed.clear()
            self._queries.update(rooms.watched())
            self._answers.update(rooms.held())
        changed, self._changed = self._changed, {}
        for topic, entries in changed.items():
            messages.append(_Message(self.node, "states", topic, clients=[*entries.values()]))
        answers, self._answers = self._answers, set()
        for topic in answers:
            messages.append(_Message(self.node, "full", topic, clients=rooms.local(topic)))
        queries = sorted(self._queries)
        self._queries = set()
        for at in range(0, len(queries), _TOPICS_PER_QUERY):
            messages.append(
                _Message(self.node, "query", topics=queries[at : at + _TOPICS_PER_QUERY])
            )
        if messages:
            await self._publish(*messages)  # type: ignore[arg-type]

    def _hear(self, data: bytes) -> None:
        rooms = self._rooms
        try:
            message = _decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        node = message.node
        if node == self.node or rooms is None:
            return
        kind = message.kind
        if not self._node_said(node, kind, rooms.drop, rooms.watched):
            return
        if kind in ("states", "full"):
            rooms.heard(node, message.topic, message.clients, kind == "full")
        elif kind == "query":
            asked = set(rooms.held()).intersection(message.topics)
            if asked:
                self._answers.update(asked)
                self._wake.set()
