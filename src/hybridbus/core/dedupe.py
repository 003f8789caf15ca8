"""The dedupe index: which (tenant, source, id) keys were appended lately, and where.

Owns: a map from the hash of each recently appended event's tenant (the first
segment of its topic) + `source` + `id` to its log position, forgotten once
older than the dedupe window. Must not do I/O: an engine verifies a hit
against the event stored at that position
(hashes can collide) and rebuilds the index from its log when it opens — the
way NATS JetStream keeps its duplicate window, so no on-disk index with
randomly ordered keys has to be written on every append.

The tenant is part of the key: two tenants' events with the same `source`
and `id` are two events — one tenant's event must never be taken for a
duplicate of another's (it would be lost, and the ack would name the other
tenant's topic).

Memory: about 100 bytes per event appended within the window.
"""

from __future__ import annotations

from collections import deque

__all__ = ["DedupeIndex"]


class DedupeIndex:
    """Recent (tenant, source, id) → position, for `window` seconds.

    Positions must be remembered in increasing order (as a log appends them);
    times must not decrease.
    """

    __slots__ = ("_positions", "_times", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        # Insertion order is position order: pruning pops from the front.
        self._positions: dict[int, int] = {}
        # (time, highest position appended at that time), one entry per time.
        self._times: deque[tuple[float, int]] = deque()

    def __len__(self) -> int:
        return len(self._positions)

    def lookup(self, tenant: str, source: str, id: str) -> int | None:
        """The position of an earlier append with this key, if one may exist.

        The caller checks the event at that position: it is a duplicate only
        if its tenant, source and id are equal and it is younger than the window.
        """
        return self._positions.get(hash((tenant, source, id)))

    def remember(self, tenant: str, source: str, id: str, position: int, time: float) -> None:
        """Record that `tenant` + `source` + `id` was appended at `position`, at `time`."""
        positions = self._positions
        key = hash((tenant, source, id))
        if key in positions:
            del positions[key]  # keep insertion order = position order
        positions[key] = position
        times = self._times
        if times and times[-1][0] == time:
            times[-1] = (time, position)
        else:
            times.append((time, position))

    def prune(self, now: float) -> int:
        """Forget keys appended `window` or more seconds before `now`; return how many."""
        times = self._times
        cutoff = now - self.window
        last = 0
        while times and times[0][0] <= cutoff:
            last = times.popleft()[1]
        if not last:
            return 0
        positions = self._positions
        expired = []
        for key, position in positions.items():
            if position > last:
                break
            expired.append(key)
        for key in expired:
            del positions[key]
        return len(expired)

    def clear(self) -> None:
        """Forget everything (the log was reset)."""
        self._positions.clear()
        self._times.clear()
