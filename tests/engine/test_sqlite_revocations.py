"""Revocations in the sqlite engine: schema migration, group commit, failures, kill -9.

The shared contract (upsert, expiry, sweep, reset, restart) is checked by the
conformance suite; these tests cover what only the sqlite engine does.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.support import FakeClock, MakeEngine, append, lines_acked_before_kill_9, read_all

from hybridbus.core.revocation import Revocation
from hybridbus.engine import _sqlite_schema as schema
from hybridbus.engine import _sqlite_store as store
from hybridbus.engine.base import EngineConfig
from hybridbus.engine.sqlite import SqliteEngine
from hybridbus.errors import EngineCorrupt, EngineUnavailable


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


def token(clock: FakeClock, value: str, lasts: float = 3600, reason: str = "") -> Revocation:
    return Revocation(
        kind="token",
        tenant="acme",
        value=value,
        until=clock.now + lasts,
        at=clock.now,
        reason=reason,
    )


async def test_revocations_survive_close_and_reopen(
    engines: list[SqliteEngine], tmp_path: Path, clock: FakeClock
) -> None:
    engine = await start(engines, tmp_path, clock)
    await engine.revoke(token(clock, "t1", reason="leaked"))
    await engine.revoke(token(clock, "t1", lasts=7200))  # upserted, not a second row
    await engine.revoke(token(clock, "t2"))
    await engine.close()
    assert sql(tmp_path, "SELECT value, until, reason FROM revocations ORDER BY value") == [
        ("t1", clock.now + 7200, ""),
        ("t2", clock.now + 3600, ""),
    ]
    engine = await start(engines, tmp_path, clock)
    assert sorted(r.value for r in await engine.revocations()) == ["t1", "t2"]


async def test_a_version_1_database_gets_the_table_and_keeps_its_history(
    engines: list[SqliteEngine], tmp_path: Path, clock: FakeClock
) -> None:
    engine = await start(engines, tmp_path, clock)
    acks = [await append(engine, "a") for _ in range(3)]
    epoch = engine.epoch
    await engine.close()
    # What the code before revocations left: schema version 1, no table.
    with contextlib.closing(sqlite3.connect(tmp_path / "hybridbus.db")) as conn:
        conn.execute("DROP TABLE revocations")
        conn.execute("PRAGMA user_version=1")
        conn.commit()
    assert sql(tmp_path, "SELECT name FROM sqlite_master WHERE name LIKE 'revocations%'") == []

    engine = await start(engines, tmp_path, clock)
    assert sql(tmp_path, "PRAGMA user_version") == [(schema.SCHEMA_VERSION,)]
    assert engine.epoch == epoch
    assert [d.position for d in await read_all(engine, "a")] == [a.position for a in acks]
    assert await engine.revocations() == []
    await engine.revoke(token(clock, "t1"))
    assert [r.value for r in await engine.revocations()] == ["t1"]
    assert (await engine.sweep()) == 0


async def test_a_newer_schema_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    engine = SqliteEngine(tmp_path, EngineConfig(), clock)
    await engine.start(lambda deliveries: None)
    await engine.close()
    sql(tmp_path, f"PRAGMA user_version={schema.SCHEMA_VERSION + 1}")
    with pytest.raises(EngineCorrupt, match="schema version"):
        await SqliteEngine(tmp_path, EngineConfig(), clock).start(lambda deliveries: None)


async def test_concurrent_revocations_are_group_committed(
    engines: list[SqliteEngine], tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    transactions: list[int] = []
    revoke = store.Store.revoke

    def counting(self: store.Store, revocations: list[Revocation]) -> None:
        transactions.append(len(revocations))
        revoke(self, revocations)

    monkeypatch.setattr(store.Store, "revoke", counting)
    engine = await start(engines, tmp_path, clock, EngineConfig(batch_max=64))
    await asyncio.gather(*(engine.revoke(token(clock, f"t{i}")) for i in range(300)))
    assert sum(transactions) == 300
    assert max(transactions) <= 64  # batch_max bounds a transaction
    assert len(transactions) <= 20, transactions
    assert sql(tmp_path, "SELECT count(*) FROM revocations") == [(300,)]


async def test_a_failed_revoke_raises_and_stores_nothing(
    engines: list[SqliteEngine], tmp_path: Path, clock: FakeClock
) -> None:
    engine = SqliteEngine(tmp_path, EngineConfig(), clock)
    engine.busy_timeout = 0.1
    await engine.start(lambda deliveries: None)
    engines.append(engine)
    other = sqlite3.connect(tmp_path / "hybridbus.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        failed = await asyncio.gather(
            engine.revoke(token(clock, "t1")),
            engine.revoke(token(clock, "t2")),
            return_exceptions=True,
        )
        assert all(isinstance(e, EngineUnavailable) and "revoke failed" in str(e) for e in failed)
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert await engine.revocations() == []
    await engine.revoke(token(clock, "t3"))
    assert [r.value for r in await engine.revocations()] == ["t3"]


async def test_the_sweeper_deletes_expired_rows(
    engines: list[SqliteEngine], tmp_path: Path, clock: FakeClock
) -> None:
    engine = await start(engines, tmp_path, clock, EngineConfig(sweep_interval=0.01))
    await engine.revoke(token(clock, "short", lasts=1))
    await engine.revoke(token(clock, "long", lasts=100))
    clock.advance(2)
    for _ in range(300):
        if sql(tmp_path, "SELECT value FROM revocations") == [("long",)]:
            break
        await asyncio.sleep(0.01)
    assert sql(tmp_path, "SELECT value FROM revocations") == [("long",)]


async def test_an_invalid_stored_revocation_is_corrupt(
    engines: list[SqliteEngine], tmp_path: Path, clock: FakeClock
) -> None:
    engine = await start(engines, tmp_path, clock)
    sql(tmp_path, f"INSERT INTO revocations VALUES ('device', 'acme', 'd', {clock.now + 9}, 0, '')")
    with pytest.raises(EngineCorrupt, match="revocation"):
        await engine.revocations()


_CHILD = r"""
import asyncio, sys
from hybridbus.core.revocation import Revocation
from hybridbus.engine.sqlite import SqliteEngine

