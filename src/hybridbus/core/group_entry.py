"""A consumer group's pending entry and member, as the state machine keeps them.

Owns: `Entry` (an event taken from the log and not yet settled: where it is,
its delivery if loaded, its lease or wait, what a store keeps of it) and
`MemberState` (a member's name and the entries it holds), with the two
states a pending entry is in (`WAITING`, `LEASED`) and the one it ends in
(`SETTLED`: acked or buried, it left the group's entries for good). Must not decide anything:
`core.groups.GroupCore` moves entries between states; no I/O.
"""

from __future__ import annotations

from typing import Final

import msgspec

from hybridbus.core.group_settings import PendingRecord, entry_key
from hybridbus.core.log import Delivery

__all__ = ["LEASED", "SETTLED", "WAITING", "Entry", "MemberState", "fresh_entry"]

WAITING: Final = 0
LEASED: Final = 1
SETTLED: Final = 2


class Entry(msgspec.Struct, eq=False, gc=False):
    """A pending event: where it is in the log, its delivery if loaded, and its lease state.

    A fresh entry of a delivery `d`, waiting since `now` and never delivered:
    `Entry(d.shard, d.position, d.topic, d.offset, key, d, now)` (`fresh_entry`). A struct
    made once per event taken (half the cost of a class with `__init__`),
    compared and hashed by identity, and left out of the cyclic collector: it
    refers to nothing that could refer back to it.
    """

    shard: int
    position: int
    topic: str
    offset: int
    key: str
    delivery: Delivery | None
    due: float
    attempts: int = 0
    member: str = ""
    first: float = 0.0
    last: float = 0.0
    error: str = ""
    dedupe: str = ""  # the edge's dedupe key of the event, once it computed it
    issued: str = ""  # the edge's id of its latest delivery, once it made one
    state: int = WAITING
    stored: bool = False  # a put of it was handed out by `changes`
    pinned: bool = False  # always written (not covered by the floor): a replayed dead letter
    wheel_slot: int = -1

    @classmethod
    def restored(cls, record: PendingRecord) -> Entry:
        """An entry as a store kept it; its delivery is loaded later."""
        return cls(
            record.shard,
            record.position,
            record.topic,
            record.offset,
            record.key,
            None,
            record.due,
            attempts=record.attempts,
            member=record.member,
            first=record.first,
            last=record.last,
            error=record.error,
            state=LEASED if record.member else WAITING,
            stored=True,
        )

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
        state = ("waiting", "leased", "settled")[self.state]
        return f"<Entry {self.topic}#{self.offset} {state} attempts={self.attempts}>"


def fresh_entry(delivery: Delivery, key: str, now: float) -> Entry:
    """A fresh entry of `delivery` (of key `key`): waiting since `now`, never delivered."""
    return Entry(
        delivery.shard, delivery.position, delivery.topic, delivery.offset, key, delivery, now
    )


class MemberState:
    """A member of a group: its name and the entries it holds."""

    __slots__ = ("held", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.held: set[Entry] = set()
