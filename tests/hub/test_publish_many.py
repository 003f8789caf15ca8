"""Batches on the bus and the guard: `publish_many`, and `prepare` + `append`.

The bus runs on every engine; the guard over the memory engine as in test_guard.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.hub.test_guard import ADMIN, ALICE, EVERYTHING, Hub, ev, running
from tests.support import FakeClock

import hybridbus
from hybridbus.core.event import Event
from hybridbus.errors import (
    BusClosed,
    EventTooLarge,
    Forbidden,
    InvalidEvent,
    InvalidTopic,
    LimitExceeded,
    RateLimited,
)
from hybridbus.hub.bus import Bus
from hybridbus.hub.guard import Limits


@pytest.fixture
async def bus(engine_kind: str, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Bus]:
    url = "memory://" if engine_kind == "memory" else f"sqlite://{tmp_path / 'bus'}"
    async with hybridbus.open(url, clock=clock) as opened:
        yield opened


@pytest.fixture
async def hub(clock: FakeClock) -> AsyncIterator[Hub]:
    async with running(clock) as started:
        yield started


def event(n: int | str, **fields: Any) -> dict[str, Any]:
    return {"id": str(n), "source": "/test", "type": "test.event", **fields}


# -- the bus ---------------------------------------------------------------------------------


async def test_publish_many_to_one_topic_acks_each_in_order_and_delivers_them(bus: Bus) -> None:
    async with bus.subscribe("acme/#") as sub:
        acks = await bus.publish_many("acme/a", [event(i) for i in range(5)])
        assert [a.offset for a in acks] == [1, 2, 3, 4, 5]
        assert [a.position for a in acks] == list(range(acks[0].position, acks[0].position + 5))
        got = [await asyncio.wait_for(sub.__anext__(), 10) for _ in range(5)]
    assert [d.event.id for d in got] == ["0", "1", "2", "3", "4"]
    history = await bus.history("acme/a")
    assert [d.event.id for d in history.deliveries] == ["0", "1", "2", "3", "4"]


async def test_publish_many_takes_topic_event_pairs_and_events_of_every_kind(bus: Bus) -> None:
    built = Event(id="b", source="/test", type="test.event")
    acks = await bus.publish_many([("acme/a", event(1)), ("acme/b", built), ("acme/a", event(2))])
    assert [(a.topic, a.offset) for a in acks] == [("acme/a", 1), ("acme/b", 1), ("acme/a", 2)]
    assert await bus.publish_many("acme/a", []) == []
    assert await bus.publish_many([]) == []
    with pytest.raises(TypeError):
        await bus.publish_many("acme/a")


async def test_publish_many_dedupes_per_event_within_and_across_batches(bus: Bus) -> None:
    first = await bus.publish("acme/a", event("x"))
    acks = await bus.publish_many("acme/a", [event("x"), event("y"), event("y")])
    assert [a.duplicate for a in acks] == [True, False, True]
    assert acks[0].position == first.position and acks[2].position == acks[1].position
    assert [d.event.id for d in (await bus.history("acme/a")).deliveries] == ["x", "y"]


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (event("bad", tenantid="globex"), InvalidEvent),
        ({"id": "bad", "source": "/test"}, InvalidEvent),
        (event("bad", data="x" * (1 << 20)), EventTooLarge),
    ],
)
async def test_an_invalid_event_refuses_the_whole_batch(
    bus: Bus, bad: dict[str, Any], error: type[Exception]
) -> None:
    batch = [event(1), event(2), bad, event(3)]
    with pytest.raises(error) as refused:
        await bus.publish_many("acme/a", batch)
    assert any("event 2 of the batch" in note for note in refused.value.__notes__)
    with pytest.raises(InvalidTopic):
        await bus.publish_many([("acme/a", event(1)), ("acme/+", event(2))])
    assert (await bus.history("acme/#")).deliveries == []
    assert await bus.engine.head() == (0,)


async def test_publish_many_after_close_raises(bus: Bus) -> None:
    await bus.close()
    with pytest.raises(BusClosed):
        await bus.publish_many("acme/a", [event(1)])


# -- the guard ---------------------------------------------------------------------------------


async def test_guard_publish_many_scopes_checks_and_publishes_all(hub: Hub) -> None:
    guard = hub.guard()
    alice = guard.admit(ALICE)
    acks = await guard.publish_many(
        alice, [("docs/1/edits", ev()), ("docs/2/edits", ev()), ("docs/1/edits", ev())]
    )
    assert [(a.topic, a.offset) for a in acks] == [
        ("acme/docs/1/edits", 1),
        ("acme/docs/2/edits", 1),
        ("acme/docs/1/edits", 2),
    ]
    assert len(await guard.publish_many(alice, "docs/3/edits", [ev(), ev()])) == 2


async def test_a_forbidden_topic_refuses_the_whole_batch(hub: Hub) -> None:
    guard = hub.guard()
    alice = guard.admit(ALICE)
    with pytest.raises(Forbidden):
        await guard.publish_many(alice, [("docs/1/edits", ev()), ("docs/1", ev())])
    with pytest.raises(InvalidEvent):
        await guard.publish_many(
            alice, "docs/1/edits", [ev(), {**ev(), "tenantid": "globex"}]
        )
    assert (await hub.bus.history("acme/#")).deliveries == []


async def test_a_batch_is_rate_limited_as_a_whole(hub: Hub) -> None:
    guard = hub.guard(limits=Limits(connection_rate=1, connection_burst=4))
    principal = guard.admit(EVERYTHING["acme"])
    with pytest.raises(LimitExceeded, match="burst"):
        await guard.publish_many(principal, "a", [ev() for _ in range(5)])
    assert len(await guard.publish_many(principal, "a", [ev() for _ in range(3)])) == 3
    with pytest.raises(RateLimited):
        await guard.publish_many(principal, "a", [ev(), ev()])  # one token left, not two
    assert len((await hub.bus.history("acme/a")).deliveries) == 3


async def test_an_admin_batch_is_audited_once_per_topic(hub: Hub) -> None:
    guard = hub.guard()
    admin = guard.admit(ADMIN)
    await guard.publish_many(
        admin, [("acme/x", ev()), ("acme/y", ev()), ("acme/x", ev()), ("globex/z", ev())]
    )
    acme = await hub.audits("acme", "admin.publish")
    assert [d.event.data["topic"] for d in acme] == ["acme/x", "acme/y"]
    assert len(await hub.audits("globex", "admin.publish")) == 1


async def test_prepare_refuses_per_event_and_append_publishes_the_rest(hub: Hub) -> None:
    guard = hub.guard(limits=Limits(connection_rate=1, connection_burst=3))
    alice = guard.admit(ALICE)
    prepared = [guard.prepare(alice, "docs/1/edits", ev())]
    with pytest.raises(Forbidden):
        guard.prepare(alice, "docs/1", ev())
    with pytest.raises(InvalidEvent):  # checked after its token was taken, as publish does
        guard.prepare(alice, "docs/1/edits", {"id": "x", "source": "/s"})
    prepared.append(guard.prepare(alice, "docs/2/edits", ev()))
    with pytest.raises(RateLimited):
        guard.prepare(alice, "docs/1/edits", ev())
    acks = await guard.append(alice, prepared)
    assert [a.topic for a in acks] == ["acme/docs/1/edits", "acme/docs/2/edits"]


async def test_a_principal_remembers_a_bounded_number_of_scoped_topics(hub: Hub) -> None:
    guard = hub.guard()
    alice, admin = guard.admit(ALICE), guard.admit(ADMIN)
    assert alice.topics is None  # nothing held until it publishes
    for n in range(200):
        assert alice.topic(f"docs/{n}/edits") == f"acme/docs/{n}/edits"
        assert alice.topic(f"docs/{n}/edits") == f"acme/docs/{n}/edits"  # from the cache
        assert alice.topics is not None and len(alice.topics) <= 64
    assert admin.topic("globex/x") == "globex/x"
    for bad in ("docs/+", "", "docs//x"):
        with pytest.raises(InvalidTopic):
            alice.topic(bad)
        with pytest.raises(InvalidTopic):
            admin.topic(bad)
    assert all(v == f"acme/{k}" for k, v in (alice.topics or {}).items())
