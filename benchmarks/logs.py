"""Live logs (issue 14): log lines/s ingested and delivered to a tail, beside a grpcio ceiling.

Each case is one round trip of `LINES` (50,000) log records through a server
subprocess pinned to core 0, while a tail subprocess (pinned, with this
process, to the other core) prints every line it receives, one write and flush
per line as `hybridbus tail` does:

- `logs.ws.client`: 4 `hybridbus.client` connections, each `publish_many` of 500
  records at a time; tail: `hybridbus tail 'logs/bench/#' --format json` (WebSocket);
- `logs.ws.shipper`: one `hybridbus.logs.Shipper`, ws transport (batches of 500);
  tail: the same;
- `logs.grpc.stubs`: 4 client-streaming `Ingest` calls (the generated stubs), one per
  producer; tail: gRPC `Subscribe` of `bench/logs/bench/#` in a subprocess that
  formats each line as `tail --format json` does (benchmarks/logs_procs.py);
- `logs.grpc.shipper`: one `Shipper`, grpc transport (an `Ingest` call per batch of 500);
  tail: the same gRPC one;
- `logs.http.ndjson`: 4 producers, each POSTing 1,000 NDJSON lines at a time to
  `/v1/logs/bench/p<n>`; tail: `hybridbus tail` (WebSocket: HTTP has no tail but SSE);
- `logs.ceiling`: a plain `grpcio` relay, no bus: 4 client-streaming calls of bytes in,
  one server-streaming call out to a tail that prints each message.

The server is `hybridbus serve` on `sqlite://` (synchronous=full) in a fresh
temp dir, with `grpc_port` set (`net.procs.ServerProcess("hybridbus-sqlite")`,
anonymous clients allowed everything in tenant `bench`); the ceiling is
`python -m benchmarks.logs_procs relay-server PORT` (grpc.aio on uvloop, as `hybridbus
serve` runs it), which hands each message of an `Ingest` stream to every open
`Tail` stream through a bounded queue. Its messages are the tail's output lines
(the record formatted as JSON, ~400 bytes), so it does the same byte work with
no decoding, no log and no fan-out logic.

A record is a ~200-character message, level, logger, RFC 3339 time and five
fields (`producer`, `seq`, `path`, `status`, `ms`). Records are built before
the clock starts; what a way in needs on the way (the Event, its Protobuf, the
NDJSON body) is part of the timed work. Figures per run: lines/s ingested
(the clock starts at the first send and stops when every line is acked),
lines/s delivered (until the tail printed the last line), the server's CPU
time per line (all its threads, from the first send until the tail saw the
last line). Each run checks that the tail printed every line once, in order
per producer. A run stops by itself: when every line was seen, or after
`TIME_LIMIT` seconds (then it fails naming what was missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from benchmarks.harness import Result, Settings
from benchmarks.logs_procs import (
    RELAY_INGEST,
    TENANT,
    RelayServer,
    Tail,
    machine_busy_s,
    off_core_0,
    tail_argv,
    wait_port,
)
from benchmarks.net.procs import ServerProcess, free_port
from hybridbus.core.codecs import encode_json
from hybridbus.core.event import Event
from hybridbus.core.logs import LogRecord, log_event, rfc3339

__all__ = ["CASES", "LINES", "PRODUCERS", "measure", "record", "run"]

LINES: Final = 50_000
SMOKE_LINES: Final = 400
PRODUCERS: Final = 4
WS_BATCH: Final = 500  # records per publish_many (the Shipper's default batch too)
POST_LINES: Final = 1_000  # NDJSON lines per POST
TIME_LIMIT: Final = 180.0  # seconds a run may take (smoke: 60)
CASES: Final = (
    "logs.ceiling",
    "logs.ws.client",
    "logs.ws.shipper",
    "logs.grpc.stubs",
    "logs.grpc.shipper",
    "logs.http.ndjson",
)
_WORDS: Final = (
    "GET /api/orders completed for customer acct-{p}-{s:06d} via edge gateway eu-west-1b; "
    "cache miss on the pricing shard, inventory hold confirmed, payment token refreshed, "
    "response rendered with 14 line items"
)


def record(producer: int, seq: int) -> LogRecord:
    """Line `seq` of producer `producer`: a ~200-character message and five fields."""
    message = _WORDS.format(p=producer, s=seq)
    return LogRecord(
        message=message,
        level=("info", "info", "debug", "warn")[seq % 4],
        logger="bench.http",
        fields={
            "producer": producer,
            "seq": seq,
            "path": f"/api/orders/{seq}",
            "status": 200,
            "ms": seq % 97,
        },
        time=rfc3339(1_780_000_000 + seq / 1000),
    )


def _records(producers: int, lines: int) -> list[list[LogRecord]]:
    share = lines // producers
    return [[record(p, s) for s in range(share)] for p in range(producers)]


def _event(producer: int, seq: int, rec: LogRecord) -> Event:
    instance = f"p{producer}"
    return log_event(
        rec, service="bench", instance=instance, source=f"/logs/bench/{instance}", id=f"{seq}"
    )


def _json_line(rec: LogRecord, instance: str) -> bytes:
    from hybridbus.logs import formatter

    return formatter("json").format(rec, "bench", instance)


def _ndjson(rec: LogRecord) -> bytes:
    """The record as an application's JSON log line (what the NDJSON endpoint reads)."""
    obj = {"message": rec.message, "level": rec.level, "logger": rec.logger, "time": rec.time}
    return json.dumps({**obj, **rec.fields}, separators=(",", ":")).encode() + b"\n"


