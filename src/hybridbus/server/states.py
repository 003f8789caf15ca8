"""State topics for a node's connections: subscribe (snapshot or resume, then patches), patch.

Owns: the `state_subscribe` / `state_unsubscribe` / `state_patch` commands,
each connection's state subscriptions (one listener per topic on the hub's
`StateTopics`), the `state` pushes in version order, and ending them when the
connection closes. Must not keep documents (`hub.states` does, as a fold of
the log) nor decide conflicts (`core.state_doc`).

Order. A subscription's reply (the snapshot, or the patches after `since`)
and its listener are made in the same step, after the document is loaded:
no change falls between them, none comes twice. Rules: `state_subscribe`
needs `subscribe` on the topic, `state_patch` needs `publish` (the patch is
published through the `Guard`: rate limits and audit apply as to any event).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hybridbus.errors import BusError
from hybridbus.hub.guard import Principal
from hybridbus.hub.states import StateTopic, StateTopics
from hybridbus.proto.frames import (
    StateCommand,
    StatePatch,
    StatePatchResult,
    StatePush,
    StateResult,
    StateSubscribe,
)

if TYPE_CHECKING:
    from hybridbus.core.event import Event
    from hybridbus.core.log import Ack
    from hybridbus.server.connection import Connection

__all__ = ["StateSubscriptions"]

log = logging.getLogger("hybridbus.server")

_Listener = Any  # hub.states.Listener, bound to one connection


class StateSubscriptions:
    """The state subscriptions of one node's connections (see the module docstring)."""

    def __init__(self, topics: StateTopics) -> None:
        self.topics = topics
        # connection -> absolute topic -> (the loaded document, its listener)
        self._subs: dict[Connection, dict[str, tuple[StateTopic, _Listener]]] = {}

    def handle(self, connection: Connection, command: StateCommand) -> None:
        """Execute one state command (a refusal known at once raises `BusError`)."""
        principal = connection.admitted
        guard = connection.node.guard
        topic = principal.topic(command.topic)
        if isinstance(command, StateSubscribe):
            guard.check(principal, "subscribe", command.topic)
            connection.spawn(self._subscribe(connection, command, topic))
        elif isinstance(command, StatePatch):
            guard.check(principal, "publish", command.topic)
            connection.spawn(self._patch(connection, principal, command, topic))
        else:
            self._drop(connection, topic)
            connection.session.reply(command.id, StateResult())

    def closed(self, connection: Connection) -> None:
        """`connection` closed: end its subscriptions."""
        for state, listener in self._subs.pop(connection, {}).values():
            self.topics.unlisten(state, listener)

    async def _subscribe(self, connection: Connection, command: StateSubscribe, topic: str) -> None:
        session = connection.session
        try:
            state = await self.topics.get(topic)
        except Exception as exc:
            if not isinstance(exc, BusError):
                log.exception("state_subscribe of %s failed", connection.id)
            session.error(command.id, exc)
            connection.flush()
            return
        if session.closed:
            return
        self._drop(connection, topic)
        opened = state.open(command.since)
        session.reply(
            command.id,
            StateResult(
                version=opened.version,
                snapshot=opened.snapshot,
                document=opened.document,
                patches=opened.patches,
            ),
        )
        relative = command.topic

        def listener(_: str, version: int, change: Any, whole: bool) -> None:
            if session.closed:
                return
            push = (
                StatePush(topic=relative, version=version, snapshot=True, document=change)
                if whole
                else StatePush(topic=relative, version=version, patch=change)
            )
            session.push(session.codec.encode(push))
            connection.flush()

        self.topics.listen(state, listener)
        self._subs.setdefault(connection, {})[topic] = (state, listener)
        connection.flush()

    async def _patch(
        self, connection: Connection, principal: Principal, command: StatePatch, topic: str
    ) -> None:
        session = connection.session
        guard = connection.node.guard

        async def publish(event: Event) -> Ack:
            return await guard.publish(principal, command.topic, event)

        try:
            applied = await self.topics.patch(
                topic,
                command.patch,
                publish,
                if_version=command.if_version,
                lamport=command.lamport,
                origin=connection.id,
            )
        except Exception as exc:
            if not isinstance(exc, BusError):
                log.exception("state_patch of %s failed", connection.id)
            session.error(command.id, exc)
        else:
            session.reply(command.id, StatePatchResult(version=applied.version))
        connection.flush()

    def _drop(self, connection: Connection, topic: str) -> None:
        held = self._subs.get(connection)
        if held is None:
            return
        found = held.pop(topic, None)
        if found is not None:
            self.topics.unlisten(*found)
        if not held:
            del self._subs[connection]
