"""Consumer groups (issue 10): acked events/s through a group of 4 members, beside Redis Streams.

Throughput. `EVENTS` (100,000) events of ~150 bytes (MessagePack, `samples.small_event`)
on 16 topics `acme/jobs/k00..k15` are published first with `publish_many`; then 4
members (tasks in one process) of one group over `acme/jobs/+` (`start="earliest"`) each
loop `fetch(256)` -> `ack(*batch)` (one durable write for the batch), the ack of a batch
going out together with the fetch of the next (as the Redis consumers pipeline `XACK`
with the next `XREADGROUP`; in the ordered rows one after the other, since a key's next
event waits for the ack), until every event is acked. The figure is acked events / the
time from the first join to the last ack. The group is tuned as a user draining a
backlog would tune it (the defaults are for many small consumers): `ordered=False`
(Redis Streams keeps no per-key order either), `member_in_flight` / `max_in_flight` /
`max_pending` raised (`TUNED`). The `.ordered` rows keep the default per-key order over
the 16 keys (at most 16 events in flight); the `.live` rows consume while 16 publisher
tasks publish the events (`publish_many`, `LIVE_BATCH` at a time), timed from the first
publish to the last ack. `memory://` and `sqlite://` (synchronous=full, the default): a
fresh bus and directory per run.

Peer: Redis Streams (`redis-server` from Debian, started by `net.procs.ServerProcess`
with `appendonly yes`, pinned to core 0; this process is kept off core 0 meanwhile)
with `appendfsync everysec` (what Redis users typically run; the peer of record) and
`always` (durable on every reply, as the sqlite engine is). The same payloads are
`XADD`ed (pipelined, 1,000 a round trip) to one stream with the topic as a field;
after `XGROUP CREATE ... 0`, 4 consumers (redis-py asyncio with hiredis, one
connection each, in this process) each send `XACK` of the batch they hold and the
next `XREADGROUP COUNT 256` in one pipeline until the stream is drained; timed from
`XGROUP CREATE` to the last `XACK` reply.

Redelivery scheduling: `benchmarks/group_schedule.py` (its cases are part of this group).

Over WebSocket (`.ws` rows): the same drain against `hybridbus serve` (a subprocess
pinned to core 0, `net.procs.ServerProcess`, memory or sqlite), each member a
`hybridbus.client` connection of its own in this process (kept off core 0), the
events published beforehand over one more connection (`publish_many`, 500 a call).
Every connection speaks MessagePack (`hybridbus.v1.msgpack`, `WS_SUBPROTOCOL`): what
a service consuming at this rate configures (`ClientConfig(subprotocol=...)`; the
client's default is JSON), as the Redis consumers get their payloads as bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import hybridbus
from benchmarks import group_schedule
from benchmarks.harness import Case, Result, Settings, run_async, run_cases, scratch_dir
from benchmarks.publish import sqlite_engine_available
from benchmarks.samples import small_event
from hybridbus.core.codecs import encode_msgpack

__all__ = [
    "EVENTS",
    "FETCH",
    "MEMBERS",
    "PATTERN",
    "TOPICS",
    "TUNED",
    "WS_SUBPROTOCOL",
    "bus_consume",
    "cases",
    "redis_consume",
    "run",
    "ws_consume",
]

EVENTS: Final = 100_000
SMOKE_EVENTS: Final = 2_000
MEMBERS: Final = 4
FETCH: Final = 256
KEYS: Final = 16
TOPICS: Final = tuple(f"acme/jobs/k{n:02d}" for n in range(KEYS))
PATTERN: Final = "acme/jobs/+"
GROUP: Final = "bench"
# What a user draining a backlog sets (the defaults: 100 / 1,000 / 10,000, ordered).
TUNED: Final[dict[str, Any]] = {
    "ordered": False,
    "member_in_flight": 1_024,
    "max_in_flight": 4_096,
    "max_pending": 16_384,
}
ORDERED: Final[dict[str, Any]] = {**TUNED, "ordered": True}
PUBLISH_BATCH: Final = 1_000  # events per publish_many / XADD pipeline when pre-publishing
WS_PUBLISH_BATCH: Final = 500  # events per publish_many over WebSocket
LIVE_BATCH: Final = 100  # events per publish_many of a live publisher
TIMEOUT: Final = 300.0  # a run that takes longer fails (it stops by itself)
STREAM: Final = "jobs"
# What a service that consumes at this rate configures (the client's default is JSON):
# MessagePack is cheaper to encode on the server and to decode in the client.
WS_SUBPROTOCOL: Final = "hybridbus.v1.msgpack"


def _payloads(events: int) -> list[tuple[str, hybridbus.Event]]:
    """Event i goes to topic i % 16: the same sequence for every engine and for Redis."""
    return [(TOPICS[i % KEYS], small_event(i % KEYS, i)) for i in range(events)]


async def _publish(bus: hybridbus.Bus, items: Sequence[tuple[str, hybridbus.Event]]) -> None:
    by_topic: dict[str, list[hybridbus.Event]] = {}
    for topic, event in items:
        by_topic.setdefault(topic, []).append(event)
    await asyncio.gather(*(bus.publish_many(t, evs) for t, evs in by_topic.items()))


class _Drained:
    """How a drain went: acked events, those delivered more than once, the last ack's time."""

    def __init__(self) -> None:
        self.acked = 0
        self.redelivered = 0
        self.finished = 0.0

    def check(self, events: int) -> None:
        if self.acked != events or self.redelivered:
            raise RuntimeError(
                f"acked {self.acked} of {events} events, {self.redelivered} redelivered"
            )


