"""`Client.publish_many` against a real server: one frame, one append, one ack per event."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.server.test_publish_batches import Calls
from tests.servers import event, running_server

import hybridbus.client
from hybridbus.client import ClientConfig
from hybridbus.core.backoff import Backoff
from hybridbus.core.event import Event
from hybridbus.errors import InvalidEvent, RemoteError

FAST = ClientConfig(backoff=Backoff(base=0.01, cap=0.05), request_timeout=10.0)


async def test_publish_many_is_one_append_with_an_ack_per_event(tmp_path: Path) -> None:
    async with (
        running_server(engine=f"sqlite://{tmp_path}") as server,
        hybridbus.client.connect(server.url, config=FAST) as c,
    ):
        calls = Calls(server.node.bus.engine)
        async with c.subscribe("docs/#") as sub:
            events: list[Event | dict[str, object]] = [event(f"e{n}") for n in range(20)]
            events[3] = Event(id="built", source="/test", type="test.event")
            acks = await c.publish_many("docs/1", events)
            assert [a.offset for a in acks] == list(range(1, 21))
            assert all(a.token == f"{a.epoch}-{a.position}" for a in acks)
            got = [await asyncio.wait_for(anext(sub), 5) for _ in range(20)]
        assert [r.event.id for r in got] == [f"e{n}" if n != 3 else "built" for n in range(20)]
        assert calls.batches == [20] and calls.single == 0
        again = await c.publish_many("docs/1", [event("e0"), event("new")])
        assert [(a.offset, a.duplicate) for a in again] == [(1, True), (21, False)]
        assert await c.publish_many("docs/1", []) == []
        single = await c.publish("docs/1", event("one"))
        assert single.offset == 22 and calls.batches[-1] == 1  # publish: a batch of one


async def test_an_event_the_server_refuses_raises_after_the_others_are_published() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as c,
    ):
        events = [event("a"), event("b", tenantid="globex"), event("c")]
        with pytest.raises(RemoteError) as refused:
            await c.publish_many("docs/1", events)
        assert refused.value.code == 1001
        history = await c.history("docs/1")
        assert [item.event.id for item in history.events] == ["a", "c"]
        assert server.node._connections  # the connection goes on


async def test_an_invalid_event_raises_before_anything_is_sent() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as c,
    ):
        with pytest.raises(InvalidEvent):
            await c.publish_many("docs/1", [event("a"), {"id": "x", "source": "/s"}])
        await c.ping()
        assert await server.node.bus.engine.head() == (0,)
