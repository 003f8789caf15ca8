"""The Python client's awareness and state views against a real server, across a drop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.servers import running_server

import hybridbus.client
from hybridbus.client import Client, ClientConfig
from hybridbus.core.backoff import Backoff
from hybridbus.errors import Disconnected, InvalidInput, RemoteError

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


# -- races found by review: each test failed before its fix ---------------------------------


def _alices(server: Any, client: str) -> list[Any]:
    """The server's connections of the client whose presence id is `client`."""
    return [
        c
        for c in list(server.node._connections.values())
        if c.info is not None and c.info.client == client
    ]


@contextlib.contextmanager
def unread(client: Client) -> Iterator[None]:
    """The client's socket is not read meanwhile: what the server sends waits in the
    kernel and comes in at once afterwards (a slow network hands frames over together)."""
    assert client._ws is not None and client._ws._conn is not None
    transport = client._ws._conn.transport
    assert transport is not None
    transport.pause_reading()
    try:
        yield
    finally:
        transport.resume_reading()


async def until(check: Callable[[], object], timeout: float = 5.0, every: float = 0.005) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(every)


async def test_an_awareness_set_in_flight_during_a_drop_wins_over_the_state_held() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as alice,
        hybridbus.client.connect(server.url, config=FAST) as bob,
    ):
        mine = alice.awareness("room")
        await mine.set("cursor", 1)
        assert alice.info is not None
        me = alice.info.client
        seen = bob.awareness("room")
        await seen.watch()
        setting = asyncio.ensure_future(mine.set("cursor", 2))
        await asyncio.sleep(0)  # issued on this connection, then the connection drops
        for connection in _alices(server, me):
            connection.abort()
        await asyncio.wait_for(setting, 5)  # sent again on the new connection
        await until(lambda: alice.connects == 2)
        await asyncio.sleep(0.3)  # whatever else was on its way
        assert mine.own == {"cursor": 2}
        assert {c: s.state for c, s in (await seen.watch()).items()} == {me: {"cursor": 2}}
        assert alice.info.client == me  # her session resumed: the same presence id


async def test_a_patch_pushed_with_the_subscribe_reply_is_applied() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as writer,
        hybridbus.client.connect(server.url, config=FAST) as reader,
    ):
        assert await writer.patch("b", {"n": 1}) == 1
        doc = reader.state("b")
        with unread(reader):  # the subscribe reply and the next patch come in together
            opening = asyncio.ensure_future(doc.__aenter__())
            await until(lambda: server.node.states._subs)  # answered: the reply is on its way
            assert await writer.patch("b", {"m": 2}) == 2
            await asyncio.sleep(0.05)
        async with await asyncio.wait_for(opening, 5):
            change = await asyncio.wait_for(anext(doc), 5)
            assert (change.version, change.patch) == (2, {"m": 2})
            assert (doc.version, doc.value) == (2, {"n": 1, "m": 2})


async def test_a_resumed_state_takes_the_missed_patches_before_a_push_that_came_with_them() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as writer,
        hybridbus.client.connect(server.url, config=FAST) as reader,
        reader.state("b") as doc,
    ):
        assert await writer.patch("b", {"v1": 1}) == 1
        await asyncio.wait_for(anext(doc), 5)
        with unread(reader):  # v2 and v3 are pushed and never read: the socket dies
            assert await writer.patch("b", {"v2": 2}) == 2
            assert await writer.patch("b", {"v3": 3}) == 3
            await asyncio.sleep(0.05)
            assert reader._ws is not None and reader._ws._conn is not None
            transport = reader._ws._conn.transport
            assert transport is not None
            transport.abort()  # what the kernel held is lost with it
        old = set(server.node.states._subs)
        # Each loop turn: caught before the resubscribe's reply can be in.
        await until(lambda: reader.connects == 2 and reader._ws is not None, every=0)
        with unread(reader):  # the resume's reply (2, 3) and the push of 4 come together
            await until(lambda: set(server.node.states._subs) - old)
            assert await writer.patch("b", {"v4": 4}) == 4
            await asyncio.sleep(0.05)
        got = [await asyncio.wait_for(anext(doc), 5) for _ in range(3)]
        assert [c.version for c in got] == [2, 3, 4]
        assert doc.value == {"v1": 1, "v2": 2, "v3": 3, "v4": 4}


async def test_a_clients_own_state_is_own_never_among_the_others() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as alice,
        hybridbus.client.connect(server.url, config=FAST) as bob,
    ):
        assert alice.info is not None and bob.info is not None
        mine = alice.awareness("room")
        await mine.set("cursor", 1)
        await bob.awareness("room").set("cursor", 9)
        assert set(await mine.watch()) == {bob.info.client}
        assert set(mine.states) == {bob.info.client}
        first = await asyncio.wait_for(anext(mine), 5)
        assert first.client == bob.info.client
        await mine.set("cursor", 2)
        assert mine.own == {"cursor": 2} and set(mine.states) == {bob.info.client}
        # A resumed session: the same id, the watch sent again, her own state left out.
        me = alice.info.client
        for connection in _alices(server, me):
            connection.abort()
        await until(lambda: alice.connects == 2)
        await mine.set("cursor", 3)
        assert alice.info.client == me and alice.resumes == 1
        assert set(await mine.watch()) == {bob.info.client}
        # A new session (none presented): a new presence id, known as hers all the same.
        alice.session = None
        for connection in _alices(server, me):
            connection.abort()
        await until(lambda: alice.connects == 3)
        await mine.set("cursor", 4)
        assert alice.info.client != me and alice.resumes == 1
        assert set(await mine.watch()) == {bob.info.client}
        seen = await bob.awareness("room").watch()
        assert {c: s.state for c, s in seen.items()} == {alice.info.client: {"cursor": 4}}


async def test_the_views_iterators_end_with_the_client() -> None:
    """A closed client ends its awareness and state views' iterators (quietly); one that
    failed raises its error from them — nobody waits for ever."""
    async with running_server() as server:
        async with hybridbus.client.connect(server.url, config=FAST) as c:
            aw = c.awareness("room")
            await aw.watch()
            doc = await c.state("boards/1").__aenter__()
            waiting = [asyncio.ensure_future(anext(aw)), asyncio.ensure_future(anext(doc))]
            await asyncio.sleep(0.05)
        for task in waiting:  # the client closed
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(task, 5)
        async with hybridbus.client.connect(server.url, config=FAST) as c:
            aw = c.awareness("room")
            await aw.watch()
            waiting = [asyncio.ensure_future(anext(aw))]
            await asyncio.sleep(0.05)
            c._fail_all(Disconnected(4501, "refused"))
            with pytest.raises(Disconnected):
                await asyncio.wait_for(waiting[0], 5)


async def test_one_state_view_per_topic_and_a_refused_one_is_forgotten() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as c,
    ):
        async with c.state("boards/1") as doc:
            with pytest.raises(InvalidInput, match="open"):
                c.state("boards/1")
            assert doc.version == 0
        async with c.state("boards/1") as again:  # closed: viewed again
            assert again.version == 0
    no_subscribe = {"anonymous": [{"allow": ["publish"], "topics": "#"}]}
    async with (
        running_server(roles=no_subscribe) as server,
        hybridbus.client.connect(server.url, config=FAST) as c,
    ):
        for _ in range(2):  # refused each time, never "a view is open"
            with pytest.raises(RemoteError) as refused:
                async with c.state("boards/1"):
                    pass
            assert refused.value.code == 1110
