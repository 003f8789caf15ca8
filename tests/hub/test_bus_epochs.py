"""A new epoch under running subscriptions: they end, never go on across the gap.

When the log begins a new epoch (history lost: a reset here; on Redis a
restart without persistence, tests/cluster/test_redis_faults.py), a node
cannot tell whether its subscribers missed events, so every subscription of
the older epoch ends with `SubscriptionEnded` (1200) before the first event
of the new one; resubscribed from its position, it says `recovered=False`.
"""

from __future__ import annotations

import asyncio

import pytest

import hybridbus
from hybridbus.errors import SubscriptionEnded


def ev(n: str) -> dict[str, object]:
    return {"specversion": "1.0", "id": n, "source": "/t", "type": "t"}


async def test_a_reset_ends_live_subscriptions_and_resuming_says_recovered_false() -> None:
    async with hybridbus.open("memory://") as bus:
        async with bus.subscribe("acme/#") as sub:
            await bus.publish("acme/a", ev("old"))
            assert (await anext(sub)).event.id == "old"
            old_epoch = sub.position.epoch
            await bus.engine.reset()
            await bus.publish("acme/a", ev("new"))
            with pytest.raises(SubscriptionEnded):
                await asyncio.wait_for(anext(sub), 5)
            position = sub.position
        assert position.epoch == old_epoch
        async with bus.subscribe("acme/#", since=position) as again:
            await bus.publish("acme/a", ev("newer"))
            assert again.recovered is False
            assert (await asyncio.wait_for(anext(again), 5)).event.id == "newer"


async def test_a_subscription_begun_in_the_new_epoch_goes_on() -> None:
    async with hybridbus.open("memory://") as bus:
        await bus.publish("acme/a", ev("old"))
        await bus.engine.reset()
        async with bus.subscribe("acme/#") as sub:  # before any route in the new epoch
            await bus.publish("acme/a", ev("new"))
            assert (await asyncio.wait_for(anext(sub), 5)).event.id == "new"
