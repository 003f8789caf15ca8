"""Subscription's hand-over logic, driven step by step over a scripted log."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec
import pytest

from hybridbus.core.event import Event
from hybridbus.core.log import Delivery, Page, Position
from hybridbus.errors import SubscriberTooSlow
from hybridbus.hub.subscription import Subscription


class ScriptedLog:
    """A list of deliveries read the way an engine reads (one shard, no retention)."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.reads = 0

    def make(self, count: int) -> list[Delivery]:
        """Deliveries past the log's end, not yet visible to reads."""
        start = len(self.deliveries)
        return [
            Delivery("a", p, 0, p, 0.0, Event(id=str(p), source="/s", type="t"))
            for p in range(start + 1, start + count + 1)
        ]

    def add(self, count: int) -> list[Delivery]:
        new = self.make(count)
        self.deliveries.extend(new)
        return new

    async def read(self, pattern: str, after: Sequence[int], limit: int) -> Page:
        self.reads += 1
        rest = [d for d in self.deliveries if d.position > after[0]]
        found, more = rest[:limit], len(rest) > limit
        head = found[-1].position if more else max(len(self.deliveries), after[0])
        return Page("e", found, (head,), more, True)


def subscription(log: ScriptedLog, maxsize: int, page_size: int) -> Subscription:
    async def opener(sub: Subscription) -> None:
        return None

    return Subscription(
        "a",
        reader=log.read,
        opener=opener,
        closer=lambda sub: None,
        clock=lambda: 0.0,
        maxsize=maxsize,
        page_size=page_size,
    )


async def drain(sub: Subscription, count: int) -> list[int]:
    got = []
    for _ in range(count):
        got.append((await sub.__anext__()).position)
    return got


async def test_hand_over_that_would_overflow_reads_on_instead() -> None:
    log = ScriptedLog()
    log.add(3)
    sub = subscription(log, maxsize=4, page_size=3)
    sub.begin("e", (0,), recovering=True)
    late = log.make(3)  # committed after the read's snapshot, notified before it ends
    for delivery in late:
        sub.push(delivery)
    await sub.catch_up()
    assert not sub.live  # 3 queued + 3 pending would not fit in 4
    log.deliveries.extend(late)
    assert await drain(sub, 6) == [1, 2, 3, 4, 5, 6]
    live = log.add(1)[0]
    sub.push(live)
    assert await drain(sub, 1) == [7]
    assert sub.live


async def test_pending_overflow_during_recovery_is_read_from_the_log() -> None:
    log = ScriptedLog()
    log.add(5)
    sub = subscription(log, maxsize=3, page_size=2)
    sub.begin("e", (0,), recovering=True)
    for delivery in log.add(10):
        sub.push(delivery)
    assert await drain(sub, 15) == list(range(1, 16))


async def test_live_duplicates_of_history_are_dropped() -> None:
    log = ScriptedLog()
    early = log.add(4)
    sub = subscription(log, maxsize=100, page_size=100)
    sub.begin("e", (0,), recovering=True)
    for delivery in early[2:]:  # notified late: already in the page too
        sub.push(delivery)
    await sub.catch_up()
    assert sub.live
    assert await drain(sub, 4) == [1, 2, 3, 4]
    assert sub.position == Position("e", (4,))


async def test_too_slow_keeps_the_position_of_the_last_delivery_handed_out() -> None:
    log = ScriptedLog()
    sub = subscription(log, maxsize=2, page_size=10)
    sub.begin("e", (0,), recovering=False)
    first, second, third = log.add(3)
    sub.push(first)
    sub.push(second)
    assert await drain(sub, 1) == [1]
    sub.push(third)
    sub.push(log.add(1)[0])  # queue holds 2 and 3: full
    with pytest.raises(SubscriberTooSlow):
        await sub.__anext__()
    assert sub.position == Position("e", (1,))


async def test_take_hands_out_every_queued_delivery_at_once_and_moves_the_position() -> None:
    log = ScriptedLog()
    log.add(2)
    sub = subscription(log, maxsize=100, page_size=10)
    sub.begin("e", (0,), recovering=True)
    assert [d.position for d in await sub.take()] == [1, 2]  # read from the log
    assert sub.live
    for delivery in log.add(3):
        sub.push(delivery)
    assert sub.take_nowait() and sub.position == Position("e", (5,))
    assert sub.take_nowait() == []
    sub.end()
    assert await sub.take() == []


async def test_take_raises_the_error_the_subscription_ended_with() -> None:
    log = ScriptedLog()
    sub = subscription(log, maxsize=1, page_size=10)
    sub.begin("e", (0,), recovering=False)
    first, second = log.add(2)
    sub.push(first)
    sub.push(second)  # over the bound
    with pytest.raises(SubscriberTooSlow):
        await sub.take()
    with pytest.raises(SubscriberTooSlow):
        await sub.finished()


async def test_take_drops_expired_deliveries() -> None:
    log = ScriptedLog()
    sub = subscription(log, maxsize=100, page_size=10)
    sub.begin("e", (0,), recovering=False)
    fresh, stale = log.add(2)
    sub.push(msgspec.structs.replace(stale, expires=-1.0))  # the clock says 0.0
    sub.push(msgspec.structs.replace(fresh, position=3, offset=3, expires=5.0))
    assert [d.position for d in await sub.take()] == [3]
    assert sub.position == Position("e", (3,))


async def test_attach_notifies_once_per_batch_instead_of_waking() -> None:
    log = ScriptedLog()
    log.add(1)
    sub = subscription(log, maxsize=100, page_size=10)
    sub.begin("e", (0,), recovering=True)
    notified: list[int] = []
    assert not sub.attach(lambda: notified.append(1))  # still recovering
    assert [d.position for d in await sub.take()] == [1]
    assert sub.attach(lambda: notified.append(1))
    for delivery in log.add(3):
        sub.push(delivery)
    assert notified == [1]  # the first push into the empty queue only
    assert [d.position for d in sub.take_nowait()] == [2, 3, 4]
    sub.push(log.add(1)[0])
    assert notified == [1, 1]
    waiter = asyncio.ensure_future(sub.finished())
    await asyncio.sleep(0)
    sub.push(log.add(1)[0])  # a push does not end the wait
    await asyncio.sleep(0)
    assert not waiter.done()
    sub.end()
    await waiter


async def test_attach_is_refused_while_deliveries_are_queued() -> None:
    log = ScriptedLog()
    sub = subscription(log, maxsize=100, page_size=10)
    sub.begin("e", (0,), recovering=False)
    sub.push(log.add(1)[0])
    assert not sub.attach(lambda: None)
    sub.take_nowait()
    assert sub.attach(lambda: None)
