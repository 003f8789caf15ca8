"""The engine conformance suite, continued: `append_many` (engine/base.py), on every engine.

Each test runs once per engine kind (the `engine_kind` fixture in conftest).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from tests.support import FakeClock, MakeEngine, append, make_event, read_all

from hybridbus.app import open_engine
from hybridbus.core.codecs import encode_msgpack
from hybridbus.core.event import Event
from hybridbus.core.log import Delivery
from hybridbus.engine.base import EngineConfig
from hybridbus.errors import BusClosed


def items(
    topics: Sequence[str], events: Sequence[Event] | None = None
) -> list[tuple[str, Event, bytes]]:
    """(topic, event, payload) for each topic, with fresh events unless given."""
    chosen = events if events is not None else [make_event() for _ in topics]
    return [(t, e, encode_msgpack(e)) for t, e in zip(topics, chosen, strict=True)]


async def test_append_many_acks_each_item_in_order_with_gap_free_offsets(
    make_engine: MakeEngine,
) -> None:
    opened = await make_engine()
    engine = opened.engine
    first = await append(engine, "a/x")
    batch = items(["a/x", "a/y", "a/x", "b", "a/x"])
    acks = await engine.append_many(batch)
    assert [(a.topic, a.offset) for a in acks] == [
        ("a/x", 2),
        ("a/y", 1),
        ("a/x", 3),
        ("b", 1),
        ("a/x", 4),
    ]
    # Contiguous positions, right after the earlier append, in the items' order.
    assert [a.position for a in acks] == list(range(first.position + 1, first.position + 6))
    assert all(a.epoch == engine.epoch and not a.duplicate for a in acks)
    # Acks resolve after the listener saw every delivery, in order.
    assert [d.position for d in opened.seen] == [first.position] + [a.position for a in acks]
    assert [d.event for d in opened.seen[1:]] == [e for _, e, _ in batch]
    stored = await read_all(engine, "#")
    assert [(d.topic, d.offset, d.event.id) for d in stored[1:]] == [
        (a.topic, a.offset, e.id) for a, (_, e, _) in zip(acks, batch, strict=True)
    ]
    assert await engine.head() == (acks[-1].position,)


async def test_append_many_of_nothing_appends_nothing(make_engine: MakeEngine) -> None:
    opened = await make_engine()
    assert await opened.engine.append_many([]) == []
    assert opened.seen == []
    assert await opened.engine.head() == (0,)


async def test_append_many_dedupes_against_the_log_and_within_the_batch(
    make_engine: MakeEngine,
) -> None:
    opened = await make_engine()
    engine = opened.engine
    original = await append(engine, "acme/a", make_event(source="/s", id="1"))
    batch = items(
        ["acme/a", "acme/b", "acme/c", "acme/b", "other/a"],
        [
            make_event(source="/s", id="1"),  # a duplicate of the earlier append
            make_event(source="/s", id="2"),
            make_event(source="/s", id="3"),
            make_event(source="/s", id="2"),  # a duplicate of an item before it
            make_event(source="/s", id="1"),  # another tenant: not a duplicate
        ],
    )
    acks = await engine.append_many(batch)
    assert [a.duplicate for a in acks] == [True, False, False, True, False]
    assert (acks[0].topic, acks[0].offset, acks[0].position) == (
        "acme/a",
        1,
        original.position,
    )
    assert (acks[3].topic, acks[3].offset, acks[3].position) == (
        "acme/b",
        1,
        acks[1].position,
    )
    stored = await read_all(engine, "#")
    assert len(stored) == 4  # the original and three new events
    assert len(opened.seen) == 4


async def test_concurrent_append_many_keep_each_batch_contiguous(
    make_engine: MakeEngine,
) -> None:
    opened = await make_engine()
    engine = opened.engine

    async def batch(n: int) -> list[int]:
        acks = await engine.append_many(items([f"t/{(n + i) % 3}" for i in range(7)]))
        return [a.position for a in acks]

    async def single(n: int) -> list[int]:
        return [(await append(engine, f"t/{n % 3}")).position]

    results = await asyncio.gather(*(batch(n) if n % 2 else single(n) for n in range(40)))
    for positions in results:
        assert positions == list(range(positions[0], positions[0] + len(positions)))
    everything = sorted(p for positions in results for p in positions)
    assert everything == list(range(1, len(everything) + 1))
    assert [d.position for d in opened.seen] == everything
    for topic in ("t/0", "t/1", "t/2"):
        offsets = [d.offset for d in await read_all(engine, topic)]
        assert offsets == list(range(1, len(offsets) + 1))


async def test_the_listener_sees_an_append_many_in_one_call(
    engine_kind: str, tmp_path: Path, clock: FakeClock
) -> None:
    engine = open_engine(engine_kind, str(tmp_path / "data"), EngineConfig(), clock)
    calls: list[list[int]] = []

    def listener(deliveries: Sequence[Delivery]) -> None:
        calls.append([d.position for d in deliveries])

    await engine.start(listener)
    try:
        acks = await engine.append_many(items(["a", "b", "a"]))
    finally:
        await engine.close()
    assert calls == [[a.position for a in acks]]


async def test_append_many_after_close_raises(make_engine: MakeEngine) -> None:
    opened = await make_engine()
    await opened.engine.close()
    with pytest.raises(BusClosed):
        await opened.engine.append_many(items(["a"]))
