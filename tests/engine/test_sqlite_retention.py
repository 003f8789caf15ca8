"""What only the sqlite engine promises about retention: the stored sizes and their migration.

The behaviour every engine shares is in test_conformance_retention.py; here:
`topics.bytes` always equals the sum of the topic's stored payloads, whatever
removed events (count, size, age, expiry, a failed transaction), and a
version-3 database gets the column, computed from its log.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.support import FakeClock, append, make_event, read_all

from hybridbus.engine import _sqlite_schema as schema
from hybridbus.engine.base import EngineConfig, RetentionRule
from hybridbus.engine.sqlite import SqliteEngine


@pytest.fixture
async def engines() -> AsyncIterator[list[SqliteEngine]]:
    opened: list[SqliteEngine] = []
    yield opened
    for engine in opened:
        await engine.close()


async def start(
    engines: list[SqliteEngine], path: Path, clock: FakeClock, config: EngineConfig
) -> SqliteEngine:
    engine = SqliteEngine(path, config, clock)
    await engine.start(lambda deliveries: None)
    engines.append(engine)
    return engine


def sql(path: Path, statement: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path / "hybridbus.db", isolation_level=None)) as conn:
        return conn.execute(statement).fetchall()


def per_topic(path: Path, statement: str) -> dict[str, int]:
    return {str(topic): int(value) for topic, value in sql(path, statement)}  # type: ignore[call-overload]


def stored_bytes(path: Path) -> dict[str, int]:
    return per_topic(path, "SELECT topic, bytes FROM topics WHERE bytes > 0")


def summed_bytes(path: Path) -> dict[str, int]:
    return per_topic(path, "SELECT topic, sum(length(payload)) FROM log GROUP BY topic")


async def test_stored_sizes_follow_every_removal(
    engines: list[SqliteEngine], tmp_path: Path
) -> None:
    clock = FakeClock()
    rules = (
        RetentionRule(pattern="acme/logs/+", max_bytes=2_000, max_age=30),
        RetentionRule(pattern="acme/docs/#"),
    )
    config = EngineConfig(max_per_topic=7, retention=rules, sweep_interval=3600)
    engine = await start(engines, tmp_path, clock, config)
    rng = random.Random(14)
    topics = ["acme/logs/a", "acme/logs/b", "acme/docs/x", "acme/other", "globex/logs/a"]
    for step in range(400):
        topic = rng.choice(topics)
        expiry = None
        if rng.random() < 0.2:
            expiry = datetime.fromtimestamp(clock.now + rng.uniform(1, 20), UTC)
        await append(engine, topic, make_event(data="x" * rng.randrange(300), expirytime=expiry))
        if step % 25 == 0:
            clock.advance(rng.uniform(0, 15))
            await engine.sweep()
            assert stored_bytes(tmp_path) == summed_bytes(tmp_path)
    assert stored_bytes(tmp_path) == summed_bytes(tmp_path)
    sizes = summed_bytes(tmp_path)
    assert all(sizes.get(t, 0) <= 2_000 for t in ("acme/logs/a", "acme/logs/b"))
    await engine.close()
    # Opening with smaller limits trims at once, and keeps the sums right.
    smaller = EngineConfig(
        max_per_topic=3, retention=(RetentionRule(pattern="+/logs/#", max_bytes=500),)
    )
    await start(engines, tmp_path, clock, smaller)
    assert stored_bytes(tmp_path) == summed_bytes(tmp_path)
    counts = per_topic(tmp_path, "SELECT topic, count(*) FROM log GROUP BY topic")
    for topic, size in summed_bytes(tmp_path).items():
        if "/logs/" in topic:
            assert size <= 500, topic
        else:
            assert counts[topic] <= 3, topic


async def test_a_version_3_database_gets_its_sizes_from_the_log(
    engines: list[SqliteEngine], tmp_path: Path
) -> None:
    clock = FakeClock()
    engine = await start(engines, tmp_path, clock, EngineConfig())
    for n in range(6):
        await append(engine, "acme/logs/a", make_event(data="y" * 100 * n))
        await append(engine, "acme/docs/d", make_event(data="z" * 10))
    await engine.close()
    sizes = summed_bytes(tmp_path)
    # What the code of schema version 3 left: no `bytes` column.
    sql(tmp_path, "ALTER TABLE topics DROP COLUMN bytes")
    sql(tmp_path, "PRAGMA user_version=3")

    rule = RetentionRule(pattern="+/logs/#", max_bytes=sizes["acme/logs/a"] - 1)
    engine = await start(engines, tmp_path, clock, EngineConfig(retention=(rule,)))
    assert sql(tmp_path, "PRAGMA user_version") == [(schema.SCHEMA_VERSION,)]
    # Opening trimmed the logs to the limit: the migration counted what was there.
    assert [d.offset for d in await read_all(engine, "acme/logs/a")] == [2, 3, 4, 5, 6]
    assert len(await read_all(engine, "acme/docs/d")) == 6
    assert stored_bytes(tmp_path) == summed_bytes(tmp_path)