async def _drain(
    members: Sequence[Any], events: int, others: Sequence[Any] = (), *, pipelined: bool = True
) -> _Drained:
    """Each member loops fetch(256) -> ack(*batch) (with the next fetch) until `events` are acked.

    `members` are `hub.group.Member`s or `client.ClientGroup`s (the same API);
    `others` are coroutines run meanwhile (live publishers).
    """
    out = _Drained()

    def acked(batch: Sequence[Any]) -> None:
        out.redelivered += sum(d.attempt > 1 for d in batch)
        out.acked += len(batch)
        if out.acked >= events and not out.finished:
            out.finished = time.perf_counter()

    async def member(m: Any) -> None:
        # As the Redis consumers pipeline XACK with the next XREADGROUP: the ack of a
        # batch and the fetch of the next one go together.
        batch: list[Any] = []
        while out.acked < events:
            if batch and not pipelined:  # ordered: a key's next event waits for this ack
                await m.ack(*batch)
                acked(batch)
                batch = await m.fetch(FETCH, 0.05)
            elif batch:
                _, following = await asyncio.gather(m.ack(*batch), m.fetch(FETCH, 0.05))
                acked(batch)
                batch = following
            else:
                batch = await m.fetch(FETCH, 0.05)
        if batch:
            await m.ack(*batch)

    await asyncio.wait_for(asyncio.gather(*(member(m) for m in members), *others), TIMEOUT)
    return out


# -- hybridbus -----------------------------------------------------------------------


async def bus_consume(
    url: str,
    events: int,
    settings: dict[str, Any] | None = None,
    live: bool = False,
    members: int = MEMBERS,
    stats: dict[str, float] | None = None,
) -> float:
    """Acked events/s through one group of `members` tasks (see the module docstring).

    `stats`, if given, gets this process's CPU seconds over the timed part (`cpu_s`)
    and its length (`seconds`).
    """
    items = _payloads(events)
    group_settings = dict(TUNED if settings is None else settings)
    async with hybridbus.open(url) as bus, contextlib.AsyncExitStack() as stack:
        if live:
            group_settings["start"] = "latest"
        else:
            group_settings["start"] = "earliest"
            for first in range(0, events, PUBLISH_BATCH * KEYS):
                await _publish(bus, items[first : first + PUBLISH_BATCH * KEYS])

        async def publisher(k: int) -> None:
            mine = [event for _, event in items[k::KEYS]]
            for first in range(0, len(mine), LIVE_BATCH):
                await bus.publish_many(TOPICS[k], mine[first : first + LIVE_BATCH])

        start = time.perf_counter()
        cpu = time.process_time()
        # One after the other: joins of a group not yet created must not race (see the
        # docs: concurrent first joins made one group per member on sqlite).
        joined = [
            await stack.enter_async_context(
                bus.group(GROUP, PATTERN, member=f"m{n}", **group_settings)
            )
            for n in range(members)
        ]
        publishers = [publisher(k) for k in range(KEYS)] if live else []
        ordered = bool(group_settings.get("ordered", True))
        drained = await _drain(joined, events, publishers, pipelined=not ordered)
        if stats is not None:
            stats.update(cpu_s=time.process_time() - cpu, seconds=drained.finished - start)
    drained.check(events)
    return events / (drained.finished - start)


