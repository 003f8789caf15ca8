"""Awareness on plain topics across nodes: servers sharing one real redis-server.

A client's `awareness_set` on one node reaches watchers on another (< 1 s),
conflated as on one node; its removal when its connection closes reaches
them at once; a watcher joining on another node gets every current state;
a node killed with `kill -9`: its clients' states go within `registry_ttl`
(server/awareness_relay.py, docs/collaboration.md "Awareness and cursors").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.cluster.nodes import nodes
from tests.servers import ServerProcess, WsClient
from tests.services import RedisServer

TTL = 2.0
ROOM = "docs/42"


async def pushed(client: WsClient, seconds: float = 2.0) -> dict[str, Any]:
    async with asyncio.timeout(seconds):
        return await client.push("awareness")


async def watched(client: WsClient, expected: int, seconds: float = 3.0) -> dict[str, Any]:
    """Watch `ROOM`: the states in the reply, then those the other nodes send as pushes."""
    reply = await client.request("awareness_watch", topic=ROOM)
    assert reply["type"] == "reply", reply
    states = {s["client"]: s for s in reply["result"].get("clients", [])}
    async with asyncio.timeout(seconds):
        while len(states) < expected:
            push = await client.push("awareness")
            assert not push.get("removed", False), push
            states[push["client"]] = push
    return states


async def test_states_set_on_one_node_reach_watchers_on_another_and_go_at_close(
    redis_server: Callable[..., RedisServer],
) -> None:
    engine = redis_server().url
    async with (
        nodes(engine, "n1", "n2", registry_ttl=TTL) as (one, two),
        WsClient.open(one.url) as alice,
        WsClient.open(two.url) as carl,
        WsClient.open(two.url) as watcher,
    ):
        await alice.request("awareness_set", topic=ROOM, state={"cursor": 1})
        await carl.request("awareness_set", topic=ROOM, state={"cursor": 2})
        # A watcher on node two gets alice's state (node one) besides carl's.
        states = await watched(watcher, 2)
        assert sorted(s["state"]["cursor"] for s in states.values()) == [1, 2]
        [alice_id] = [c for c, s in states.items() if s["state"] == {"cursor": 1}]
        watcher.pushes.clear()
        started = time.monotonic()
        await alice.request("awareness_set", topic=ROOM, state={"cursor": 3, "name": "A"})
        push = await pushed(watcher)
        assert time.monotonic() - started < 1.0  # "< 1 s": generous on a loaded machine
        assert push["client"] == alice_id and push["state"] == {"cursor": 3, "name": "A"}
        assert push["topic"] == ROOM
        # Conflated as on one node: a burst gives a few pushes, the newest last.
        await alice.send(
            *(alice.command("awareness_set", topic=ROOM, state={"cursor": n}) for n in range(50))
        )
        seen: list[int] = []
        async with asyncio.timeout(5):
            while not seen or seen[-1] != 49:
                seen.append((await pushed(watcher))["state"]["cursor"])
        assert seen == sorted(seen) and len(seen) <= 5, seen
        # Its connection closes: the watcher on node two is told at once.
        started = time.monotonic()
        await alice.ws.close()
        removed = await pushed(watcher)
        assert removed["removed"] is True and removed["client"] == alice_id
        assert time.monotonic() - started < 1.0
        again = await watcher.request("awareness_watch", topic=ROOM)
        assert alice_id not in {s["client"] for s in again["result"].get("clients", [])}


async def test_a_watcher_on_another_node_sees_what_a_late_state_holder_sets(
    redis_server: Callable[..., RedisServer],
) -> None:
    engine = redis_server().url
    async with (
        nodes(engine, "n1", "n2", registry_ttl=TTL) as (one, two),
        WsClient.open(two.url) as watcher,
        WsClient.open(one.url) as bob,
    ):
        reply = await watcher.request("awareness_watch", topic=ROOM)
        assert reply["result"].get("clients", []) == []
        await bob.request("awareness_set", topic=ROOM, state={"status": "here"})
        push = await pushed(watcher)
        assert push["state"] == {"status": "here"} and not push.get("removed", False)


async def test_the_states_of_a_node_killed_vanish_within_the_ttl(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    engine = redis_server().url
    env = {
        "HYBRIDBUS_NODE_ID": "doomed",
        "HYBRIDBUS_REGISTRY_TTL": str(TTL),
        "HYBRIDBUS_ANONYMOUS_TENANT": "acme",
    }
    doomed = ServerProcess("--engine", engine, "--host", "127.0.0.1", logs=tmp_path / "d.log",
                           env=env)  # fmt: skip
    try:
        await doomed.wait_listening()
        async with (
            nodes(engine, "survivor", registry_ttl=TTL) as (survivor,),
            WsClient.open(doomed.url) as member,
            WsClient.open(survivor.url) as watcher,
        ):
            await member.request("awareness_set", topic=ROOM, state={"cursor": 7})
            [member_id] = await watched(watcher, 1, seconds=5.0)
            watcher.pushes.clear()
            await doomed.kill()  # kill -9: no goodbye
            killed = time.monotonic()
            removed = await pushed(watcher, seconds=TTL + 5.0)
            elapsed = time.monotonic() - killed
            assert removed["removed"] is True and removed["client"] == member_id
            # Within the ttl by design; a second of slack for a loaded 2-core machine.
            assert elapsed < TTL + 1.0, elapsed
            again = await watcher.request("awareness_watch", topic=ROOM)
            assert again["result"].get("clients", []) == []
    finally:
        await doomed.kill()
