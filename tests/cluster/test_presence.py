"""Presence across nodes: servers sharing one real redis-server (server/presence_redis.py).

A client on one node asking the presence of a topic sees the members on
every node; watchers get `join` / `leave` of members on other nodes as they
happen; a node shut down takes its members with it at once, a node killed
with `kill -9` within `registry_ttl` — its members without a session; those
with one turn "degraded" then and leave after their grace, unless their
clients come back on another node (tests/cluster/test_sessions.py;
docs/scale-out.md, "Presence and limits across nodes").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from tests.cluster.nodes import nodes
from tests.servers import ServerProcess, WsClient, running_server
from tests.services import RedisServer

from hybridbus.proto.frames import ClientInfo
from hybridbus.server.presence import Change, PresenceRegistry

TTL = 2.0
ROOM = "docs/42"


async def members(client: WsClient, topic: str = ROOM, *, watch: bool = False) -> list[str]:
    """The client ids present in `topic` as `client`'s node answers."""
    reply = await client.request("presence", topic=topic, watch=watch)
    assert reply["type"] == "reply", reply
    return sorted(info["client"] for info in reply["result"]["clients"])


async def eventually(client: WsClient, expected: list[str], seconds: float = 2.0) -> None:
    """Ask until `client`'s node answers `expected` (the join crosses Redis: milliseconds)."""
    expected = sorted(expected)
    found: list[str] = []
    async with asyncio.timeout(seconds):
        while (found := await members(client)) != expected:
            await asyncio.sleep(0.02)
    assert found == expected


async def pushed(client: WsClient, type: str, seconds: float = 2.0) -> dict[str, Any]:
    async with asyncio.timeout(seconds):
        return await client.push(type)


class Client(WsClient):
    """A `WsClient` that remembers its connection's id (as presence shows it)."""

    id = ""


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[Client]:
    async with Client.open(url, connect_first=False) as client:
        reply = await client.request("connect")
        assert reply["type"] == "reply", reply
        client.id = reply["result"]["client"]
        yield client


async def subscribe(client: WsClient, topic: str = ROOM) -> None:
    reply = await client.request("subscribe", pattern=topic)
    assert reply["type"] == "reply", reply


async def test_presence_and_its_changes_reach_every_node(
    redis_server: Callable[..., RedisServer],
) -> None:
    engine = redis_server().url
    async with (
        nodes(engine, "n1", "n2", registry_ttl=TTL) as (one, two),
        connected(one.url) as ann,
        connected(one.url) as bob,
        connected(two.url) as carl,
        connected(two.url) as watcher,
    ):
        await subscribe(ann)
        await subscribe(carl)
        ann_id, bob_id, carl_id = ann.id, bob.id, carl.id
        await eventually(watcher, [ann_id, carl_id])  # ann is on the other node
        assert await members(watcher, watch=True) == sorted([ann_id, carl_id])
        await subscribe(bob)  # on node one: the watcher on node two is told
        join = await pushed(watcher, "join")
        assert (join["topic"], join["info"]["client"]) == (ROOM, bob_id)
        reply = await bob.request("unsubscribe", pattern=ROOM)
        assert reply["type"] == "reply", reply
        leave = await pushed(watcher, "leave")
        assert (leave["topic"], leave["info"]["client"]) == (ROOM, bob_id)
        # Node one answers for node two's member too, over HTTP as well.
        await eventually(ann, [ann_id, carl_id])
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{one.http}/v1/topics/acme/{ROOM}/presence") as response,
        ):
            body = await response.json()
        assert sorted(c["client"] for c in body["clients"]) == sorted([ann_id, carl_id])
        await ann.ws.close()  # its connection ends: it leaves, everywhere
        leave = await pushed(watcher, "leave")
        assert leave["info"]["client"] == ann_id
        await eventually(watcher, [carl_id])


async def test_a_node_that_stops_takes_its_members_at_once(
    redis_server: Callable[..., RedisServer],
) -> None:
    engine = redis_server().url
    async with (
        running_server(engine=engine, node_id="stays", registry_ttl=30.0) as stays,
        connected(stays.url) as watcher,
    ):
        async with (
            running_server(engine=engine, node_id="goes", registry_ttl=30.0) as goes,
            connected(goes.url) as member,
        ):
            await subscribe(member)
            await eventually(watcher, [member.id])
            await members(watcher, watch=True)
            started = time.monotonic()
        # Shut down gracefully: its members left at once, not after the (long) ttl.
        leave = await pushed(watcher, "leave", seconds=5.0)
        assert leave["info"]["client"] == member.id
        assert time.monotonic() - started < 5.0
        assert await members(watcher) == []


