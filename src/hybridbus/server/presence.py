"""Presence: who is subscribed to which topic, on this node and on the others, and who watches.

Owns: the registry of members per ABSOLUTE topic (a member is one client's
presence in one topic, with the `ClientInfo` presence shows and its state,
ACTIVE or DEGRADED), the watchers of each topic, the join / leave / state
notifications to them, pages of a topic's members, and the view of the other
nodes' members (`apply`, `replace`, `drop`, `lapsed`; `adopt` makes a
session's places on another node this node's: fed by `server.presence_redis`
when nodes share a Redis). Must not encode or send anything (a watcher turns
a notification into a push), nor know about the bus, Redis or timers: every
change of a holder of this node is handed to the `mirror`, which copies it
to the other nodes, and `server.sessions` decides when a session's presence
degrades and when it ends.

A connection is present in a topic while it holds a subscription whose
pattern is exactly that topic: subscribing to `docs/42` joins `docs/42`; a
wildcard subscription (`docs/+`) watches events but joins no topic.

Members and holders. What holds a member present is a *holder*: a
subscription of this node (keyed by the subscription, so an unsubscribe
racing a new subscribe to the same topic cannot remove the newer one), a
session's *held* place (`hold`: the connection is gone, the session waits
for it within its grace period), or a holder of another node (keyed by that
node's id and the holder's id there). Holders whose info names the same
`session` are ONE member: a session that continues on a new connection, or
on another node, adds a holder to the member it already is — watchers see
its state change (`degraded` → `active`), never a leave and a join. A member
is shown with the info of an active holder if it has one; it leaves when its
last holder goes. Each holder of this node has an id (unique on this node)
under which the other nodes know it.

Every node holds the whole deployment's members (its own and a copy of the
others'), so `clients` and `page` answer from memory, in the order this node
learned of the members (docs/scale-out.md, "Presence and limits across nodes").
A page's cursor is the join number of its last member on this node: members
that join while a client pages come on later pages, none present throughout
is shown twice or skipped; a cursor is good on the node that made it only.
"""

from __future__ import annotations

import bisect
import itertools
import secrets
from collections.abc import Hashable, Mapping
from typing import Final, Literal, Protocol

import msgspec

from hybridbus.errors import InvalidCursor
from hybridbus.proto.frames import ClientInfo

__all__ = ["Change", "Mirror", "PresenceRegistry", "Watcher", "held_key"]

# A notification: a member joined, left, or its state changed to "active" / "degraded".
Change = Literal["join", "leave", "active", "degraded"]
_ACTIVE: Final = "active"

# Markers no holder a caller makes can equal: other nodes' holders, sessions' held
# places, and the member key of a session.
_REMOTE: Final = object()
_HELD: Final = object()
_SESSION: Final = object()


def held_key(session: str) -> tuple[object, str]:
    """The holder under which `session`'s presence waits for it (see `hold`)."""
    return (_HELD, session)


class Watcher(Protocol):
    """Whoever asked for the presence changes of a topic (a connection)."""

    def presence_changed(self, change: Change, topic: str, info: ClientInfo) -> None:
        """`info` joined, left, or changed state in the absolute `topic`. Must not raise."""
        ...


class Mirror(Protocol):
    """Where the changes of this node's holders are copied to (the other nodes)."""

    def changed(self, joined: bool, member: str, topic: str, info: ClientInfo) -> None:
        """This node's holder `member` joined or changed (or left) `topic`. Must not block."""
        ...


class _Member:
    """One client present in one topic: its holders, the info shown, its join number."""

    __slots__ = ("holders", "info", "number")

    def __init__(self, number: int, info: ClientInfo) -> None:
        self.number = number
        self.info = info
        self.holders: dict[Hashable, ClientInfo] = {}

    def shown(self) -> ClientInfo:
        """The info of an active holder, if there is one; else the first holder's."""
        first = None
        for info in self.holders.values():
            if info.state == _ACTIVE:
                return info
            first = first or info
        return first or self.info


def _member_key(holder: Hashable, info: ClientInfo) -> Hashable:
    return (_SESSION, info.session) if info.session is not None else holder


def _number(member: _Member) -> int:
    return member.number


