"""The PostgreSQL audit sink against a real PostgreSQL 15, read back with psql.

The table's columns and upsert by (source, id); a row PostgreSQL refuses goes to the
dead-letter table with the rest of its batch kept; the sink killed with -9 mid-stream
(`hybridbus bridge CONFIG`) and PostgreSQL restarted mid-stream: every event in the table
exactly once — a trigger counts every write of a row, and each row is written once — in
log order per topic.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from tests.bridges.support import BridgeProcess, eventually, psql
from tests.services import PostgresServer

import hybridbus
from hybridbus.bridges.postgres import migrate
from hybridbus.bridges.registry import Bridges
from hybridbus.bridges.settings import AnyBridge, PostgresBridge
from hybridbus.core.log import Position

pytestmark = pytest.mark.slow

# Every write of a row of the sink's table, in order: exactly-once means one each.
WRITES = """
CREATE TABLE writes (n bigserial PRIMARY KEY, source text, id text, topic text, bus_offset bigint);
CREATE FUNCTION count_write() RETURNS trigger AS $$
BEGIN
  INSERT INTO writes (source, id, topic, bus_offset)
    VALUES (NEW.source, NEW.id, NEW.topic, NEW.bus_offset);
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER count_writes AFTER INSERT OR UPDATE ON hybridbus_events
  FOR EACH ROW EXECUTE FUNCTION count_write();
"""


def sink(**fields: Any) -> PostgresBridge:
    return msgspec.convert({"kind": "postgres", "name": "audit", **fields}, AnyBridge)  # type: ignore[return-value]


async def prepared(db: PostgresServer, settings: PostgresBridge) -> None:
    """The sink's tables made now (as the bridge would), and the write counter on them."""
    connection = await asyncpg.connect(db.url, timeout=10)
    try:
        assert await migrate(connection, settings) == 1
        assert await migrate(connection, settings) == 0  # applied once
    finally:
        await connection.close()
    psql(db.url, WRITES)


def count(db: PostgresServer, sql: str) -> int:
    """The number `sql` selects; -1 while the table is not there (the sink makes it)."""
    try:
        return int(psql(db.url, sql)[0][0])
    except subprocess.CalledProcessError as exc:
        if "does not exist" in exc.stderr:
            return -1
        raise


def assert_exactly_once_in_order(db: PostgresServer, total: int) -> None:
    assert count(db, "SELECT count(*) FROM hybridbus_events") == total
    assert count(db, "SELECT count(*) FROM writes") == total  # no row written twice
    rows = psql(db.url, "SELECT topic, bus_offset FROM writes ORDER BY n")
    last: dict[str, int] = {}
    for topic, offset in rows:
        assert int(offset) > last.get(topic, 0), (topic, offset)
        last[topic] = int(offset)