async def test_the_members_without_a_session_of_a_node_killed_vanish_within_the_ttl(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    engine = redis_server().url
    env = {
        "HYBRIDBUS_NODE_ID": "doomed",
        "HYBRIDBUS_REGISTRY_TTL": str(TTL),
        "HYBRIDBUS_SESSION_GRACE": "0",  # sessions off: nothing waits for the client
        "HYBRIDBUS_ANONYMOUS_TENANT": "acme",
    }
    doomed = ServerProcess("--engine", engine, "--host", "127.0.0.1", logs=tmp_path / "d.log",
                           env=env)  # fmt: skip
    try:
        await doomed.wait_listening()
        async with (
            nodes(engine, "survivor", registry_ttl=TTL) as (survivor,),
            connected(doomed.url) as member,
            connected(survivor.url) as watcher,
        ):
            await subscribe(member)
            await eventually(watcher, [member.id], seconds=5.0)
            await members(watcher, watch=True)
            await doomed.kill()  # kill -9: no goodbye
            killed = time.monotonic()
            leave = await pushed(watcher, "leave", seconds=TTL + 5.0)
            elapsed = time.monotonic() - killed
            assert leave["info"]["client"] == member.id
            # Within the ttl by design; a second of slack for a loaded 2-core machine.
            assert elapsed < TTL + 1.0, elapsed
            assert await members(watcher) == []
    finally:
        await doomed.kill()


async def test_presence_keeps_working_on_each_node_while_redis_is_away_and_resyncs(
    redis_server: Callable[..., RedisServer],
) -> None:
    redis = redis_server()
    # The memory engine and presence in the registry's Redis: the nodes' own publishes
    # do not need Redis, so only presence is affected when it goes away.
    settings = {"registry": redis.url + "?prefix=t:", "registry_ttl": TTL}
    async with (
        running_server(node_id="a", **settings) as a,
        running_server(node_id="b", **settings) as b,
        connected(a.url) as on_a,
        connected(b.url) as on_b,
        connected(a.url) as late,
    ):
        await subscribe(on_a)
        await subscribe(on_b)
        ids = [on_a.id, on_b.id]
        await eventually(on_b, ids)
        await asyncio.to_thread(redis.stop)
        # Each node still answers for its own members at once.
        await subscribe(late)
        assert late.id in await members(on_a)
        await asyncio.to_thread(redis.start)
        # Back: node b learns of the member that joined node a meanwhile.
        await eventually(on_b, [*ids, late.id], seconds=3 * TTL)


# -- the registry's view of other nodes (pure: what presence_redis feeds it) ----------------


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[bool, str, str]] = []
        self.mirrored: list[tuple[bool, str, str, str]] = []

    def presence_changed(self, change: Change, topic: str, info: ClientInfo) -> None:
        assert change in ("join", "leave")  # no sessions here: no state changes
        self.seen.append((change == "join", topic, info.client))

    def changed(self, joined: bool, member: str, topic: str, info: ClientInfo) -> None:
        self.mirrored.append((joined, member, topic, info.client))


def test_other_nodes_members_join_leave_and_go_with_their_node() -> None:
    registry = PresenceRegistry()
    recorder = Recorder()
    registry.mirror = recorder
    registry.watch("t/room", recorder)
    mine, theirs, more = ClientInfo(client="mine"), ClientInfo(client="x"), ClientInfo(client="y")
    registry.join("t/room", "sub", mine)
    registry.apply("n2", True, "1", "t/room", theirs)
    registry.apply("n2", True, "1", "t/room", theirs)  # heard twice: one join
    registry.replace("n3", {"1": ("t/room", more), "2": ("t/other", more)})
    assert registry.clients("t/room") == [mine, theirs, more]
    registry.replace("n3", {"2": ("t/other", more)})  # n3's member 1 left meanwhile
    registry.drop("n2")  # n2 lapsed
    registry.leave("t/room", "sub")
    assert registry.clients("t/room") == []
    assert registry.clients("t/other") == [more]
    assert registry.nodes() == ["n3"]
    assert recorder.seen == [
        (True, "t/room", "mine"),
        (True, "t/room", "x"),
        (True, "t/room", "y"),
        (False, "t/room", "y"),
        (False, "t/room", "x"),
        (False, "t/room", "mine"),
    ]
    # Only this node's own changes are mirrored to the others, with its member's id.
    assert recorder.mirrored == [(True, "1", "t/room", "mine"), (False, "1", "t/room", "mine")]
