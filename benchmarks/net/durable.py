"""Durable acknowledged publishes: 100 concurrent publishers of 160-byte events, one process.

Each publisher loops `publish; wait for the durable ack` for a fixed time; the figure is
acknowledged events per second, and the server's CPU per event (from /proc).

- `hybridbus-ws`: one WebSocket connection per publisher, one `publish` command at a time
  (the reply is sent once the event is durable: sqlite, synchronous=full).
- `hybridbus-http`: `POST /v1/topics/bench/d/<k>/events` with a CloudEvents batch of 10
  (`application/cloudevents-batch+json`), one request at a time per publisher.
- `redis`: `XADD` per event (redis-py asyncio + hiredis, a pool of 100 connections) to a
  server with `appendonly yes`, `appendfsync always`; `redis-pipelined`: 10 `XADD` per
  round trip (a pipeline without MULTI).
- `jetstream`: nats-py, `js.publish` into a stream with file storage (`nats-server -js`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from benchmarks.net.procs import cpu_seconds

__all__ = ["DURABLE_KINDS", "durable", "event_160"]

DURABLE_KINDS: Final = {
    # load kind -> server kind
    "hybridbus-ws": "hybridbus-sqlite",
    "hybridbus-http": "hybridbus-sqlite",
    "redis": "redis-aof",
    "redis-pipelined": "redis-aof",
    "jetstream": "nats-js",
}
TOPICS: Final = 4
BATCH: Final = 10


def event_160(publisher: int, seq: int) -> str:
    """A CloudEvent of exactly 160 bytes as JSON (the payload of every peer too)."""
    head = (
        f'{{"specversion":"1.0","id":"{os.getpid()}-{publisher}-{seq:08d}",'
        '"source":"/bench/durable","type":"com.acme.doc.edited","data":{"text":"'
    )
    tail = '"}}'
    return head + "x" * max(1, 160 - len(head) - len(tail)) + tail


async def _hybridbus_ws(port: int, publisher: int) -> Callable[[int], Awaitable[int]]:
    import aiohttp

    session = aiohttp.ClientSession()
    ws = await session.ws_connect(
        f"http://127.0.0.1:{port}/v1/ws", protocols=("hybridbus.v1.json",), max_msg_size=0
    )
    await ws.send_str('{"type":"connect","id":1}')
    await ws.receive_str()
    topic = f"d/{publisher % TOPICS}"

    async def once(seq: int) -> int:
        event = event_160(publisher, seq)
        await ws.send_str(f'{{"type":"publish","id":{seq + 2},"topic":"{topic}","event":{event}}}')
        while True:
            frame = await ws.receive_str()
            if '"type":"reply"' in frame:
                return 1
            if '"type":"error"' in frame:
                raise RuntimeError(frame[:300])

    once.session = session  # type: ignore[attr-defined]
    return once


async def _hybridbus_http(port: int, publisher: int) -> Callable[[int], Awaitable[int]]:
    import aiohttp

    session = aiohttp.ClientSession()
    url = f"http://127.0.0.1:{port}/v1/topics/bench/d/{publisher % TOPICS}/events"
    headers = {"Content-Type": "application/cloudevents-batch+json"}

    async def once(seq: int) -> int:
        body = "[" + ",".join(event_160(publisher, seq * BATCH + i) for i in range(BATCH)) + "]"
        async with session.post(url, data=body, headers=headers) as response:
            text = await response.text()
            if response.status >= 300:
                raise RuntimeError(f"{response.status} {text[:300]}")
        return BATCH

    once.session = session  # type: ignore[attr-defined]
    return once


async def durable(kind: str, port: int, opts: dict[str, Any]) -> dict[str, Any]:
    publishers, seconds, pid = opts["publishers"], opts["seconds"], opts["server_pid"]
    closers: list[Callable[[], Awaitable[Any]]] = []
    ops: list[Callable[[int], Awaitable[int]]] = []
    if kind in ("hybridbus-ws", "hybridbus-http"):
        make = _hybridbus_ws if kind == "hybridbus-ws" else _hybridbus_http
        for p in range(publishers):
            op = await make(port, p)
            ops.append(op)
            closers.append(op.session.close)  # type: ignore[attr-defined]
    elif kind.startswith("redis"):
        import redis.asyncio as redis

        pool = redis.BlockingConnectionPool(host="127.0.0.1", port=port, max_connections=publishers)
        client = redis.Redis(connection_pool=pool)
        closers.append(client.aclose)
        pipelined = kind == "redis-pipelined"
        for p in range(publishers):
            ops.append(_redis_op(client, p, pipelined))
    else:
        import nats

        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        js = nc.jetstream()
        await js.add_stream(name="D", subjects=["d.>"], storage="file")
        closers.append(nc.close)
        for p in range(publishers):
            ops.append(_jetstream_op(js, p))
    # Warm up: every publisher once (connections made, first-use costs paid).
    await asyncio.gather(*(op(0) for op in ops))
    stop = time.perf_counter() + seconds
    counts = [0] * publishers

    async def run(p: int, op: Callable[[int], Awaitable[int]]) -> None:
        seq = 1
        while time.perf_counter() < stop:
            counts[p] += await op(seq)
            seq += 1

    cpu0 = cpu_seconds(pid)
    me0 = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(run(p, op) for p, op in enumerate(ops)))
    elapsed = time.perf_counter() - start
    server_cpu = cpu_seconds(pid) - cpu0
    client_cpu = time.process_time() - me0
    for close in closers:
        await close()
    total = sum(counts)
    return {
        "events_per_s": total / elapsed,
        "events": total,
        "seconds": elapsed,
        "server_cpu_us_per_event": server_cpu / total * 1e6 if total else None,
        "server_cpu_pct": 100.0 * server_cpu / elapsed,
        "client_cpu_pct": 100.0 * client_cpu / elapsed,
    }


def _redis_op(client: Any, publisher: int, pipelined: bool) -> Callable[[int], Awaitable[int]]:
    key = f"d:{publisher % TOPICS}"

    async def plain(seq: int) -> int:
        await client.xadd(key, {"e": event_160(publisher, seq)})
        return 1

    async def batch(seq: int) -> int:
        pipe = client.pipeline(transaction=False)
        for i in range(BATCH):
            pipe.xadd(key, {"e": event_160(publisher, seq * BATCH + i)})
        await pipe.execute()
        return BATCH

    return batch if pipelined else plain


def _jetstream_op(js: Any, publisher: int) -> Callable[[int], Awaitable[int]]:
    subject = f"d.{publisher % TOPICS}"

    async def once(seq: int) -> int:
        await js.publish(subject, event_160(publisher, seq).encode())
        return 1

    return once


if __name__ == "__main__":  # a quick look: python -m benchmarks.net.durable
    print(json.dumps({"event_bytes": len(event_160(99, 12345678))}))
