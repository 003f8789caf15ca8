"""Consumer groups in the sqlite engine: durability, the shared group commit, failures, migration.

The shared contract (write order, drop/state/put/delete, reset, close) is
checked by the conformance suite (test_conformance_groups.py); these tests
cover what only the sqlite engine does: the tables on disk, a restart and a
kill -9, group writes committed in the appends' transactions, a failed
transaction, and opening a file of an older schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from tests.support import FakeClock, append, lines_acked_before_kill_9, make_event, read_all

from hybridbus.core.codecs import encode_msgpack
from hybridbus.engine import _sqlite_schema as schema
from hybridbus.engine import _sqlite_store as store
from hybridbus.engine.base import EngineConfig, GroupWrite
from hybridbus.engine.sqlite import SqliteEngine
from hybridbus.errors import EngineUnavailable


@pytest.fixture
async def engines() -> AsyncIterator[list[SqliteEngine]]:
    """Engines a test opened; closed at the end whatever happened."""
    opened: list[SqliteEngine] = []
    yield opened
    for engine in opened:
        await engine.close()


async def start(
    engines: list[SqliteEngine],
    path: Path,
    clock: FakeClock,
    config: EngineConfig | None = None,
) -> SqliteEngine:
    engine = SqliteEngine(path, config or EngineConfig(), clock)
    await engine.start(lambda deliveries: None)
    engines.append(engine)
    return engine


def sql(path: Path, statement: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path / "hybridbus.db", isolation_level=None)) as conn:
        return conn.execute(statement).fetchall()


async def stored(engine: SqliteEngine) -> dict[str, tuple[bytes, dict[str, bytes]]]:
    return {g.group: (g.state, g.entries) for g in await engine.groups()}


@contextlib.asynccontextmanager
async def writer_held(engine: SqliteEngine) -> AsyncIterator[None]:
    """Keep the writer thread busy for the block: what is queued in it is drained together."""
    release = threading.Event()
    entered = threading.Event()

    def hold(db: object) -> None:
        entered.set()
        release.wait(10)

    held = asyncio.ensure_future(engine._command(hold))
    try:
        assert await asyncio.to_thread(entered.wait, 10)
        yield
    finally:
        release.set()
        await held


async def test_groups_survive_close_and_reopen(
    engines: list[SqliteEngine], tmp_path: Path, clock: FakeClock
) -> None:
    engine = await start(engines, tmp_path, clock)
    await engine.write_groups(
        [
            GroupWrite(group="acme/billing", state=b"\x00s1", put=[("k1", b"v1"), ("k2", b"v2")]),
            GroupWrite(group="acme/audit", state=b"a"),
            GroupWrite(group="acme/billing", delete=["k1"]),
        ]
    )
    await engine.close()
    assert sql(tmp_path, "SELECT name, state FROM consumer_groups ORDER BY name") == [
        ("acme/audit", b"a"),
        ("acme/billing", b"\x00s1"),
    ]
    assert sql(tmp_path, "SELECT name, key, value FROM group_entries") == [
        ("acme/billing", "k2", b"v2")
    ]
    engine = await start(engines, tmp_path, clock)
    assert await stored(engine) == {
        "acme/billing": (b"\x00s1", {"k2": b"v2"}),
        "acme/audit": (b"a", {}),
    }
    # The reopened writer knows which groups exist: a put without state applies.
    await engine.write_groups([GroupWrite(group="acme/audit", put=[("x", b"1")])])
    await engine.write_groups([GroupWrite(group="acme/ghost", put=[("x", b"1")])])
    assert (await stored(engine))["acme/audit"] == (b"a", {"x": b"1"})
    assert "acme/ghost" not in await stored(engine)


async def test_group_writes_share_the_appends_transaction(
    engines: list[SqliteEngine], tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    transactions: list[tuple[int, int]] = []  # (events, write_groups calls) per transaction
    original = store.Store.append

    def counting(
        self: store.Store,
        batch: Sequence[object],
        replays: object = (),
        groups: Sequence[object] = (),
    ) -> object:
        transactions.append((len(batch), len(groups)))
        return original(self, batch, replays, groups)  # type: ignore[arg-type]

    monkeypatch.setattr(store.Store, "append", counting)
    engine = await start(engines, tmp_path, clock)
    await engine.write_groups([GroupWrite(group="g", state=b"0")])
    transactions.clear()
    commits = engine.commits
    async with writer_held(engine):
        calls = [
            coro
            for n in range(200)
            for coro in (
                engine.write_groups([GroupWrite(group="g", put=[(f"k{n}", b"")], state=b"%d" % n)]),
                append(engine, f"acme/t{n % 3}"),
            )
        ]
        done = asyncio.gather(*calls)
        await asyncio.sleep(0)  # let every call queue behind the held writer
    await done
    # Everything queued while the writer was busy went in one transaction: one commit.
    assert transactions == [(200, 200)]
    assert engine.commits == commits + 1
    assert (await stored(engine))["g"] == (
        b"199",
        dict.fromkeys([f"k{n}" for n in range(200)], b""),
    )
    assert len(await read_all(engine, "acme/+", limit=100)) == 200


async def test_batch_max_counts_group_writes(
    engines: list[SqliteEngine], tmp_path: Path, clock: FakeClock
) -> None:
    engine = await start(engines, tmp_path, clock, EngineConfig(batch_max=10))
    commits = engine.commits
    async with writer_held(engine):
        done = asyncio.gather(
            *(engine.write_groups([GroupWrite(group=f"g{n}", state=b"s")]) for n in range(30)),
            engine.write_groups([GroupWrite(group=f"big{n}", state=b"s") for n in range(25)]),
        )
        await asyncio.sleep(0)
    await done
    # 30 single writes in 3 transactions of 10; the call of 25 writes whole, alone.
    assert engine.commits == commits + 4
    assert len(await engine.groups()) == 55


async def test_a_failed_transaction_applies_nothing_and_fails_every_request_in_it(
    engines: list[SqliteEngine], tmp_path: Path, clock: FakeClock
) -> None:
    engine = await start(engines, tmp_path, clock)
    await engine.write_groups([GroupWrite(group="g", state=b"before", put=[("k", b"1")])])
    # A trigger fails the transaction after earlier rows of it are written.
    sql(
        tmp_path,
        "CREATE TRIGGER boom BEFORE INSERT ON group_entries WHEN NEW.key LIKE 'bad%' "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    )
    async with writer_held(engine):
        done = asyncio.gather(
            append(engine, "acme/a"),
            engine.write_groups([GroupWrite(group="g", state=b"after", delete=["k"])]),
            engine.write_groups(
                [
                    GroupWrite(group="h", state=b"new", put=[("ok", b"1")]),
                    GroupWrite(group="h", put=[("bad", b"2")]),
                ]
            ),
            append(engine, "acme/b"),
            return_exceptions=True,
        )
        await asyncio.sleep(0)
    results = await done
    assert all(isinstance(r, EngineUnavailable) for r in results), results
    assert all(isinstance(r.__cause__, sqlite3.Error) for r in results)  # type: ignore[union-attr]
    assert "nothing of the batch" in str(results[1])
    assert await stored(engine) == {"g": (b"before", {"k": b"1"})}
    assert await read_all(engine, "#") == []
    # The writer's idea of which groups exist was not changed either: "h" is unknown.
    sql(tmp_path, "DROP TRIGGER boom")
    await engine.write_groups([GroupWrite(group="h", put=[("ok", b"1")])])
    assert await stored(engine) == {"g": (b"before", {"k": b"1"})}
    await engine.write_groups([GroupWrite(group="g", state=b"after", delete=["k"])])
    assert await stored(engine) == {"g": (b"after", {})}


async def test_a_locked_database_makes_write_groups_unavailable(
    engines: list[SqliteEngine], tmp_path: Path, clock: FakeClock
) -> None:
    engine = SqliteEngine(tmp_path, EngineConfig(), clock)
    engine.busy_timeout = 0.1
    await engine.start(lambda deliveries: None)
    engines.append(engine)
    other = sqlite3.connect(tmp_path / "hybridbus.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(EngineUnavailable):
            await engine.write_groups([GroupWrite(group="g", state=b"s")])
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert await engine.groups() == []
    await engine.write_groups([GroupWrite(group="g", state=b"s")])
    assert await stored(engine) == {"g": (b"s", {})}


async def cap_pages(engine: SqliteEngine, full: bool = True) -> None:
    """Cap the database at its current size (the disk is full), or lift the cap."""

    def cap(db: object) -> None:
        conn: sqlite3.Connection = db._conn  # type: ignore[attr-defined]
        pages = conn.execute("PRAGMA page_count").fetchone()[0] if full else 1 << 30
        conn.execute(f"PRAGMA max_page_count = {pages}")

    await engine._command(cap)


async def test_a_full_disk_refuses_group_writes_and_applies_none_of_them(
    engines: list[SqliteEngine], tmp_path: Path, clock: FakeClock
) -> None:
    engine = await start(engines, tmp_path, clock)
    await engine.write_groups([GroupWrite(group="g", state=b"s", put=[("k", b"1")])])
    await cap_pages(engine)
    big = bytes(200_000)  # needs pages the file may not grow by
    with pytest.raises(EngineUnavailable, match="database or disk is full"):
        await engine.write_groups(
            [
                GroupWrite(group="g", state=b"s2", delete=["k"]),
                GroupWrite(group="h", state=b"h", put=[("big", big)]),
            ]
        )
    assert await stored(engine) == {"g": (b"s", {"k": b"1"})}
    await cap_pages(engine, full=False)
    await engine.write_groups([GroupWrite(group="h", state=b"h", put=[("big", big)])])
    assert (await stored(engine))["h"] == (b"h", {"big": big})


def make_old(path: Path, version: int) -> None:
    """Turn the closed database at `path` into what the code of schema `version` left."""
    with contextlib.closing(sqlite3.connect(path / "hybridbus.db", isolation_level=None)) as conn:
        conn.execute("DROP TABLE group_entries")
        conn.execute("DROP TABLE consumer_groups")
        if version < 2:
            conn.execute("DROP TABLE revocations")
        conn.execute(f"PRAGMA user_version={version}")


@pytest.mark.parametrize("version", [1, 2])
async def test_an_older_database_gets_the_group_tables_and_keeps_its_history(
    engines: list[SqliteEngine], tmp_path: Path, clock: FakeClock, version: int
) -> None:
    engine = await start(engines, tmp_path, clock)
    acks = [await append(engine, "acme/a") for _ in range(3)]
    epoch = engine.epoch
    await engine.close()
    make_old(tmp_path, version)
    assert sql(tmp_path, "SELECT name FROM sqlite_master WHERE name LIKE '%group%'") == []

    engine = await start(engines, tmp_path, clock)
    assert sql(tmp_path, "PRAGMA user_version") == [(schema.SCHEMA_VERSION,)]
    assert schema.SCHEMA_VERSION == 4
    assert engine.epoch == epoch
    assert [d.position for d in await read_all(engine, "acme/a")] == [a.position for a in acks]
    assert await engine.groups() == []
    await engine.write_groups([GroupWrite(group="g", state=b"s", put=[("k", b"v")])])
    assert await stored(engine) == {"g": (b"s", {"k": b"v"})}
    await engine.close()
    engine = await start(engines, tmp_path, clock)  # and it opens again as it is
    assert await stored(engine) == {"g": (b"s", {"k": b"v"})}


async def test_a_replay_is_remembered_across_a_restart(
    engines: list[SqliteEngine], tmp_path: Path, clock: FakeClock
) -> None:
    engine = await start(engines, tmp_path, clock)
    await append(engine, "acme/a", make_event(source="/s", id="1"))
    event = make_event(source="/s", id="1")
    [replayed] = await engine.append_many([("acme/a", event, encode_msgpack(event))], dedupe=False)
    assert not replayed.duplicate
    await engine.close()
    engine = await start(engines, tmp_path, clock)
    again = await append(engine, "acme/a", make_event(source="/s", id="1"))
    assert again.duplicate and again.position == replayed.position


_CHILD = r"""
import asyncio, sys
from hybridbus.core.codecs import encode_msgpack
from hybridbus.core.event import Event
from hybridbus.engine.base import GroupWrite
from hybridbus.engine.sqlite import SqliteEngine

