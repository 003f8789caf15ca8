"""Presence on one node: who is subscribed to which topic, and who watches it.

Owns: the registry of members per ABSOLUTE topic (a member is one
subscription of one connection, with the `ClientInfo` presence shows), the
watchers of each topic, and the join/leave notifications to them. Must not
encode or send anything (a watcher turns a notification into a push), nor know
about the bus.

A connection is present in a topic while it holds a subscription whose
pattern is exactly that topic: subscribing to `docs/42` joins `docs/42`; a
wildcard subscription (`docs/+`) watches events but joins no topic. Members
are keyed by their subscription, so an unsubscribe racing a new subscribe to
the same topic cannot remove the newer one. Presence is per node for now; the
ACTIVE -> DEGRADED -> TERMINATED lifecycle and cross-node presence come later.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from hybridbus.proto.frames import ClientInfo

__all__ = ["PresenceRegistry", "Watcher"]


class Watcher(Protocol):
    """Whoever asked for join/leave notifications of a topic (a connection)."""

    def presence_changed(self, joined: bool, topic: str, info: ClientInfo) -> None:
        """`info` joined (or left) the absolute `topic`. Must not raise."""
        ...


class PresenceRegistry:
    """Members and watchers per absolute topic."""

    def __init__(self) -> None:
        self._members: dict[str, dict[Hashable, ClientInfo]] = {}
        self._watchers: dict[str, set[Watcher]] = {}
        self._watched: dict[Watcher, set[str]] = {}

    def clients(self, topic: str) -> list[ClientInfo]:
        """Who is present in the absolute `topic`, oldest member first."""
        members = self._members.get(topic)
        return list(members.values()) if members else []

    def topics(self) -> int:
        """How many topics have members."""
        return len(self._members)

    def join(self, topic: str, member: Hashable, info: ClientInfo) -> None:
        """`member` (a subscription) of the client `info` is now present in `topic`."""
        members = self._members.setdefault(topic, {})
        if member in members:
            return
        members[member] = info
        self._notify(True, topic, info)

    def leave(self, topic: str, member: Hashable) -> None:
        """`member` left `topic` (idempotent)."""
        members = self._members.get(topic)
        if not members:
            return
        info = members.pop(member, None)
        if info is None:
            return
        if not members:
            del self._members[topic]
        self._notify(False, topic, info)

    def watch(self, topic: str, watcher: Watcher) -> None:
        """Notify `watcher` of every later join and leave in `topic`."""
        self._watchers.setdefault(topic, set()).add(watcher)
        self._watched.setdefault(watcher, set()).add(topic)

    def unwatch_all(self, watcher: Watcher) -> None:
        """Stop notifying `watcher` (its connection closed)."""
        for topic in self._watched.pop(watcher, ()):
            watchers = self._watchers.get(topic)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del self._watchers[topic]

    def _notify(self, joined: bool, topic: str, info: ClientInfo) -> None:
        watchers = self._watchers.get(topic)
        if watchers:
            for watcher in tuple(watchers):
                watcher.presence_changed(joined, topic, info)
