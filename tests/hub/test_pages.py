"""Shared recovery pages: one engine read for many subscriptions, and the same answers.

The herd tests count the engine's reads under many recovering subscriptions;
the properties compare what `SharedPages` gives with what the engine gives,
for random appends, expiries, retention, sweeps and `since` positions, and
check that the estimated size never passes its bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tests.support import FakeClock

import hybridbus
from hybridbus.core.event import Event
from hybridbus.core.log import Delivery, Page, Position
from hybridbus.core.topics import matches
from hybridbus.engine.base import Engine, EngineConfig
from hybridbus.engine.memory import MemoryEngine
from hybridbus.hub.bus import BusConfig
from hybridbus.hub.pages import SharedPages
from hybridbus.hub.subscription import Subscription


def ev(n: int | str, **fields: object) -> dict[str, object]:
    return {"id": str(n), "source": "/test", "type": "test.event", **fields}


def count_reads(engine: Engine) -> list[int]:
    """Count `engine.read` calls (a list of one counter)."""
    reads = [0]
    read = engine.read

    async def counted(pattern: str, after: Sequence[int] | None, limit: int) -> Page:
        reads[0] += 1
        return await read(pattern, after, limit)

    engine.read = counted  # type: ignore[method-assign]
    return reads


async def drain(sub: Subscription, count: int) -> list[Delivery]:
    got: list[Delivery] = []
    while len(got) < count:
        batch = await asyncio.wait_for(sub.take(), 10)
        assert batch, "ended early"
        got.extend(batch)
    return got


def url(kind: str, path: Path) -> str:
    return "memory://" if kind == "memory" else f"sqlite://{path / 'bus'}"


async def test_a_herd_of_recovering_subscriptions_shares_one_read_of_the_log(
    engine_kind: str, tmp_path: Path
) -> None:
    config = BusConfig(page_size=100)
    async with hybridbus.open(url(engine_kind, tmp_path), bus=config) as bus:
        acks = [await bus.publish(f"acme/t{i % 3}", ev(i)) for i in range(1_000)]
        await bus.publish("other/x", ev("elsewhere"))
        reads = count_reads(bus.engine)
        epoch = acks[0].epoch
        # 60 subscribers, each from its own position in the first 60 events.
        starts = [acks[i].position for i in range(60)]
        subs = [bus.subscribe("acme/#", since=Position(epoch, (p,))) for p in starts]
        for sub in subs:
            await sub.__aenter__()
        try:
            got = await asyncio.gather(*(drain(sub, 1_000 - n - 1) for n, sub in enumerate(subs)))
        finally:
            for sub in subs:
                await sub.__aexit__(None, None, None)
        for n, deliveries in enumerate(got):
            assert [d.event.id for d in deliveries] == [str(i) for i in range(n + 1, 1_000)]
        assert all(sub.recovered for sub in subs)
        # Ten blocks of 100 positions, read once each (not 60 x 10 reads).
        assert reads[0] <= 12, reads[0]
        # The very same delivery objects: one decoding for everybody.
        assert all(a is b for a, b in zip(got[0][-500:], got[1][-500:], strict=True))


async def test_without_the_cache_each_subscription_reads_on_its_own(tmp_path: Path) -> None:
    """The same herd with `recovery_cache_size=0`: the engine is read per subscription."""
    config = BusConfig(page_size=100, recovery_cache_size=0)
    async with hybridbus.open("memory://", bus=config) as bus:
        acks = [await bus.publish("acme/t", ev(i)) for i in range(300)]
        reads = count_reads(bus.engine)
        since = Position(acks[0].epoch, (0,))
        for _ in range(5):
            async with bus.subscribe("acme/#", since=since) as sub:
                await drain(sub, 300)
        assert reads[0] >= 5 * 3


async def test_subscriptions_recovering_while_events_flow_get_each_exactly_once(
    engine_kind: str, tmp_path: Path
) -> None:
    config = BusConfig(page_size=50)
    async with hybridbus.open(url(engine_kind, tmp_path), bus=config) as bus:
        acks = [await bus.publish("acme/a", ev(i)) for i in range(400)]
        epoch = acks[0].epoch
        total = 800

        async def publisher() -> None:
            for i in range(400, total):
                await bus.publish("acme/b" if i % 2 else "acme/a", ev(i))
                if i % 7 == 0:
                    await asyncio.sleep(0)

        async def subscriber(start: int) -> list[str]:
            await asyncio.sleep(0.001 * (start % 5))
            since = Position(epoch, (acks[start].position,))
            async with bus.subscribe("acme/#", since=since) as sub:
                return [d.event.id for d in await drain(sub, total - start - 1)]

        starts = list(range(0, 390, 13))
        results = await asyncio.gather(publisher(), *(subscriber(s) for s in starts))
        for start, ids in zip(starts, results[1:], strict=True):
            assert ids == [str(i) for i in range(start + 1, total)]


async def test_a_new_epoch_forgets_the_cache() -> None:
    async with hybridbus.open("memory://", bus=BusConfig(page_size=10)) as bus:
        for i in range(30):
            await bus.publish("acme/a", ev(i))
        since = Position(bus.engine.epoch, (0,))
        async with bus.subscribe("acme/#", since=since) as sub:
            await drain(sub, 30)
        await bus.engine.reset()
        for i in range(5):
            await bus.publish("acme/a", ev(f"new{i}"))
        async with bus.subscribe("acme/#", since=Position(bus.engine.epoch, (0,))) as sub:
            assert [d.event.id for d in await drain(sub, 5)] == [f"new{i}" for i in range(5)]


# -- properties: the same answers as the engine -----------------------------------

TOPICS = ["a/x", "a/y", "b/x", "a/x/z"]
PATTERNS = ["a/#", "a/x", "a/+", "#", "+/x"]

op = st.one_of(
    st.tuples(st.just("append"), st.sampled_from(TOPICS), st.booleans()),
    st.tuples(st.just("read"), st.sampled_from(PATTERNS), st.integers(0, 60)),
    st.tuples(st.just("sweep"), st.just(""), st.just(0)),
    st.tuples(st.just("tick"), st.just(""), st.integers(1, 3)),
)


async def _drain_pages(
    read: object, pattern: str, start: int, limit: int
) -> tuple[list[Delivery], bool, int]:
    """Every page from `start` to the head: deliveries, all exact, final position."""
    found: list[Delivery] = []
    exact = True
    after = start
    for _ in range(1_000):
        page: Page = await read(pattern, (after,), limit)  # type: ignore[operator]
        exact = exact and page.exact
        found.extend(page.deliveries)
        assert page.positions[0] >= after
        after = page.positions[0]
        if not page.more:
            return found, exact, after
    raise AssertionError("no end")


async def _run(ops: list[tuple[str, str, int]], retention: int | None, max_size: int) -> None:
    clock = FakeClock()
    engine = MemoryEngine(EngineConfig(max_per_topic=retention, sweep_interval=0), clock)
    pages = SharedPages(engine, block=3, max_size=max_size)
    appended: list[Delivery] = []

    def listener(deliveries: Sequence[Delivery]) -> None:
        appended.extend(deliveries)
        if pages.active:
            pages.routed(deliveries)

    await engine.start(listener)
    try:
        n = 0
        for kind, arg, value in ops:
            if kind == "append":
                n += 1
                expires = (
                    datetime.fromtimestamp(clock.now + 2, UTC) if value else None
                )  # gone after two ticks
                await engine.append(
                    arg, Event(id=str(n), source="/s", type="t", expirytime=expires), b""
                )
            elif kind == "sweep":
                await engine.sweep()
            elif kind == "tick":
                clock.advance(value)
            else:
                now = clock()
                start = min(value, len(appended) + 1)
                got, exact, end = await _drain_pages(pages.read, arg, start, 3)
                want, want_exact, want_end = await _drain_pages(engine.read, arg, start, 3)
                live = [d for d in got if not d.expired(now)]
                # In order, past `start`, of the pattern, never twice.
                positions = [d.position for d in got]
                assert positions == sorted(set(positions))
                assert all(p > start for p in positions)
                assert all(matches(arg, d.topic) for d in got)
                assert end == want_end
                if retention is None:
                    # Nothing is ever removed but by expiry: exactly the engine's answer.
                    assert live == want
                    assert exact == want_exact
                else:
                    # Never less than the engine; more only what retention removed since.
                    assert set(map(id, want)) <= set(map(id, live))
                    if exact:
                        truth = [
                            d
                            for d in appended
                            if d.position > start and matches(arg, d.topic) and not d.expired(now)
                        ]
                        assert live == truth
                    if not exact:
                        assert not want_exact
                assert pages.size <= max_size
    finally:
        await engine.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(op, max_size=60), st.sampled_from([None, 2, 4]), st.sampled_from([0, 3_000, 1 << 20])
)
# Retention removed position 1 before block 0 was read: a read from 1 lost nothing.
@example([("append", "a/x", 0)] * 3 + [("read", "a/x", 0), ("read", "a/x", 1)], 2, 1 << 20)
# A tail follows the log: appended after the read, then read from inside the tail.
@example(
    [("append", "a/x", 0), ("read", "a/#", 0)]
    + [("append", t, 0) for t in ["a/y", "b/x", "a/x", "a/x/z"] * 2]
    + [("read", "a/#", 2), ("read", "+/x", 0), ("read", "a/#", 7)],
    None,
    1 << 20,
)
def test_shared_pages_answer_as_the_engine_does(
    ops: list[tuple[str, str, int]], retention: int | None, max_size: int
) -> None:
    asyncio.run(_run(ops, retention, max_size))


async def test_the_cache_stays_within_its_bound() -> None:
    bound = 64 << 10
    config = BusConfig(page_size=100, recovery_cache_size=bound)
    async with hybridbus.open("memory://", bus=config) as bus:
        big = "x" * 1_000
        acks = [await bus.publish(f"acme/t{i % 10}", ev(i, data=big)) for i in range(2_000)]
        pages: SharedPages = bus._pages
        epoch = acks[0].epoch
        for pattern in ["acme/#", "acme/t1", "acme/+", "acme/t2"]:
            async with bus.subscribe(pattern, since=Position(epoch, (0,))) as sub:
                expected = 2_000 if pattern in ("acme/#", "acme/+") else 200
                got = await drain(sub, expected)
                assert [d.position for d in got] == sorted({d.position for d in got})
                assert pages.size <= bound
        assert 0 < pages.size <= bound
        # Every block counted once: the sizes add up.
        assert pages.size == sum(pages._lru.values())