async def main(path):
    engine = SqliteEngine(path)
    await engine.start(lambda deliveries: None)
    out = sys.stdout

    async def worker(w):
        group = f"g{w}"
        n = 0
        while True:
            n += 1
            # One write: the state says n, the only entry is k<n>; atomic, or torn.
            await engine.write_groups(
                [GroupWrite(group=group, state=str(n).encode(), put=[(f"k{n}", b"v")],
                            delete=[f"k{n - 1}"])]
            )
            out.write(f"{group} {n}\n")
            out.flush()
            if n % 3 == 0:
                event = Event(id=f"{w}-{n}", source="/child", type="test")
                await engine.append(f"t/{w}", event, encode_msgpack(event))

    await asyncio.gather(*(worker(w) for w in range(20)))

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.slow
async def test_every_acknowledged_group_write_survives_kill_9(
    engines: list[SqliteEngine], tmp_path: Path, clock: FakeClock
) -> None:
    lines = await lines_acked_before_kill_9(_CHILD, tmp_path, 1000)
    acked: dict[str, int] = {}
    for line in lines:
        group, n = line.split()
        acked[group] = max(acked.get(group, 0), int(n))

    engine = await start(engines, tmp_path, clock)
    found = await stored(engine)
    for group, n in acked.items():
        state, entries = found[group]
        kept = int(state)
        assert kept >= n, (group, kept, n)  # nothing acknowledged was lost
        assert entries == {f"k{kept}": b"v"}, (group, kept)  # each write whole
