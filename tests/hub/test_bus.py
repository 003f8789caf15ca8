"""The Bus on every engine: publish, history, subscribe, exact recovery, slow subscribers."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.support import FakeClock

import hybridbus
from hybridbus.core.event import MAX_DEPTH, Event
from hybridbus.core.log import Delivery, Position
from hybridbus.engine.base import EngineConfig
from hybridbus.errors import (
    BusClosed,
    ErrorCode,
    EventTooLarge,
    InvalidEvent,
    InvalidPattern,
    InvalidPosition,
    InvalidTopic,
    SubscriberTooSlow,
)
from hybridbus.hub.bus import Bus, BusConfig, EventLike
from hybridbus.hub.subscription import Subscription


def url(kind: str, path: Path) -> str:
    return "memory://" if kind == "memory" else f"sqlite://{path / 'bus'}"


@pytest.fixture
async def bus(engine_kind: str, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Bus]:
    async with hybridbus.open(url(engine_kind, tmp_path), clock=clock) as opened:
        yield opened


def ev(n: int | str, source: str = "/test", **fields: object) -> dict[str, object]:
    return {"id": str(n), "source": source, "type": "test.event", **fields}


async def take(sub: Subscription, count: int, timeout: float = 10.0) -> list[Delivery]:
    async def run() -> list[Delivery]:
        got: list[Delivery] = []
        async for delivery in sub:
            got.append(delivery)
            if len(got) == count:
                break
        return got

    return await asyncio.wait_for(run(), timeout)


async def test_publish_and_history(bus: Bus) -> None:
    acks = [await bus.publish("acme/docs/42", ev(i, data={"n": i})) for i in range(5)]
    assert [a.offset for a in acks] == [1, 2, 3, 4, 5]
    page = await bus.history("acme/docs/42", limit=3)
    assert [d.offset for d in page.deliveries] == [1, 2, 3]
    assert page.more and page.exact
    rest = await bus.history("acme/docs/42", since=page.position)
    assert [d.event.data for d in rest.deliveries] == [{"n": 3}, {"n": 4}]
    assert not rest.more
    again = await bus.history("acme/docs/42", since=str(rest.position))
    assert again.deliveries == [] and again.exact


async def test_publish_accepts_events_and_dicts_and_dedupes(bus: Bus) -> None:
    event = Event(id="x", source="/s", type="t")
    first = await bus.publish("acme/a", event)
    second = await bus.publish("acme/a", {"id": "x", "source": "/s", "type": "t"})
    assert second.duplicate and second.offset == first.offset
    assert len((await bus.history("acme/a")).deliveries) == 1


async def test_topics_lists_the_engines_topics(bus: Bus) -> None:
    for topic in ["acme/b", "acme/a", "acme/a", "globex/a"]:
        await bus.publish(topic, ev(f"{topic}-{random.random()}"))
    assert [(t.topic, t.offset) for t in await bus.topics("acme/")] == [
        ("acme/a", 2),
        ("acme/b", 1),
    ]
    assert [t.topic for t in await bus.topics(limit=1, after="acme/a")] == ["acme/b"]
    with pytest.raises(ValueError, match="limit"):
        await bus.topics(limit=-1)
    await bus.close()
    with pytest.raises(BusClosed):
        await bus.topics()


async def test_bad_input_raises_typed_errors_and_disturbs_nothing(bus: Bus) -> None:
    async with bus.subscribe("acme/#") as sub:
        await bus.publish("acme/ok", ev(1))
        with pytest.raises(InvalidTopic):
            await bus.publish("acme/+", ev(2))
        with pytest.raises(InvalidTopic):
            await bus.publish("acme//x", ev(2))
        with pytest.raises(InvalidEvent) as info:
            await bus.publish("acme/ok", {"id": "3", "source": "/s"})
        assert info.value.attribute == "type"
        with pytest.raises(InvalidEvent):
            await bus.publish("acme/ok", "not an event")  # type: ignore[arg-type]
        with pytest.raises(InvalidEvent) as built:  # built in Python: checked all the same
            await bus.publish("acme/ok", Event(id="", source="/s", type="t"))
        assert built.value.attribute == "id"
        with pytest.raises(InvalidEvent):
            await bus.publish("acme/ok", Event(id="9", source="/s", type="t", data=object()))
        with pytest.raises(InvalidEvent):
            await bus.publish("acme/ok", Event(id="9", source="/s", type="t", lamport=-1))
        with pytest.raises(EventTooLarge) as too_large:
            await bus.publish("acme/ok", ev(4, data="x" * (1 << 20)))
        assert too_large.value.limit == 1 << 20
        with pytest.raises(InvalidPattern):
            bus.subscribe("acme/#/x")
        with pytest.raises(InvalidPosition):
            bus.subscribe("acme/#", since="garbage")
        await bus.publish("acme/ok", ev(5))
        got = await take(sub, 2)
        assert [(d.offset, d.event.id) for d in got] == [(1, "1"), (2, "5")]


async def test_subscribe_without_since_gets_only_new_events(bus: Bus) -> None:
    await bus.publish("acme/a", ev("old"))
    async with bus.subscribe("acme/+") as sub:
        assert sub.recovered and sub.live
        await bus.publish("acme/b", ev("new"))
        (got,) = await take(sub, 1)
        assert got.event.id == "new"
        assert sub.position == Position(bus.engine.epoch, (got.position,))


async def test_resume_token_round_trips_as_text(bus: Bus) -> None:
    for i in range(3):
        await bus.publish("acme/a", ev(i))
    async with bus.subscribe("acme/a", since=Position(bus.engine.epoch, (0,))) as sub:
        first = await take(sub, 1)
        token = str(sub.position)
    async with bus.subscribe("acme/a", since=token) as sub:
        rest = await take(sub, 2)
    assert [d.offset for d in first + rest] == [1, 2, 3]


async def test_wildcard_exact_recovery_while_publishers_keep_publishing(bus: Bus) -> None:
    """The hand-over from history to live loses and repeats nothing, for a pattern."""
    topics = [f"acme/docs/{i}" for i in range(6)] + ["acme/chat/1", "globex/docs/1"]
    acked: list[tuple[str, int]] = []
    stop = asyncio.Event()

    async def publisher(p: int) -> None:
        rng = random.Random(p)
        n = 0
        while not stop.is_set():
            topic = rng.choice(topics)
            ack = await bus.publish(topic, ev(f"{p}-{n}", source=f"/p{p}"))
            acked.append((ack.topic, ack.offset))
            n += 1
            if n % 5 == 0:
                await asyncio.sleep(0)

    publishers = [asyncio.create_task(publisher(p)) for p in range(8)]
    received: list[Delivery] = []
    token: Position | None = Position(bus.engine.epoch, (0,))
    rng = random.Random(42)
    for _round in range(12):
        async with bus.subscribe("acme/docs/+", since=token) as sub:
            assert sub.recovered
            received.extend(await take(sub, rng.randrange(1, 120)))
            token = sub.position
        await asyncio.sleep(rng.random() * 0.01)  # publishers run while nobody listens
    stop.set()
    await asyncio.gather(*publishers)
    async with bus.subscribe("acme/docs/+", since=token) as sub:
        expected_total = sum(1 for t, _ in acked if t.startswith("acme/docs/"))
        received.extend(await take(sub, expected_total - len(received)))
        assert sub.live
        # Nothing more: the next delivery would have to be a duplicate.
        with pytest.raises(TimeoutError):
            await take(sub, 1, timeout=0.05)

    expected = sorted((t, o) for t, o in acked if t.startswith("acme/docs/"))
    got = [(d.topic, d.offset) for d in received]
    assert len(got) == len(set(got)), "a delivery came twice"
    assert sorted(got) == expected, "a delivery was lost"
    last: dict[str, int] = defaultdict(int)
    for topic, offset in got:
        assert offset == last[topic] + 1, f"{topic} out of order"
        last[topic] = offset


async def test_slow_subscriber_is_ended_and_resumes_without_loss(
    engine_kind: str, tmp_path: Path
) -> None:
    async with hybridbus.open(url(engine_kind, tmp_path), bus=BusConfig(queue_size=10)) as bus:
        async with bus.subscribe("acme/#") as slow, bus.subscribe("acme/#") as fast:

            async def publish_all() -> None:
                for i in range(25):
                    await bus.publish("acme/a", ev(i))
                    await asyncio.sleep(0)  # the fast subscriber keeps up

            consumed, _ = await asyncio.gather(take(fast, 25), publish_all())
            assert len(consumed) == 25
            got: list[Delivery] = []

            async def read_until_cut_off() -> None:
                async for delivery in slow:
                    got.append(delivery)

            with pytest.raises(SubscriberTooSlow):
                await read_until_cut_off()
            token = slow.position
        async with bus.subscribe("acme/#", since=token) as again:
            assert again.recovered
            got.extend(await take(again, 25 - len(got)))
        assert [d.offset for d in got] == list(range(1, 26))


async def test_recovery_from_another_epoch_says_so(bus: Bus) -> None:
    await bus.publish("acme/a", ev(1))
    stale = Position("0ldepoch", (1,))
    async with bus.subscribe("acme/a", since=stale) as sub:
        assert not sub.recovered
        await bus.publish("acme/a", ev(2))
        (got,) = await take(sub, 1)
        assert got.event.id == "2"
    page = await bus.history("acme/a", since=stale)
    assert not page.exact


async def test_recovery_past_retention_says_so(engine_kind: str, tmp_path: Path) -> None:
    engine = EngineConfig(max_per_topic=5)
    async with hybridbus.open(url(engine_kind, tmp_path), engine=engine) as bus:
        first = await bus.publish("acme/a", ev(0))
        for i in range(1, 10):
            await bus.publish("acme/a", ev(i))
        await bus.engine.sweep()
        since = Position(first.epoch, (first.position,))
        async with bus.subscribe("acme/#", since=since) as sub:
            assert not sub.recovered
            got = await take(sub, 5)
            assert [d.offset for d in got] == [6, 7, 8, 9, 10]


async def test_expired_events_are_never_delivered(bus: Bus, clock: FakeClock) -> None:
    past = datetime.fromtimestamp(clock.now - 1, UTC).isoformat()
    async with bus.subscribe("acme/#", since=Position(bus.engine.epoch, (0,))) as sub:
        await bus.publish("acme/a", ev("gone", expirytime=past))
        await bus.publish("acme/a", ev("kept"))
        (got,) = await take(sub, 1)
        assert got.event.id == "kept"
    assert [d.event.id for d in (await bus.history("acme/a")).deliveries] == ["kept"]


async def test_close_ends_subscriptions_and_refuses_work(engine_kind: str, tmp_path: Path) -> None:
    bus = await hybridbus.open(url(engine_kind, tmp_path))
    async with bus.subscribe("acme/#") as sub:
        waiting = asyncio.ensure_future(take(sub, 1))
        await asyncio.sleep(0.01)
        await bus.close()
        with pytest.raises(BusClosed):
            await waiting
    with pytest.raises(BusClosed):
        await bus.publish("acme/a", ev(1))


async def test_unsubscribed_patterns_get_nothing(bus: Bus) -> None:
    async with bus.subscribe("acme/a") as a, bus.subscribe("acme/+") as plus:
        pass
    async with bus.subscribe("acme/b") as b:
        await bus.publish("acme/a", ev(1))
        await bus.publish("acme/b", ev(2))
        (got,) = await take(b, 1)
        assert got.topic == "acme/b"
    assert a.position.positions == plus.position.positions


async def test_url_settings_reach_the_configs(tmp_path: Path) -> None:
    async with hybridbus.open(
        f"sqlite://{tmp_path}/x?max_per_topic=2&queue_size=7&synchronous=normal"
    ) as bus:
        assert bus.config.queue_size == 7
        for i in range(4):
            await bus.publish("acme/a", ev(i))
        await bus.engine.sweep()
        assert [d.offset for d in (await bus.history("acme/a")).deliveries] == [3, 4]
    with pytest.raises(hybridbus.BusError):
        hybridbus.open("memory://?nope=1")
    with pytest.raises(hybridbus.BusError):
        hybridbus.open("postgres://x")


async def test_recovery_through_small_pages_and_queue_while_publishing(
    engine_kind: str, tmp_path: Path
) -> None:
    """History longer than the queue, live events arriving during recovery: none lost."""
    config = BusConfig(queue_size=8, page_size=3)
    async with hybridbus.open(url(engine_kind, tmp_path), bus=config) as bus:
        for i in range(30):
            await bus.publish(f"acme/{i % 2}", ev(f"old{i}"))
        got: list[Delivery] = []
        async with bus.subscribe("acme/+", since=Position(bus.engine.epoch, (0,))) as sub:
            async for delivery in sub:
                got.append(delivery)
                if len(got) <= 30:  # one live event per delivery, then a burst of 5
                    await bus.publish(f"acme/{len(got) % 2}", ev(f"new{len(got)}"))
                    if len(got) % 10 == 0:
                        for k in range(5):
                            await bus.publish("acme/0", ev(f"burst{len(got)}-{k}"))
                if len(got) == 75:
                    break
            assert sub.recovered
        ids = [d.event.id for d in got]
        assert len(set(ids)) == 75
        assert ids[:30] == [f"old{i}" for i in range(30)]
        for topic in ("acme/0", "acme/1"):
            offsets = [d.offset for d in got if d.topic == topic]
            assert offsets == list(range(1, len(offsets) + 1))


async def test_a_tight_publish_loop_lets_subscribers_in_this_process_keep_up(
    engine_kind: str, tmp_path: Path
) -> None:
    """The memory engine acks at once; the bus yields when a subscriber lags."""
    async with hybridbus.open(url(engine_kind, tmp_path), bus=BusConfig(queue_size=100)) as bus:
        async with bus.subscribe("acme/#") as sub:
            reader = asyncio.ensure_future(take(sub, 1000))
            for i in range(1000):
                await bus.publish("acme/a", ev(i))
            got = await reader
        assert [d.offset for d in got] == list(range(1, 1001))


async def test_a_since_past_the_engines_64_bits_is_an_invalid_position(bus: Bus) -> None:
    await bus.publish("acme/a", ev(1))
    epoch = bus.engine.epoch
    huge = f"{epoch}-99999999999999999999999"
    for since in (huge, Position(epoch, (2**63,)), Position(epoch, (-1,))):
        with pytest.raises(InvalidPosition):
            await bus.history("acme/#", since=since)
        with pytest.raises(InvalidPosition):
            bus.subscribe("acme/#", since=since)
    last = f"{epoch}-{2**63 - 1}"
    assert (await bus.history("acme/#", since=last)).deliveries == []
    async with bus.subscribe("acme/#", since=last) as sub:
        assert sub.recovered


async def test_tenantid_must_be_the_topics_tenant(bus: Bus) -> None:
    refused: list[tuple[str, EventLike]] = [
        ("acme/a", ev(1, tenantid="globex")),
        ("acme/a", Event(id="2", source="/s", type="t", tenantid="globex")),
        ("globex/a", ev(3, tenantid="acme")),  # as an admin's absolute topic would be
        ("$audit/acme/x", ev(4, tenantid="acme")),  # a system root is no tenant
    ]
    for topic, event in refused:
        with pytest.raises(InvalidEvent) as info:
            await bus.publish(topic, event)
        assert info.value.attribute == "tenantid"
        assert info.value.code == ErrorCode.INVALID_EVENT
        assert "tenantid" in str(info.value)
    assert await bus.topics() == []
    await bus.publish("acme/a", ev(5, tenantid="acme"))
    await bus.publish("acme/a", ev(6))  # absent: left absent
    await bus.publish("$audit/acme/x", ev(7))
    page = await bus.history("acme/a")
    assert [(d.event.id, d.event.tenantid) for d in page.deliveries] == [("5", "acme"), ("6", None)]


def nested(depth: int, kind: str) -> object:
    data: object = 1
    for _ in range(depth):
        data = [data] if kind == "list" else {"a": data}
    return data


@pytest.mark.parametrize("kind", ["list", "dict"])
async def test_data_nested_past_the_limit_is_an_invalid_event(bus: Bus, kind: str) -> None:
    await bus.publish("acme/a", ev(1, data=nested(MAX_DEPTH, kind)))
    for depth in (MAX_DEPTH + 1, 900, 100_000):
        for event in (
            ev(depth, data=nested(depth, kind)),
            Event(id=str(depth), source="/s", type="t", data=nested(depth, kind)),
        ):
            with pytest.raises(InvalidEvent) as info:
                await bus.publish("acme/a", event)
            assert info.value.attribute == "data"
    page = await bus.history("acme/a")
    assert [d.event.data == nested(MAX_DEPTH, kind) for d in page.deliveries] == [True]
