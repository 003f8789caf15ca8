"""Acknowledged publishes per second: 100 concurrent publisher tasks, a few topics.

Each publisher task awaits `bus.publish(topic, event)` in a loop until the run's
deadline; the figure is acknowledged publishes / wall time. Events are ~150
bytes (MessagePack) and built inside the loop, as an application would.

hybridbus: `memory://` and `sqlite://<tmpdir>` with synchronous=full (the
default) and synchronous=normal; a fresh bus and directory per run.
Peer: what one would write without hybridbus — one INSERT + COMMIT per publish
on a sqlite3 connection in WAL mode, run in a thread with `asyncio.to_thread`
(a lock keeps one transaction per publish, as a shared connection needs).
Targets: sqlite (full) >= 100,000/s, memory >= 500,000/s.

The `.many` cases: the same 100 publishers, each awaiting `bus.publish_many(topic,
events)` with `BATCH` events at a time (one engine call and, on sqlite, one commit
for many events): the figure is acknowledged events per second.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import hybridbus
from benchmarks.harness import Case, Result, Settings, run_async, run_cases, scratch_dir
from benchmarks.samples import small_event
from hybridbus import Event
from hybridbus.core.codecs import encode_msgpack

__all__ = [
    "BATCH",
    "PUBLISHERS",
    "TOPICS",
    "cases",
    "drive",
    "drive_many",
    "main",
    "run",
    "sqlite_engine_available",
]

PUBLISHERS = 100
BATCH = 10  # events per publish_many in the `.many` cases
TOPICS = tuple(f"acme/docs/doc-{n}" for n in range(4))

Publish = Callable[[str, Event], Awaitable[object]]


def sqlite_engine_available() -> bool:
    try:
        import hybridbus.engine.sqlite  # noqa: F401
    except ImportError:
        return False
    return True


async def drive(publish: Publish, seconds: float, publishers: int = PUBLISHERS) -> float:
    """Run `publishers` tasks awaiting `publish` in a loop for `seconds`; return acks/s."""
    deadline = time.perf_counter() + seconds
    acked = [0] * publishers

    async def publisher(n: int) -> None:
        topic = TOPICS[n % len(TOPICS)]
        seq = 0
        while time.perf_counter() < deadline:
            await publish(topic, small_event(n, seq))
            seq += 1
        acked[n] = seq

    start = time.perf_counter()
    await asyncio.gather(*(publisher(n) for n in range(publishers)))
    elapsed = time.perf_counter() - start
    return sum(acked) / elapsed


PublishMany = Callable[[str, list[Event]], Awaitable[Sequence[object]]]


async def drive_many(
    publish_many: PublishMany, seconds: float, publishers: int = PUBLISHERS, batch: int = BATCH
) -> float:
    """As `drive`, each task publishing `batch` events per call; return acked events/s."""
    deadline = time.perf_counter() + seconds
    acked = [0] * publishers

    async def publisher(n: int) -> None:
        topic = TOPICS[n % len(TOPICS)]
        seq = 0
        while time.perf_counter() < deadline:
            acks = await publish_many(topic, [small_event(n, seq + i) for i in range(batch)])
            seq += len(acks)
        acked[n] = seq

    start = time.perf_counter()
    await asyncio.gather(*(publisher(n) for n in range(publishers)))
    elapsed = time.perf_counter() - start
    return sum(acked) / elapsed


async def _bus_rate(url: str, seconds: float, many: bool = False) -> float:
    async with hybridbus.open(url) as bus:
        if many:
            return await drive_many(bus.publish_many, seconds)
        return await drive(bus.publish, seconds)


def _bus_case(
    url: Callable[[Path], str], settings: Settings, many: bool = False
) -> Callable[[], float]:
    """A run on a fresh bus; `url` makes its engine URL from a fresh directory."""

    def measure() -> float:
        with scratch_dir(settings) as path:
            return run_async(_bus_rate(url(path), settings.publish_seconds, many))

    return measure


class SqliteBaseline:
    """The hand-written peer: INSERT + COMMIT per publish, in a worker thread."""

    def __init__(self, directory: Path, synchronous: str) -> None:
        self._db = sqlite3.connect(directory / "events.db", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (position INTEGER PRIMARY KEY,"
            " topic TEXT NOT NULL, id TEXT NOT NULL, payload BLOB NOT NULL)"
        )
        self._db.commit()
        self._lock = threading.Lock()

    def _insert(self, topic: str, event_id: str, payload: bytes) -> int | None:
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO events (topic, id, payload) VALUES (?, ?, ?)",
                (topic, event_id, payload),
            )
            self._db.commit()
            return cursor.lastrowid

    async def publish(self, topic: str, event: Event) -> int | None:
        return await asyncio.to_thread(self._insert, topic, event.id, encode_msgpack(event))

    def close(self) -> None:
        self._db.close()


def _baseline_case(synchronous: str, settings: Settings) -> Callable[[], float]:
    async def rate(directory: Path) -> float:
        baseline = SqliteBaseline(directory, synchronous)
        try:
            return await drive(baseline.publish, settings.publish_seconds)
        finally:
            baseline.close()

    def measure() -> float:
        with scratch_dir(settings) as path:
            return run_async(rate(path))

    return measure


def cases(settings: Settings, log: Callable[[str], None] = print) -> list[Case]:
    out = [
        Case(
            "publish.memory",
            "publish, memory://",
            "ops/s",
            _bus_case(lambda _: "memory://", settings),
            target=500_000,
        ),
        Case(
            "publish.memory.many",
            f"publish_many ({BATCH} a call), memory://",
            "ops/s",
            _bus_case(lambda _: "memory://", settings, many=True),
            target=500_000,
        ),
    ]
    if sqlite_engine_available():
        out += [
            Case(
                "publish.sqlite.full",
                "publish, sqlite synchronous=full",
                "ops/s",
                _bus_case(lambda p: f"sqlite://{p}", settings),
                peer="publish.peer.full",
                target=100_000,
            ),
            Case(
                "publish.sqlite.full.many",
                f"publish_many ({BATCH} a call), sqlite synchronous=full",
                "ops/s",
                _bus_case(lambda p: f"sqlite://{p}", settings, many=True),
                peer="publish.peer.full",
                target=100_000,
            ),
            Case(
                "publish.sqlite.normal",
                "publish, sqlite synchronous=normal",
                "ops/s",
                _bus_case(lambda p: f"sqlite://{p}?synchronous=normal", settings),
                peer="publish.peer.normal",
            ),
        ]
    else:
        log("  (hybridbus.engine.sqlite is not there yet: sqlite publish cases skipped)")
    out += [
        Case(
            "publish.peer.full",
            "sqlite3, commit per publish (FULL)",
            "ops/s",
            _baseline_case("FULL", settings),
            is_peer=True,
        ),
        Case(
            "publish.peer.normal",
            "sqlite3, commit per publish (NORMAL)",
            "ops/s",
            _baseline_case("NORMAL", settings),
            is_peer=True,
        ),
    ]
    return out


def run(settings: Settings, log: Callable[[str], None] = print) -> list[Result]:
    return run_cases(cases(settings, log), settings, log)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m benchmarks.publish`: the group, or one engine URL with `--url`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.publish")
    parser.add_argument(
        "--url", help="measure this engine URL alone; {dir} becomes a fresh directory per run"
    )
    parser.add_argument("--publishers", type=int, default=PUBLISHERS)
    parser.add_argument("--seconds", type=float, default=Settings.publish_seconds)
    parser.add_argument("--runs", type=int, default=Settings.runs)
    args = parser.parse_args(argv)
    if args.url is None:
        from benchmarks.run import main as run_main

        run_main(["publish"])
        return
    settings = Settings(runs=args.runs, publish_seconds=args.seconds)

    async def rate(url: str) -> float:
        async with hybridbus.open(url) as bus:
            return await drive(bus.publish, settings.publish_seconds, args.publishers)

    def measure() -> float:
        with scratch_dir(settings) as path:
            return run_async(rate(args.url.replace("{dir}", str(path))))

    Case("publish.url", args.url, "ops/s", measure).run(settings, print)


if __name__ == "__main__":
    main()
