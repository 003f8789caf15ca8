"""The Python client's awareness and state views against a real server, across a drop."""

from __future__ import annotations

import asyncio

import pytest
from tests.servers import running_server

import hybridbus.client
from hybridbus.client import ClientConfig
from hybridbus.core.backoff import Backoff
from hybridbus.errors import RemoteError

FAST = ClientConfig(backoff=Backoff(base=0.01, cap=0.05), request_timeout=10.0)


async def test_awareness_states_changes_and_removal() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as alice,
        hybridbus.client.connect(server.url, config=FAST) as bob,
    ):
        await alice.awareness("docs/42").set("cursor", {"line": 3, "ch": 14})
        seen = bob.awareness("docs/42")
        first = await asyncio.wait_for(anext(seen), 5)  # the current state, at once
        assert first.state == {"cursor": {"line": 3, "ch": 14}} and not first.removed
        await alice.awareness("docs/42").set("status", "typing")
        changed = await asyncio.wait_for(anext(seen), 5)
        assert changed.state == {"cursor": {"line": 3, "ch": 14}, "status": "typing"}
        await alice.close()
        gone = await asyncio.wait_for(anext(seen), 5)
        assert gone.removed and gone.client == first.client and seen.states == {}


async def test_a_clients_own_state_comes_back_after_a_drop() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as alice,
        hybridbus.client.connect(server.url, config=FAST) as bob,
    ):
        await alice.awareness("room").set("cursor", 7)
        seen = bob.awareness("room")
        first = await asyncio.wait_for(anext(seen), 5)
        for connection in list(server.node._connections.values()):
            if connection.id == first.client:
                connection.abort()
        removed = await asyncio.wait_for(anext(seen), 5)
        assert removed.removed
        back = await asyncio.wait_for(anext(seen), 5)  # sent again by alice's client
        assert back.state == {"cursor": 7} and back.lamport > first.lamport
        assert back.client == first.client  # the presence id, which her resumed session keeps


async def test_state_snapshot_patches_cas_and_resume_after_a_drop() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as writer,
        hybridbus.client.connect(server.url, config=FAST) as reader,
    ):
        assert await writer.patch("boards/1", {"title": "Q3", "cards": []}) == 1
        async with reader.state("boards/1") as doc:
            assert (doc.version, doc.value) == (1, {"title": "Q3", "cards": []})
            assert await writer.patch("boards/1", {"title": "Q4"}, if_version=1) == 2
            change = await asyncio.wait_for(anext(doc), 5)
            assert change.version == 2 and change.patch == {"title": "Q4"}
            assert doc.value == {"title": "Q4", "cards": []}
            with pytest.raises(RemoteError) as refused:
                await writer.patch("boards/1", {"title": "late"}, if_version=1)
            assert refused.value.code == 1640
            # The reader drops; patches made meanwhile come after its reconnect, in order.
            subscribed = server.node.states._subs  # the reader's connection only
            for connection in list(server.node._connections.values()):
                if connection in subscribed:
                    connection.abort()
            for n in range(3, 6):
                assert await writer.patch("boards/1", {"n": n}) == n
            got = [await asyncio.wait_for(anext(doc), 5) for _ in range(3)]
            assert [c.version for c in got] == [3, 4, 5]
            assert doc.value == {"title": "Q4", "cards": [], "n": 5} and doc.version == 5
