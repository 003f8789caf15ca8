"""Tests of what only the sqlite engine promises: group commit, durability, driver failures.

The shared contract is checked by the conformance suite; these tests cover the
writer thread, reopening, kill -9, injected SQLite failures, the SQL narrowing
of wildcard reads, and corrupt data.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.support import append, lines_acked_before_kill_9, make_event, read_all

from hybridbus.core.codecs import encode_msgpack
from hybridbus.core.log import Ack, Delivery
from hybridbus.engine.base import Engine, EngineConfig
from hybridbus.engine.sqlite import SqliteEngine
from hybridbus.errors import BusClosed, EngineCorrupt, EngineUnavailable


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def engines(tmp_path: Path) -> AsyncIterator[list[SqliteEngine]]:
    """Engines a test opened; closed at the end whatever happened."""
    opened: list[SqliteEngine] = []
    yield opened
    for engine in opened:
        await engine.close()


async def start(
    engines: list[SqliteEngine],
    path: Path,
    config: EngineConfig | None = None,
    clock: Clock | None = None,
    seen: list[Delivery] | None = None,
) -> SqliteEngine:
    engine = SqliteEngine(path, config or EngineConfig(), clock or Clock())
    await engine.start((seen if seen is not None else []).extend)
    engines.append(engine)
    return engine


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path / "hybridbus.db")) as conn:
        return conn.execute(sql).fetchall()


async def test_it_is_an_engine_with_one_shard(engines: list[SqliteEngine], tmp_path: Path) -> None:
    engine = await start(engines, tmp_path / "new" / "dir")
    assert isinstance(engine, Engine)
    assert engine.shards == 1
    assert (tmp_path / "new" / "dir" / "hybridbus.db").exists()
    assert rows(tmp_path / "new" / "dir", "PRAGMA journal_mode") == [("wal",)]
    ack = await append(engine, "a")
    assert (ack.shard, ack.offset, ack.position) == (0, 1, 1)
    assert await engine.head() == (1,)


async def test_group_commit_batches_concurrent_appends(
    engines: list[SqliteEngine], tmp_path: Path
) -> None:
    engine = await start(engines, tmp_path)
    acks = await asyncio.gather(*(append(engine, f"t/{i % 4}") for i in range(200)))
    assert engine.commits <= 10, engine.commits
    for topic in {a.topic for a in acks}:
        offsets = sorted(a.offset for a in acks if a.topic == topic)
        assert offsets == list(range(1, 51))
    assert sorted(a.position for a in acks) == list(range(1, 201))


async def test_batch_max_bounds_a_transaction(engines: list[SqliteEngine], tmp_path: Path) -> None:
    engine = await start(engines, tmp_path, EngineConfig(batch_max=8))
    await asyncio.gather(*(append(engine, "a") for _ in range(64)))
    assert engine.commits >= 8


async def test_acks_resolve_after_the_listener_saw_the_batch_in_order(
    engines: list[SqliteEngine], tmp_path: Path
) -> None:
    seen: list[Delivery] = []
    calls: list[int] = []
    engine = SqliteEngine(tmp_path, EngineConfig(), Clock())

    def listener(deliveries: object) -> None:
        assert isinstance(deliveries, list)
        calls.append(len(deliveries))
        seen.extend(deliveries)

    await engine.start(listener)
    engines.append(engine)

    async def one(i: int) -> None:
        ack = await append(engine, f"t/{i % 3}")
        assert any(d.position == ack.position for d in seen)

    await asyncio.gather(*(one(i) for i in range(100)))
    assert [d.position for d in seen] == list(range(1, 101))
    assert len(calls) == engine.commits  # one listener call per batch


async def test_reopen_continues_offsets_keeps_epoch_and_history(
    engines: list[SqliteEngine], tmp_path: Path
) -> None:
    clock = Clock()
    first = await start(engines, tmp_path, clock=clock)
    before = [await append(first, topic) for topic in ["a", "b", "a"]]
    epoch = first.epoch
    await first.close()
    with pytest.raises(BusClosed):
        await append(first, "a")
    with pytest.raises(BusClosed):
        await first.read("a", None, 10)

    second = await start(engines, tmp_path, clock=clock)
    assert second.epoch == epoch
    history = await read_all(second, "#")
    assert [(d.topic, d.offset, d.position) for d in history] == [
        (a.topic, a.offset, a.position) for a in before
    ]
    after = await append(second, "a")
    assert (after.offset, after.position, after.epoch) == (3, 4, epoch)


async def test_positions_are_never_reused_after_the_newest_expired(
    engines: list[SqliteEngine], tmp_path: Path
) -> None:
    clock = Clock()
    engine = await start(engines, tmp_path, EngineConfig(sweep_interval=3600), clock)
    await append(engine, "a")
    doomed = await append(
        engine, "a", make_event(expirytime=datetime.fromtimestamp(clock.now + 1, UTC))
    )
    clock.now += 2
    assert await engine.sweep() == 1
    assert await engine.head() == (doomed.position,)
    await engine.close()
    engine = await start(engines, tmp_path, EngineConfig(sweep_interval=3600), clock)
    assert (await append(engine, "a")).position == doomed.position + 1


async def test_reset_is_durable(engines: list[SqliteEngine], tmp_path: Path) -> None:
    engine = await start(engines, tmp_path)
    await append(engine, "a", make_event(id="x"))
    old = engine.epoch
    new = await engine.reset()
    assert new == engine.epoch != old
    assert await engine.head() == (0,)
    again = await append(engine, "a", make_event(id="x"))  # dedupe records went too
    assert (again.offset, again.position, again.duplicate) == (1, 1, False)
    await engine.close()
    engine = await start(engines, tmp_path)
    assert engine.epoch == new
    assert [d.offset for d in await read_all(engine, "a")] == [1]


async def test_a_smaller_count_limit_applies_when_reopened(
    engines: list[SqliteEngine], tmp_path: Path
) -> None:
    engine = await start(engines, tmp_path)
    acks = [await append(engine, "a") for _ in range(5)]
    await engine.close()
    engine = await start(engines, tmp_path, EngineConfig(max_per_topic=2))
    page = await engine.read("a", None, 10)
    assert [d.offset for d in page.deliveries] == [4, 5]
    assert not page.exact
    assert (await engine.read("a", (acks[2].position,), 10)).exact


async def test_the_sweeper_runs_on_its_own(engines: list[SqliteEngine], tmp_path: Path) -> None:
    clock = Clock()
    engine = await start(engines, tmp_path, EngineConfig(sweep_interval=0.02, max_age=5), clock)

    async def left(count: int) -> None:
        for _ in range(200):
            if rows(tmp_path, "SELECT count(*) FROM log") == [(count,)]:
                break
            await asyncio.sleep(0.01)
        assert rows(tmp_path, "SELECT count(*) FROM log") == [(count,)]

    await append(engine, "a", make_event(expirytime=datetime.fromtimestamp(clock.now + 1, UTC)))
    await append(engine, "b")
    clock.now += 2
    await left(1)  # expired
    clock.now += 10
    await left(0)  # too old
    # Only age retention is a loss readers hear about.
    assert rows(tmp_path, "SELECT topic FROM topics WHERE trimmed_position > 0") == [("b",)]


async def test_dedupe_window_ends_and_survives_a_restart(
    engines: list[SqliteEngine], tmp_path: Path
) -> None:
    clock = Clock()
    config = EngineConfig(dedupe_window=30)
    engine = await start(engines, tmp_path, config, clock)
    first = await append(engine, "a", make_event(id="x"))
    await append(engine, "a", make_event(id="y"))
    clock.now += 20
    await append(engine, "a", make_event(id="z"))
    await engine.close()
    # The dedupe index is rebuilt from the log: a retry after a restart is caught.
    engine = await start(engines, tmp_path, config, clock)
    again = await append(engine, "a", make_event(id="x"))
    assert (again.duplicate, again.offset, again.position) == (True, 1, first.position)
    clock.now += 11  # x and y are 31 s old now, z 11 s
    await engine.sweep()
    assert not (await append(engine, "a", make_event(id="y"))).duplicate
    await engine.close()
    engine = await start(engines, tmp_path, config, clock)
    assert (await append(engine, "a", make_event(id="z"))).duplicate
    assert not (await append(engine, "a", make_event(id="x"))).duplicate


async def test_wildcard_reads_narrow_by_prefix_mqtt_style(
    engines: list[SqliteEngine], tmp_path: Path
) -> None:
    engine = await start(engines, tmp_path)
    # Neighbours of the prefix range ['acme/', 'acme0') on both sides.
    topics = ["acme", "acme-x", "acme/a", "acme0", "acme/a/b", "acmez/a", "$audit/x", "a/x"]
    for topic in topics:
        await append(engine, topic)

    async def found(pattern: str) -> list[str]:
        return [d.topic for d in await read_all(engine, pattern, limit=2)]

    assert await found("acme/#") == ["acme", "acme/a", "acme/a/b"]
    assert await found("acme/+") == ["acme/a"]
    assert await found("acme/a/#") == ["acme/a", "acme/a/b"]
    assert await found("+/x") == ["a/x"]  # not $audit/x
    assert await found("$audit/+") == ["$audit/x"]
    assert "$audit/x" not in await found("#")
    assert len(await found("#")) == len(topics) - 1


async def test_wildcard_reads_page_through_many_non_matching_rows(
    engines: list[SqliteEngine], tmp_path: Path
) -> None:
    engine = await start(engines, tmp_path)
    hits = []
    for i in range(900):
        if i % 300 == 299:
            hits.append(await append(engine, f"acme/{i}/hit"))
        else:
            await append(engine, "acme/noise/miss")
    page = await engine.read("acme/+/hit", None, 2)
    assert [d.position for d in page.deliveries] == [h.position for h in hits[:2]]
    assert page.more
    assert page.positions == (hits[1].position,)
    page = await engine.read("acme/+/hit", page.positions, 2)
    assert [d.position for d in page.deliveries] == [hits[2].position]
    assert not page.more
    assert page.positions == await engine.head()


async def test_a_failed_transaction_appends_nothing(
    engines: list[SqliteEngine], tmp_path: Path
) -> None:
    seen: list[Delivery] = []
    engine = await start(engines, tmp_path, seen=seen)
    await append(engine, "a")
    # A trigger makes the log insert fail after earlier rows of the batch
    # are already inserted in the same transaction: a real mid-batch failure.
    with contextlib.closing(sqlite3.connect(tmp_path / "hybridbus.db")) as conn:
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON log WHEN NEW.id LIKE 'bad%' "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
    batch = [make_event(id="bad") if i == 5 else make_event() for i in range(10)]
    results = await asyncio.gather(
        *(append(engine, "a", ev) for ev in batch), return_exceptions=True
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    assert isinstance(results[5], EngineUnavailable)
    assert all(isinstance(r, EngineUnavailable) for r in failed)
    assert all(isinstance(r.__cause__, sqlite3.Error) for r in failed)
    acked = [r for r in results if isinstance(r, Ack)]
    stored = await read_all(engine, "a")
    assert [d.offset for d in stored] == list(range(1, len(acked) + 2))
    assert {d.event.id for d in stored[1:]} == {
        ev.id for ev, r in zip(batch, results, strict=True) if isinstance(r, Ack)
    }
    assert [d.position for d in seen] == [d.position for d in stored]
    with contextlib.closing(sqlite3.connect(tmp_path / "hybridbus.db")) as conn:
        conn.execute("DROP TRIGGER boom")
    retry = await append(engine, "a", make_event(id="bad"))
    assert (retry.offset, retry.duplicate) == (len(stored) + 1, False)


async def test_a_failed_append_many_appends_none_of_it(
    engines: list[SqliteEngine], tmp_path: Path
) -> None:
    seen: list[Delivery] = []
    engine = await start(engines, tmp_path, seen=seen)
    await append(engine, "a")
    with contextlib.closing(sqlite3.connect(tmp_path / "hybridbus.db")) as conn:
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON log WHEN NEW.id LIKE 'bad%' "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
    batch = [make_event(id="bad") if i == 70 else make_event() for i in range(100)]
    items = [("a", ev, encode_msgpack(ev)) for ev in batch]
    with pytest.raises(EngineUnavailable) as failed:
        await engine.append_many(items)
    assert isinstance(failed.value.__cause__, sqlite3.Error)
    assert [d.offset for d in await read_all(engine, "a")] == [1]
    assert len(seen) == 1
    with contextlib.closing(sqlite3.connect(tmp_path / "hybridbus.db")) as conn:
        conn.execute("DROP TRIGGER boom")
    acks = await engine.append_many(items)
    assert [a.offset for a in acks] == list(range(2, 102))
    assert not any(a.duplicate for a in acks)


async def test_an_append_many_past_batch_max_is_one_transaction(
    engines: list[SqliteEngine], tmp_path: Path
) -> None:
    engine = await start(engines, tmp_path, EngineConfig(batch_max=8))
    events = [make_event() for _ in range(50)]
    before = engine.commits
    acks = await engine.append_many([("a", ev, encode_msgpack(ev)) for ev in events])
    assert engine.commits == before + 1
    assert [a.offset for a in acks] == list(range(1, 51))


async def test_a_locked_database_is_unavailable_then_recovers(
    engines: list[SqliteEngine], tmp_path: Path
) -> None:
    engine = SqliteEngine(tmp_path, EngineConfig(), Clock())
    engine.busy_timeout = 0.1
    await engine.start(lambda deliveries: None)
    engines.append(engine)
    await append(engine, "a")
    other = sqlite3.connect(tmp_path / "hybridbus.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(EngineUnavailable, match="locked"):
            await append(engine, "a")
        assert len(await read_all(engine, "a")) == 1  # WAL: reads go on
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert (await append(engine, "a")).offset == 2


async def test_a_crashed_writer_fails_appends_instead_of_hanging(
    engines: list[SqliteEngine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await start(engines, tmp_path)
    await append(engine, "a")

    def crash(self: SqliteEngine, db: object) -> bool:
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(SqliteEngine, "_drain", crash)
    await asyncio.sleep(0.05)  # let the writer finish the drain it is in and sleep
    with pytest.raises(EngineUnavailable, match="writer thread died"):
        await asyncio.wait_for(append(engine, "a"), 5)
    with pytest.raises(EngineUnavailable):
        await append(engine, "a")
    await asyncio.wait_for(engine.close(), 5)


async def test_an_undecodable_payload_is_corrupt(
    engines: list[SqliteEngine], tmp_path: Path
) -> None:
    engine = await start(engines, tmp_path)
    await engine.append("a", make_event(), b"\xc1 not msgpack")
    with pytest.raises(EngineCorrupt, match="position 1"):
        await engine.read("a", None, 10)
    with pytest.raises(EngineCorrupt, match="position 1"):  # a group's read: at once too
        await engine.read_stored("a", None, 10)


async def test_a_file_that_is_not_a_database_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "hybridbus.db").write_bytes(b"this is not an sqlite database" * 100)
    engine = SqliteEngine(tmp_path)
    with pytest.raises(EngineCorrupt):
        await engine.start(lambda deliveries: None)
    with pytest.raises(BusClosed):
        await append(engine, "a")


def test_unknown_synchronous_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SqliteEngine(tmp_path, EngineConfig(synchronous="off"))


_CHILD = r"""
import asyncio, sys
from hybridbus.core.codecs import encode_msgpack
from hybridbus.core.event import Event
from hybridbus.engine.sqlite import SqliteEngine
from tests.support import append, make_event, read_all

