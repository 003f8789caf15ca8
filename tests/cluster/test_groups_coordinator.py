"""Consumer groups across nodes: one coordinator node per group (docs/groups.md, "Many nodes").

Two or three servers in this process share one real redis-server (the Redis
engine). The first operation on a group claims its lease on that node; every
other node answers NOT_COORDINATOR (1405) with the coordinator's node id and
URL: the WebSocket error carries `node` + `url`, the HTTP routes answer 307 to
it. So two nodes never both hand out a group's events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest
from tests.cluster.nodes import nodes
from tests.servers import WsClient, event
from tests.services import RedisServer

from hybridbus.client import connect
from hybridbus.client.groups import ClientGroup
from hybridbus.errors import UnknownGroup

SETTINGS = {"ack_wait": 2.0, "ordered": False}


async def test_a_join_on_a_node_that_does_not_coordinate_answers_where_the_group_is(
    redis_server: Callable[..., RedisServer],
) -> None:
    engine = redis_server().url
    async with (
        nodes(engine, "n1", "n2") as (one, two),
        WsClient.open(one.url) as first,
        WsClient.open(two.url) as second,
    ):
        reply = await first.request("group_join", group="g", pattern="a/#", settings=SETTINGS)
        assert reply["type"] == "reply", reply
        reply = await second.request("group_join", group="g", pattern="a/#", settings=SETTINGS)
        assert reply["type"] == "error", reply
        assert (reply["code"], reply["retriable"]) == (1405, True)
        assert reply["node"] == "n1"
        assert reply["url"] == f"ws://127.0.0.1:{one.port}/v1/ws"
        # Settling on the wrong node answers the same (an ack is the coordinator's).
        reply = await second.request("ack", group="g", deliveries=["e-0.1.1"])
        assert (reply["type"], reply["code"], reply["node"]) == ("error", 1405, "n1")


async def test_http_routes_of_a_group_redirect_to_its_coordinator(
    redis_server: Callable[..., RedisServer],
) -> None:
    engine = redis_server().url
    async with nodes(engine, "n1", "n2") as (one, two), aiohttp.ClientSession() as http:
        body = {"pattern": "acme/a/#", "settings": SETTINGS}
        async with http.put(f"{one.http}/v1/groups/g", json=body) as response:
            assert response.status == 201, await response.text()
        async with http.post(
            f"{one.http}/v1/topics/acme/a/1/events", json=event("e1"), headers=_ce()
        ) as response:
            assert response.status in (200, 201, 202), await response.text()
        url = f"{two.http}/v1/groups/g/fetch"
        async with http.post(url, json={"max": 5}, allow_redirects=False) as response:
            assert response.status == 307
            assert response.headers["Location"] == f"{one.http}/v1/groups/g/fetch"
            problem = await response.json(content_type=None)
            assert (problem["code"], problem["node"]) == (1405, "n1")
        # A client that follows it (307 keeps the method and the body) gets the delivery.
        async with http.post(url, json={"max": 5, "wait": 5}) as response:
            assert response.status == 200, await response.text()
            got = (await response.json())["deliveries"]
            assert [d["event"]["id"] for d in got] == ["e1"]
        # The listing answers on any node, from what is stored.
        async with http.get(f"{two.http}/v1/groups") as response:
            listed = (await response.json())["groups"]
            assert [g["name"] for g in listed] == ["g"]


def _ce() -> dict[str, str]:
    return {"content-type": "application/cloudevents+json"}


async def test_members_on_two_nodes_get_each_event_once(
    redis_server: Callable[..., RedisServer],
) -> None:
    """The Python client on a node that does not coordinate follows the 1405 to the coordinator."""
    engine = redis_server().url
    total = 40
    async with (
        nodes(engine, "n1", "n2") as (one, two),
        connect(one.url) as first,
        connect(two.url) as second,
        first.group("g", "a/#", **SETTINGS) as g1,
        second.group("g", "a/#", **SETTINGS) as g2,
    ):
        info = await one.node.groups.groups.info("acme/g")
        assert sorted(info.members) == sorted([g1.member, g2.member])
        with pytest.raises(UnknownGroup):
            two.node.groups.groups.get("acme/g")  # never loaded on n2
        for n in range(total):
            event = {"id": f"e{n}", "source": "/t", "type": "t"}
            await (first if n % 2 else second).publish(f"a/{n}", event)
        seen: dict[str, list[str]] = {"g1": [], "g2": []}

        async def consume(name: str, group: ClientGroup) -> None:
            async for d in group:
                seen[name].append(d.event.id)
                await d.ack()

        tasks = [asyncio.create_task(consume("g1", g1)), asyncio.create_task(consume("g2", g2))]
        async with asyncio.timeout(20):
            while len(seen["g1"]) + len(seen["g2"]) < total:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # nothing more comes
        for task in tasks:
            task.cancel()
        everything = seen["g1"] + seen["g2"]
        assert sorted(everything) == sorted(f"e{n}" for n in range(total))
        assert seen["g1"] and seen["g2"]  # both members took part