class PresenceRegistry:
    """Members and watchers per absolute topic, this node's and a copy of the others'."""

    def __init__(self) -> None:
        # topic -> member key -> member, in join order.
        self._members: dict[str, dict[Hashable, _Member]] = {}
        # (topic, holder) -> the key of the member it holds.
        self._keys: dict[tuple[str, Hashable], Hashable] = {}
        self._watchers: dict[str, set[Watcher]] = {}
        self._watched: dict[Watcher, set[str]] = {}
        # This node's holders: (topic, holder) -> (id, info); and by session.
        self._local: dict[tuple[str, Hashable], tuple[str, ClientInfo]] = {}
        self._by_session: dict[str, set[tuple[str, Hashable]]] = {}
        self._ids = itertools.count(1)
        self._numbers = itertools.count(1)
        # Cursors of another registry (another node, an earlier process) are refused.
        self._nonce = secrets.token_hex(4)
        # The other nodes' holders: node -> id -> (topic, info).
        self._remote: dict[str, dict[str, tuple[str, ClientInfo]]] = {}
        self.mirror: Mirror | None = None

    # -- asking ------------------------------------------------------------------------

    def clients(self, topic: str) -> list[ClientInfo]:
        """Who is present in the absolute `topic`, on every node, oldest member first."""
        members = self._members.get(topic)
        return [member.info for member in members.values()] if members else []

    def count(self, topic: str) -> int:
        """How many members `topic` has."""
        return len(self._members.get(topic, ()))

    def page(
        self, topic: str, limit: int, cursor: str | None = None
    ) -> tuple[list[ClientInfo], str | None]:
        """Up to `limit` members of `topic` after `cursor`, oldest first, and the next cursor.

        The next cursor is None after the last page. Raises `InvalidCursor` for a
        cursor this registry did not make.
        """
        after = 0
        if cursor is not None:
            nonce, _, number = cursor.partition(".")
            try:
                after = int(number, 16)
            except ValueError:
                after = -1
            if nonce != self._nonce or after < 0:
                raise InvalidCursor("this presence cursor was not made by this node: start over")
        members = self._members.get(topic)
        if not members:
            return [], None
        ordered = list(members.values())
        start = bisect.bisect_right(ordered, after, key=_number) if after else 0
        taken = ordered[start : start + limit]
        more = start + limit < len(ordered)
        next_cursor = f"{self._nonce}.{taken[-1].number:x}" if more and taken else None
        return [member.info for member in taken], next_cursor

    def topics(self) -> int:
        """How many topics have members."""
        return len(self._members)

    # -- this node's holders ----------------------------------------------------------

    def join(self, topic: str, member: Hashable, info: ClientInfo) -> None:
        """`member` (a subscription) of the client `info` is now present in `topic`.

        If `info`'s session held its place in `topic` (`hold`), the session is
        back: the held place is let go without a notification.
        """
        if (topic, member) in self._local:
            return
        self._add_local(topic, member, info)
        if info.session is not None:
            held = held_key(info.session)
            if held != member and (topic, held) in self._local:
                self.leave(topic, held)

    def leave(self, topic: str, member: Hashable) -> None:
        """`member` left `topic` (idempotent)."""
        found = self._local.pop((topic, member), None)
        if found is None:
            return
        id, info = found
        self._unindex(topic, member, info)
        self._drop(topic, member)
        if self.mirror is not None:
            self.mirror.changed(False, id, topic, info)

    def hold(self, session: str, state: Literal["active", "degraded"]) -> int:
        """Keep every place of `session` on this node in `state` under its held key.

        Its subscriptions' places move there (their connection is going, the
        session stays): watchers see the state change, nothing else. Returns
        how many topics the session holds.
        """
        places = self._by_session.get(session)
        if not places:
            return 0
        held = held_key(session)
        for topic, holder in list(places):
            if (topic, holder) not in self._local:  # an older held place, let go above
                continue
            id, info = self._local[topic, holder]
            changed = msgspec.structs.replace(info, state=state)
            if holder != held:
                if (topic, held) in self._local:  # already held there: the older place goes
                    self.leave(topic, held)
                del self._local[topic, holder]
                places.discard((topic, holder))
                self._keys[topic, held] = self._keys.pop((topic, holder))
                member = self._members[topic][self._keys[topic, held]]
                del member.holders[holder]
                places.add((topic, held))
            self._local[topic, held] = (id, changed)
            self._update(topic, held, changed)
            if self.mirror is not None:
                self.mirror.changed(True, id, topic, changed)
        return len(places)

    def release(self, session: str) -> None:
        """`session` ended: every place it held leaves (its subscriptions' stay)."""
        held = held_key(session)
        for topic, holder in list(self._by_session.get(session, ())):
            if holder == held:
                self.leave(topic, holder)

    def local(self) -> list[tuple[str, str, ClientInfo]]:
        """This node's holders as (id, topic, info), oldest first (to copy them whole)."""
        return [(id, topic, info) for (topic, _), (id, info) in self._local.items()]

    def _add_local(self, topic: str, holder: Hashable, info: ClientInfo) -> None:
        id = f"{next(self._ids):x}"
        self._local[topic, holder] = (id, info)
        if info.session is not None:
            self._by_session.setdefault(info.session, set()).add((topic, holder))
        self._add(topic, holder, info)
        if self.mirror is not None:
            self.mirror.changed(True, id, topic, info)

    def _unindex(self, topic: str, holder: Hashable, info: ClientInfo) -> None:
        if info.session is not None:
            places = self._by_session.get(info.session)
            if places is not None:
                places.discard((topic, holder))
                if not places:
                    del self._by_session[info.session]

    # -- the other nodes' holders ------------------------------------------------------

    def nodes(self) -> list[str]:
        """The other nodes this node holds members of."""
        return list(self._remote)

    def apply(self, node: str, joined: bool, id: str, topic: str, info: ClientInfo) -> None:
        """A holder `id` of the other node `node` joined, changed or left `topic` (idempotent)."""
        held = self._remote.get(node)
        key = (_REMOTE, node, id)
        if not joined:
            if held is not None and held.get(id, ("",))[0] == topic:
                del held[id]
                if not held:
                    del self._remote[node]
                self._drop(topic, key)
            return
        if held is None:
            held = self._remote[node] = {}
        before = held.get(id)
        if before is not None:
            if before[0] == topic:
                if before[1] != info:
                    held[id] = (topic, info)
                    self._update(topic, key, info)
                return
            self.apply(node, False, id, *before)  # moved: an id is one holder of one topic
            held = self._remote.setdefault(node, {})
        held[id] = (topic, info)
        self._add(topic, key, info)

    def lapsed(self, node: str) -> None:
        """`node` stopped beating: its sessions' holders show "degraded", the others go.

        The sessions' places stay until the node that adopts them says so (`drop`).
        """
        for id, (topic, info) in list(self._remote.get(node, {}).items()):
            if info.session is None:
                self.apply(node, False, id, topic, info)
            elif info.state != "degraded":
                self.apply(node, True, id, topic, msgspec.structs.replace(info, state="degraded"))

    def adopt(self, sessions: set[str], node: str | None = None) -> int:
        """Hold on this node the places of `sessions` that `node` (None: any node) holds.

        They become this node's held places, shown "degraded" (the sessions
        moved here: their node died, or their client came back here).
        Returns how many places were adopted.
        """
        found = 0
        for held in [self._remote.get(node, {})] if node is not None else self._remote.values():
            for topic, info in list(held.values()):
                if info.session in sessions and (topic, held_key(info.session)) not in self._local:
                    changed = msgspec.structs.replace(info, state="degraded")
                    self._add_local(topic, held_key(info.session), changed)
                    found += 1
        return found

    def replace(self, node: str, members: Mapping[str, tuple[str, ClientInfo]]) -> None:
        """`node`'s holders are now exactly `members` (id -> (topic, info)): tell the changes."""
        held = self._remote.get(node, {})
        for id, (topic, info) in list(held.items()):
            if members.get(id, ("",))[0] != topic:
                self.apply(node, False, id, topic, info)
        for id, (topic, info) in members.items():
            self.apply(node, True, id, topic, info)

    def drop(self, node: str) -> None:
        """`node` is gone: each of its holders goes."""
        self.replace(node, {})

    # -- watchers -----------------------------------------------------------------------

    def watch(self, topic: str, watcher: Watcher) -> None:
        """Notify `watcher` of every later join, leave and state change in `topic`."""
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

    # -- members ---------------------------------------------------------------------------

    def _add(self, topic: str, holder: Hashable, info: ClientInfo) -> None:
        members = self._members.setdefault(topic, {})
        key = _member_key(holder, info)
        self._keys[topic, holder] = key
        member = members.get(key)
        if member is None:
            member = members[key] = _Member(next(self._numbers), info)
            member.holders[holder] = info
            self._notify("join", topic, info)
            return
        member.holders[holder] = info
        self._show(topic, member)

    def _update(self, topic: str, holder: Hashable, info: ClientInfo) -> None:
        key = self._keys.get((topic, holder))
        member = self._members.get(topic, {}).get(key) if key is not None else None
        if member is not None:
            member.holders[holder] = info
            self._show(topic, member)

    def _drop(self, topic: str, holder: Hashable) -> None:
        """Take `holder` out of `topic`; its member leaves with its last holder."""
        key = self._keys.pop((topic, holder), None)
        members = self._members.get(topic)
        if key is None or not members or key not in members:
            return
        member = members[key]
        member.holders.pop(holder, None)
        if member.holders:
            self._show(topic, member)
            return
        del members[key]
        if not members:
            del self._members[topic]
        self._notify("leave", topic, member.info)

    def _show(self, topic: str, member: _Member) -> None:
        before, member.info = member.info, member.shown()
        if member.info.state != before.state:
            self._notify(member.info.state, topic, member.info)

    def _notify(self, change: Change, topic: str, info: ClientInfo) -> None:
        watchers = self._watchers.get(topic)
        if watchers:
            for watcher in tuple(watchers):
                watcher.presence_changed(change, topic, info)
