"""The sqlite engine's retention: which events count, size, age and expiry remove, in SQL.

Owns: the SQL that removes events for retention and expiry, the bookkeeping
every removal needs (the topic's stored `bytes`, its `trimmed_position`),
and the writer's caches of it: events and bytes per topic (kept when some
topic has such a limit), and each topic's oldest append time (for age rules).
Which limits a topic has is `engine._retention`'s.
Must not touch asyncio; runs in the writer thread, inside the transactions of
`engine._sqlite_store.Store`. The caches change only through a `Pending`
applied after its transaction committed, so a rollback leaves them right.

Size: an event's size is `length(payload)`, its stored MessagePack; each
topic's sum is `topics.bytes` (schema version 4), kept by every append and
removal in the same transaction, so it is never recomputed from the log.

Age: with no rules every topic has the same age limit and append times grow
with positions, so the old events are a prefix of the log (one range delete).
With rules they are a prefix of each topic only: each sweep looks at the topics
whose limits have an age, skipping those whose cached oldest append is young
enough, and deletes each old prefix through the (topic, position) index.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Final

from hybridbus.engine._retention import Limits, Retention
from hybridbus.engine.base import EngineConfig

__all__ = ["Pending", "Retainer"]

_RAISE_TRIMMED: Final = (
    "UPDATE topics SET trimmed_position = max(trimmed_position, ?) WHERE topic = ?"
)
_LESS_BYTES: Final = "UPDATE topics SET bytes = bytes - ? WHERE topic = ?"
_TRIM_OLDEST: Final = (
    "DELETE FROM log WHERE position IN "
    "(SELECT position FROM log WHERE topic = ? ORDER BY position LIMIT ?) "
    "RETURNING position, length(payload)"
)
_OLDEST_SIZES: Final = (
    "SELECT position, length(payload) FROM log WHERE topic = ? AND position > ? "
    "ORDER BY position LIMIT ?"
)
_DELETE_THROUGH: Final = "DELETE FROM log WHERE topic = ? AND position <= ?"
_FIRST_YOUNG: Final = (
    "SELECT position, time FROM log WHERE topic = ? AND time >= ? ORDER BY position LIMIT 1"
)
_DELETE_BEFORE: Final = (
    "DELETE FROM log WHERE topic = ? AND position < ? RETURNING position, length(payload)"
)
_UNKNOWN: Final = -1.0  # a cached oldest time: look it up (None: the topic is empty)


class Pending:
    """Changes to a `Retainer`'s caches, applied once their transaction committed."""

    __slots__ = ("counts", "oldest", "sizes")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}  # topic -> its count now
        self.sizes: dict[str, int] = {}  # topic -> its bytes now
        self.oldest: dict[str, float | None] = {}


