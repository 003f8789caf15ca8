"""The consumer-group messages of the client protocol (docs/protocol.md §5.9, §6.6-6.7).

Owns: the commands `group_join`, `group_leave`, `ack`, `nack`, `extend`,
`term`, the pushes `group_event` and `group_left`, and their results.
`proto.frames` puts them in its unions (`Command`, `ServerMessage`, `Result`)
and re-exports them; their bases carry the same struct settings as the
others there (commands refuse unknown fields, server messages and results
allow them). Must not do I/O.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec

__all__ = [
    "MAX_SETTLE_IDS",
    "GroupAck",
    "GroupCommand",
    "GroupEventPush",
    "GroupExtend",
    "GroupJoin",
    "GroupJoinResult",
    "GroupLeave",
    "GroupLeaveResult",
    "GroupLeft",
    "GroupNack",
    "GroupTerm",
    "SettleResult",
]

# Delivery ids one `ack` / `extend` may carry.
MAX_SETTLE_IDS: Final = 1000

# As in proto.frames: command ids fit a JavaScript number; the server checks names and topics.
CommandId = Annotated[int, msgspec.Meta(ge=1, le=2**53 - 1)]
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
TopicText = str
Seconds = Annotated[float, msgspec.Meta(ge=0)]
# A group's name is the server's to check too (1006); this only bounds it.
GroupName = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
DeliveryId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
DeliveryIds = Annotated[list[DeliveryId], msgspec.Meta(min_length=1, max_length=MAX_SETTLE_IDS)]
Reason = Annotated[str, msgspec.Meta(max_length=1000)]


class _GroupCommand(
    msgspec.Struct, tag_field="type", omit_defaults=True, forbid_unknown_fields=True
):
    id: CommandId


class _GroupServer(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    pass


class _GroupResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    pass


class GroupJoin(_GroupCommand, tag="group_join"):
    """Join consumer group `group` (created over `pattern` with `settings` if it does not exist).

    `member` names the member (a reconnecting client gives the name it had);
    without it the server makes one up. Deliveries come as `group_event` pushes.
    """

    group: GroupName
    pattern: TopicText | None = None
    settings: dict[str, Any] | None = None
    member: Label | None = None


class GroupLeave(_GroupCommand, tag="group_leave"):
    """Leave group `group`: no more deliveries; those held come back after their lease."""

    group: GroupName


class GroupAck(_GroupCommand, tag="ack"):
    """The deliveries were handled; answered once that is durable."""

    group: GroupName
    deliveries: DeliveryIds


class GroupNack(_GroupCommand, tag="nack"):
    """The delivery failed: deliver it again after `delay` s (absent: the group's backoff)."""

    group: GroupName
    delivery: DeliveryId
    delay: Seconds | None = None
    error: Reason | None = None


class GroupExtend(_GroupCommand, tag="extend"):
    """The handler needs more time: each delivery's lease starts over."""

    group: GroupName
    deliveries: DeliveryIds


class GroupTerm(_GroupCommand, tag="term"):
    """Give up on the delivery now: it goes to the group's dead letters."""

    group: GroupName
    delivery: DeliveryId
    reason: Reason | None = None


GroupCommand = GroupJoin | GroupLeave | GroupAck | GroupNack | GroupExtend | GroupTerm


class GroupEventPush(_GroupServer, tag="group_event"):
    """One delivery of a consumer group's event to this connection's member of `group`.

    `delivery` is the id that settles it (`ack`, `nack`, `extend`, `term`,
    from any connection); `attempt` counts from 1; `dedupe` is the same on
    every delivery of one event.
    """

    group: str
    delivery: str
    attempt: int
    dedupe: str
    topic: str
    offset: int
    event: msgspec.Raw


class GroupLeft(_GroupServer, tag="group_left"):
    """The server ended the connection's membership of `group` (an `ErrorCode` says why).

    E.g. 1401 when the group was deleted. What the member held and did not
    settle comes back to the group when its lease ends.
    """

    group: str
    code: int
    reason: str


class GroupJoinResult(_GroupResult):
    """The membership: the group's name, the member's name (keep it for a rejoin), its pattern."""

    group: str
    member: str
    pattern: str


class GroupLeaveResult(_GroupResult):
    """Nothing: the membership is over."""


class SettleResult(_GroupResult):
    """Nothing: the `ack`, `nack`, `extend` or `term` is done (durable, for `ack`)."""
