"""In-process fan-out: one topic, 1,000 subscribers, deliveries per second (summed).

Each subscriber is `async with bus.subscribe("acme/t") as sub` and a consumer
task counting deliveries with `async for`. The publisher sends bursts of
concurrent publishes (a burst is one `gather`, so on sqlite one group commit),
so the figure measures fan-out rather than publish latency. The clock runs from
the first publish until every subscriber has received every event.

hybridbus: `memory://`, and `sqlite://<tmpdir>` as a second row.
Peer: what one would write by hand — one `asyncio.Queue` per subscriber, the
publisher `put_nowait`s each event into every queue, each consumer task awaits
`queue.get()`; same bursts. Target: >= 1,000,000 deliveries/s (memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import hybridbus
from benchmarks.harness import Case, Result, Settings, run_async, run_cases, scratch_dir
from benchmarks.publish import sqlite_engine_available
from benchmarks.samples import small_event
from hybridbus import Subscription

__all__ = ["BURST", "SUBSCRIBERS", "TOPIC", "cases", "run"]

SUBSCRIBERS = 1_000
TOPIC = "acme/t"
BURST = 100  # events per burst; well under the subscriber queue bound (10,000)


async def bus_fanout(url: str, events: int, subscribers: int = SUBSCRIBERS) -> float:
    """Deliveries/s from `events` publishes to `subscribers` subscriptions of one topic."""
    async with hybridbus.open(url) as bus, contextlib.AsyncExitStack() as stack:
        subs = [await stack.enter_async_context(bus.subscribe(TOPIC)) for _ in range(subscribers)]

        async def consume(sub: Subscription) -> None:
            received = 0
            async for _ in sub:
                received += 1
                if received == events:
                    return
            raise RuntimeError(f"subscription ended after {received} of {events} deliveries")

        consumers = [asyncio.create_task(consume(sub)) for sub in subs]
        await asyncio.sleep(0)  # every consumer now waits on its empty queue
        start = time.perf_counter()
        for first in range(0, events, BURST):
            await asyncio.gather(
                *(
                    bus.publish(TOPIC, small_event(0, seq))
                    for seq in range(first, min(first + BURST, events))
                )
            )
        await asyncio.gather(*consumers)
        elapsed = time.perf_counter() - start
    return subscribers * events / elapsed


async def queue_fanout(events: int, subscribers: int = SUBSCRIBERS) -> float:
    """The peer: the same fan-out over one bounded asyncio.Queue per subscriber."""
    queues: list[asyncio.Queue[hybridbus.Event]] = [
        asyncio.Queue(maxsize=10_000) for _ in range(subscribers)
    ]

    async def consume(queue: asyncio.Queue[hybridbus.Event]) -> None:
        for _ in range(events):
            await queue.get()

    consumers = [asyncio.create_task(consume(queue)) for queue in queues]
    await asyncio.sleep(0)
    start = time.perf_counter()
    for first in range(0, events, BURST):
        for seq in range(first, min(first + BURST, events)):
            event = small_event(0, seq)
            for queue in queues:
                queue.put_nowait(event)
        await asyncio.sleep(0)
    await asyncio.gather(*consumers)
    elapsed = time.perf_counter() - start
    return subscribers * events / elapsed


def _bus_case(url: Callable[[Path], str], settings: Settings) -> Callable[[], float]:
    def measure() -> float:
        with scratch_dir(settings) as path:
            return run_async(bus_fanout(url(path), settings.fanout_events))

    return measure


def cases(settings: Settings, log: Callable[[str], None] = print) -> list[Case]:
    out = [
        Case(
            "fanout.memory",
            "fan-out to 1,000 subscribers, memory://",
            "deliveries/s",
            _bus_case(lambda _: "memory://", settings),
            peer="fanout.peer",
            target=1_000_000,
            warmup=True,
        )
    ]
    if sqlite_engine_available():
        out.append(
            Case(
                "fanout.sqlite",
                "fan-out to 1,000 subscribers, sqlite (full)",
                "deliveries/s",
                _bus_case(lambda p: f"sqlite://{p}", settings),
                peer="fanout.peer",
                warmup=True,
            )
        )
    else:
        log("  (hybridbus.engine.sqlite is not there yet: sqlite fan-out case skipped)")
    out.append(
        Case(
            "fanout.peer",
            "asyncio.Queue per subscriber",
            "deliveries/s",
            lambda: run_async(queue_fanout(settings.fanout_events)),
            is_peer=True,
            warmup=True,
        )
    )
    return out


def run(settings: Settings, log: Callable[[str], None] = print) -> list[Result]:
    return run_cases(cases(settings, log), settings, log)


if __name__ == "__main__":
    from benchmarks.run import main

    main(["fanout"])
