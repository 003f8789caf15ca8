"""The Redis engine beside raw XADD: acknowledged appends per second on one redis-server.

hybridbus: `RedisEngine` (engine/redis.py) on a local redis-server (appendonly yes,
appendfsync everysec), one shard, a fresh key prefix per run; an append is counted
when its ack resolved, i.e. after the APPEND script ran and this node's tailer
handed the delivery to the listener. `.append`: `PUBLISHERS` tasks each awaiting
`engine.append` in a loop; `.many`: `MANY_TASKS` tasks each awaiting
`engine.append_many` of `BATCH` events.
Peer: what one would write on bare redis-py — `MANY_TASKS` tasks each sending
`BATCH` XADDs of the same MessagePack payloads in one pipeline (no dedupe, no
offsets, no delivery to anyone) and awaiting the replies. Same server, same payloads
(benchmarks.samples.small_event), rounds interleaved. Target ratio: >= 0.5.

Every run also records, under `details` in the JSON, the CPU each event cost: this
process's (`time.process_time`: the engine and its tailer, or redis-py's pipelines,
plus making the events) and redis-server's (`INFO cpu` before and after), in µs per
acknowledged event. CPU time hardly depends on what else runs on the machine, where
throughput does: compare those when the machine is shared.

    python -m benchmarks.run redis           # ~1 min
    python -m benchmarks.run redis --quick   # a smoke run
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.harness import Case, Result, Settings, run_async, run_cases
from benchmarks.samples import small_event
from hybridbus.core.codecs import encode_msgpack

__all__ = ["available", "cases", "run"]

PUBLISHERS = 100
MANY_TASKS = 8
BATCH = 100
TOPICS = tuple(f"acme/docs/doc-{n}" for n in range(4))
_prefixes = itertools.count()


def available() -> bool:
    try:
        import redis.asyncio  # noqa: F401

        import hybridbus.engine.redis  # noqa: F401
    except ImportError:
        return False
    from benchmarks.net.procs import available as server_available

    return server_available("redis-aof")


# Per case id, one dict per run: CPU per event in this process and in redis-server.
_details: dict[str, list[dict[str, Any]]] = {}


async def _redis_cpu(client: Any) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _timed(
    case: str,
    client: Any,
    seconds: float,
    worker: Callable[[int], Awaitable[int]],
    tasks: int,
    step: int = BATCH,
) -> float:
    """Run `tasks` workers until `seconds` passed; appends acknowledged per second.

    A worker gets a sequence number (events `seq` to `seq + step - 1` are its own)
    and returns how many appends were acknowledged. The run's CPU per event goes to
    `_details[case]`.
    """
    redis0 = await _redis_cpu(client)
    cpu0 = time.process_time()
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()

    async def loop(n: int) -> int:
        done = 0
        seq = 0
        while time.perf_counter() < deadline:
            done += await worker(n * 10_000_000 + seq)
            seq += step
        return done

    counts = await asyncio.gather(*(loop(n) for n in range(tasks)))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    redis_cpu = await _redis_cpu(client) - redis0
    total = sum(counts)
    _details.setdefault(case, []).append(
        {
            "events": total,
            "python_cpu_us_per_event": cpu / total * 1e6 if total else None,
            "redis_cpu_us_per_event": redis_cpu / total * 1e6 if total else None,
        }
    )
    return total / elapsed


def _engine_case(port: int, settings: Settings, many: bool) -> Callable[[], float]:
    async def measure() -> float:
        from hybridbus.engine.base import EngineConfig
        from hybridbus.engine.redis import RedisEngine

        url = f"redis://127.0.0.1:{port}/0?prefix=bench{next(_prefixes)}"
        engine = RedisEngine(url, EngineConfig())
        await engine.start(lambda deliveries: None)
        try:
            if many:

                async def batch(base: int) -> int:
                    events = [small_event(base % 1000, base + i) for i in range(BATCH)]
                    items = [(TOPICS[base % 4], e, encode_msgpack(e)) for e in events]
                    return len(await engine.append_many(items))

                return await _timed(
                    "redis.engine.many", engine.client, settings.publish_seconds, batch, MANY_TASKS
                )

            async def one(base: int) -> int:
                event = small_event(base % 1000, base)
                await engine.append(TOPICS[base % 4], event, encode_msgpack(event))
                return 1

            return await _timed(
                "redis.engine.append",
                engine.client,
                settings.publish_seconds,
                one,
                PUBLISHERS,
                step=1,
            )
        finally:
            await engine.close()

    return lambda: run_async(measure())


def _xadd_case(port: int, settings: Settings) -> Callable[[], float]:
    async def measure() -> float:
        import redis.asyncio as aioredis

        client: Any = aioredis.Redis(host="127.0.0.1", port=port)
        stream = f"bench-raw-{next(_prefixes)}"
        try:

            async def batch(base: int) -> int:
                events = [small_event(base % 1000, base + i) for i in range(BATCH)]
                payloads = [encode_msgpack(e) for e in events]
                async with client.pipeline(transaction=False) as pipe:
                    for payload in payloads:
                        pipe.xadd(stream, {"t": TOPICS[base % 4], "p": payload})
                    return len(await pipe.execute())

            return await _timed("redis.xadd", client, settings.publish_seconds, batch, MANY_TASKS)
        finally:
            await client.delete(stream)
            await client.aclose()

    return lambda: run_async(measure())


def cases(port: int, settings: Settings) -> list[Case]:
    peer = "redis.xadd"
    return [
        Case(
            "redis.engine.append",
            f"RedisEngine.append, {PUBLISHERS} concurrent publishers, acked",
            "events/s",
            _engine_case(port, settings, many=False),
            peer=peer,
            warmup=True,
        ),
        Case(
            "redis.engine.many",
            f"RedisEngine.append_many of {BATCH}, {MANY_TASKS} tasks, acked",
            "events/s",
            _engine_case(port, settings, many=True),
            peer=peer,
        ),
        Case(
            peer,
            f"raw XADD, pipelines of {BATCH} by redis-py, {MANY_TASKS} tasks",
            "events/s",
            _xadd_case(port, settings),
            is_peer=True,
        ),
    ]


def run(settings: Settings, log: Callable[[str], None] = print) -> list[Result]:
    if not available():
        log("  (redis-server or redis-py missing: the redis group is skipped)")
        return []
    import redis

    from benchmarks.net.procs import ServerProcess

    with ServerProcess("redis-aof") as server:
        admin = redis.Redis(host="127.0.0.1", port=server.port)
        admin.config_set("appendfsync", "everysec")
        admin.close()
        _details.clear()
        results = run_cases(cases(server.port, settings), settings, log)
    for result in results:
        details = _details.get(result.id)
        if details:
            result.details = details[-len(result.runs) :]  # not the warm-up's
        if result.details:
            log(
                f"  {result.id:<34} CPU per event: python "
                + ", ".join(f"{d['python_cpu_us_per_event']:.1f}" for d in result.details)
                + " µs; redis-server "
                + ", ".join(f"{d['redis_cpu_us_per_event']:.1f}" for d in result.details)
                + " µs"
            )
    return results


if __name__ == "__main__":
    from benchmarks.run import main

    main(["redis"])
