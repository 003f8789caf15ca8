"""The thread side of the sqlite engine: the SQL run on the writer's and the reader's connections.

Owns: the synchronous operations the two threads of `hybridbus.engine.sqlite`
run. On the writer's connection (`Store`, with what it caches: epoch, last
position, offsets, dedupe index, retention caches, stored group names): the
group-commit transaction of appends and consumer-group writes (the group
SQL is `engine._sqlite_groups`'s), the sweep (retention and expiry are
`engine._sqlite_retention`'s), reset, and the revocation upsert,
shortening and sweep.
On the reader's connection: the consistent read snapshot, the head, the topic
listing and the revocation listing.
Must not touch asyncio or the event loop; every function here runs in the
writer thread or the reader thread. Must not create, migrate or open the
database itself: the layout, its versions and the connections' pragmas are
`engine._sqlite_schema`'s (its docstring draws the tables this SQL uses).
sqlite3 errors are wrapped into `hybridbus.errors` here, where they arise.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Container, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import msgspec

from hybridbus.core.codecs import decode_msgpack
from hybridbus.core.dedupe import DedupeIndex
from hybridbus.core.event import Event
from hybridbus.core.log import UNDECODED, Ack, Delivery, Page, StoredDelivery
from hybridbus.core.revocation import Revocation
from hybridbus.core.topics import is_pattern, matches, tenant_of
from hybridbus.engine._sqlite_groups import GroupNames
from hybridbus.engine._sqlite_retention import Retainer
from hybridbus.engine._sqlite_schema import (
    DB_NAME,
    SET_META,
    DirectoryLock,
    connect,
    create_or_check,
    insert_rows,
    new_epoch,
    open_error,
    os_error,
    wrap_error,
)
from hybridbus.engine.base import EngineConfig, GroupWrite, TopicInfo
from hybridbus.errors import EngineCorrupt, InvalidEvent

__all__ = [
    "Store",
    "head",
    "list_revocations",
    "list_topics",
    "read_page",
]

_READ_CHUNK: Final = 256

_INSERT_LOG: Final = "INSERT INTO log VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_FIND_ORIGINAL: Final = "SELECT topic, offset, time, source, id FROM log WHERE position = ?"
_PUT_TOPIC: Final = (
    "INSERT INTO topics (topic, last_offset, bytes) VALUES (?, ?, ?) "
    "ON CONFLICT (topic) DO UPDATE SET last_offset = excluded.last_offset, "
    "bytes = bytes + excluded.bytes"
)
# In an UPDATE every right-hand side sees the old row, so `at` here is the stored one.
_REVOKE: Final = (
    "INSERT INTO revocations VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (kind, tenant, value) DO UPDATE SET "
    "until = max(until, excluded.until), "
    "reason = CASE WHEN excluded.at >= at THEN excluded.reason ELSE reason END, "
    "at = max(at, excluded.at)"
)
_GET_META: Final = "SELECT value FROM meta WHERE key = ?"
_FAILED: Final = "append failed, nothing of the batch was written"
_FAILED_WITH_GROUPS: Final = "write failed, nothing of the batch (events, group writes) was written"
_COLUMNS: Final = "position, topic, offset, time, expires, payload"
_LIVE: Final = "(expires IS NULL OR expires > ?)"

_Row = tuple[int, str, int, float, float | None, bytes]
_NewRow = tuple[int, str, int, float, float | None, bytes, str, str]


class Store:
    """The writer's connection and what it caches: epoch, last position, offsets.

    Only the writer thread calls its methods. Each method is one transaction;
    on a driver error it rolls back, restores the caches to the committed
    state and raises `EngineUnavailable` (or `EngineCorrupt`).

    Opening takes the directory's `lock` first (`EngineLocked` if another
    engine holds it); `close` closes the connection, and the engine releases
    the lock once its reader is closed too.
    """

    def __init__(
        self, directory: Path, config: EngineConfig, clock: Callable[[], float], busy_timeout: float
    ) -> None:
        self._config = config
        self._clock = clock
        # Appends committed since open; each is one transaction (for tests, metrics).
        self.commits = 0
        self._file = file = directory / DB_NAME
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            parent = next((p for p in directory.parents if p.exists()), directory)
            raise os_error(parent, exc, f"cannot create {directory}") from exc
        self.lock = DirectoryLock(directory)
        try:
            try:
                self._conn = connect(file, config.synchronous, busy_timeout)
            except sqlite3.Error as exc:
                raise open_error(directory, exc, f"cannot open {file}") from exc
            try:
                self._load()
            except sqlite3.Error as exc:
                self._conn.close()
                raise open_error(directory, exc, f"cannot load {file}") from exc
            except BaseException:
                self._conn.close()
                raise
        except BaseException:
            self.lock.release()
            raise

    def _load(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            create_or_check(conn)
            self._groups = GroupNames(conn)
            self.epoch: str = conn.execute(_GET_META, ("epoch",)).fetchone()[0]
            stored = conn.execute(_GET_META, ("position",)).fetchone()[0]
            newest = conn.execute("SELECT max(position) FROM log").fetchone()[0] or 0
            self.position: int = max(stored, newest)
            self._offsets: dict[str, int] = dict(
                conn.execute("SELECT topic, last_offset FROM topics").fetchall()
            )
            self._dedupe = DedupeIndex(self._config.dedupe_window)
            if self._config.dedupe_window > 0:
                self._rebuild_dedupe()
            self._retainer = Retainer(self._config)
            self._retainer.load(conn)  # trims too: the limits may have shrunk since the last run
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def close(self) -> None:
        self._conn.close()

    def _rebuild_dedupe(self) -> None:
        """Fill the dedupe index with the keys appended within the window."""
        conn = self._conn
        since = self._clock() - self._config.dedupe_window
        # Append times grow with positions: find the first young one by bisection.
        low, high = 0, self.position + 1
        while low < high:
            middle = (low + high) // 2
            row = conn.execute(
                "SELECT time FROM log WHERE position >= ? ORDER BY position LIMIT 1", (middle,)
            ).fetchone()
            if row is None or row[0] > since:
                high = middle
            else:
                low = middle + 1
        remember = self._dedupe.remember
        for position, time, topic, source, id_ in conn.execute(
            "SELECT position, time, topic, source, id FROM log WHERE position >= ? "
            "ORDER BY position",
            (low,),
        ):
            remember(tenant_of(topic), source, id_, position, time)

    def _original(
        self, position: int, tenant: str, source: str, id_: str, fresh_after: float
    ) -> Ack | None:
        """The duplicate's ack if the event at `position` is this key's original, in time."""
        row = self._conn.execute(_FIND_ORIGINAL, (position,)).fetchone()
        if (
            row is None
            or row[2] <= fresh_after
            or row[3] != source
            or row[4] != id_
            or tenant_of(row[0]) != tenant
        ):
            return None  # a hash collision, too old, or removed by retention
        return Ack(row[0], row[1], 0, position, self.epoch, duplicate=True)

    def append(
        self,
        batch: Sequence[tuple[str, Event, bytes]],
        replays: Container[int] = (),
        groups: Sequence[Sequence[GroupWrite]] = (),
    ) -> tuple[list[Ack], list[Delivery]]:
        """Append a batch of `(topic, event, payload)` and apply group writes in one transaction.

        Returns one ack per entry (duplicates answer with the original's ack)
        and the deliveries of the new events, in position order. The entries
        whose index is in `replays` are appended even if their key is in the
        dedupe window (and become the key's newest event). `groups` are the
        `write_groups` calls of the batch, in order.
        """
        now = self._clock()
        window = self._config.dedupe_window
        fresh_after = now - window
        epoch = self.epoch
        offsets = self._offsets
        saved: dict[str, int | None] = {}  # committed offsets of the touched topics
        added: dict[str, tuple[int, int, int]] = {}  # topic -> events, bytes, newest position
        seen: dict[tuple[str, str, str], Ack] = {}
        tenants: dict[str, str] = {}  # topic -> its tenant, for the dedupe keys
        remember: list[tuple[str, str, str, int]] = []  # dedupe keys of the new events
        acks: list[Ack] = []
        deliveries: list[Delivery] = []
        log_rows: list[_NewRow] = []
        dedupe = self._dedupe
        position = self.position
        tenant = ""
        changes = self._groups.changes()
        try:
            with self._transaction(_FAILED_WITH_GROUPS if groups else _FAILED) as conn:
                for index, (topic, event, payload) in enumerate(batch):
                    source = event.source
                    id_ = event.id
                    if window > 0:
                        cached = tenants.get(topic)
                        if cached is None:
                            cached = tenants[topic] = tenant_of(topic)
                        tenant = cached
                        key = (tenant, source, id_)
                        # A replay is appended anyway, and remembered below.
                        original = None if index in replays else seen.get(key)
                        if original is None and index not in replays:
                            found = dedupe.lookup(tenant, source, id_)
                            if found is not None:
                                original = self._original(found, tenant, source, id_, fresh_after)
                        if original is not None:
                            acks.append(msgspec.structs.replace(original, duplicate=True))
                            continue
                    last = offsets.get(topic)
                    if topic not in saved:
                        saved[topic] = last
                    offset = offsets[topic] = (last or 0) + 1
                    events, size, _ = added.get(topic, (0, 0, 0))
                    position += 1
                    added[topic] = (events + 1, size + len(payload), position)
                    expires = event.expirytime.timestamp() if event.expirytime is not None else None
                    log_rows.append((position, topic, offset, now, expires, payload, source, id_))
                    ack = Ack(topic, offset, 0, position, epoch)
                    acks.append(ack)
                    deliveries.append(
                        Delivery(topic, offset, 0, position, now, event, expires, payload)
                    )
                    if window > 0:
                        seen[key] = ack
                        remember.append((tenant, source, id_, position))
                if log_rows:
                    insert_rows(conn, _INSERT_LOG, log_rows)
                    conn.executemany(
                        _PUT_TOPIC, [(topic, offsets[topic], added[topic][1]) for topic in saved]
                    )
                    conn.execute(SET_META, ("position", position))
                    retained = self._retainer.appended(conn, added, now)
                for writes in groups:
                    changes.add(writes)
                if changes:
                    changes.apply(conn)
        except BaseException:
            for topic, committed in saved.items():
                if committed is None:
                    del offsets[topic]
                else:
                    offsets[topic] = committed
            raise
        self.position = position
        if log_rows:
            self._retainer.commit(retained)
        for tenant, source, id_, at in remember:
            dedupe.remember(tenant, source, id_, at, now)
        changes.committed()
        self.commits += 1
        return acks, deliveries

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; on failure roll back and raise `what` as a hybridbus error."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, sqlite3.Error):
                raise wrap_error(exc, what, self._file) from exc
            raise

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite already rolled back (e.g. after an I/O error)

    def sweep(self) -> int:
        """Apply age retention, expiry and the dedupe window now; return events removed.

        Count and size retention need no sweep: appends (and opening) enforce them.
        """
        now = self._clock()
        with self._transaction("sweep failed") as conn:
            conn.execute("DELETE FROM revocations WHERE until <= ?", (now,))
            removed, pending = self._retainer.sweep(conn, now, self._offsets, self.position)
        self._retainer.commit(pending)
        self._dedupe.prune(now)
        return removed

    def revoke(self, revocations: Sequence[Revocation]) -> None:
        """Upsert `revocations` (in order) in one transaction: all are stored, or none."""
        rows = [(r.kind, r.tenant, r.value, r.until, r.at, r.reason) for r in revocations]
        with self._transaction("revoke failed, nothing was stored") as conn:
            conn.executemany(_REVOKE, rows)

    def shorten_revocations(self, latest: float) -> int:
        """Lower every stored `until` past `latest` to `latest`; return how many rows changed."""
        with self._transaction("shortening revocations failed") as conn:
            changed: int = conn.execute(
                "UPDATE revocations SET until = ? WHERE until > ?", (latest, latest)
            ).rowcount
        return changed

    def reset(self) -> str:
        """Delete all history, offsets and dedupe records; start and return a new epoch.

        Revocations are kept: losing history must not lift them.
        """
        epoch = new_epoch()
        with self._transaction("reset failed") as conn:
            for table in ("log", "topics"):
                conn.execute(f"DELETE FROM {table}")
            conn.executemany(SET_META, [("epoch", epoch), ("position", 0)])
        self.epoch = epoch
        self.position = 0
        self._offsets.clear()
        self._retainer.clear()
        self._dedupe.clear()
        return epoch


def head(conn: sqlite3.Connection) -> int:
    """The newest position of the log (0 when empty)."""
    try:
        value: int = conn.execute(_GET_META, ("position",)).fetchone()[0]
    except sqlite3.Error as exc:
        raise wrap_error(exc, "cannot read the head") from exc
    return value


def list_revocations(conn: sqlite3.Connection, now: float) -> list[Revocation]:
    """Every stored revocation whose `until` is after `now`, by key."""
    try:
        rows: list[tuple[str, str, str, float, float, str]] = conn.execute(
            "SELECT kind, tenant, value, until, at, reason FROM revocations WHERE until > ? "
            "ORDER BY kind, tenant, value",
            (now,),
        ).fetchall()
    except sqlite3.Error as exc:
        raise wrap_error(exc, "cannot read revocations") from exc
    found = []
    for kind, tenant, value, until, at, reason in rows:
        try:
            revocation = Revocation(
                kind=kind,  # type: ignore[arg-type]  # checked by __post_init__
                tenant=tenant,
                value=value,
                until=until,
                at=at,
                reason=reason,
            )
        except ValueError as exc:
            raise EngineCorrupt(f"sqlite engine: a stored revocation is invalid: {exc}") from exc
        found.append(revocation)
    return found


def list_topics(conn: sqlite3.Connection, prefix: str, after: str, limit: int) -> list[TopicInfo]:
    """Up to `limit` topics starting with `prefix`, sorting after `after`, by name."""
    try:
        # The primary key orders topics by their UTF-8 bytes, i.e. by code
        # point: those starting with `prefix` come first among those >= it.
        rows: list[tuple[str, int]] = conn.execute(
            "SELECT topic, last_offset FROM topics WHERE topic > ? AND topic >= ? "
            "ORDER BY topic LIMIT ?",
            (after, prefix, limit),
        ).fetchall()
    except sqlite3.Error as exc:
        raise wrap_error(exc, "cannot list topics") from exc
    found = []
    for topic, offset in rows:
        if not topic.startswith(prefix):
            break
        found.append(TopicInfo(topic, offset))
    return found


def _topic_range(pattern: str) -> tuple[str, tuple[str, ...]]:
    """SQL narrowing a wildcard pattern to topics under its literal prefix.

    `a/b/+/c` → topics in [`a/b/`, `a/b0`) ('0' follows '/'); `a/#` also
    matches `a` itself (MQTT).
    """
    segments = pattern.split("/")
    literal = 0
    while segments[literal] not in ("+", "#"):
        literal += 1
    if literal == 0:
        return "", ()
    prefix = "/".join(segments[:literal])
    # The unary + keeps SQLite from using the topic index here: for a range of
    # topics, a scan in position order from `after` is what a recovery wants.
    clause = " AND ((+topic >= ? AND +topic < ?)"
    params: tuple[str, ...] = (prefix + "/", prefix + "0")
    if literal == len(segments) - 1 and segments[literal] == "#":
        clause += " OR +topic = ?"
        params += (prefix,)
    return clause + ")", params


def _deliveries(rows: list[_Row]) -> list[Delivery]:
    out = []
    for position, topic, offset, time, expires, payload in rows:
        try:
            event = decode_msgpack(payload)
        except InvalidEvent as exc:
            raise EngineCorrupt(
                f"sqlite engine: the event at position {position} cannot be decoded: {exc}"
            ) from exc
        out.append(Delivery(topic, offset, 0, position, time, event, expires, payload))
    return out


def _stored_deliveries(rows: list[_Row]) -> list[Delivery]:
    """`_deliveries`, each event left as its stored bytes (`StoredDelivery`).

    Only `source`, `id` and `partitionkey` are read here: bytes that are not
    even a MessagePack map of them are `EngineCorrupt` at once, as in `_deliveries`.
    """
    out: list[Delivery] = []
    for position, topic, offset, time, expires, payload in rows:
        delivery = StoredDelivery(topic, offset, 0, position, time, UNDECODED, expires, payload)
        delivery.identity()
        out.append(delivery)
    return out


def read_page(
    conn: sqlite3.Connection,
    pattern: str,
    after: int,
    limit: int,
    now: float,
    stored: bool = False,
) -> Page:
    """One consistent read: records, head, epoch and exactness from one snapshot.

    `stored`: the deliveries are `StoredDelivery`s (their events decoded when asked for).
    """
    try:
        conn.execute("BEGIN")
        try:
            page = _read_snapshot(conn, pattern, after, limit, now, stored)
        finally:
            conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise wrap_error(exc, f"cannot read {pattern!r}") from exc
    return page


def _read_snapshot(
    conn: sqlite3.Connection, pattern: str, after: int, limit: int, now: float, stored: bool
) -> Page:
    epoch: str = conn.execute(_GET_META, ("epoch",)).fetchone()[0]
    newest: int = conn.execute(_GET_META, ("position",)).fetchone()[0]
    want = max(limit, 0) + 1  # one more than asked tells whether there is more
    if not is_pattern(pattern):
        rows: list[_Row] = conn.execute(
            f"SELECT {_COLUMNS} FROM log WHERE topic = ? AND position > ? AND {_LIVE} "
            "ORDER BY position LIMIT ?",
            (pattern, after, now, want),
        ).fetchall()
        trimmed = conn.execute(
            "SELECT trimmed_position FROM topics WHERE topic = ?", (pattern,)
        ).fetchone()
        exact = trimmed is None or trimmed[0] <= after
    else:
        clause, params = _topic_range(pattern)
        unfiltered = pattern.endswith("/#") and pattern.count("+") == 0  # the range is exact
        sql = (
            f"SELECT {_COLUMNS} FROM log WHERE position > ? AND {_LIVE}{clause} "
            "ORDER BY position LIMIT ?"
        )
        chunk = max(want, _READ_CHUNK)
        rows = []
        cursor = after
        memo: dict[str, bool] = {}  # topic -> matches: a page holds few topics, many times
        while len(rows) < want:
            found = conn.execute(sql, (cursor, now, *params, chunk)).fetchall()
            if unfiltered:
                rows.extend(found)
            else:
                for row in found:
                    ok = memo.get(row[1])
                    if ok is None:
                        if len(memo) >= 4096:
                            memo.clear()
                        ok = memo[row[1]] = matches(pattern, row[1])
                    if ok:
                        rows.append(row)
            if len(found) < chunk:
                break
            cursor = found[-1][0]
        del rows[want:]
        indexed = clause.replace("+topic", "topic")
        trimmed_topics = conn.execute(
            f"SELECT topic FROM topics WHERE trimmed_position > ?{indexed}", (after, *params)
        ).fetchall()
        exact = not any(matches(pattern, topic) for (topic,) in trimmed_topics)
    more = len(rows) > limit
    if more:
        del rows[max(limit, 0) :]
        last = rows[-1][0] if rows else after
    else:
        last = max(newest, after)
    deliveries = _stored_deliveries(rows) if stored else _deliveries(rows)
    return Page(epoch, deliveries, (last,), more, exact)
