"""The sqlite engine's database file: its layout, its versions, and opening it.

Owns: the tables and indexes (DDL), the schema version and the migrations
between versions, the pragmas every connection gets (WAL, synchronous, busy
timeout), the data directory's lock, opening the writer's and the reader's
connections, running one statement over many rows (`run_chunked`,
`insert_rows`: the callers own the SQL), and wrapping sqlite3 and OS errors
into `hybridbus.errors` (a directory that is not writable is
`EngineReadOnly`, naming it).
Must not read or write events, topics, revocations or groups beyond creating
the tables (that SQL is `engine._sqlite_store`'s and `engine._sqlite_groups`'s),
and must not touch asyncio:
it runs in the writer thread or the reader thread.

Layout (`<dir>/hybridbus.db`, WAL mode):

    log     position INTEGER PRIMARY KEY (the shard-0 log position), topic,
            offset, time, expires (NULL: never), payload (the event's MessagePack),
            source, id (the dedupe key, from which `core.dedupe.DedupeIndex`
            is rebuilt at open; no index on it: keys arrive in random order,
            and an on-disk index of them costs several times the append)
    topics  topic -> last_offset, trimmed_position (highest position that
            count, age or size retention removed from the topic; 0: none),
            bytes (the sum of `length(payload)` of its events in `log`,
            kept by every append and removal: size retention reads it)
    meta    'epoch' -> the epoch; 'position' -> the highest position ever
            assigned in this epoch (never reused, even after the newest
            events expired, so a reader's position can never be handed out twice)
    revocations  (kind, tenant, value) -> until, at, reason: the stored
            `core.revocation.Revocation`s; a revoke upserts (keeping the later
            until and at), a sweep deletes those whose `until` passed, a reset
            keeps them. Indexed by `until` for the sweep.
    consumer_groups  name -> state: each stored consumer group and its
            state, as the hub encoded it (the engine never decodes it)
    group_entries  (name, key) -> value: the group's entries, as the hub
            encoded them; a group's entries exist only while its
            `consumer_groups` row does. Neither table is touched by a reset
            or a sweep.

One process per directory. SQLite's own locks keep two connections from
writing at once, not two engines from each caching the head of the log (two
writers hand out the same positions: "UNIQUE constraint failed"). So the
writer first takes an exclusive `flock` on `<dir>/hybridbus.lock` and writes
its pid there; a second opener, in this process or another, fails at once
with `EngineLocked` naming that pid. The kernel drops a `flock` when its
holder closes the file or dies (kill -9 too): a stale pid never blocks a
restart. The file is never deleted (a deleted lock file lets two processes
lock two files of one name).

Schema versions (`PRAGMA user_version`): 1 had no revocations table; 2 adds
it; 3 adds the two group tables; 4 adds `topics.bytes`, computed from the log
by the migration. Opening an older file migrates it, one version at a time,
in the opening transaction. A newer file is refused (a version-2 file by
version-1 code, a version-3 file by version-2 code): an older build would
silently ignore the newer tables, and so lift the revocations or lose the
groups' positions and pending entries (or, for 4, append without counting
bytes, so that size retention would keep too much).
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from hybridbus.errors import (
    EngineCorrupt,
    EngineError,
    EngineLocked,
    EngineReadOnly,
    EngineUnavailable,
)

__all__ = [
    "DB_NAME",
    "LOCK_NAME",
    "SCHEMA_VERSION",
    "SET_META",
    "DirectoryLock",
    "connect",
    "connect_reader",
    "create_or_check",
    "insert_rows",
    "new_epoch",
    "open_error",
    "os_error",
    "run_chunked",
    "wrap_error",
]

DB_NAME: Final = "hybridbus.db"
LOCK_NAME: Final = "hybridbus.lock"
SCHEMA_VERSION: Final = 4
_SQLITE_READONLY: Final = 8
_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26
_DENIED: Final = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})

_DDL: Final = """
CREATE TABLE log (
    position INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    offset INTEGER NOT NULL,
    time REAL NOT NULL,
    expires REAL,
    payload BLOB NOT NULL,
    source TEXT NOT NULL,
    id TEXT NOT NULL
);
-- The only index by topic: reads and count retention go by (topic, position).
-- Offsets need none (the writer assigns them), nor does age retention (it
-- removes the oldest positions first).
CREATE INDEX log_topic_position ON log(topic, position);
CREATE INDEX log_expires ON log(expires) WHERE expires IS NOT NULL;
CREATE TABLE topics (
    topic TEXT PRIMARY KEY,
    last_offset INTEGER NOT NULL,
    trimmed_position INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""

# Version 2. Revocations are few and rarely written: one row per key, the
# `until` index keeps the every-second sweep from scanning them all.
_REVOCATIONS_DDL: Final = """
CREATE TABLE revocations (
    kind TEXT NOT NULL,
    tenant TEXT NOT NULL,
    value TEXT NOT NULL,
    until REAL NOT NULL,
    at REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (kind, tenant, value)
) WITHOUT ROWID;
CREATE INDEX revocations_until ON revocations(until);
"""

# Version 3. Consumer groups: few groups, many entries (one per pending
# delivery), written on every ack in the appends' group commit. Keyed
# tables without rowid: an entry is found, replaced and deleted by its key
# alone, and a group's entries are one key range (a drop is one range delete).
# IF NOT EXISTS: a file made by hand (tests) may have them already.
_GROUPS_DDL: Final = """
CREATE TABLE IF NOT EXISTS consumer_groups (
    name TEXT PRIMARY KEY,
    state BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_entries (
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (name, key)
) WITHOUT ROWID;
"""


# Version 4. Each topic's stored bytes, for size retention (the sum is kept,
# never recomputed: computing it reads every row of the log). A new file gets
# the column here too, with nothing to sum.
def _add_bytes(conn: sqlite3.Connection) -> None:
    # A file made by hand (tests) may have the column already.
    columns = {row[1] for row in conn.execute("PRAGMA table_info(topics)")}
    if "bytes" not in columns:
        conn.execute("ALTER TABLE topics ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0")
    conn.execute(
        "UPDATE topics SET bytes = coalesce("
        "(SELECT sum(length(payload)) FROM log WHERE log.topic = topics.topic), 0)"
    )


# What turns a database of version N into version N + 1.
_MIGRATIONS: Final[dict[int, str | Callable[[sqlite3.Connection], None]]] = {
    1: _REVOCATIONS_DDL,
    2: _GROUPS_DDL,
    3: _add_bytes,
}

# Shared with the store, which moves 'position' on every append.
SET_META: Final = "INSERT OR REPLACE INTO meta VALUES (?, ?)"


# Rows per multi-row statement. Each statement is one sqlite3_step, around
# which Python releases and re-takes the GIL; with executemany that happens
# per row, and every re-take can wait for the event loop's thread (a busy
# loop made 3,333 single-row deletes take 3.5 s instead of 15 ms). 64 rows x
# 6 values stays far below SQLite's limit on bound parameters.
ROWS_PER_STATEMENT: Final = 64


def run_chunked(
    conn: sqlite3.Connection,
    sql: Callable[[int], str],
    rows: Sequence[tuple[Any, ...]],
    first: tuple[Any, ...] = (),
) -> None:
    """Run `sql(n)`, a statement for n rows, over every row of `rows`, many rows at a time.

    Each statement's parameters are `first`, then the values of its rows.
    """
    total = len(rows)
    size = ROWS_PER_STATEMENT
    full = total - total % size
    if full:
        many = sql(size)
        for start in range(0, full, size):
            values = [value for row in rows[start : start + size] for value in row]
            conn.execute(many, [*first, *values] if first else values)
    start = full
    while start < total:
        # Power-of-two chunks keep the number of distinct statements (and of
        # prepared statements in sqlite3's cache) small.
        size = min(size, 1 << (total - start).bit_length() - 1)
        values = [value for row in rows[start : start + size] for value in row]
        conn.execute(sql(size), [*first, *values] if first else values)
        start += size


def insert_rows(conn: sqlite3.Connection, insert: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Run `insert` (one row of `?` placeholders) for every row, many rows per statement."""
    if rows:
        head, _, values = insert.partition(" VALUES ")
        run_chunked(conn, lambda n: f"{head} VALUES {', '.join([values] * n)}", rows)


def new_epoch() -> str:
    """A fresh random epoch (hex: safe inside a position token)."""
    return secrets.token_hex(8)


def wrap_error(exc: sqlite3.Error, what: str, file: Path | None = None) -> EngineError:
    """The hybridbus error for a driver error.

    Corrupt files are `EngineCorrupt`; a database SQLite cannot write to (a
    read-only file or file system) is `EngineReadOnly` naming `file`, when given.
    """
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == _SQLITE_READONLY and file is not None:
        return EngineReadOnly(file, f"sqlite engine: {what}: {exc}")
    cls = EngineCorrupt if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) else EngineUnavailable
    return cls(f"sqlite engine: {what}: {exc}")


def os_error(path: Path, exc: OSError, what: str) -> EngineUnavailable:
    """The hybridbus error for an OS error on `path`: permission or a read-only file system
    is `EngineReadOnly`."""
    if exc.errno in _DENIED:
        return EngineReadOnly(path, f"sqlite engine: {what}: {exc.strerror}")
    return EngineUnavailable(f"sqlite engine: {what}: {exc}")


def open_error(directory: Path, exc: sqlite3.Error, what: str) -> EngineError:
    """Why opening the database in `directory` failed.

    SQLite says "unable to open database file" when it cannot create the
    database or its WAL files in a read-only directory: ask the file system.
    """
    read_only = _not_writable(directory)
    if read_only is not None:
        return EngineReadOnly(read_only, f"sqlite engine: {what}: {exc}")
    return wrap_error(exc, what, directory / DB_NAME)


def _not_writable(directory: Path) -> Path | None:
    """The first of `directory` and its database files that this process cannot write."""
    files = [directory / (DB_NAME + suffix) for suffix in ("", "-wal", "-shm")]
    for path in [directory, *files]:
        if path.exists() and not os.access(path, os.W_OK):
            return path
    return None


class DirectoryLock:
    """The exclusive `flock` on `<directory>/hybridbus.lock` (see the module docstring).

    Taking it never waits: a held directory raises `EngineLocked` at once.
    `release` (idempotent) closes the file; so does the holder's exit.
    """

    __slots__ = ("_fd", "path")

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_NAME
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise os_error(directory, exc, f"cannot create the lock file {self.path}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise EngineLocked(directory, holder) from None
        except OSError as exc:
            os.close(fd)
            raise os_error(directory, exc, f"cannot lock {self.path}") from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise os_error(directory, exc, f"cannot write {self.path}") from exc
        self._fd = fd

    def release(self) -> None:
        """Give the directory up (the pid stays in the file; it is not the lock)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _holder(fd: int) -> int | None:
    """The pid in a held lock file; None if it is unreadable.

    The holder writes its pid just after taking the lock: a reader that comes
    in between finds the file empty, so it looks again, briefly.
    """
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text:
            return int(text) if text.isdigit() else None
        time.sleep(0.005)
    return None


def connect(file: Path, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    """A connection to `file` in WAL mode; raises `sqlite3.Error` (the caller wraps it)."""
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction
    # is exactly one batch (writer) or one snapshot (reader).
    conn = sqlite3.connect(file, timeout=busy_timeout, isolation_level=None)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    except BaseException:
        conn.close()
        raise
    if str(mode).lower() != "wal":
        conn.close()
        raise sqlite3.OperationalError(f"cannot switch {file} to WAL mode (got {mode!r})")
    return conn


def connect_reader(directory: Path, busy_timeout: float) -> sqlite3.Connection:
    """A connection for the reader thread (query-only)."""
    try:
        conn = connect(directory / DB_NAME, "normal", busy_timeout)
        conn.execute("PRAGMA query_only=1")
    except sqlite3.Error as exc:
        raise wrap_error(exc, "cannot open the database for reading") from exc
    return conn


def _run_script(conn: sqlite3.Connection, ddl: str | Callable[[sqlite3.Connection], None]) -> None:
    if callable(ddl):
        ddl(conn)
        return
    # Not executescript: it would COMMIT the caller's transaction first.
    for statement in ddl.split(";"):
        if statement.strip():
            conn.execute(statement)


def create_or_check(conn: sqlite3.Connection) -> None:
    """Create the schema in a new database, migrate an older one, refuse a newer one.

    Runs inside the opening transaction, so a migration is all or nothing.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version == 0:
        _run_script(conn, _DDL)
        for step in range(1, SCHEMA_VERSION):
            _run_script(conn, _MIGRATIONS[step])
        conn.executemany(SET_META, [("epoch", new_epoch()), ("position", 0)])
    elif 0 < version < SCHEMA_VERSION:
        for step in range(version, SCHEMA_VERSION):
            _run_script(conn, _MIGRATIONS[step])
    else:
        raise EngineCorrupt(f"sqlite engine: schema version {version} is not {SCHEMA_VERSION}")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
