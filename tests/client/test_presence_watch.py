"""`c.presence_watch(topic)` and `hybridbus presence` against a real server, across drops.

Members are Python clients subscribed to the topic; a drop is a TCP relay
(tests/server/test_sessions.py) cutting the connection with a reset and
refusing new ones until it is up again, so a test decides what happens while
a client is away.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.server.test_sessions import relay_to
from tests.servers import running_server

import hybridbus.client
from hybridbus.client import Client, ClientConfig, ClientPresence, PresenceChange
from hybridbus.core.backoff import Backoff
from hybridbus.errors import Disconnected, InvalidInput, RemoteError

FAST = ClientConfig(backoff=Backoff(base=0.01, cap=0.05), request_timeout=10.0)
ROOM = "docs/42"
HYBRIDBUS = Path(sys.executable).with_name("hybridbus")


def me(client: Client) -> str:
    assert client.info is not None
    return client.info.client


async def next_change(view: ClientPresence) -> tuple[str, str]:
    change = await asyncio.wait_for(anext(view), 5)
    return change.kind, change.client


async def nothing_more(view: ClientPresence, wait: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(view), wait)


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def members_are(client: Client, expected: dict[str, str]) -> None:
    """Wait until the server shows `expected` (client id -> state) as ROOM's members."""
    async with asyncio.timeout(5):
        while {m.client: m.state for m in await client.presence(ROOM)} != expected:
            await asyncio.sleep(0.01)


async def test_joins_and_leaves_are_seen_live() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as watcher,
        hybridbus.client.connect(server.url, config=FAST) as alice,
        hybridbus.client.connect(server.url, config=FAST) as bob,
    ):
        sub = alice.subscribe(ROOM)
        await sub.__aenter__()  # (ends with alice)
        async with watcher.presence_watch(ROOM) as room:
            assert list(room.members) == [me(alice)]  # the members, at once
            async with bob.subscribe(ROOM):
                change = await asyncio.wait_for(anext(room), 5)
                assert change == PresenceChange("join", change.info)
                assert change.client == me(bob) and change.info.state == "active"
                assert set(room.members) == {me(alice), me(bob)}
            assert await next_change(room) == ("leave", me(bob))
            await alice.close()  # a client that closes leaves at once
            assert await next_change(room) == ("leave", me(alice))
            assert room.members == {}
        # Out of the `async with`: the iterator ends, later pushes are dropped.
        with pytest.raises(StopAsyncIteration):
            await anext(room)
        with pytest.raises(InvalidInput):
            await room.watch()
        async with bob.subscribe(ROOM):
            await members_are(watcher, {me(bob): "active"})
            assert room.members == {}
            assert watcher._presence_watches() == {}


async def test_a_member_that_drops_is_degraded_then_active_never_leave_and_join() -> None:
    async with (
        running_server(session_grace=10.0) as server,
        relay_to(server.port) as relay,
        hybridbus.client.connect(server.url, config=FAST) as watcher,
        hybridbus.client.connect(relay.url(), config=FAST) as member,
        member.subscribe(ROOM),
        watcher.presence_watch(ROOM) as room,
    ):
        who = me(member)
        assert room.members[who].state == "active"
        relay.down()  # its network fails: the server keeps its session, degraded
        change = await asyncio.wait_for(anext(room), 5)
        assert (change.kind, change.client, change.info.state) == ("degraded", who, "degraded")
        assert room.members[who].state == "degraded"
        relay.up = True  # it comes back and continues its session
        assert await next_change(room) == ("active", who)
        assert room.members[who].state == "active" and me(member) == who
        await nothing_more(room)


async def test_across_the_watchers_drop_the_list_is_compared_with_the_one_held() -> None:
    async with (
        running_server(session_grace=10.0) as server,
        relay_to(server.port) as watchers_network,
        relay_to(server.port) as flakys_network,
        hybridbus.client.connect(watchers_network.url(), config=FAST) as watcher,
        hybridbus.client.connect(server.url, config=FAST) as stays,
        hybridbus.client.connect(server.url, config=FAST) as leaves,
        hybridbus.client.connect(server.url, config=FAST) as joins,
        hybridbus.client.connect(flakys_network.url(), config=FAST) as flaky,
        stays.subscribe(ROOM),
        flaky.subscribe(ROOM),
    ):
        leaving = leaves.subscribe(ROOM)
        await leaving.__aenter__()
        # One member a page: the list after the reconnect comes in pages too.
        async with watcher.presence_watch(ROOM, page_size=1) as room:
            before = {me(stays), me(leaves), me(flaky)}
            assert set(room.members) == before
            watchers_network.down()  # the watcher is away ...
            await leaving.__aexit__(None, None, None)  # ... while one leaves,
            async with joins.subscribe(ROOM):  # one joins,
                flakys_network.down()  # and one's connection drops
                expected = {me(stays): "active", me(joins): "active", me(flaky): "degraded"}
                await members_are(stays, expected)
                assert set(room.members) == before  # nothing seen yet
                watchers_network.up = True
                got = {await next_change(room) for _ in range(3)}
                assert got == {
                    ("leave", me(leaves)),
                    ("join", me(joins)),
                    ("degraded", me(flaky)),
                }  # and nothing for the member that stayed
                assert {c: i.state for c, i in room.members.items()} == expected
                assert watcher.connects == 2
                flakys_network.up = True
                assert await next_change(room) == ("active", me(flaky))
                await nothing_more(room)