def sizes() -> dict[str, int]:
    """Bytes of one record on each way: the JSON event, the NDJSON line, Protobuf, the line."""
    from hybridbus.gateways.grpc_codec import cloudevent_of, generated

    rec = record(0, 12345)
    event = _event(0, 12345, rec)
    bus, _, _ = generated()
    request = bus.PublishRequest(topic=f"{TENANT}/logs/bench/p0", event=cloudevent_of(event))
    return {
        "message_chars": len(rec.message),
        "event_json": len(encode_json(event)),
        "ndjson_line": len(_ndjson(rec)),
        "grpc_publish_request": request.ByteSize(),
        "tail_line": len(_json_line(rec, "p0")),
    }


# -- the ways in: connected before the clock starts, as a running service is --------------


def _loop() -> asyncio.Runner:
    """A loop kept across `open`, `warm` and `ingest`: uvloop when installed (`run_async`)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


class _Way:
    """How lines get in: `open()` connects, `warm()` sends one line without a `seq`,
    `ingest()` sends every record and returns once all are acked, `close()`."""

    def __init__(self, port: int, grpc_port: int, lines: int, limit: float) -> None:
        self.port, self.grpc_port, self.limit = port, grpc_port, limit
        self.records = _records(PRODUCERS, lines)
        self.runner = _loop()
        self.clients: list[Any] = []
        self.warmed = 0

    def open(self) -> None:
        self.runner.run(self._open())

    def warm(self) -> None:
        self.warmed += 1
        self.runner.run(asyncio.wait_for(self._warm(), 10))

    def ingest(self) -> None:
        async def producers() -> None:
            await asyncio.gather(*(self._produce(p, mine) for p, mine in enumerate(self.records)))

        self.runner.run(asyncio.wait_for(producers(), self.limit))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.runner.run(asyncio.wait_for(self._close(), 10))
        self.runner.close()

    def _warm_event(self) -> Event:
        rec = LogRecord(message="warm-up")
        return log_event(rec, service="bench", instance="warmup", source="/w", id=str(self.warmed))

    async def _open(self) -> None: ...

    async def _warm(self) -> None: ...

    async def _produce(self, p: int, mine: list[LogRecord]) -> None: ...

    async def _close(self) -> None:
        for client in self.clients:
            await client.close()


class _WsClient(_Way):
    """4 `hybridbus.client` connections, each `publish_many` of 500 records at a time."""

    async def _open(self) -> None:
        from hybridbus.client import connect

        url = f"ws://127.0.0.1:{self.port}/v1/ws"
        self.clients = [await connect(url) for _ in self.records]

    async def _warm(self) -> None:
        await self.clients[0].publish("logs/bench/warmup", self._warm_event())

    async def _produce(self, p: int, mine: list[LogRecord]) -> None:
        client = self.clients[p]
        for first in range(0, len(mine), WS_BATCH):
            last = min(first + WS_BATCH, len(mine))
            await client.publish_many(
                f"logs/bench/p{p}", [_event(p, s, mine[s]) for s in range(first, last)]
            )


class _GrpcStubs(_Way):
    """4 channels, each one client-streaming `Ingest` call of all its records."""

    async def _open(self) -> None:
        import grpc

        from hybridbus.gateways.grpc_codec import generated

        self.bus, bus_grpc, _ = generated()
        target = f"127.0.0.1:{self.grpc_port}"
        self.clients = [grpc.aio.insecure_channel(target) for _ in self.records]
        self.stubs = [bus_grpc.BusStub(channel) for channel in self.clients]

    async def _warm(self) -> None:
        from hybridbus.gateways.grpc_codec import cloudevent_of

        request = self.bus.PublishRequest(
            topic=f"{TENANT}/logs/bench/warmup", event=cloudevent_of(self._warm_event())
        )
        await self.stubs[0].Publish(request)

    async def _produce(self, p: int, mine: list[LogRecord]) -> None:
        from hybridbus.gateways.grpc_codec import cloudevent_of

        topic, bus = f"{TENANT}/logs/bench/p{p}", self.bus

        def requests() -> Iterator[Any]:  # 500 events a message (`events`), as docs/grpc.md says
            for first in range(0, len(mine), 500):
                events = [cloudevent_of(_event(p, s, mine[s]))
                          for s in range(first, min(first + 500, len(mine)))]  # fmt: skip
                yield bus.PublishRequest(topic=topic, events=events)

        answer = await self.stubs[p].Ingest(requests(), timeout=self.limit)
        if answer.accepted != len(mine):
            raise RuntimeError(f"gRPC Ingest accepted {answer.accepted} of {len(mine)}")


class _HttpNdjson(_Way):
    """One aiohttp session; 4 producers, each POSTing 1,000 NDJSON lines at a time."""

    async def _open(self) -> None:
        import aiohttp

        self.clients = [aiohttp.ClientSession()]

    async def _post(self, instance: str, body: bytes) -> None:
        url = f"http://127.0.0.1:{self.port}/v1/logs/bench/{instance}"
        headers = {"Content-Type": "application/x-ndjson"}
        async with self.clients[0].post(url, data=body, headers=headers) as answer:
            reply = await answer.json()
            if answer.status != 201 or reply.get("accepted") != body.count(b"\n"):
                raise RuntimeError(f"POST {url}: {answer.status} {reply}")

    async def _warm(self) -> None:
        await self._post("warmup", b'{"message":"warm-up"}\n')

    async def _produce(self, p: int, mine: list[LogRecord]) -> None:
        for first in range(0, len(mine), POST_LINES):
            body = b"".join(_ndjson(r) for r in mine[first : first + POST_LINES])
            await self._post(f"p{p}", body)


class _Relay(_Way):
    """The ceiling: 4 channels to the grpcio relay, each one client-streaming call of bytes."""

    async def _open(self) -> None:
        import grpc

        target = f"127.0.0.1:{self.grpc_port}"
        self.clients = [grpc.aio.insecure_channel(target) for _ in self.records]
        # The bytes the tail prints, so both sides do the same byte work (built untimed).
        self.payloads = [
            [_json_line(r, f"p{p}")[:-1] for r in mine] for p, mine in enumerate(self.records)
        ]

    async def _warm(self) -> None:
        await self.clients[0].stream_unary(RELAY_INGEST)(iter([b'{"message":"warm-up"}']))

    async def _produce(self, p: int, mine: list[LogRecord]) -> None:
        call = self.clients[p].stream_unary(RELAY_INGEST)
        answer = await call(iter(self.payloads[p]), timeout=self.limit)
        if int(answer) != len(mine):
            raise RuntimeError(f"relay took {int(answer)} of {len(mine)}")


class _Shipped(_Way):
    """One `hybridbus.logs.Shipper` (its own thread and loop), batch 500, all records submitted
    at once (`max_queue` above their count: nothing dropped); done when `flush` returns."""

    def __init__(self, url: str, lines: int, limit: float) -> None:
        from hybridbus.logs import Shipper, transport

        self.limit = limit
        self.records = _records(1, lines)
        self.shipper = Shipper(
            transport(url, tenant=TENANT if url.startswith("grpc") else None),
            service="bench", instance="p0", max_queue=lines + 1000, batch=WS_BATCH,
        )

    def open(self) -> None:
        pass  # the Shipper connects with its first batch: the warm-up line

    def warm(self) -> None:
        self.shipper.submit(LogRecord(message="warm-up"))
        self.shipper.flush(10.0)

    def ingest(self) -> None:
        shipper = self.shipper
        before = shipper.shipped
        for rec in self.records[0]:
            shipper.submit(rec)
        if not shipper.flush(self.limit):
            raise RuntimeError(f"the Shipper did not ship everything in {self.limit:.0f} s")
        lines = len(self.records[0])
        if (shipper.shipped - before, shipper.dropped, shipper.rejected) != (lines, 0, 0):
            raise RuntimeError(
                f"Shipper: {shipper.shipped - before} shipped, {shipper.dropped} dropped, "
                f"{shipper.rejected} rejected of {lines} ({shipper.last_error})"
            )

    def close(self) -> None:
        self.shipper.close(10.0)


def _way(case: str, port: int, grpc_port: int, lines: int, limit: float) -> _Way:
    if case == "logs.ws.shipper":
        return _Shipped(f"ws://127.0.0.1:{port}", lines, limit)
    if case == "logs.grpc.shipper":
        return _Shipped(f"grpc://127.0.0.1:{grpc_port}", lines, limit)
    kind = {"logs.ceiling": _Relay, "logs.ws.client": _WsClient, "logs.grpc.stubs": _GrpcStubs,
            "logs.http.ndjson": _HttpNdjson}[case]
    return kind(port, grpc_port, lines, limit)


def _warm(case: str, way: _Way, tail: Tail) -> int:
    """Send warm-up lines until the tail prints one; the lines printed before the run."""
    deadline = time.monotonic() + 60
    while tail.lines == 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{case}: the tail never printed a warm-up line\n{tail.stderr()}")
        way.warm()
        tail.wait(1, time.monotonic() + 0.5)
    time.sleep(0.5)  # a second warm-up line still on its way lands before the count
    return tail.lines


# -- one run --------------------------------------------------------------------------------


@dataclass
class Run:
    """One run of one case: the figures and what they came from."""

    case: str
    lines: int
    ingest_s: float
    deliver_s: float
    server_cpu_s: float
    tail_cpu_s: float
    this_process_cpu_s: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ingested_per_s(self) -> float:
        return self.lines / self.ingest_s

    @property
    def delivered_per_s(self) -> float:
        return self.lines / self.deliver_s

    @property
    def server_us_per_line(self) -> float:
        return self.server_cpu_s / self.lines * 1e6


def _check(case: str, printed: bytes, producers: int, share: int) -> None:
    """Every line once, in order per producer (each producer is one source)."""
    seen: list[list[int]] = [[] for _ in range(producers)]
    for line in printed.splitlines():
        fields = json.loads(line).get("fields") or {}
        if "seq" in fields:
            seen[int(fields["producer"])].append(int(fields["seq"]))
    for p, got in enumerate(seen):
        if got != list(range(share)):
            missing = share - len(set(got))
            raise RuntimeError(
                f"{case}: producer {p}: the tail printed {len(got)} lines, {missing} missing, "
                f"{len(got) - len(set(got))} twice, in order: {got == sorted(got)}"
            )


def measure(case: str, lines: int = LINES, limit: float = TIME_LIMIT) -> Run:
    """One run of `case` (one of `CASES`): its own server, tail and producers."""
    producers = 1 if case.endswith(".shipper") else PRODUCERS
    lines -= lines % producers
    server: ServerProcess | RelayServer
    if case == "logs.ceiling":
        server = RelayServer()
        port, grpc_port = 0, server.grpc_port
    else:
        grpc_port = free_port()
        server = ServerProcess("hybridbus-sqlite", grpc_port=grpc_port)
        port = server.port
    try:
        if case != "logs.ceiling":
            wait_port(grpc_port, server.proc, "hybridbus gRPC")
        tail = Tail(tail_argv(case, port, grpc_port))
        try:
            with off_core_0():
                way = _way(case, port, grpc_port, lines, limit)
                try:
                    way.open()
                    before = _warm(case, way, tail)
                    server0, tail0 = server.cpu_s(), tail.cpu_s()
                    this0, busy0 = time.process_time(), machine_busy_s()
                    start = time.monotonic()
                    way.ingest()
                    ingested = time.monotonic()
                    this_cpu = time.process_time() - this0
                    if not tail.wait(before + lines, start + limit):
                        raise RuntimeError(
                            f"{case}: the tail printed {tail.lines - before} of {lines} lines "
                            f"in {limit:.0f} s\n{tail.stderr()}"
                        )
                    delivered = tail.last_at
                    server_cpu, tail_cpu = server.cpu_s() - server0, tail.cpu_s() - tail0
                    busy = machine_busy_s() - busy0
                finally:
                    way.close()
            _check(case, bytes(tail.data), producers, lines // producers)
            notes = tail.stderr().strip()
        finally:
            tail.close()
    finally:
        server.stop()
    # This process's CPU time is read when the ingest ends: what it spent after
    # (the tail reader thread) counts as others', a few ms.
    others = max(0.0, busy - server_cpu - tail_cpu - this_cpu)
    details: dict[str, Any] = {"others_cpu_s": round(others, 3)}
    if notes:
        details["tail_stderr"] = notes[-500:]
    return Run(
        case, lines, ingested - start, delivered - start, server_cpu, tail_cpu, this_cpu, details
    )


# -- the group --------------------------------------------------------------------------------


_LABELS: Final = {
    "logs.ceiling": "grpcio relay, 4 client streams → 1 server stream (no bus)",
    "logs.ws.client": "WebSocket: 4 clients, publish_many 500 → hybridbus tail",
    "logs.ws.shipper": "WebSocket: 1 Shipper (batch 500) → hybridbus tail",
    "logs.grpc.stubs": "gRPC: 4 Ingest streams, 500 a message → gRPC Subscribe tail",
    "logs.grpc.shipper": "gRPC: 1 Shipper (Ingest per 500) → gRPC Subscribe tail",
    "logs.http.ndjson": "HTTP NDJSON: 4 posters, 1,000 lines/POST → hybridbus tail",
}
_EXTRA: dict[str, Any] = {}


def run(settings: Settings, log: Callable[[str], None] = print) -> list[Result]:
    lines = SMOKE_LINES if settings.smoke else LINES
    limit = 60.0 if settings.smoke else TIME_LIMIT
    runs: dict[str, list[Run]] = {case: [] for case in CASES}
    for round_ in range(settings.runs):
        log(f"  round {round_ + 1} of {settings.runs}: {len(CASES)} cases, {lines:,} lines each")
        for case in CASES:  # round-robin: a busy moment spoils one run of a few cases
            one = measure(case, lines, limit)
            runs[case].append(one)
            log(
                f"    {case:<18} ingested {one.ingested_per_s:>9,.0f}/s  delivered "
                f"{one.delivered_per_s:>9,.0f}/s  server {one.server_us_per_line:6.1f} µs/line  "
                f"tail {100 * one.tail_cpu_s / one.deliver_s:3.0f}% of a core"
            )
    _EXTRA.clear()
    _EXTRA.update(sizes=sizes(), lines=lines, producers=PRODUCERS)
    results: list[Result] = []
    for case in CASES:
        got = runs[case]
        ceiling = case == "logs.ceiling"
        details = [
            {"ingest_s": r.ingest_s, "deliver_s": r.deliver_s, "server_cpu_s": r.server_cpu_s,
             "tail_cpu_s": r.tail_cpu_s, "this_process_cpu_s": r.this_process_cpu_s,
             "lines": r.lines, **r.details}
            for r in got
        ]
        label = _LABELS[case]
        for suffix, unit, what, figures in (
            ("ingested", "events/s", "lines/s ingested", [r.ingested_per_s for r in got]),
            ("delivered", "events/s", "lines/s delivered", [r.delivered_per_s for r in got]),
            ("server_cpu", "µs/event", "server CPU per line", [r.server_us_per_line for r in got]),
        ):
            results.append(Result(
                f"{case}.{suffix}", "logs", f"{label}: {what}", unit, figures,
                peer=None if ceiling else f"logs.ceiling.{suffix}", is_peer=ceiling,
                details=details,
            ))
    return results


def extra() -> dict[str, Any]:
    """Facts of the last run for the JSON: payload sizes, lines per run, producers."""
    return dict(_EXTRA)


def _main(argv: Sequence[str]) -> None:
    from benchmarks.run import main as run_main

    run_main(["logs", *argv])


if __name__ == "__main__":
    _main(sys.argv[1:])
