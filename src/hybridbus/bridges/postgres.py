"""The PostgreSQL audit sink, with asyncpg: events of chosen patterns into a table, exactly once.

Owns: the sink's schema (created and upgraded by `migrate`, numbered
migrations kept in `hybridbus_migrations`), turning events into rows, and
the loop that reads the bus's log by position and writes it. Must not use a
consumer group: the position in the log is stored in the same transaction
as the rows, which is what makes the table exactly-once.

Theory of operation. For each pattern the sink keeps a row of
`<table>_positions` (bridge, pattern, position token). It subscribes to the
pattern from that position (`bus.subscribe(pattern, since=...)`: history
first, then live events), takes what is queued (up to the bus's queue size),
and in ONE transaction upserts the rows by (`source`, `id`) in chunks of
`batch` rows — a chunk of 64 rows or more is COPied (binary) into a temporary
stage table of the connection and upserted from it in one `INSERT ... SELECT
... ON CONFLICT (source, id) DO UPDATE`; a smaller one is one multi-row
statement (`INSERT ... SELECT FROM unnest($1::text[], ...) ON CONFLICT ...`)
— then writes the new position. A crash
before the commit leaves neither rows nor position: the sink reads the same
events again. After the commit, neither is lost. The same event matched by
two patterns, or appended twice past the bus's dedupe window, is one row.

Rows that fail. A statement refused for its data (SQLSTATE classes 22
data exception — e.g. `\\u0000` in a jsonb string —, 23 integrity, 54 limits)
is retried row by row, each in a savepoint; a row refused again goes to
`<table>_dead` (the event as JSON text, the error), in the same transaction.
Any other failure (connection lost, server restarting) rolls back and the
session starts over from the stored position.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]
import msgspec

from hybridbus.bridges.base import Bridge
from hybridbus.bridges.settings import PostgresBridge
from hybridbus.core.bindings import to_binary
from hybridbus.core.codecs import encode_json
from hybridbus.core.log import Delivery, Position
from hybridbus.hub.bus import Bus

__all__ = ["MIGRATIONS", "PostgresSink", "make", "migrate", "row_of"]

log = logging.getLogger("hybridbus.bridges")

_DATA_ERRORS: Final = frozenset({"22", "23", "54"})  # SQLSTATE classes a row can cause
_TEXT_COLUMNS: Final = (
    "source", "id", "type", "subject", "datacontenttype", "dataschema",
    "tenantid", "appid", "partitionkey", "sequence",
)  # fmt: skip
_json = msgspec.json.Encoder()
_STAGE: Final = "hybridbus_stage"  # a temporary table per connection: COPY lands there
_COPY_FROM: Final = 64  # rows from which a chunk goes through COPY rather than unnest


def make(settings: PostgresBridge, bus: Bus) -> PostgresSink:
    """The sink of these settings (`bridges.registry.KINDS`)."""
    return PostgresSink(settings, bus)


def _migrations(schema: str, table: str, data: str) -> list[str]:
    t = f'"{schema}"."{table}"'
    data_columns = (
        "data jsonb, data_base64 boolean NOT NULL DEFAULT false"
        if data == "jsonb"
        else "data bytea"
    )
    return [
        # 1: the events, the dead rows, the positions
        f"""
        CREATE TABLE IF NOT EXISTS {t} (
            source text NOT NULL,
            id text NOT NULL,
            type text NOT NULL,
            specversion text NOT NULL DEFAULT '1.0',
            subject text,
            time timestamptz,
            datacontenttype text,
            dataschema text,
            tenantid text,
            appid text,
            partitionkey text,
            sequence text,
            lamport bigint,
            expirytime timestamptz,
            extensions jsonb,
            {data_columns},
            topic text NOT NULL,
            bus_offset bigint NOT NULL,
            appended timestamptz,
            stored timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (source, id)
        );
        CREATE INDEX IF NOT EXISTS "{table}_topic" ON {t} (topic, bus_offset);
        CREATE TABLE IF NOT EXISTS "{schema}"."{table}_dead" (
            bridge text NOT NULL,
            source text NOT NULL,
            id text NOT NULL,
            topic text NOT NULL,
            bus_offset bigint NOT NULL,
            event text NOT NULL,
            error text NOT NULL,
            failed timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE IF NOT EXISTS "{schema}"."{table}_positions" (
            bridge text NOT NULL,
            pattern text NOT NULL,
            position text NOT NULL,
            updated timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (bridge, pattern)
        );
        """,
    ]


# The migrations of a jsonb table, for the documentation's sake (bytea differs in `data`).
MIGRATIONS: Final = _migrations("public", "hybridbus_events", "jsonb")


async def migrate(connection: asyncpg.Connection, settings: PostgresBridge) -> int:
    """Bring the sink's tables to the newest migration; the number of migrations applied."""
    steps = _migrations(settings.schema, settings.table, settings.data)
    key = f"{settings.schema}.{settings.table}"
    async with connection.transaction():
        # One migrator at a time (two nodes starting together).
        await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", key)
        await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{settings.schema}"')
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS public.hybridbus_migrations ("
            " target text PRIMARY KEY, version int NOT NULL,"
            " updated timestamptz NOT NULL DEFAULT now())"
        )
        done = await connection.fetchval(
            "SELECT version FROM public.hybridbus_migrations WHERE target = $1", key
        )
        done = int(done or 0)
        for sql in steps[done:]:
            await connection.execute(sql)
        if len(steps) > done:
            await connection.execute(
                "INSERT INTO public.hybridbus_migrations (target, version) VALUES ($1, $2) "
                "ON CONFLICT (target) DO UPDATE SET version = $2, updated = now()",
                key,
                len(steps),
            )
    return len(steps) - done


def row_of(delivery: Delivery, data: str) -> tuple[Any, ...]:
    """The column values of one delivery's event, in `_columns(data)` order."""
    e = delivery.event
    texts = [getattr(e, name) for name in _TEXT_COLUMNS]
    extensions = _json.encode(e.extensions).decode() if e.extensions else None
    if data == "jsonb":
        if e.data is None:
            body: tuple[Any, ...] = (None, False)
        elif isinstance(e.data, bytes):
            body = (_json.encode(base64.b64encode(e.data).decode()).decode(), True)
        else:
            body = (_json.encode(e.data).decode(), False)
    else:
        body = (to_binary(e)[2] if e.data is not None else None,)
    return (
        *texts,
        e.time,
        e.lamport,
        e.expirytime,
        extensions,
        *body,
        delivery.topic,
        delivery.offset,
        datetime.fromtimestamp(delivery.time, UTC),
    )


def _columns(data: str) -> list[tuple[str, str]]:
    cols = [(name, "text") for name in _TEXT_COLUMNS]
    cols += [
        ("time", "timestamptz"),
        ("lamport", "bigint"),
        ("expirytime", "timestamptz"),
        ("extensions", "jsonb"),
    ]
    cols += (
        [("data", "jsonb"), ("data_base64", "boolean")] if data == "jsonb" else [("data", "bytea")]
    )
    cols += [("topic", "text"), ("bus_offset", "bigint"), ("appended", "timestamptz")]
    return cols


def _upsert_sql(table: str, data: str) -> str:
    cols = _columns(data)
    names = ", ".join(name for name, _ in cols)
    # jsonb arrives as text and is cast in SQL: asyncpg's jsonb[] codec is text either way.
    arrays = ", ".join(
        f"${i}::{'text' if kind == 'jsonb' else kind}[]" for i, (_, kind) in enumerate(cols, 1)
    )
    selected = ", ".join(f"{name}::jsonb" if kind == "jsonb" else name for name, kind in cols)
    updates = ", ".join(
        f"{name} = EXCLUDED.{name}" for name, _ in cols if name not in ("source", "id")
    )
    return (
        f"INSERT INTO {table} ({names}) SELECT {selected} FROM unnest({arrays}) AS u({names}) "
        f"ON CONFLICT (source, id) DO UPDATE SET {updates}, stored = now()"
    )


def _from_stage_sql(table: str, data: str) -> str:
    names = ", ".join(name for name, _ in _columns(data))
    updates = ", ".join(
        f"{name} = EXCLUDED.{name}" for name, _ in _columns(data) if name not in ("source", "id")
    )
    return (
        f"INSERT INTO {table} ({names}) SELECT {names} FROM {_STAGE} "
        f"ON CONFLICT (source, id) DO UPDATE SET {updates}, stored = now(); "
        f"TRUNCATE {_STAGE}"
    )


class PostgresSink(Bridge[PostgresBridge]):
    """Events of the patterns into the table, the position in the same transaction."""

    def __init__(self, settings: PostgresBridge, bus: Bus) -> None:
        super().__init__(settings, bus)
        s = settings
        self._table = f'"{s.schema}"."{s.table}"'
        self._upsert = _upsert_sql(self._table, s.data)
        self._names = [name for name, _ in _columns(s.data)]
        self._from_stage = _from_stage_sql(self._table, s.data)
        self._width = len(_columns(s.data))
        self._positions: dict[str, Position] = {}
        self.dead = 0  # rows sent to the dead-letter table
        self._migrated = False

    @property
    def reads_log(self) -> bool:
        return True

    def position(self) -> str | None:
        if len(self._positions) == 1:
            return str(next(iter(self._positions.values())))
        return None

    def lag(self) -> int:
        head = self.head
        if not head:
            return 0
        epoch = self.bus.engine.epoch
        total = 0
        for position in self._positions.values():
            if position.epoch == epoch:
                total += sum(max(0, h - p) for h, p in zip(head, position.positions, strict=False))
        return total

    async def _migrate(self) -> None:
        connection = await asyncpg.connect(self.settings.url, timeout=10)
        try:
            applied = await migrate(connection, self.settings)
        finally:
            await connection.close()
        if applied:
            log.info("bridge %s: %d migration(s) applied", self.name, applied)
        self._migrated = True

    async def session(self) -> None:
        if not self._migrated:  # here, not in `prepare`: an unreachable server is retried
            await self._migrate()
        patterns = self.settings.patterns
        connections = [await asyncpg.connect(self.settings.url, timeout=10) for _ in patterns]
        for connection in connections:
            await connection.execute(
                f"CREATE TEMPORARY TABLE {_STAGE} (LIKE {self._table} INCLUDING DEFAULTS)"
            )
        try:
            self.running()
            async with asyncio.TaskGroup() as tasks:
                for pattern, connection in zip(patterns, connections, strict=True):
                    tasks.create_task(self._follow(pattern, connection))
        except* Exception as group:  # noqa: BLE001 - the first failure ends the session
            raise group.exceptions[0] from None
        finally:
            for connection in connections:
                connection.terminate()

    async def _start_position(self, connection: asyncpg.Connection, pattern: str) -> Position:
        stored = await connection.fetchval(
            f'SELECT position FROM "{self.settings.schema}"."{self.settings.table}_positions" '
            "WHERE bridge = $1 AND pattern = $2",
            self.name,
            pattern,
        )
        if stored is not None:
            return Position.parse(stored)
        engine = self.bus.engine
        if self.settings.start == "earliest":
            start = Position(engine.epoch, (0,) * engine.shards)
        else:
            start = Position(engine.epoch, tuple(await engine.head()))
        await self._store_position(connection, pattern, start)
        return start

    async def _store_position(
        self, connection: asyncpg.Connection, pattern: str, position: Position
    ) -> None:
        await connection.execute(
            f'INSERT INTO "{self.settings.schema}"."{self.settings.table}_positions" '
            "(bridge, pattern, position) VALUES ($1, $2, $3) ON CONFLICT (bridge, pattern) "
            "DO UPDATE SET position = $3, updated = now()",
            self.name,
            pattern,
            str(position),
        )
        self._positions[pattern] = position

    async def _follow(self, pattern: str, connection: asyncpg.Connection) -> None:
        since = await self._start_position(connection, pattern)
        self._positions[pattern] = since
        async with self.bus.subscribe(pattern, since=since) as sub:
            if not sub.recovered:
                self.failed(
                    f"pattern {pattern}: the stored position {since} is not in the log any more "
                    "(another epoch, or retention): events in between are missing"
                )
            while True:
                batch = await sub.take()
                if not batch:
                    raise ConnectionError(f"the subscription to {pattern} ended")
                position = sub.position
                self.received += len(batch)
                await self._write(connection, pattern, batch, position)
                self.delivered += len(batch)

    async def _write(
        self,
        connection: asyncpg.Connection,
        pattern: str,
        batch: Sequence[Delivery],
        position: Position,
    ) -> None:
        data = self.settings.data
        rows: dict[tuple[str, str], tuple[Delivery, tuple[Any, ...]]] = {}
        for delivery in batch:  # one row per (source, id): the last one wins
            event = delivery.event
            rows[(event.source, event.id)] = (delivery, row_of(delivery, data))
        items = list(rows.values())
        step = self.settings.batch
        async with connection.transaction():
            for start in range(0, len(items), step):
                await self._upsert_chunk(connection, items[start : start + step])
            await self._store_position(connection, pattern, position)

    async def _upsert_chunk(
        self, connection: asyncpg.Connection, chunk: list[tuple[Delivery, tuple[Any, ...]]]
    ) -> None:
        try:
            async with connection.transaction():  # a savepoint
                if len(chunk) >= _COPY_FROM:  # COPY into the stage, then one upsert from it
                    await connection.copy_records_to_table(
                        _STAGE, records=[r for _, r in chunk], columns=self._names
                    )
                    await connection.execute(self._from_stage)
                else:
                    await connection.execute(self._upsert, *self._arrays([r for _, r in chunk]))
            return
        except asyncpg.PostgresError as exc:
            if (exc.sqlstate or "")[:2] not in _DATA_ERRORS:
                raise
            if len(chunk) == 1:
                await self._dead(connection, chunk[0][0], exc)
                return
        for one in chunk:  # which rows? one by one, each in a savepoint of its own
            await self._upsert_chunk(connection, [one])

    def _arrays(self, rows: list[tuple[Any, ...]]) -> list[list[Any]]:
        return [list(column) for column in zip(*rows, strict=True)] or [[]] * self._width

    async def _dead(
        self, connection: asyncpg.Connection, delivery: Delivery, error: Exception
    ) -> None:
        event = delivery.event
        self.dead += 1
        self.failed(f"a row went to {self.settings.table}_dead: {error}")
        await connection.execute(
            f'INSERT INTO "{self.settings.schema}"."{self.settings.table}_dead" '
            "(bridge, source, id, topic, bus_offset, event, error) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            self.name,
            event.source,
            event.id,
            delivery.topic,
            delivery.offset,
            encode_json(event).decode(errors="replace").replace("\x00", "\\u0000"),
            f"{type(error).__name__}: {error}"[:2000],
        )
