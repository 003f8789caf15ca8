"""A consumer group's pending entry and member, as the state machine keeps them.

Owns: `Entry` (an event taken from the log and not yet settled: where it is,
its delivery if loaded, its lease or wait, what a store keeps of it) and
`MemberState` (a member's name and the entries it holds), with the two
states an entry is in (`WAITING`, `LEASED`). Must not decide anything:
`core.groups.GroupCore` moves entries between states; no I/O.
"""

from __future__ import annotations

from typing import Final

from hybridbus.core.group_settings import PendingRecord, entry_key
from hybridbus.core.log import Delivery

__all__ = ["LEASED", "WAITING", "Entry", "MemberState"]

WAITING: Final = 0
LEASED: Final = 1


class Entry:
    """A pending event: where it is in the log, its delivery if loaded, and its lease state."""

    __slots__ = (
        "attempts",
        "dedupe",
        "delivery",
        "due",
        "error",
        "first",
        "key",
        "last",
        "member",
        "offset",
        "pinned",
        "position",
        "shard",
        "state",
        "stored",
        "topic",
        "wheel_slot",
    )

    def __init__(self, delivery: Delivery, key: str, now: float) -> None:
        """A fresh entry of `delivery`: waiting since `now`, never delivered."""
        self.shard = delivery.shard
        self.position = delivery.position
        self.topic = delivery.topic
        self.offset = delivery.offset
        self.key = key
        self.attempts = 0
        self.due = now
        self.member = ""
        self.first = 0.0
        self.last = 0.0
        self.error = ""
        self.dedupe = ""  # the edge's dedupe key of the event, once it computed it
        self.delivery: Delivery | None = delivery
        self.state = WAITING
        self.stored = False  # a put of it was handed out by `changes`
        self.pinned = False  # always written (not covered by the floor): a replayed dead letter
        self.wheel_slot = -1

    @classmethod
    def restored(cls, record: PendingRecord) -> Entry:
        """An entry as a store kept it; its delivery is loaded later."""
        entry = cls.__new__(cls)
        entry.shard = record.shard
        entry.position = record.position
        entry.topic = record.topic
        entry.offset = record.offset
        entry.key = record.key
        entry.attempts = record.attempts
        entry.due = record.due
        entry.member = record.member
        entry.first = record.first
        entry.last = record.last
        entry.error = record.error
        entry.dedupe = ""
        entry.delivery = None
        entry.state = LEASED if record.member else WAITING
        entry.stored = True
        entry.pinned = False
        entry.wheel_slot = -1
        return entry

    @property
    def id(self) -> str:
        """The entry's key (`entry_key`)."""
        return entry_key(self.shard, self.position)

    def record(self) -> PendingRecord:
        """What a store keeps of this entry."""
        return PendingRecord(
            shard=self.shard,
            position=self.position,
            topic=self.topic,
            offset=self.offset,
            key=self.key,
            attempts=self.attempts,
            due=self.due,
            member=self.member if self.state == LEASED else "",
            first=self.first,
            last=self.last,
            error=self.error,
        )

    def __repr__(self) -> str:
        state = "leased" if self.state == LEASED else "waiting"
        return f"<Entry {self.topic}#{self.offset} {state} attempts={self.attempts}>"


class MemberState:
    """A member of a group: its name and the entries it holds."""

    __slots__ = ("held", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.held: set[Entry] = set()