def _bus_case(
    url: Callable[[Path], str],
    settings: Settings,
    log: Callable[[str], None],
    group_settings: dict[str, Any] | None = None,
    live: bool = False,
) -> Callable[[], float]:
    events = _events(settings)

    def measure() -> float:
        stats: dict[str, float] = {}
        with scratch_dir(settings) as path:
            rate = run_async(bus_consume(url(path), events, group_settings, live, stats=stats))
        log(
            f"    {url(Path('-')).split(':')[0]}{' ordered' if group_settings == ORDERED else ''}"
            f"{' live' if live else ''}: {rate:,.0f}/s, this process "
            f"{100 * stats['cpu_s'] / stats['seconds']:.0f}% of a core"
        )
        return rate

    return measure


def _events(settings: Settings) -> int:
    return SMOKE_EVENTS if settings.smoke else EVENTS


# -- hybridbus over WebSocket -------------------------------------------------------


async def ws_consume(
    port: int,
    events: int,
    members: int = MEMBERS,
    stats: dict[str, float] | None = None,
    server_cpu: Callable[[], float] | None = None,
    subprotocol: str = WS_SUBPROTOCOL,
) -> float:
    """As `bus_consume`, against a server: each member a `hybridbus.client` connection.

    The server lets anonymous clients do everything in tenant `bench` (`net.procs`),
    so topics and the pattern are relative (`jobs/k00`, `jobs/+`). `stats` as for
    `redis_consume`. Every connection speaks `subprotocol` (MessagePack by default).
    """
    from hybridbus.client import ClientConfig, connect

    url = f"ws://127.0.0.1:{port}/v1/ws"
    config = ClientConfig(subprotocol=subprotocol)
    by_topic: dict[str, list[hybridbus.Event]] = {}
    for topic, event in _payloads(events):
        by_topic.setdefault(topic.partition("/")[2], []).append(event)
    async with connect(url, config=config) as client:
        # One call at a time: a connection may have at most 1,000 commands unanswered.
        for topic, items in by_topic.items():
            for first in range(0, len(items), WS_PUBLISH_BATCH):
                await client.publish_many(topic, items[first : first + WS_PUBLISH_BATCH])
    async with contextlib.AsyncExitStack() as stack:
        start = time.perf_counter()
        cpu = time.process_time()
        server0 = server_cpu() if server_cpu else 0.0
        joined = []
        for n in range(members):  # one after the other, as in `bus_consume`
            client = await stack.enter_async_context(connect(url, config=config))
            joined.append(
                await stack.enter_async_context(
                    client.group(
                        GROUP,
                        PATTERN.partition("/")[2],
                        member=f"m{n}",
                        start="earliest",
                        **TUNED,
                    )
                )
            )
        drained = await _drain(joined, events)
        if stats is not None:
            stats.update(cpu_s=time.process_time() - cpu, seconds=drained.finished - start)
            if server_cpu:
                stats["server_cpu_s"] = server_cpu() - server0
    drained.check(events)
    return events / (drained.finished - start)


