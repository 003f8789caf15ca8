"""Consumer-group storage in the sqlite engine: folding group writes into SQL, and reading them.

Owns: the writer's cache of which groups are stored (`GroupNames`), turning
a run of `GroupWrite`s into the rows one transaction must change
(`GroupChanges`), the SQL that applies them on the writer's connection
inside the transaction `engine._sqlite_store` opens, and the reader's
listing (`list_groups`). Must not open, commit or roll back a transaction
(the store does, so group writes share the appends' group commit), must not
decode the hub's bytes, and must not touch asyncio: it runs in the writer
thread or the reader thread. The tables are drawn in `engine._sqlite_schema`.

Folding. The writes of one transaction are applied in order, each as
drop, then state, then put, then delete (`engine.base.GroupWrite`); what
reaches the database is only their net effect per group: whether the
stored group is dropped first, its last state, and the keys finally put or
deleted. So a delivery's entry put and deleted within one group commit (the
hub's ack of a fresh delivery) costs no stored row (only a delete by key),
and each kind of change runs as statements of many rows each. Whether a
group has a state decides whether a write without one stores anything: the
writer knows from `GroupNames`, loaded at open and updated only once a
transaction commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Final

from hybridbus.engine._sqlite_schema import insert_rows, run_chunked, wrap_error
from hybridbus.engine.base import GroupWrite, StoredGroup

__all__ = ["GroupChanges", "GroupNames", "list_groups"]

_DROP_ENTRIES: Final = "DELETE FROM group_entries WHERE name = ?"
_DROP_GROUP: Final = "DELETE FROM consumer_groups WHERE name = ?"
_PUT_STATE: Final = "INSERT OR REPLACE INTO consumer_groups VALUES (?, ?)"
_PUT_ENTRY: Final = "INSERT OR REPLACE INTO group_entries VALUES (?, ?, ?)"


def _delete_keys(n: int) -> str:
    return f"DELETE FROM group_entries WHERE name = ? AND key IN ({', '.join(['?'] * n)})"


class _Change:
    """The net effect of a run of writes on one group."""

    __slots__ = ("delete", "dropped", "exists", "put", "state")

    def __init__(self, exists: bool) -> None:
        self.exists = exists  # the group has a state after the writes so far
        self.dropped = False  # delete what is stored before anything else
        self.state: bytes | None = None  # the state to store (None: unchanged)
        self.put: dict[str, bytes] = {}
        self.delete: set[str] = set()  # keys that may be stored (never in `put`)


class GroupChanges:
    """What one transaction's group writes change, folded per group (see the module docstring)."""

    __slots__ = ("_changes", "_names")

    def __init__(self, names: GroupNames) -> None:
        self._names = names
        self._changes: dict[str, _Change] = {}

    def __bool__(self) -> bool:
        return bool(self._changes)

    def add(self, writes: Iterable[GroupWrite]) -> None:
        """Fold `writes` (in order) onto the changes so far."""
        changes = self._changes
        stored = self._names.stored
        for write in writes:
            name = write.group
            change = changes.get(name)
            if change is None:
                change = changes[name] = _Change(name in stored)
            if write.drop:
                change.dropped = True
                change.exists = False
                change.state = None
                change.put.clear()
                change.delete.clear()
            if write.state is not None:
                change.state = write.state
                change.exists = True
            if not change.exists:
                continue  # no state: a put or delete stores nothing
            if write.put:
                put = change.put
                delete = change.delete
                for key, value in write.put:
                    put[key] = value
                    if delete:
                        delete.discard(key)
            if write.delete:
                # After a drop nothing older is stored: only this run's puts go.
                for key in write.delete:
                    change.put.pop(key, None)
                    if not change.dropped:
                        change.delete.add(key)

    def apply(self, conn: sqlite3.Connection) -> None:
        """Run the changes' SQL inside the caller's transaction (drops first: order matters)."""
        # Many rows per statement, not executemany: see `run_chunked` (the
        # GIL is re-taken per statement). Drops and states are a few rows.
        drops: list[tuple[str]] = []
        states: list[tuple[str, bytes]] = []
        puts: list[tuple[str, str, bytes]] = []
        for name, change in self._changes.items():
            if change.dropped:
                drops.append((name,))
            if change.state is not None:
                states.append((name, change.state))
            if change.put:
                puts.extend([(name, key, value) for key, value in change.put.items()])
        if drops:
            conn.executemany(_DROP_ENTRIES, drops)
            conn.executemany(_DROP_GROUP, drops)
        if states:
            insert_rows(conn, _PUT_STATE, states)
        insert_rows(conn, _PUT_ENTRY, puts)
        for name, change in self._changes.items():
            if change.delete:
                run_chunked(conn, _delete_keys, [(key,) for key in change.delete], (name,))

    def committed(self) -> None:
        """The transaction committed: the stored groups are now those the changes left."""
        stored = self._names.stored
        for name, change in self._changes.items():
            if change.exists:
                stored.add(name)
            else:
                stored.discard(name)


class GroupNames:
    """The names of the groups stored with a state (writer thread only, committed state)."""

    __slots__ = ("stored",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.stored: set[str] = {name for (name,) in conn.execute(_NAMES)}

    def changes(self) -> GroupChanges:
        """An empty fold for the next transaction."""
        return GroupChanges(self)


_NAMES: Final = "SELECT name FROM consumer_groups"


def list_groups(conn: sqlite3.Connection) -> list[StoredGroup]:
    """Every stored group with its entries, from one snapshot (on the reader's connection)."""
    try:
        conn.execute("BEGIN")
        try:
            states: list[tuple[str, bytes]] = conn.execute(
                "SELECT name, state FROM consumer_groups"
            ).fetchall()
            rows: list[tuple[str, str, bytes]] = conn.execute(
                "SELECT name, key, value FROM group_entries"
            ).fetchall()
        finally:
            conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise wrap_error(exc, "cannot read consumer groups") from exc
    entries: dict[str, dict[str, bytes]] = {name: {} for name, _ in states}
    for name, key, value in rows:
        found = entries.get(name)
        if found is not None:  # never otherwise: a drop deletes a group's entries with it
            found[key] = value
    return [StoredGroup(name, state, entries[name]) for name, state in states]
