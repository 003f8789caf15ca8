"""State topics across nodes: two servers on one real Redis engine (hub/states.py).

The log is the truth: patches sent to either node converge to one document
and one version on both; an `if_version` race across the nodes has exactly
one winner (the order the log gave the patches); a subscriber on one node
gets the other node's patches in order (docs/collaboration.md, "State topics").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.cluster.nodes import nodes
from tests.servers import WsClient
from tests.services import RedisServer


async def opened(client: WsClient, topic: str) -> dict[str, Any]:
    reply = await client.request("state_subscribe", topic=topic)
    assert reply["type"] == "reply", reply
    result: dict[str, Any] = reply["result"]
    return result


async def converged(one: WsClient, two: WsClient, topic: str, version: int) -> dict[str, Any]:
    """The document both nodes answer once each holds `version` (a fold follows the log)."""
    async with asyncio.timeout(5):
        while True:
            a, b = await opened(one, topic), await opened(two, topic)
            if a["version"] == b["version"] == version:
                assert a["document"] == b["document"]
                document: dict[str, Any] = a["document"]
                return document
            await asyncio.sleep(0.02)


async def test_patches_on_two_nodes_converge_and_a_subscriber_gets_them_in_order(
    redis_server: Callable[..., RedisServer],
) -> None:
    engine = redis_server().url
    async with (
        nodes(engine, "n1", "n2") as (one, two),
        WsClient.open(one.url) as on_one,
        WsClient.open(two.url) as on_two,
        WsClient.open(two.url) as reader,
    ):
        first = await on_one.request("state_patch", topic="boards/1", patch={"title": "a"})
        assert first["result"] == {"version": 1}
        start = await opened(reader, "boards/1")
        assert start["version"] == 1 and start["document"] == {"title": "a"}
        # Patches from both nodes at once: five in one frame to each.

        async def patches(client: WsClient, numbers: range) -> list[dict[str, Any]]:
            commands = [
                client.command("state_patch", topic="boards/1", patch={f"k{n}": n, "last": n})
                for n in numbers
            ]
            await client.send(*commands)
            return [await client.answer(c["id"]) for c in commands]

        a, b = await asyncio.gather(patches(on_one, range(5)), patches(on_two, range(5, 10)))
        sent = [*a, *b]
        versions = sorted(s["result"]["version"] for s in sent)
        assert versions == list(range(2, 12))  # each patch its own version, none lost
        pushes = [await asyncio.wait_for(reader.push("state"), 5) for _ in range(10)]
        assert [p["version"] for p in pushes] == list(range(2, 12))  # in order, A's included
        document = await converged(on_one, on_two, "boards/1", 11)
        # The reader's fold of the pushes (flat merge patches) is the document both hold.
        folded = dict(start["document"])
        for push in pushes:
            folded.update(push["patch"])
        assert folded == document
        assert {f"k{n}" for n in range(10)} <= document.keys()


async def test_an_if_version_race_across_nodes_has_exactly_one_winner(
    redis_server: Callable[..., RedisServer],
) -> None:
    engine = redis_server().url
    async with (
        nodes(engine, "n1", "n2") as (one, two),
        WsClient.open(one.url) as setup,
        WsClient.open(two.url) as watcher,
    ):
        await setup.request("state_patch", topic="race", patch={"owner": None})
        await converged(setup, watcher, "race", 1)  # both nodes hold version 1

        async def racer(n: int) -> dict[str, Any]:
            async with WsClient.open((one if n % 2 else two).url) as client:
                return await client.request(
                    "state_patch", topic="race", patch={"owner": f"c{n}"}, if_version=1
                )

        answers = await asyncio.gather(*(racer(n) for n in range(8)))
        winners = [a for a in answers if a["type"] == "reply"]
        assert len(winners) == 1, answers
        assert winners[0]["result"]["version"] == 2
        assert all(a["code"] == 1640 for a in answers if a["type"] == "error"), answers
        document = await converged(setup, watcher, "race", 2)
        assert document["owner"] in {f"c{n}" for n in range(8)}
