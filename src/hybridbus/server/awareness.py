"""Awareness on plain topics for a node's connections: set, watch, conflated pushes, removal.

Owns: the awareness rooms of this node (one `core.awareness.Awareness` per
ABSOLUTE topic), the `awareness_set` / `awareness_watch` / `awareness_unwatch`
commands, the `awareness` pushes to the watchers of a topic (every watcher
but the client whose state changed; its own connection has the stamp in the
reply; a client is named by its presence id, the `client` of its connect
reply, which a resumed session keeps, and its states go on with the session
to its newer connection), ONE loop timer per room for its pending conflated
updates, and the `removed` push at once when a connection that held a state closes, and the
states of other nodes' clients in the topics watched here (the `AwarenessTarget`
of `server.awareness_relay`: their updates, removals, and all of a node's
states dropped when it goes). Must not touch the log: awareness is ephemeral,
never appended anywhere; a state lives on the node its client is connected to
and the others hear of it over the shared Redis (docs/collaboration.md).

Rules of who may: watching a topic's awareness needs `presence` on it (it
shows who is there, as presence does); setting one's own state needs
`subscribe` (whoever may follow a topic may show a cursor in it, read-only
roles included).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from hybridbus.core.awareness import Awareness, AwarenessLimits, Update
from hybridbus.proto.frames import (
    AwarenessCommand,
    AwarenessPush,
    AwarenessResult,
    AwarenessSet,
    AwarenessSetResult,
    AwarenessState,
    AwarenessWatch,
)
from hybridbus.server.awareness_relay import Entry

if TYPE_CHECKING:
    from hybridbus.server.awareness_relay import TopicAwarenessRelay
    from hybridbus.server.connection import Connection

__all__ = ["AwarenessRooms"]


class _Room:
    __slots__ = ("awareness", "connections", "remote", "timer", "users", "watchers")

    def __init__(self, limits: AwarenessLimits) -> None:
        self.awareness = Awareness(limits)
        self.watchers: set[Connection] = set()
        # The connections holding a state here (client id -> connection), and their users.
        self.connections: dict[str, Connection] = {}
        self.users: dict[str, str | None] = {}
        self.timer: asyncio.TimerHandle | None = None
        # Other nodes' clients (node -> client -> state), followed while watched here.
        self.remote: dict[str, dict[str, Entry]] = {}


class AwarenessRooms:
    """The awareness rooms of one node (see the module docstring)."""

    def __init__(self, limits: AwarenessLimits | None = None) -> None:
        self.limits = limits or AwarenessLimits()
        self._rooms: dict[str, _Room] = {}
        # Per connection: the topics it holds a state in, and those it watches.
        self._held: dict[Connection, set[str]] = {}
        self._watching: dict[Connection, set[str]] = {}
        self.relay: TopicAwarenessRelay | None = None  # set by `serve` on a shared Redis

    def __len__(self) -> int:
        return len(self._rooms)

    def handle(self, connection: Connection, command: AwarenessCommand) -> None:
        """Execute one awareness command (a refusal raises `BusError`: the caller answers it)."""
        principal = connection.admitted
        guard = connection.node.guard
        session = connection.session
        if isinstance(command, AwarenessSet):
            topic = principal.topic(command.topic)
            guard.check(principal, "subscribe", command.topic)
            stamp = self._set(connection, topic, command)
            session.reply(command.id, AwarenessSetResult(lamport=stamp))
        elif isinstance(command, AwarenessWatch):
            topic = guard.presence(principal, command.topic)
            room = self._room(topic)
            if not room.watchers and self.relay is not None:
                self.relay.ask(topic)  # the other nodes' states come as pushes
            room.watchers.add(connection)
            self._watching.setdefault(connection, set()).add(topic)
            clients = [
                AwarenessState(
                    client=u.client, state=u.state, lamport=u.lamport, user=room.users.get(u.client)
                )
                for u in room.awareness.states()
            ]
            clients.extend(
                AwarenessState(client=e.client, state=e.state, lamport=e.lamport, user=e.user)
                for held in room.remote.values()
                for e in held.values()
            )
            session.reply(command.id, AwarenessResult(clients=clients))
        else:
            topic = principal.topic(command.topic)
            self._unwatch(connection, topic)
            session.reply(command.id, AwarenessResult())

    def closed(self, connection: Connection) -> None:
        """`connection` closed: its states go now (the watchers are told), its watches too."""
        for topic in self._watching.pop(connection, ()):
            room = self._rooms.get(topic)
            if room is not None:
                self._unwatched(topic, room, connection)
        client = _client(connection)
        for topic in self._held.pop(connection, ()):
            room = self._rooms.get(topic)
            if room is None:
                continue
            if room.connections.get(client) is not connection:
                continue  # its session resumed on a newer connection, which holds the state now
            del room.connections[client]
            user = room.users.pop(client, None)
            update = room.awareness.remove(client)
            if update is not None:
                self._send(topic, room, update, user)
            self._maybe_drop(topic, room)

    def moved(self, old: Connection, new: Connection) -> None:
        """`old`'s session went on on `new`: the states `old` held are `new`'s (nobody is told)."""
        topics = self._held.pop(old, set())
        client = _client(old)
        for topic in topics:
            room = self._rooms.get(topic)
            if room is not None and room.connections.get(client) is old:
                room.connections[client] = new
        if topics:
            self._held.setdefault(new, set()).update(topics)

    # -- inside ----------------------------------------------------------------------

    def _room(self, topic: str) -> _Room:
        room = self._rooms.get(topic)
        if room is None:
            room = self._rooms[topic] = _Room(self.limits)
        return room

    def _set(self, connection: Connection, topic: str, command: AwarenessSet) -> int:
        room = self._room(topic)
        loop = asyncio.get_running_loop()
        client = _client(connection)
        try:
            stamp, update = room.awareness.set(client, command.state, loop.time(), command.lamport)
        except BaseException:
            self._maybe_drop(topic, room)
            raise
        room.connections[client] = connection
        identity = connection.identity
        room.users[client] = identity.user if identity is not None else None
        self._held.setdefault(connection, set()).add(topic)
        if update is not None:
            self._send(topic, room, update, room.users[client])
        else:
            self._arm(topic, room)
        return stamp

    def _arm(self, topic: str, room: _Room) -> None:
        """Make sure the room's timer fires at its earliest pending update."""
        deadline = room.awareness.next_deadline()
        if deadline is None or room.timer is not None:
            return
        loop = asyncio.get_running_loop()
        room.timer = loop.call_at(deadline, self._due, topic, room)

    def _due(self, topic: str, room: _Room) -> None:
        room.timer = None
        loop = asyncio.get_running_loop()
        # A timer may fire a hair early on the loop's clock: `due` is told the deadline at least.
        now = max(loop.time(), room.awareness.next_deadline() or 0.0)
        for update in room.awareness.due(now):
            self._send(topic, room, update, room.users.get(update.client))
        self._arm(topic, room)

    def _send(
        self, topic: str, room: _Room, update: Update, user: str | None, local: bool = True
    ) -> None:
        """Push `update` to every watcher of `topic` but the connection it is about.

        `local`: about a client of this node, so the other nodes are told too.
        """
        if local and self.relay is not None:
            entry = Entry(update.client, update.lamport, update.state, user, update.removed)
            self.relay.send(topic, entry)
        for watcher in tuple(room.watchers):
            if _client(watcher) == update.client or watcher.session.closed:
                continue
            principal = watcher.principal
            if principal is None:
                continue
            push = AwarenessPush(
                topic=principal.relative(topic),
                client=update.client,
                state=update.state,
                lamport=update.lamport,
                user=user,
                removed=update.removed,
            )
            watcher.session.push(watcher.session.codec.encode(push))
            watcher.flush()

    def _unwatch(self, connection: Connection, topic: str) -> None:
        watching = self._watching.get(connection)
        if watching is not None:
            watching.discard(topic)
        room = self._rooms.get(topic)
        if room is not None:
            self._unwatched(topic, room, connection)

    def _unwatched(self, topic: str, room: _Room, connection: Connection) -> None:
        room.watchers.discard(connection)
        if not room.watchers:
            room.remote.clear()  # no longer followed here
        self._maybe_drop(topic, room)

    def _maybe_drop(self, topic: str, room: _Room) -> None:
        if room.watchers or len(room.awareness):
            return
        if room.timer is not None:
            room.timer.cancel()
        if self._rooms.get(topic) is room:
            del self._rooms[topic]

    # -- the relay's target (server.awareness_relay.AwarenessTarget) -------------------

    def watched(self) -> list[str]:
        """The topics watched here."""
        return [topic for topic, room in self._rooms.items() if room.watchers]

    def held(self) -> list[str]:
        """The topics this node's clients hold a state in."""
        return [topic for topic, room in self._rooms.items() if len(room.awareness)]

    def local(self, topic: str) -> list[Entry]:
        """The states this node's clients hold in `topic`."""
        room = self._rooms.get(topic)
        if room is None:
            return []
        return [
            Entry(u.client, u.lamport, u.state, room.users.get(u.client))
            for u in room.awareness.states()
        ]

    def heard(self, node: str, topic: str, entries: list[Entry], full: bool) -> None:
        """`node` says `entries` about its clients in `topic`: the watchers here are told."""
        room = self._rooms.get(topic)
        if room is None or not room.watchers:
            return
        held = room.remote.setdefault(node, {})
        if full:
            fresh = {e.client for e in entries if not e.removed}
            for client in [c for c in held if c not in fresh]:
                self._gone(topic, room, held.pop(client))
        for entry in entries:
            if entry.removed:
                old = held.pop(entry.client, None)
                if old is not None:
                    self._gone(topic, room, old, entry.lamport)
            elif held.get(entry.client) != entry:
                held[entry.client] = entry
                update = Update(entry.client, entry.state, entry.lamport)
                self._send(topic, room, update, entry.user, local=False)
        if not held:
            del room.remote[node]

    def drop(self, node: str) -> None:
        """`node` is gone: its clients' states are removed here, the watchers told."""
        for topic, room in list(self._rooms.items()):
            for entry in room.remote.pop(node, {}).values():
                self._gone(topic, room, entry)

    def _gone(self, topic: str, room: _Room, entry: Entry, lamport: int | None = None) -> None:
        stamp = entry.lamport + 1 if lamport is None else lamport
        update = Update(entry.client, {}, stamp, removed=True)
        self._send(topic, room, update, entry.user, local=False)


def _client(connection: Connection) -> str:
    """The id a connection's states go by: its presence id, which a resumed session keeps."""
    info = connection.info
    return info.client if info is not None else connection.id
