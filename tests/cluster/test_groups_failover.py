"""A group's coordinator dies or pauses: another node takes the group over (docs/groups.md).

Real `hybridbus serve` subprocesses and in-process servers on one real
redis-server. `kill -9` of the coordinating node: its lease runs out after
`group_lease_ttl`, the next join on another node claims the group and loads
it from Redis — nothing is lost, and nothing acked is handed out again. A
node that kept believing it held a lease it lost (a pause past the ttl) has
its writes refused by their fence, and drops the group.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.cluster.nodes import nodes
from tests.servers import ServerProcess, WsClient
from tests.services import RedisServer

import hybridbus
from hybridbus.client import connect
from hybridbus.client.groups import ClientGroup
from hybridbus.errors import NotCoordinator

TTL = 2.0
SETTINGS = {"ack_wait": 30.0, "ordered": False}


def note(n: int) -> dict[str, str]:
    return {"id": f"e{n}", "source": "/t", "type": "t"}


async def test_the_coordinator_killed_hands_its_group_to_another_node(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    engine = redis_server().url
    env = {
        "HYBRIDBUS_NODE_ID": "a",
        "HYBRIDBUS_GROUP_LEASE_TTL": str(TTL),
        "HYBRIDBUS_REGISTRY_TTL": str(TTL),
        "HYBRIDBUS_ANONYMOUS_TENANT": "acme",
    }
    a = ServerProcess("--engine", engine, "--host", "127.0.0.1", logs=tmp_path / "a.log", env=env)
    try:
        await a.wait_listening()
        async with (
            nodes(engine, "b", group_lease_ttl=TTL, registry_ttl=TTL) as (b,),
            connect(a.url) as on_a,
            connect(b.url) as on_b,
            # a coordinates (its member joined first); b's member follows it there.
            on_a.group("g", "t/#", **SETTINGS) as first,
            on_b.group("g", "t/#") as g,
        ):
            acked: list[str] = []
            for n in range(10):
                await on_b.publish(f"t/{n}", note(n))
            await take(g, first, acked, 10)
            await a.kill()  # kill -9: no lease released, no goodbye
            for n in range(10, 20):
                await on_b.publish(f"t/{n}", note(n))
            again: list[str] = []
            async with asyncio.timeout(30):  # the lease lapses (2 s), b claims the group
                while len(again) < 10:
                    for d in await g.fetch(10, wait=1):
                        again.append(d.event.id)
                        await d.ack()
            assert sorted(again) == sorted(f"e{n}" for n in range(10, 20))
            assert not set(again) & set(acked)  # nothing acked is handed out again
            assert b.node.groups.groups.get("acme/g").members  # b coordinates it now
    finally:
        await a.kill()


async def take(g: ClientGroup, other: ClientGroup, acked: list[str], count: int) -> None:
    """Ack what either member gets until `count` events are acked."""
    async with asyncio.timeout(20):
        while len(acked) < count:
            for member in (g, other):
                for d in await member.fetch(10, wait=0.1):
                    await d.ack()
                    acked.append(d.event.id)


async def test_a_node_that_lost_its_lease_cannot_write_the_group(
    redis_server: Callable[..., RedisServer],
) -> None:
    """A paused coordinator (its renewals stopped past the ttl) resumes: its ack is fenced off."""
    url = redis_server().url
    async with hybridbus.open(url) as one, hybridbus.open(url) as two:
        for bus in (one, two):
            bus.groups.coordination.ttl = 1.0
        async with one.group("g", "acme/t/#", **SETTINGS) as member:
            await one.publish("acme/t/1", note(1))
            await one.publish("acme/t/2", note(2))
            first = await member.fetch(2, wait=5)
            assert len(first) == 2
            await first[0].ack()
            coordination = one.groups.coordination
            assert coordination._task is not None
            coordination._task.cancel()  # paused: no renewal, no deadline of its own
            await asyncio.sleep(1.5)  # past the ttl: the lease lapsed in Redis
            group = await two.groups.acquire("acme/g")  # another node claims it, loads it
            assert group.fence is not None and group.fence > (coordination.fence("acme/g") or 0)
            with pytest.raises(NotCoordinator):
                await first[1].ack()  # the old fence: refused in the write's own script
            assert member.closed  # one dropped the group: its member ended
            with pytest.raises(NotCoordinator):
                await member.fetch(1, wait=0)
            # The second event was never acked: the new coordinator hands it out again.
            async with two.group("g", "acme/t/#") as other:
                got = await other.fetch(5, wait=5)
                assert [d.event.id for d in got] == ["e2"]


async def test_a_sigstopped_coordinator_resumed_after_its_lease_moved_cannot_ack(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    engine = redis_server().url
    env = {
        "HYBRIDBUS_NODE_ID": "a",
        "HYBRIDBUS_GROUP_LEASE_TTL": str(TTL),
        "HYBRIDBUS_ANONYMOUS_TENANT": "acme",
    }
    a = ServerProcess("--engine", engine, "--host", "127.0.0.1", logs=tmp_path / "a.log", env=env)
    try:
        await a.wait_listening()
        async with (
            nodes(engine, "b", group_lease_ttl=TTL) as (b,),
            WsClient.open(a.url) as on_a,
            connect(b.url) as on_b,
        ):
            join = {"group": "g", "pattern": "t/#", "settings": SETTINGS, "member": "x"}
            assert (await on_a.request("group_join", **join))["type"] == "reply"
            await on_b.publish("t/1", note(1))
            held = await on_a.push("group_event")
            a.signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(TTL + 1.0)  # its lease lapses in Redis
                async with on_b.group("g", "t/#") as g:  # b claims the group, loads it
                    again = await g.fetch(1, wait=10)
                    assert [d.event.id for d in again] == ["e1"]  # leased, unacked: again
                    ack = on_a.command("ack", group="g", deliveries=[held["delivery"]])
                    await on_a.send(ack)  # a holds it, unread, while it is stopped
            finally:
                a.signal(signal.SIGCONT)
            answer = await on_a.answer(ack["id"])
            assert (answer["type"], answer["code"]) == ("error", 1405)  # fenced off, or refused
            assert b.node.groups.groups.get("acme/g").fence is not None  # b holds it still
            dropped = [r for r in a.logs() if "no longer coordinates" in str(r.get("message"))]
            assert dropped, "a did not drop the group it lost"
    finally:
        await a.kill()
