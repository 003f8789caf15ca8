"""How a node learns of other nodes' appends: blocking XREAD beside SPUBLISH notifications.

Issue 12 asks the Redis engine's cross-node fan-out to be measured against a
notification over sharded pub/sub and the faster one kept, as long as it keeps
order. Both ways read the events from the shard's stream (so both keep the
stream's order); they differ in how the reader learns there is something new:

- `xread`: what the engine does (engine/_redis_tailer.py): one connection per
  shard blocked in `XREAD BLOCK ... COUNT 1024 STREAMS <log> <last id>`; Redis
  answers it as soon as an entry is added.
- `spublish`: the writer sends `SPUBLISH <shard channel> <position>` after each
  `XADD` (in the same pipeline: the engine would do it in its append script);
  the reader is subscribed with `SSUBSCRIBE` and, on a message, reads
  `XRANGE <log> (<last id> +` on another connection (one read in flight,
  notifications arriving meanwhile coalesced into the next read).

Same redis-server (appendonly yes, appendfsync everysec), same payloads
(benchmarks.samples.small_event as MessagePack), the writer a task in this
process sending batches of `BATCH` XADDs per pipeline at `RATE` events/s for
the round's seconds, the reader a task in this process.
Per way: end-to-end latency (the event's send time, carried in the entry, to the
reader's read) p50 and p99, and redis-server CPU per event (from /proc).

    python -m benchmarks.run notify           # ~20 s
    python -m benchmarks.run notify --quick   # a smoke run
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

from benchmarks.harness import Case, Result, Settings, run_async, run_cases
from benchmarks.samples import small_event
from hybridbus.core.codecs import encode_msgpack

__all__ = ["available", "cases", "run"]

RATE = 10_000  # events/s the writer sends
BATCH = 10  # XADDs per writer pipeline (a writer merging concurrent appends)
_streams = itertools.count()


def available() -> bool:
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        return False
    from benchmarks.net.procs import available as server_available

    return server_available("redis-aof")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _write(client: Any, stream: str, channel: str | None, seconds: float) -> int:
    """XADD at RATE for `seconds` (with a SPUBLISH per batch when `channel`); how many."""
    payloads = [encode_msgpack(small_event(n % 1000, n)) for n in range(1000)]
    sent = 0
    start = time.perf_counter()
    while (now := time.perf_counter()) - start < seconds:
        due = int((now - start) * RATE)
        if sent >= due:
            await asyncio.sleep(BATCH / RATE / 2)
            continue
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(BATCH):
                pipe.xadd(stream, {"s": repr(time.perf_counter()), "p": payloads[sent % 1000]})
                sent += 1
            if channel is not None:
                pipe.spublish(channel, str(sent))
            await pipe.execute()
    return sent


async def _read_xread(client: Any, stream: str, want: int, latencies: list[float]) -> None:
    last = "0-0"
    while len(latencies) < want:
        found = await client.xread({stream: last}, count=1024, block=1000)
        now = time.perf_counter()
        for _, entries in found:
            for entry_id, fields in entries:
                latencies.append(now - float(fields[b"s"]))
                last = entry_id


async def _read_notified(
    client: Any, listener: Any, stream: str, channel: str, want: int, latencies: list[float]
) -> None:
    pubsub = listener.pubsub()
    await pubsub.ssubscribe(channel)
    last = b"0-0"
    try:
        while len(latencies) < want:
            message = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            while True:  # read up to what is there (notifications meanwhile are coalesced)
                entries = await client.xrange(stream, min=b"(" + last, max="+", count=1024)
                now = time.perf_counter()
                for entry_id, fields in entries:
                    latencies.append(now - float(fields[b"s"]))
                    last = entry_id
                if len(entries) < 1024:
                    break
    finally:
        await pubsub.aclose()


def _case(
    port: int, pid: int, settings: Settings, notified: bool
) -> Callable[[], dict[str, float]]:
    async def measure() -> dict[str, float]:
        import redis.asyncio as aioredis

        from benchmarks.net.procs import cpu_seconds

        writer: Any = aioredis.Redis(host="127.0.0.1", port=port)
        reader: Any = aioredis.Redis(host="127.0.0.1", port=port)
        listener: Any = aioredis.Redis(host="127.0.0.1", port=port)
        n = next(_streams)
        stream, channel = f"{{hb:bench{n}:0}}:log", f"{{hb:bench{n}:0}}:new"
        seconds = settings.publish_seconds
        want = int(seconds * RATE)
        latencies: list[float] = []
        try:
            if notified:
                read = _read_notified(reader, listener, stream, channel, want, latencies)
            else:
                read = _read_xread(reader, stream, want, latencies)
            reading = asyncio.create_task(read)
            await asyncio.sleep(0.1)  # subscribed / blocked before the first write
            cpu = cpu_seconds(pid)
            sent = await _write(writer, stream, channel if notified else None, seconds)
            async with asyncio.timeout(10):
                while len(latencies) < sent:
                    await asyncio.sleep(0.01)
            reading.cancel()
            busy = cpu_seconds(pid) - cpu
            return {
                "p50_ms": _percentile(latencies, 0.5) * 1000,
                "p99_ms": _percentile(latencies, 0.99) * 1000,
                "redis_us_per_event": busy / max(1, sent) * 1e6,
            }
        finally:
            await writer.delete(stream)
            for client in (writer, reader, listener):
                await client.aclose()

    return lambda: run_async(measure())


def cases(port: int, pid: int, settings: Settings) -> list[Case]:
    found: list[Case] = []
    for notified in (False, True):
        name = "spublish" if notified else "xread"
        measure = _case(port, pid, settings, notified)
        results: dict[str, float] = {}

        def figure(key: str, measure: Callable[[], dict[str, float]] = measure,
                   results: dict[str, float] = results) -> Callable[[], float]:  # fmt: skip
            def one() -> float:
                if key == "p50_ms" or not results:
                    results.update(measure())
                return results[key]

            return one

        labels = (
            ("p50_ms", "ms", "latency p50"),
            ("p99_ms", "ms", "latency p99"),
            ("redis_us_per_event", "µs/event", "redis-server CPU per event"),
        )
        for key, unit, label in labels:
            found.append(
                Case(f"notify.{name}.{key}", f"{name}: {label} at {RATE:,}/s", unit, figure(key))
            )
    return found


def run(settings: Settings, log: Callable[[str], None] = print) -> list[Result]:
    if not available():
        log("  (redis-server or redis-py missing: the notify group is skipped)")
        return []
    import redis

    from benchmarks.net.procs import ServerProcess

    with ServerProcess("redis-aof") as server:
        admin = redis.Redis(host="127.0.0.1", port=server.port)
        admin.config_set("appendfsync", "everysec")  # as the redis group measures the engine
        admin.close()
        return run_cases(cases(server.port, server.pid, settings), settings, log)


if __name__ == "__main__":
    from benchmarks.run import main

    main(["notify"])
