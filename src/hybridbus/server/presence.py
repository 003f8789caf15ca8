"""Presence: who is subscribed to which topic, on this node and on the others, and who watches.

Owns: the registry of members per ABSOLUTE topic (a member is one
subscription of one connection, with the `ClientInfo` presence shows), the
watchers of each topic, the join/leave notifications to them, and the view
of the other nodes' members (`apply`, `replace`, `drop`: fed by
`server.presence_redis` when nodes share a Redis). Must not encode or send
anything (a watcher turns a notification into a push), nor know about the
bus or Redis: every change of a member of this node is handed to the
`mirror`, which copies it to the other nodes.

A connection is present in a topic while it holds a subscription whose
pattern is exactly that topic: subscribing to `docs/42` joins `docs/42`; a
wildcard subscription (`docs/+`) watches events but joins no topic. Members
of this node are keyed by their subscription, so an unsubscribe racing a
new subscribe to the same topic cannot remove the newer one; each also gets
an id (unique on this node) under which the other nodes know it. A member
of another node is keyed by that node's id and the member's id there.

Every node holds the whole deployment's members (its own and a copy of the
others'), so `clients` answers from memory, in the order this node learned
of the members (docs/scale-out.md, "Presence and limits across nodes").
Room to grow (issue 15): a member's state (ACTIVE, DEGRADED) would be one
more field of what is mirrored, changed in place and told to watchers; a
page of a topic's members is a slice of its ordered dict.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping
from typing import Final, Protocol

from hybridbus.proto.frames import ClientInfo

__all__ = ["Mirror", "PresenceRegistry", "Watcher"]

# Keys of other nodes' members: (_REMOTE, node, id) can never equal a subscription.
_REMOTE: Final = object()


class Watcher(Protocol):
    """Whoever asked for join/leave notifications of a topic (a connection)."""

    def presence_changed(self, joined: bool, topic: str, info: ClientInfo) -> None:
        """`info` joined (or left) the absolute `topic`. Must not raise."""
        ...


class Mirror(Protocol):
    """Where the changes of this node's members are copied to (the other nodes)."""

    def changed(self, joined: bool, member: str, topic: str, info: ClientInfo) -> None:
        """This node's member `member` joined (or left) `topic`. Must not raise nor block."""
        ...


class PresenceRegistry:
    """Members and watchers per absolute topic, this node's and a copy of the others'."""

    def __init__(self) -> None:
        self._members: dict[str, dict[Hashable, ClientInfo]] = {}
        self._watchers: dict[str, set[Watcher]] = {}
        self._watched: dict[Watcher, set[str]] = {}
        # This node's members: (topic, subscription) -> (id, info).
        self._local: dict[tuple[str, Hashable], tuple[str, ClientInfo]] = {}
        self._ids = itertools.count(1)
        # The other nodes' members: node -> id -> (topic, info).
        self._remote: dict[str, dict[str, tuple[str, ClientInfo]]] = {}
        self.mirror: Mirror | None = None

    def clients(self, topic: str) -> list[ClientInfo]:
        """Who is present in the absolute `topic`, on every node, oldest member first."""
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
        id = f"{next(self._ids):x}"
        self._local[topic, member] = (id, info)
        self._notify(True, topic, info)
        if self.mirror is not None:
            self.mirror.changed(True, id, topic, info)

    def leave(self, topic: str, member: Hashable) -> None:
        """`member` left `topic` (idempotent)."""
        if self._remove(topic, member) is None:
            return
        id, info = self._local.pop((topic, member))
        if self.mirror is not None:
            self.mirror.changed(False, id, topic, info)

    def local(self) -> list[tuple[str, str, ClientInfo]]:
        """This node's members as (id, topic, info), oldest first (to copy them whole)."""
        return [(id, topic, info) for (topic, _), (id, info) in self._local.items()]

    # -- the other nodes' members ------------------------------------------------

    def nodes(self) -> list[str]:
        """The other nodes this node holds members of."""
        return list(self._remote)

    def apply(self, node: str, joined: bool, id: str, topic: str, info: ClientInfo) -> None:
        """A member `id` of the other node `node` joined (or left) `topic` (idempotent)."""
        held = self._remote.get(node)
        if not joined:
            if held is not None and held.get(id, ("",))[0] == topic:
                del held[id]
                if not held:
                    del self._remote[node]
                self._remove(topic, (_REMOTE, node, id))
            return
        if held is None:
            held = self._remote[node] = {}
        before = held.get(id)
        if before is not None:
            if before[0] == topic:
                return
            self.apply(node, False, id, *before)  # moved: an id is one member of one topic
            held = self._remote.setdefault(node, {})
        held[id] = (topic, info)
        self._members.setdefault(topic, {})[_REMOTE, node, id] = info
        self._notify(True, topic, info)

    def replace(self, node: str, members: Mapping[str, tuple[str, ClientInfo]]) -> None:
        """`node`'s members are now exactly `members` (id -> (topic, info)): tell the changes."""
        held = self._remote.get(node, {})
        for id, (topic, info) in list(held.items()):
            if members.get(id, ("",))[0] != topic:
                self.apply(node, False, id, topic, info)
        for id, (topic, info) in members.items():
            self.apply(node, True, id, topic, info)

    def drop(self, node: str) -> None:
        """`node` is gone: each of its members leaves."""
        self.replace(node, {})

    # -- watchers -------------------------------------------------------------------

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

    def _remove(self, topic: str, key: Hashable) -> ClientInfo | None:
        """Take `key` out of `topic` and tell the watchers; its info, or None if not there."""
        members = self._members.get(topic)
        if not members:
            return None
        info = members.pop(key, None)
        if info is None:
            return None
        if not members:
            del self._members[topic]
        self._notify(False, topic, info)
        return info

    def _notify(self, joined: bool, topic: str, info: ClientInfo) -> None:
        watchers = self._watchers.get(topic)
        if watchers:
            for watcher in tuple(watchers):
                watcher.presence_changed(joined, topic, info)
