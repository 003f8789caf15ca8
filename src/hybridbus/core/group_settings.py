"""What a consumer group is and what a store keeps of it: settings, redelivery waits, records.

Owns: `GroupSettings` (a group's pattern and how it hands out events, with
their validation), `Redelivery` (the wait after a failed delivery: an
explicit schedule, or exponential backoff with full jitter from
`core.backoff`), `PendingRecord` (an entry as stored) and the key it is
stored under, and `Changes` (what a store must write since the last time).
Must not do I/O; `core.groups` is the state machine using them.
"""

from __future__ import annotations

import math
import random

import msgspec

from hybridbus.core.backoff import Backoff

__all__ = ["Changes", "GroupSettings", "PendingRecord", "Redelivery", "entry_key"]


class Redelivery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How long a failed delivery waits before it comes back (seconds).

    `schedule`, when given, lists the waits after failure 1, 2, ... (the last
    one repeats); otherwise the wait after failure n is uniform in
    [0, min(max, base * factor**(n - 1))]. `jitter` (0 to 1, schedules only)
    spreads each scheduled wait w uniformly over [w * (1 - jitter), w * (1 +
    jitter)], from the group's random source, so that events failed together
    do not all come back in the same instant (the backoff has full jitter).
    """

    base: float = 1.0
    factor: float = 2.0
    max: float = 60.0
    schedule: tuple[float, ...] = ()
    jitter: float = 0.0

    def __post_init__(self) -> None:
        Backoff(base=self.base, factor=self.factor, cap=self.max)  # raises ValueError
        if any(not (math.isfinite(w) and w >= 0) for w in self.schedule):
            raise ValueError("every wait of a redelivery schedule is a number >= 0")
        if not (math.isfinite(self.jitter) and 0 <= self.jitter <= 1):
            raise ValueError(f"redelivery.jitter is a fraction from 0 to 1, not {self.jitter}")

    def wait(self, failures: int, rng: random.Random) -> float:
        """The wait after failed delivery number `failures` (1 for the first)."""
        if self.schedule:
            wait = self.schedule[min(failures, len(self.schedule)) - 1]
            if self.jitter:
                wait *= 1.0 + self.jitter * (2.0 * rng.random() - 1.0)
            return wait
        backoff = Backoff(base=self.base, factor=self.factor, cap=self.max)
        return backoff.delay(failures - 1, rng)


class GroupSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a group is: its pattern and how it hands out events (durations in seconds).

    `start` is where a new group begins: `"latest"` (events appended from
    now on), `"earliest"` (every retained event) or a resume token.
    """

    pattern: str
    start: str = "latest"
    ack_wait: float = 30.0
    redelivery: Redelivery = Redelivery()
    max_deliveries: int = 5
    ordered: bool = True
    max_in_flight: int = 1_000
    member_in_flight: int = 100
    max_pending: int = 10_000

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ack_wait) and self.ack_wait > 0):
            raise ValueError(f"ack_wait must be a number of seconds > 0, not {self.ack_wait}")
        for name in ("max_deliveries", "max_in_flight", "member_in_flight", "max_pending"):
            value = getattr(self, name)
            if not (type(value) is int and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, not {value!r}")


class PendingRecord(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """An entry as stored: enough to rebuild it (the event itself stays in the log).

    Times are Unix seconds (`first` / `last`: first and latest delivery, 0
    if none); `member` is who holds the lease ("" when waiting).
    """

    shard: int
    position: int
    topic: str
    offset: int
    key: str
    attempts: int
    due: float
    member: str = ""
    first: float = 0.0
    last: float = 0.0
    error: str = ""


def entry_key(shard: int, position: int) -> str:
    """The key of a pending entry in a store (`GroupWrite`): unique per log position."""
    return f"{shard}.{position}"


class Changes(msgspec.Struct, frozen=True):
    """What to persist since the last `GroupCore.changes()`.

    `cursor`, `floor` and `settled` are None / empty when unchanged (then the
    stored ones still hold); see "Persistence" in `core.groups`.
    """

    cursor: tuple[int, ...] | None
    put: list[tuple[str, PendingRecord]]
    delete: list[str]
    floor: tuple[int, ...] | None = None
    settled: tuple[tuple[int, ...], ...] = ()
