"""State topics on the log: the document is the fold of the topic's patch events (any publisher's),
other events are ignored, a second loader folds the same document, an idle document unloads."""

from __future__ import annotations

import asyncio
from typing import Any

import hybridbus
from hybridbus.core.event import Event
from hybridbus.core.log import Ack
from hybridbus.hub.bus import Bus
from hybridbus.hub.states import PATCH_TYPE, StateConfig, StateTopics


def publisher(bus: Bus, topic: str) -> Any:
    async def publish(event: Event) -> Ack:
        return await bus.publish(topic, event)

    return publish


async def test_the_document_is_the_fold_of_the_logs_patch_events() -> None:
    async with hybridbus.open("memory://") as bus:
        topics = StateTopics(bus, StateConfig(snapshot_every=2))
        try:
            first = await topics.patch("acme/s", {"a": 1}, publisher(bus, "acme/s"))
            assert first.version == 1
            # A plain event on the topic is no patch; a patch event from any publisher is one.
            await bus.publish("acme/s", {"id": "x", "source": "/t", "type": "other", "data": 1})
            raw = {"patch": {"b": 2}, "origin": "elsewhere"}
            patch_event = {"id": "p", "source": "/t", "type": PATCH_TYPE, "data": raw}
            await bus.publish("acme/s", patch_event)
            state = await topics.get("acme/s")
            async with asyncio.timeout(5):
                while state.doc.version < 2:
                    await asyncio.sleep(0.01)
            assert state.doc.value == {"a": 1, "b": 2}
            # Another loader (another node, a restart) folds the same document.
            again = StateTopics(bus)
            try:
                loaded = await again.get("acme/s")
                assert (loaded.doc.value, loaded.doc.version) == ({"a": 1, "b": 2}, 2)
            finally:
                await again.close()
        finally:
            await topics.close()


async def test_a_document_nobody_listens_to_unloads_after_idle() -> None:
    async with hybridbus.open("memory://") as bus:
        topics = StateTopics(bus, StateConfig(idle=0.05))
        try:
            state = await topics.get("acme/idle")

            def listener(*_: object) -> None:
                pass

            topics.listen(state, listener)
            await asyncio.sleep(0.2)
            assert len(topics) == 1  # listened to: kept
            topics.unlisten(state, listener)
            follower = state.follower
            assert follower is not None
            async with asyncio.timeout(5):  # unloaded, its subscription of the log ended
                while len(topics) or not follower.done():
                    await asyncio.sleep(0.01)
        finally:
            await topics.close()