def _ws_case(kind: str, settings: Settings, log: Callable[[str], None]) -> Callable[[], float]:
    from benchmarks.net.procs import ServerProcess

    events = _events(settings)

    def measure() -> float:
        stats: dict[str, float] = {}
        with ServerProcess(kind) as server, _off_core_0():
            got = run_async(ws_consume(server.port, events, stats=stats, server_cpu=server.cpu_s))
        server_pct = 100 * stats["server_cpu_s"] / stats["seconds"]
        client_pct = 100 * stats["cpu_s"] / stats["seconds"]
        log(
            f"    {kind} over WebSocket ({WS_SUBPROTOCOL}): {got:,.0f}/s,"
            f" server {server_pct:.0f}% of a core,"
            f" this process (the 4 members' clients) {client_pct:.0f}%"
        )
        return got

    return measure


# -- Redis Streams -------------------------------------------------------------------


def redis_available() -> bool:
    from benchmarks.net.procs import available

    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        return False
    return available("redis-aof")


async def redis_consume(
    port: int,
    events: int,
    members: int = MEMBERS,
    stats: dict[str, float] | None = None,
    server_cpu: Callable[[], float] | None = None,
) -> float:
    """XADD the payloads, then acked events/s of `members` XREADGROUP + XACK consumers.

    `stats` as for `bus_consume`, plus the server's CPU seconds (`server_cpu_s`) if
    `server_cpu` reads them.
    """
    import redis.asyncio as redis

    clients = [redis.Redis(host="127.0.0.1", port=port) for _ in range(members + 1)]
    try:
        loader = clients[-1]
        items = _payloads(events)
        for first in range(0, events, PUBLISH_BATCH):
            pipe = loader.pipeline(transaction=False)
            for topic, event in items[first : first + PUBLISH_BATCH]:
                pipe.xadd(STREAM, {"t": topic, "e": encode_msgpack(event)})
            await pipe.execute()
        acked = 0
        finished = 0.0

        async def consumer(client: Any, name: str) -> None:
            nonlocal acked, finished
            held: list[bytes] = []
            while True:
                pipe = client.pipeline(transaction=False)
                if held:
                    pipe.xack(STREAM, GROUP, *held)
                pipe.xreadgroup(GROUP, name, {STREAM: ">"}, count=FETCH)
                replies = await pipe.execute()
                if held:
                    acked += replies[0]
                    if acked >= events and not finished:
                        finished = time.perf_counter()
                got = replies[-1]
                held = [entry_id for entry_id, _ in got[0][1]] if got else []
                if not held:
                    return  # drained: every entry was read by someone

        start = time.perf_counter()
        cpu = time.process_time()
        server0 = server_cpu() if server_cpu else 0.0
        await loader.xgroup_create(STREAM, GROUP, id="0")
        await asyncio.wait_for(
            asyncio.gather(*(consumer(c, f"c{n}") for n, c in enumerate(clients[:members]))),
            TIMEOUT,
        )
        if stats is not None:
            stats.update(cpu_s=time.process_time() - cpu, seconds=finished - start)
            if server_cpu:
                stats["server_cpu_s"] = server_cpu() - server0
        pending = await loader.xpending(STREAM, GROUP)
        if acked != events or pending["pending"]:
            raise RuntimeError(f"redis: acked {acked} of {events}, {pending['pending']} pending")
        return events / (finished - start)
    finally:
        for client in clients:
            await client.aclose()