async def test_rows_upsert_and_dead_letters(postgres_server: Callable[..., PostgresServer]) -> None:
    db = postgres_server()
    settings = sink(url=db.url, patterns=["acme/docs/#", "acme/+/7"], batch=3)
    async with hybridbus.open("memory://") as bus:
        bridges = Bridges(bus, [settings])
        await bridges.start()
        try:
            await bus.publish(
                "acme/docs/7",  # matched by both patterns: one row
                {"id": "d7", "source": "/editor", "type": "com.acme.edit", "subject": "doc 7",
                 "time": "2024-05-06T07:08:09Z", "partitionkey": "doc-7", "lamport": 3,
                 "region": "eu", "data": {"op": "insert", "text": "hé"}},
            )  # fmt: skip
            await bus.publish("acme/docs/8", {"id": "b", "source": "/s", "type": "t",
                                              "data": b"\x00\x01"})  # fmt: skip
            await bus.publish("acme/docs/9", {"id": "nul", "source": "/s", "type": "t",
                                              "data": {"text": "a\u0000b"}})  # fmt: skip
            await bus.publish("acme/docs/10", {"id": "after", "source": "/s", "type": "t"})
            await eventually(
                lambda: (
                    count(db, "SELECT count(*) FROM hybridbus_events") == 3
                    and count(db, "SELECT count(*) FROM hybridbus_events_dead") == 1
                ),
                what="3 rows and 1 dead row",
            )
            info = bridges.infos()[0]
        finally:
            await bridges.close()
    [row] = psql(
        db.url,
        "SELECT source, id, type, subject, time AT TIME ZONE 'UTC', partitionkey, lamport, "
        "extensions->>'region', data->>'text', data_base64, topic FROM hybridbus_events "
        "WHERE id = 'd7'",
    )
    assert row == ["/editor", "d7", "com.acme.edit", "doc 7", "2024-05-06 07:08:09", "doc-7",
                   "3", "eu", "hé", "f", "acme/docs/7"]  # fmt: skip
    assert psql(db.url, "SELECT data #>> '{}', data_base64 FROM hybridbus_events WHERE id='b'") == [
        ["AAE=", "t"]
    ]
    dead_rows = "SELECT id, topic, replace(error, E'\\n', ' ') FROM hybridbus_events_dead"
    [dead] = psql(db.url, dead_rows)
    assert dead[:2] == ["nul", "acme/docs/9"]
    assert "\\u0000" in dead[2] or "unsupported Unicode" in dead[2]
    positions = psql(db.url, "SELECT pattern FROM hybridbus_events_positions ORDER BY pattern")
    assert positions == [["acme/+/7"], ["acme/docs/#"]]
    assert info.state == "running" and info.errors == 1 and "dead" in info.last_error


async def test_sink_killed_mid_stream(
    postgres_server: Callable[..., PostgresServer], tmp_path: Path
) -> None:
    db = postgres_server()
    total = 15_000  # a few seconds of work: the kill lands mid-stream
    engine = f"sqlite://{tmp_path}/data"
    async with hybridbus.open(engine) as bus:
        await bus.publish_many(
            (f"acme/k{n % 5}", {"id": f"e{n}", "source": "/t", "type": "t", "data": n})
            for n in range(total)
        )
    settings = sink(url=db.url, patterns=["acme/#"], batch=50)
    await prepared(db, settings)
    path = tmp_path / "sink.toml"
    path.write_text(
        f'engine = "{engine}"\n\n[[bridges]]\nkind = "postgres"\nname = "audit"\n'
        f'url = "{db.url}"\npatterns = ["acme/#"]\nbatch = 50\n'
    )
    bridge = BridgeProcess(path)
    try:
        bridge.start()
        await eventually(lambda: count(db, "SELECT count(*) FROM hybridbus_events") > 0,
                         what="the first rows")  # fmt: skip
        bridge.kill()
        assert count(db, "SELECT count(*) FROM hybridbus_events") < total  # mid-stream
        bridge.start()
        await eventually(
            lambda: count(db, "SELECT count(*) FROM hybridbus_events") == total,
            timeout=40,
            what="every row",
        )
        assert bridge.stop() == 0
    finally:
        bridge.close()
    assert_exactly_once_in_order(db, total)
    async with hybridbus.open(engine) as bus:
        head = Position(bus.engine.epoch, tuple(await bus.engine.head()))
    assert psql(db.url, "SELECT position FROM hybridbus_events_positions") == [[str(head)]]


async def test_postgres_restarted_mid_stream(
    postgres_server: Callable[..., PostgresServer],
) -> None:
    db = postgres_server()
    settings = sink(url=db.url, patterns=["acme/#"], batch=20)
    await prepared(db, settings)
    total = 600
    async with hybridbus.open("memory://") as bus:
        bridges = Bridges(bus, [settings])
        await bridges.start()
        try:
            for n in range(total // 2):
                await bus.publish(f"acme/k{n % 3}", {"id": f"e{n}", "source": "/t", "type": "t"})
            await asyncio.to_thread(db.restart)
            for n in range(total // 2, total):
                await bus.publish(f"acme/k{n % 3}", {"id": f"e{n}", "source": "/t", "type": "t"})
            await eventually(
                lambda: count(db, "SELECT count(*) FROM hybridbus_events") == total,
                timeout=40,
                what="every row",
            )
            info = bridges.infos()[0]
        finally:
            await bridges.close()
    assert_exactly_once_in_order(db, total)
    assert info.state == "running"
