"""The consumer-group memberships of one connection, and the commands that settle deliveries.

Owns: joining a group for a client (`group_join`: through the node's
`GroupGuard`, which checks `consume` / `manage` and creates a missing group),
one member per joined group whose listener turns the `GroupDelivery`s of each
dispatch pass into `group_event` pushes queued on the connection at once (in
MessagePack the event's stored bytes as they are; else its encoding shared
with subscribers' pushes of it while the group is caught up; its topic
relative to the tenant), leaving
(`group_leave`, also while the join is under way), settling deliveries by id
(`ack`, `nack`, `extend`, `term` — from any connection, a member or not, with
`consume` on the group's pattern), and ending every membership when the
connection ends. Must not write to the transport (the connection does), nor
keep any group state (the hub's `Group` does: a delivery pushed and never
settled comes back to the group when its lease ends, `ack_wait`).

Order. The `group_join` reply comes before any push of the membership:
deliveries handed to the member before the reply is queued wait in the entry
and follow it. Flow control is the group's: a member holds at most
`member_in_flight` unsettled deliveries, so a connection's pushes of a group
are bounded by it; the outbox's bound (SLOW_CONSUMER) applies as to any push.

Joining with settings equal to the group's (its `start` aside) is no change
of settings (`GroupGuard.join`): it needs `consume` only, so a client that
rejoins after a reconnect with the settings it created the group with is let in.

Many nodes (docs/groups.md). A join or a settling command for a group this
node does not coordinate is refused with NOT_COORDINATOR (1405), the error
naming the node that does (`node`) and its WebSocket URL (`url`, from the
node registry); a membership whose group this node stops coordinating ends
with `group_left` 1405 (join again: here or where the answer sends you).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from hybridbus.errors import BusError, NotCoordinator, UnknownGroup
from hybridbus.hub.group import Group
from hybridbus.hub.guard import Principal
from hybridbus.hub.member import GroupDelivery, Member
from hybridbus.proto.codec import MSGPACK
from hybridbus.proto.frames import (
    GroupAck,
    GroupCommand,
    GroupExtend,
    GroupJoin,
    GroupJoinResult,
    GroupLeave,
    GroupLeaveResult,
    GroupNack,
    GroupTerm,
    SettleResult,
)

GroupSettle = GroupAck | GroupNack | GroupExtend | GroupTerm

if TYPE_CHECKING:
    from hybridbus.server.connection import Connection
    from hybridbus.server.registry import Registry

__all__ = ["Memberships", "for_websocket", "locator"]

log = logging.getLogger("hybridbus.server")


class _Entry:
    """One membership of the connection (or a join under way)."""

    __slots__ = ("answered", "held", "id", "leave", "member", "name")

    def __init__(self, id: int, name: str) -> None:
        self.id = id
        self.name = name  # the group as the client named it
        self.member: Member | None = None
        self.answered = False  # the group_join reply is queued: pushes go straight out
        self.held: list[GroupDelivery] = []  # handed over before the reply was queued
        self.leave: int | None = None  # a group_leave that came while joining


class Memberships:
    """The consumer-group memberships of one connection (see the module docstring)."""

    __slots__ = ("_closed", "_connection", "_entries")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._entries: dict[str, _Entry] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._entries)

    def handle(self, command: GroupCommand) -> None:
        """Execute one group command; raises `BusError` for a refusal known at once."""
        if isinstance(command, GroupJoin):
            self._join(command)
        elif isinstance(command, GroupLeave):
            self._leave(command)
        else:
            group = self._group(command.group)
            if group is None:  # not loaded here: claim it, or answer where it is
                self._connection.spawn(self._settle_elsewhere(command))
            else:
                self._settle_in(group, command)

    async def _settle_elsewhere(self, command: GroupSettle) -> None:
        connection = self._connection
        try:
            group = await connection.node.groups.reach(
                connection.admitted, command.group, "consume"
            )
            self._settle_in(group, command)
        except Exception as exc:
            if not isinstance(exc, BusError):
                log.exception("settling a delivery of %s failed", connection.id)
            connection.session.error(command.id, for_websocket(exc))
            connection.flush()

    def _settle_in(self, group: Group, command: GroupSettle) -> None:
        if isinstance(command, GroupAck):
            group.ack_ids(command.deliveries)  # a malformed id refuses them all
            self._settle(command.id, group.durable)
        elif isinstance(command, GroupNack):
            delivery, delay, error = command.delivery, command.delay, command.error or ""
            self._settle(command.id, lambda: group.nack(delivery, delay, error))
        elif isinstance(command, GroupExtend):
            failure: BusError | None = None
            for delivery_id in command.deliveries:
                try:
                    group.extend(delivery_id)
                except BusError as exc:  # the others are extended all the same
                    failure = failure or exc
            if failure is not None:
                raise failure
            self._connection.session.reply(command.id, SettleResult())
        else:  # GroupTerm
            delivery, reason = command.delivery, command.reason or ""
            self._settle(command.id, lambda: group.term(delivery, reason))

    def close(self) -> None:
        """The connection ended: leave every group (held deliveries come back after their lease)."""
        self._closed = True
        entries, self._entries = self._entries, {}
        for entry in entries.values():
            _quit(entry)

    # -- joining and leaving ------------------------------------------------------------

    def _join(self, command: GroupJoin) -> None:
        connection = self._connection
        entry = _Entry(command.id, command.group)
        self._entries[command.group] = entry
        connection.spawn(self._run_join(entry, command, connection.admitted))

    async def _run_join(self, entry: _Entry, command: GroupJoin, principal: Principal) -> None:
        connection = self._connection
        session = connection.session
        node = connection.node
        try:
            member = await node.groups.join(
                principal,
                command.group,
                command.pattern,
                command.settings,
                command.member,
                lambda delivery: self._give(entry, delivery),
            )
        except Exception as exc:
            if not isinstance(exc, BusError):
                log.exception("group_join of %s failed", connection.id)
            session.error(command.id, for_websocket(exc))
            if self._entries.get(entry.name) is entry:
                del self._entries[entry.name]
            if entry.leave is not None:
                session.reply(entry.leave, GroupLeaveResult())
            connection.flush()
            return
        entry.member = member
        member.on_end = lambda error: self._ended(entry, error)
        member.stored = session.codec is MSGPACK  # pushed the events' stored bytes
        if self._closed:
            _quit(entry)
            return
        session.reply(
            command.id,
            GroupJoinResult(
                group=command.group,
                member=member.name,
                pattern=principal.relative(member.group.settings.pattern),
            ),
        )
        entry.answered = True
        if entry.leave is not None:
            _quit(entry)  # what it was handed goes back at once
            session.reply(entry.leave, GroupLeaveResult())
        else:
            held, entry.held = entry.held, []
            if held:
                self._push(entry, held)
        connection.flush()

    def _ended(self, entry: _Entry, error: BaseException) -> None:
        """The group or the bus ended the membership: tell the client (`group_left`)."""
        if self._entries.get(entry.name) is not entry:
            return
        del self._entries[entry.name]
        if entry.answered:
            self._connection.session.end_group(entry.name, error, str(error))
            self._connection.flush()

    def _leave(self, command: GroupLeave) -> None:
        entry = self._entries.pop(command.group, None)
        if entry is not None and entry.member is None:
            entry.leave = command.id  # the join answers both
            return
        if entry is not None:
            _quit(entry)
        self._connection.session.reply(command.id, GroupLeaveResult())

    # -- pushing -------------------------------------------------------------------------

    def _give(self, entry: _Entry, deliveries: list[GroupDelivery]) -> None:
        """The member's listener: push `deliveries` (the group calls it in its dispatch pass)."""
        if self._closed:
            return  # the member is leaving: the deliveries come back after their lease
        if not entry.answered or entry.leave is not None:
            entry.held += deliveries
            return
        self._push(entry, deliveries)
        self._connection.flush()

    def _push(self, entry: _Entry, deliveries: list[GroupDelivery]) -> None:
        """Queue the `group_event` pushes of `deliveries`, in order, at once.

        In MessagePack, an event the engine read with its stored bytes
        (`Delivery.payload`: the MessagePack wire's encoding of the event, as
        the log keeps it) is sent as those bytes, not encoded again. Else: a
        caught-up group's events were just pushed to subscribers too, and
        their encoding comes from the node's encode-once cache; a group
        reading a backlog shares with nobody, and each event is encoded
        within its push, sparing the cache's bookkeeping (on a miss, about
        half as much again as the encoding).
        """
        connection = self._connection
        session = connection.session
        codec = session.codec
        encode = codec.encode_group_push
        member = entry.member
        shared = member is None or member.group.caught_up
        stored = codec is MSGPACK
        event_bytes = connection.node.pushes.event_bytes
        cut = len(connection.admitted.prefix)
        name = entry.name
        encoded = []
        for delivery in deliveries:
            d = delivery.delivery
            payload = d.payload
            encoded.append(
                encode(
                    name,
                    delivery.id,
                    delivery.attempt,
                    delivery.dedupe_key,
                    d.topic[cut:],
                    d.offset,
                    payload
                    if stored and payload is not None
                    else event_bytes(codec, d)
                    if shared
                    else d.event,
                )
            )
        session.push_many(encoded)
        connection.pushed(len(deliveries), min(d.delivery.time for d in deliveries))

    # -- settling ------------------------------------------------------------------------

    def _group(self, name: str) -> Group | None:
        """The group if loaded here (None: not loaded, and another node may coordinate it)."""
        connection = self._connection
        guard = connection.node.groups
        try:
            return guard.get(connection.admitted, name, "consume")
        except UnknownGroup:
            if not guard.groups.coordination.enabled:
                raise
            return None

    def _settle(self, id: int, settling: Callable[[], Awaitable[None]]) -> None:
        # Called in the task: a task cancelled before it starts (the connection closed)
        # leaves no coroutine never awaited.
        self._connection.spawn(self._run_settle(id, settling))

    async def _run_settle(self, id: int, settling: Callable[[], Awaitable[None]]) -> None:
        connection = self._connection
        session = connection.session
        try:
            await settling()
        except Exception as exc:
            if not isinstance(exc, BusError):
                log.exception("settling a delivery of %s failed", connection.id)
            session.error(id, exc)
        else:
            session.reply(id, SettleResult())
        connection.flush()