class Retainer:
    """The writer thread's retention (see the module docstring)."""

    __slots__ = ("_counts", "_oldest", "_sizes", "rules")

    def __init__(self, config: EngineConfig) -> None:
        self.rules = Retention(config)
        self._counts: dict[str, int] = {}  # events per topic, if some topic has a count limit
        self._sizes: dict[str, int] = {}  # bytes per topic, if some topic has a size limit
        self._oldest: dict[str, float | None] = {}  # topic -> its oldest append time (age rules)

    def load(self, conn: sqlite3.Connection) -> None:
        """Fill the caches, then trim every topic to its limits (they may have shrunk).

        Runs inside the opening transaction.
        """
        rules = self.rules
        if rules.counts:
            self._counts = dict(
                conn.execute("SELECT topic, count(*) FROM log GROUP BY topic").fetchall()
            )
        if rules.sizes:
            self._sizes = dict(conn.execute("SELECT topic, bytes FROM topics").fetchall())
        if rules.counts or rules.sizes:
            pending = Pending()
            for topic in {*self._counts, *self._sizes}:
                self._trim(conn, topic, rules.of(topic), 0, 0, None, pending)
            self.commit(pending)

    def clear(self) -> None:
        """Forget everything (after a committed reset)."""
        self._counts.clear()
        self._sizes.clear()
        self._oldest.clear()

    def commit(self, pending: Pending) -> None:
        self._counts.update(pending.counts)
        self._sizes.update(pending.sizes)
        self._oldest.update(pending.oldest)

    def appended(
        self, conn: sqlite3.Connection, added: Mapping[str, tuple[int, int, int]], now: float
    ) -> Pending:
        """Trim the topics a batch appended to at `now`.

        `added`: topic -> (events, bytes, the newest position) the batch appended.
        """
        pending = Pending()
        rules = self.rules
        if rules.counts or rules.sizes:
            for topic, (events, size, newest) in added.items():
                self._trim(conn, topic, rules.of(topic), events, size, newest, pending)
        if not rules.uniform:
            oldest = self._oldest
            for topic in added:
                if oldest.get(topic, _UNKNOWN) is None:  # it was empty
                    pending.oldest[topic] = now
        return pending

    def _trim(
        self,
        conn: sqlite3.Connection,
        topic: str,
        limits: Limits,
        events: int,
        size: int,
        newest: int | None,
        pending: Pending,
    ) -> None:
        """Remove `topic`'s oldest events beyond its count and size limits.

        `events` and `size` were just added to it (not yet in the caches);
        `newest`: its newest position (None: look it up), never removed.
        """
        _, max_count, max_bytes = limits
        count = self._counts.get(topic, 0) + events
        total = self._sizes.get(topic, 0) + size
        if self.rules.counts:
            pending.counts[topic] = count
        if self.rules.sizes:
            pending.sizes[topic] = total
        over = count - max_count if max_count is not None else 0
        excess = total - max_bytes if max_bytes is not None else 0
        if excess > 0:
            if newest is None:
                newest = conn.execute(
                    "SELECT max(position) FROM log WHERE topic = ?", (topic,)
                ).fetchone()[0]
            # Oldest first until both limits hold; a few rows usually, so the
            # chunks start small (each row read is a lookup in the log).
            removed = freed = top = 0
            after = 0
            chunk = 4
            while over > removed or excess > freed:
                rows = conn.execute(_OLDEST_SIZES, (topic, after, chunk)).fetchall()
                for position, length in rows:
                    if (over <= removed and excess <= freed) or position == newest:
                        break
                    removed += 1
                    freed += length
                    top = position
                if len(rows) < chunk:
                    break
                after = rows[-1][0]
                chunk = min(chunk * 4, 1024)
            if not removed:
                return
            conn.execute(_DELETE_THROUGH, (topic, top))
        elif over > 0:
            gone = conn.execute(_TRIM_OLDEST, (topic, over)).fetchall()
            if not gone:
                return
            removed = len(gone)
            freed = sum(length for _, length in gone)
            top = max(position for position, _ in gone)
        else:
            return
        conn.execute(_RAISE_TRIMMED, (top, topic))
        conn.execute(_LESS_BYTES, (freed, topic))
        if self.rules.counts:
            pending.counts[topic] = count - removed
        if self.rules.sizes:
            pending.sizes[topic] = total - freed

    def sweep(
        self, conn: sqlite3.Connection, now: float, topics: Iterable[str], position: int
    ) -> tuple[int, Pending]:
        """Remove expired events, then those too old; return how many, and the cache changes.

        `topics`: every topic of the log; `position`: the newest position.
        """
        pending = Pending()
        # Expiry first: an expired event is no loss, even if it is also too old.
        gone: list[tuple[str, int]] = conn.execute(
            "DELETE FROM log WHERE expires <= ? RETURNING topic, length(payload)", (now,)
        ).fetchall()
        rules = self.rules
        if rules.ages and rules.uniform:
            max_age = rules.default.max_age
            assert max_age is not None
            # Append times grow with positions: the old events are a prefix.
            young = conn.execute(
                "SELECT position FROM log WHERE time >= ? ORDER BY position LIMIT 1",
                (now - max_age,),
            ).fetchone()
            bound = young[0] if young is not None else position + 1
            trimmed = conn.execute(
                "SELECT max(position), topic FROM log WHERE position < ? GROUP BY topic",
                (bound,),
            ).fetchall()
            if trimmed:
                conn.executemany(_RAISE_TRIMMED, trimmed)
                gone += conn.execute(
                    "DELETE FROM log WHERE position < ? RETURNING topic, length(payload)",
                    (bound,),
                ).fetchall()
        elif rules.ages:
            gone += self._sweep_ages(conn, now, topics, position, pending)
        if gone:
            self._removed(conn, gone, pending)
        return len(gone), pending

    def _sweep_ages(
        self,
        conn: sqlite3.Connection,
        now: float,
        topics: Iterable[str],
        position: int,
        pending: Pending,
    ) -> list[tuple[str, int]]:
        """Age retention topic by topic (rules: each topic has its own age)."""
        gone: list[tuple[str, int]] = []
        of = self.rules.of
        oldest = self._oldest
        for topic in topics:
            max_age = of(topic).max_age
            if max_age is None:
                continue
            cutoff = now - max_age
            known = oldest.get(topic, _UNKNOWN)
            if known is None or known >= cutoff:
                continue  # empty, or nothing old enough yet
            young = conn.execute(_FIRST_YOUNG, (topic, cutoff)).fetchone()
            bound = young[0] if young is not None else position + 1
            rows = conn.execute(_DELETE_BEFORE, (topic, bound)).fetchall()
            pending.oldest[topic] = young[1] if young is not None else None
            if rows:
                conn.execute(_RAISE_TRIMMED, (max(p for p, _ in rows), topic))
                gone += [(topic, length) for _, length in rows]
        return gone

    def _removed(
        self, conn: sqlite3.Connection, gone: list[tuple[str, int]], pending: Pending
    ) -> None:
        """Account for the removed `(topic, size)` rows: stored bytes, and the caches."""
        freed: dict[str, int] = defaultdict(int)
        events: dict[str, int] = defaultdict(int)
        for topic, length in gone:
            freed[topic] += length
            events[topic] += 1
        conn.executemany(_LESS_BYTES, [(size, topic) for topic, size in freed.items()])
        if self.rules.counts:
            for topic, n in events.items():
                pending.counts[topic] = self._counts.get(topic, 0) - n
        if self.rules.sizes:
            for topic, size in freed.items():
                pending.sizes[topic] = self._sizes.get(topic, 0) - size