async def main(path):
    engine = SqliteEngine(path)
    await engine.start(lambda deliveries: None)
    out = sys.stdout

    async def worker(w):
        n = 0
        while True:
            n += 1
            value = f"{w}-{n}"
            await engine.revoke(
                Revocation(kind="token", tenant="acme", value=value, until=4e9, at=1e9)
            )
            out.write(value + "\n")
            out.flush()

    await asyncio.gather(*(worker(w) for w in range(20)))

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.slow
async def test_every_acknowledged_revocation_survives_kill_9(
    engines: list[SqliteEngine], tmp_path: Path
) -> None:
    acked = [line.strip() for line in await lines_acked_before_kill_9(_CHILD, tmp_path, 1000)]

    engine = await start(engines, tmp_path, FakeClock(2e9))
    stored = {r.value for r in await engine.revocations()}
    missing = [value for value in acked if value not in stored]
    assert missing == []


# -- bounded revocations (issue 8, item 6); on every engine ---------------------------------


async def test_shorten_revocations_lowers_the_untils_past_a_bound_durably(
    make_engine: MakeEngine, engine_kind: str, clock: FakeClock
) -> None:
    """Revocations stored with `until = 1e308` (before there was a horizon) can be lowered.

    `revoke` only ever widens a stored `until`, so this is its own operation.
    """
    opened = await make_engine()
    engine = opened.engine
    await engine.revoke(token(clock, "flood", lasts=1e308, reason="flood"))
    await engine.revoke(token(clock, "near", lasts=10))
    bound = clock.now + 100
    assert await engine.shorten_revocations(bound) == 1
    assert await engine.shorten_revocations(bound) == 0
    kept = {r.value: r for r in await engine.revocations()}
    assert kept["flood"].until == bound and kept["flood"].reason == "flood"
    assert kept["near"].until == clock.now + 10
    clock.advance(100)
    await engine.sweep()
    assert await engine.revocations() == []
    if engine_kind == "sqlite":
        await engine.revoke(token(clock, "again", lasts=1e308))
        await engine.shorten_revocations(clock.now + 5)
        await engine.close()
        engine = (await make_engine()).engine  # the same data: the lower until was stored
        assert [r.until for r in await engine.revocations()] == [clock.now + 5]