def locator(registry: Registry) -> Callable[[str], Awaitable[str]]:
    """Node id -> its HTTP base URL (`http://host:port`, "" if not registered), from `registry`.

    The first address a node listens on; one on every interface (0.0.0.0,
    ::) is reached by the node's hostname. The listing is read at most once
    a second.
    """
    cache: dict[str, str] = {}
    read_at = [-math.inf]

    async def locate(node_id: str) -> str:
        now = time.monotonic()
        if node_id not in cache and now - read_at[0] >= 1.0:
            read_at[0] = now
            cache.clear()
            for node in await registry.nodes():
                if node.addresses:
                    host, _, port = node.addresses[0].rpartition(":")
                    if host in ("0.0.0.0", "[::]", ""):
                        host = node.hostname
                    cache[node.id] = f"http://{host}:{port}"
        return cache.get(node_id, "")

    return locate


def for_websocket(error: BaseException) -> BaseException:
    """`error` as a WebSocket client needs it: NOT_COORDINATOR's `url` is the node's WebSocket."""
    if isinstance(error, NotCoordinator) and error.url.startswith("http"):
        url = "ws" + error.url[4:] + "/v1/ws"  # http -> ws, https -> wss
        return NotCoordinator(str(error), node=error.node, url=url)
    return error


def _quit(entry: _Entry) -> None:
    """Leave the group: deliveries never pushed go back at once, pushed ones after their lease."""
    member = entry.member
    if member is None:
        return
    held, entry.held = entry.held, []
    if held and not member.closed:
        member.group.leave(member, held)
    member.close()
