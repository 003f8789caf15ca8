"""A timing wheel: many deadlines, each pass touching only the items that are due.

Owns: which of many items are due at a time `now`, for a ticker that visits
a few of them each pass (the node's heartbeat: 10,000 connections, each
needing a look once per ping interval, not once per pass). Must not read a
clock, sleep or call anything back: the caller passes `now` and acts on the
items `due` hands back, then schedules each one's next deadline.

Theory of operation. Time is cut into slots of `resolution` seconds; slot k
holds the items whose deadline falls in ((k - 1)·r, k·r], so an item is never
handed out before its deadline, and no later than the first pass after its
slot ends. An item waits in at most one slot: scheduling it again moves it.
The slot it waits in is kept on the item itself (`wheel_slot`, -1 for none),
so a wheel of N items costs a set entry each and no map of its own; an item
belongs to one wheel at a time. `due(now, limit)` empties the slots up to
now's, oldest first, handing out at most `limit` items: the rest stay where
they are and come out first next pass, so a herd of equal deadlines is spread
over passes instead of stalling one. An item scheduled into a slot already
emptied goes to the first slot not emptied: it is due at the next pass.
"""

from __future__ import annotations

import math
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Slotted", "Wheel"]


class Slotted(Protocol):
    """An item a `Wheel` can hold: it carries the slot it waits in (-1: none)."""

    wheel_slot: int


T = TypeVar("T", bound=Slotted)


class _Bucket(set[Any]):
    """The items of one slot, and its number: every item in it shares that one int."""

    __slots__ = ("key",)

    def __init__(self, key: int) -> None:
        super().__init__()
        self.key = key


class Wheel(Generic[T]):
    """Items by deadline in slots of `resolution` seconds (see the module docstring)."""

    __slots__ = ("_count", "_next", "_resolution", "_slots")

    def __init__(self, resolution: float) -> None:
        if not resolution > 0:
            raise ValueError("a wheel's resolution must be > 0 seconds")
        self._resolution = resolution
        self._slots: dict[int, _Bucket] = {}
        # The first slot not emptied yet; None until the first pass.
        self._next: int | None = None
        self._count = 0

    @property
    def resolution(self) -> float:
        """Seconds per slot."""
        return self._resolution

    def __len__(self) -> int:
        return self._count

    def __contains__(self, item: T) -> bool:
        return item.wheel_slot >= 0

    def schedule(self, item: T, when: float) -> None:
        """Hand `item` out at the first pass at or after `when` (moving it if it waits)."""
        slot = math.ceil(when / self._resolution)
        first = self._next
        if first is not None and slot < first:
            slot = first
        current = item.wheel_slot
        if current == slot:
            return
        if current >= 0:
            self._discard(item, current)
        else:
            self._count += 1
        bucket = self._slots.get(slot)
        if bucket is None:
            bucket = self._slots[slot] = _Bucket(slot)
        bucket.add(item)
        item.wheel_slot = bucket.key

    def cancel(self, item: T) -> None:
        """Forget `item` (nothing if it does not wait)."""
        slot = item.wheel_slot
        if slot >= 0:
            self._discard(item, slot)
            self._count -= 1
            item.wheel_slot = -1

    def due(self, now: float, limit: int | None = None) -> list[T]:
        """The items whose slot ended by `now`, oldest slot first; at most `limit` of them.

        They no longer wait: schedule each again for its next deadline.
        """
        last = math.floor(now / self._resolution)
        first = self._next
        slots = self._slots
        keys: range | list[int]
        if first is None or last - first > len(slots):  # after a long stall: only what is there
            keys = sorted(key for key in slots if key <= last)
        else:
            keys = range(first, last + 1)
        out: list[T] = []
        for key in keys:
            bucket = slots.get(key)
            if bucket is None:
                continue
            room = len(bucket) if limit is None else limit - len(out)
            if len(bucket) > room:  # the rest of this slot comes out first next pass
                for _ in range(room):
                    item: T = bucket.pop()
                    item.wheel_slot = -1
                    out.append(item)
                self._count -= room
                self._next = key
                return out
            del slots[key]
            for item in bucket:
                item.wheel_slot = -1
            out.extend(bucket)
            self._count -= len(bucket)
        if first is None or last >= first:
            self._next = last + 1
        return out

    def _discard(self, item: T, slot: int) -> None:
        bucket = self._slots[slot]
        bucket.discard(item)
        if not bucket:
            del self._slots[slot]