async def test_a_slow_reader_gets_each_members_change_since_it_last_looked() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as watcher,
        hybridbus.client.connect(server.url, config=FAST) as was_there,
        hybridbus.client.connect(server.url, config=FAST) as comes,
        hybridbus.client.connect(server.url, config=FAST) as passes,
    ):
        room = watcher.presence_watch(ROOM)
        async with was_there.subscribe(ROOM):
            await room.watch()
            assert set(room.members) == {me(was_there)}
        # Nobody reads meanwhile: was_there left; comes joins and leaves 20 times, then
        # stays; passes joins and leaves.
        for _ in range(20):
            async with comes.subscribe(ROOM):
                pass
        async with comes.subscribe(ROOM):
            async with passes.subscribe(ROOM):
                pass
            await until(lambda: set(room.members) == {me(comes)})
            assert len(room._pending) == 2  # one pending change per member at most
            got = [await next_change(room) for _ in range(2)]
            assert sorted(got) == sorted([("leave", me(was_there)), ("join", me(comes))])
            await nothing_more(room)
            await room.unwatch()


async def test_big_lists_come_in_pages_and_refusals_and_ends_reach_the_view() -> None:
    read_only = {"anonymous": [{"allow": ["subscribe"], "topics": "#"}]}
    async with running_server() as server:
        members = [await hybridbus.client.connect(server.url, config=FAST) for _ in range(5)]
        try:
            for member in members:
                await member.subscribe(ROOM).__aenter__()
            async with hybridbus.client.connect(server.url, config=FAST) as watcher:
                with pytest.raises(InvalidInput):
                    watcher.presence_watch(ROOM, page_size=0)
                room = watcher.presence_watch(ROOM, page_size=2)
                assert set(await room.watch()) == {me(m) for m in members}
            # The client closed: the iterator ends.
            with pytest.raises(StopAsyncIteration):
                await anext(room)
        finally:
            for member in members:
                await member.close()
    async with (
        running_server(roles=read_only) as server,
        hybridbus.client.connect(server.url, config=FAST) as watcher,
    ):
        with pytest.raises(RemoteError) as refused:
            await watcher.presence_watch(ROOM).watch()
        assert refused.value.code == 1110
        assert watcher._presence_watches() == {}


async def test_a_watch_ends_with_the_error_that_ended_the_client() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as watcher,
    ):
        room = watcher.presence_watch(ROOM)
        await room.watch()
        waiting = asyncio.ensure_future(anext(room))
        await asyncio.sleep(0.05)
        watcher._fail_all(Disconnected(4501, "refused"))
        with pytest.raises(Disconnected):
            await asyncio.wait_for(waiting, 5)


# -- hybridbus presence ---------------------------------------------------------------------


async def test_the_cli_prints_the_members_as_a_table_or_json_lines() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as alice,
        alice.subscribe(ROOM),
    ):
        for flags, parse in ((), str.split), (("--json",), json.loads):
            process = await asyncio.create_subprocess_exec(
                HYBRIDBUS, "presence", ROOM, "--url", server.url, *flags,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(process.communicate(), 30)
            assert process.returncode == 0, err
            lines = [parse(line) for line in out.decode().splitlines()]
            if flags:
                assert lines == [
                    {"client": me(alice), "user": None, "device": None, "name": None,
                     "state": "active"}
                ]  # fmt: skip
            else:
                assert lines == [["CLIENT", "USER", "DEVICE", "NAME", "STATE"],
                                 [me(alice), "-", "-", "-", "active"]]  # fmt: skip


async def test_the_cli_watch_prints_a_join_when_another_client_subscribes() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as alice,
        hybridbus.client.connect(server.url, config=FAST) as bob,
        alice.subscribe(ROOM),
    ):
        process = await asyncio.create_subprocess_exec(
            HYBRIDBUS, "presence", ROOM, "--watch", "--json", "--url", server.url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert process.stdout is not None

            async def line() -> dict[str, object]:
                assert process.stdout is not None
                parsed: dict[str, object] = json.loads(
                    await asyncio.wait_for(process.stdout.readline(), 30)
                )
                return parsed

            assert (await line())["client"] == me(alice)  # the members: it watches now
            async with bob.subscribe(ROOM):
                joined = await line()
                assert (joined["change"], joined["client"]) == ("join", me(bob))
            left = await line()
            assert (left["change"], left["client"]) == ("leave", me(bob))
            process.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(process.wait(), 30) == 130
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
