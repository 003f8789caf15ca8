"""The consumer-group memberships of one connection, and the commands that settle deliveries.

Owns: joining a group for a client (`group_join`: through the node's
`GroupGuard`, which checks `consume` / `manage` and creates a missing group),
one member per joined group whose listener turns each `GroupDelivery` into a
`group_event` push (the event's encoding shared with every other push of it,
its topic relative to the tenant) queued on the connection, leaving
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
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from hybridbus.errors import BusError
from hybridbus.hub.group import Group
from hybridbus.hub.guard import Principal
from hybridbus.hub.member import GroupDelivery, Member, parse_delivery_id
from hybridbus.proto.frames import (
    GroupAck,
    GroupCommand,
    GroupExtend,
    GroupJoin,
    GroupJoinResult,
    GroupLeave,
    GroupLeaveResult,
    GroupNack,
    SettleResult,
)

if TYPE_CHECKING:
    from hybridbus.server.connection import Connection

__all__ = ["Memberships"]

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
        elif isinstance(command, GroupAck):
            group = self._group(command.group)
            for delivery_id in command.deliveries:
                parse_delivery_id(delivery_id)  # a malformed id refuses them all
            self._settle(command.id, group.ack(command.deliveries))
        elif isinstance(command, GroupNack):
            group = self._group(command.group)
            nack = group.nack(command.delivery, command.delay, command.error or "")
            self._settle(command.id, nack)
        elif isinstance(command, GroupExtend):
            group = self._group(command.group)
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
            group = self._group(command.group)
            self._settle(command.id, group.term(command.delivery, command.reason or ""))

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
            session.error(command.id, exc)
            if self._entries.get(entry.name) is entry:
                del self._entries[entry.name]
            if entry.leave is not None:
                session.reply(entry.leave, GroupLeaveResult())
            connection.flush()
            return
        entry.member = member
        member.on_end = lambda error: self._ended(entry, error)
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
            for delivery in held:
                self._push(entry, delivery)
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

    def _give(self, entry: _Entry, delivery: GroupDelivery) -> None:
        """The member's listener: push `delivery` (the group calls it in its dispatch pass)."""
        if self._closed:
            return  # the member is leaving: the delivery comes back after its lease
        if not entry.answered or entry.leave is not None:
            entry.held.append(delivery)
            return
        self._push(entry, delivery)
        self._connection.flush()

    def _push(self, entry: _Entry, delivery: GroupDelivery) -> None:
        connection = self._connection
        session = connection.session
        codec = session.codec
        d = delivery.delivery
        encoded = codec.encode_group_push(
            entry.name,
            delivery.id,
            delivery.attempt,
            delivery.dedupe_key,
            connection.admitted.relative(d.topic),
            d.offset,
            connection.node.pushes.event_bytes(codec, d),
        )
        session.push(encoded)
        connection.pushed(1, d.time)

    # -- settling ------------------------------------------------------------------------

    def _group(self, name: str) -> Group:
        connection = self._connection
        return connection.node.groups.get(connection.admitted, name, "consume")

    def _settle(self, id: int, settling: Awaitable[None]) -> None:
        self._connection.spawn(self._run_settle(id, settling))

    async def _run_settle(self, id: int, settling: Awaitable[None]) -> None:
        connection = self._connection
        session = connection.session
        try:
            await settling
        except Exception as exc:
            if not isinstance(exc, BusError):
                log.exception("settling a delivery of %s failed", connection.id)
            session.error(id, exc)
        else:
            session.reply(id, SettleResult())
        connection.flush()


def _quit(entry: _Entry) -> None:
    """Leave the group: deliveries never pushed go back at once, pushed ones after their lease."""
    member = entry.member
    if member is None:
        return
    held, entry.held = entry.held, []
    if held and not member.closed:
        member.group.leave(member, held)
    member.close()