@contextlib.contextmanager
def _off_core_0() -> Iterator[None]:
    """Keep this process (the Redis consumers) off core 0 meanwhile: redis-server is there.

    As the server benchmark pins its load clients (`net.procs.client_cores`).
    """
    from benchmarks.net.procs import client_cores

    cores = client_cores()
    if cores is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    first, _, last = cores.partition("-")
    os.sched_setaffinity(0, range(int(first), int(last or first) + 1))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _redis_case(fsync: str, settings: Settings, log: Callable[[str], None]) -> Callable[[], float]:
    from benchmarks.net.procs import ServerProcess

    events = _events(settings)

    async def rate(port: int, stats: dict[str, float], server_cpu: Callable[[], float]) -> float:
        import redis.asyncio as redis

        admin = redis.Redis(host="127.0.0.1", port=port)
        try:
            await admin.config_set("appendfsync", fsync)
            if await admin.config_get("appendfsync") != {"appendfsync": fsync}:
                raise RuntimeError(f"redis did not take appendfsync {fsync}")
        finally:
            await admin.aclose()
        return await redis_consume(port, events, stats=stats, server_cpu=server_cpu)

    def measure() -> float:
        stats: dict[str, float] = {}
        with ServerProcess("redis-aof") as server, _off_core_0():
            got = run_async(rate(server.port, stats, server.cpu_s))
        server_pct = 100 * stats["server_cpu_s"] / stats["seconds"]
        client_pct = 100 * stats["cpu_s"] / stats["seconds"]
        log(
            f"    redis {fsync}: {got:,.0f}/s, redis-server {server_pct:.0f}% of a core,"
            f" this process (the consumers) {client_pct:.0f}%"
        )
        return got

    return measure


# -- the group ---------------------------------------------------------------------------


def cases(settings: Settings, log: Callable[[str], None] = print) -> list[Case]:
    events = _events(settings)
    peer = "groups.redis.everysec" if redis_available() else None
    n = f"{events:,} events"
    out = [
        Case(
            "groups.memory",
            f"4 members, fetch 256 + ack, memory:// ({n})",
            "events/s",
            _bus_case(lambda _: "memory://", settings, log),
            peer=peer,
            warmup=True,
        ),
        Case(
            "groups.memory.ordered",
            "the same, per-key order (16 keys), memory://",
            "events/s",
            _bus_case(lambda _: "memory://", settings, log, ORDERED),
            peer=peer,
        ),
        Case(
            "groups.memory.live",
            "the same, published meanwhile, memory://",
            "events/s",
            _bus_case(lambda _: "memory://", settings, log, live=True),
            peer=peer,
        ),
    ]
    if sqlite_engine_available():
        out += [
            Case(
                "groups.sqlite",
                f"4 members, fetch 256 + ack, sqlite full ({n})",
                "events/s",
                _bus_case(lambda p: f"sqlite://{p}", settings, log),
                peer=peer,
                target=50_000,
            ),
            Case(
                "groups.sqlite.ordered",
                "the same, per-key order (16 keys), sqlite full",
                "events/s",
                _bus_case(lambda p: f"sqlite://{p}", settings, log, ORDERED),
                peer=peer,
            ),
            Case(
                "groups.sqlite.live",
                "the same, published meanwhile, sqlite full",
                "events/s",
                _bus_case(lambda p: f"sqlite://{p}", settings, log, live=True),
                peer=peer,
            ),
        ]
    else:
        log("  (hybridbus.engine.sqlite is not there yet: sqlite group cases skipped)")
    out += [
        Case(
            "groups.ws.memory",
            "4 members over WebSocket (hybridbus.client, MessagePack), server on memory://",
            "events/s",
            _ws_case("hybridbus", settings, log),
            peer=peer,
        ),
        Case(
            "groups.ws.sqlite",
            "4 members over WebSocket (hybridbus.client, MessagePack), server on sqlite full",
            "events/s",
            _ws_case("hybridbus-sqlite", settings, log),
            peer=peer,
        ),
    ]
    if peer is not None:
        out += [
            Case(
                "groups.redis.everysec",
                "Redis Streams XREADGROUP 256 + XACK, appendfsync everysec",
                "events/s",
                _redis_case("everysec", settings, log),
                is_peer=True,
            ),
            Case(
                "groups.redis.always",
                "Redis Streams XREADGROUP 256 + XACK, appendfsync always",
                "events/s",
                _redis_case("always", settings, log),
                is_peer=True,
            ),
        ]
    else:
        log("  (redis-server or redis-py missing: the Redis Streams peer is skipped)")
    return out + group_schedule.cases(settings)


def run(settings: Settings, log: Callable[[str], None] = print) -> list[Result]:
    return run_cases(cases(settings, log), settings, log)


if __name__ == "__main__":
    from benchmarks.run import main

    main(["groups"])
