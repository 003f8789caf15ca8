"""Awareness on plain topics for a node's connections: set, watch, conflated pushes, removal.

Owns: the awareness rooms of this node (one `core.awareness.Awareness` per
ABSOLUTE topic), the `awareness_set` / `awareness_watch` / `awareness_unwatch`
commands, the `awareness` pushes to the watchers of a topic (every watcher
but the client whose state changed; its own connection has the stamp in the
reply), ONE loop timer per room for its pending conflated updates, and the
`removed` push at once when a connection that held a state closes. Must not
touch the log: awareness is ephemeral, never appended anywhere, and lives on
the node its client is connected to (docs/collaboration.md says so).

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

if TYPE_CHECKING:
    from hybridbus.server.connection import Connection

__all__ = ["AwarenessRooms"]


class _Room:
    __slots__ = ("awareness", "connections", "timer", "users", "watchers")

    def __init__(self, limits: AwarenessLimits) -> None:
        self.awareness = Awareness(limits)
        self.watchers: set[Connection] = set()
        # The connections holding a state here (client id -> connection), and their users.
        self.connections: dict[str, Connection] = {}
        self.users: dict[str, str | None] = {}
        self.timer: asyncio.TimerHandle | None = None


class AwarenessRooms:
    """The awareness rooms of one node (see the module docstring)."""

    def __init__(self, limits: AwarenessLimits | None = None) -> None:
        self.limits = limits or AwarenessLimits()
        self._rooms: dict[str, _Room] = {}
        # Per connection: the topics it holds a state in, and those it watches.
        self._held: dict[Connection, set[str]] = {}
        self._watching: dict[Connection, set[str]] = {}

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
            room.watchers.add(connection)
            self._watching.setdefault(connection, set()).add(topic)
            clients = [
                AwarenessState(
                    client=u.client, state=u.state, lamport=u.lamport, user=room.users.get(u.client)
                )
                for u in room.awareness.states()
            ]
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
                room.watchers.discard(connection)
                self._maybe_drop(topic, room)
        for topic in self._held.pop(connection, ()):
            room = self._rooms.get(topic)
            if room is None:
                continue
            room.connections.pop(connection.id, None)
            user = room.users.pop(connection.id, None)
            update = room.awareness.remove(connection.id)
            if update is not None:
                self._send(topic, room, update, user)
            self._maybe_drop(topic, room)

    # -- inside ----------------------------------------------------------------------

    def _room(self, topic: str) -> _Room:
        room = self._rooms.get(topic)
        if room is None:
            room = self._rooms[topic] = _Room(self.limits)
        return room

    def _set(self, connection: Connection, topic: str, command: AwarenessSet) -> int:
        room = self._room(topic)
        loop = asyncio.get_running_loop()
        client = connection.id
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

    def _send(self, topic: str, room: _Room, update: Update, user: str | None) -> None:
        """Push `update` to every watcher of `topic` but the connection it is about."""
        for watcher in tuple(room.watchers):
            if watcher.id == update.client or watcher.session.closed:
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
            room.watchers.discard(connection)
            self._maybe_drop(topic, room)

    def _maybe_drop(self, topic: str, room: _Room) -> None:
        if room.watchers or len(room.awareness):
            return
        if room.timer is not None:
            room.timer.cancel()
        if self._rooms.get(topic) is room:
            del self._rooms[topic]