async def main(path):
    engine = SqliteEngine(path)
    await engine.start(lambda deliveries: None)
    out = sys.stdout

    async def worker(w):
        n = 0
        while True:
            n += 1
            event = Event(id=f"{w}-{n}", source="/child", type="test")
            ack = await engine.append(f"t/{w % 5}", event, encode_msgpack(event))
            out.write(f"{ack.topic} {ack.offset} {event.id}\n")
            out.flush()

    await asyncio.gather(*(worker(w) for w in range(40)))

asyncio.run(main(sys.argv[1]))
"""


# The same with batches: each worker appends 5 events at a time with append_many.
_CHILD_MANY = r"""
import asyncio, sys
from hybridbus.core.codecs import encode_msgpack
from hybridbus.core.event import Event
from hybridbus.engine.sqlite import SqliteEngine

async def main(path):
    engine = SqliteEngine(path)
    await engine.start(lambda deliveries: None)
    out = sys.stdout

    async def worker(w):
        n = 0
        while True:
            events = [Event(id=f"{w}-{n + i}", source="/child", type="test") for i in range(5)]
            n += 5
            topic = f"t/{w % 5}"
            acks = await engine.append_many([(topic, e, encode_msgpack(e)) for e in events])
            out.write("".join(f"{a.topic} {a.offset} {e.id}\n" for a, e in zip(acks, events)))
            out.flush()

    await asyncio.gather(*(worker(w) for w in range(20)))

asyncio.run(main(sys.argv[1]))
"""


def parse_ack(line: str) -> tuple[str, int, str]:
    topic, offset, id = line.split()
    return topic, int(offset), id


@pytest.mark.slow
@pytest.mark.parametrize("child", [_CHILD, _CHILD_MANY], ids=["append", "append_many"])
async def test_every_acked_append_survives_kill_9(
    engines: list[SqliteEngine], tmp_path: Path, child: str
) -> None:
    lines = await lines_acked_before_kill_9(child, tmp_path, 2000)
    acked = [parse_ack(line) for line in lines]

    engine = await start(engines, tmp_path)
    stored: dict[str, dict[int, str]] = defaultdict(dict)
    for d in await read_all(engine, "t/+", limit=1000):
        stored[d.topic][d.offset] = d.event.id
    for topic, offset, id in acked:
        assert stored[topic].get(offset) == id, (topic, offset, id)
    for topic, offsets in stored.items():
        assert sorted(offsets) == list(range(1, len(offsets) + 1)), topic
    assert len({id for _, _, id in acked}) == len(acked)
