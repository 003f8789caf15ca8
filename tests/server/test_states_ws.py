"""State topics over the real server and a third-party WebSocket client (`websockets`):
snapshot then patches in order, resume after a version, compare-and-set (a race of many:
exactly one wins), Lamport order, and the document kept across a restart on sqlite."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.servers import WsClient, running_server


async def test_a_subscriber_gets_a_snapshot_then_every_patch_in_order() -> None:
    async with (
        running_server() as server,
        WsClient.open(server.url) as writer,
        WsClient.open(server.url) as reader,
    ):
        first = await writer.request("state_patch", topic="boards/1", patch={"title": "a"})
        assert first["result"] == {"version": 1}
        opened = await reader.request("state_subscribe", topic="boards/1")
        assert opened["result"]["snapshot"] is True
        assert opened["result"]["document"] == {"title": "a"}
        assert opened["result"]["version"] == 1
        for n in range(2, 6):
            done = await writer.request("state_patch", topic="boards/1", patch={"n": n})
            assert done["result"]["version"] == n
        pushes = [await reader.push("state") for _ in range(4)]
        assert [p["version"] for p in pushes] == [2, 3, 4, 5]
        assert [p["patch"] for p in pushes] == [{"n": n} for n in range(2, 6)]
        # A resume from version 3 gets exactly the patches after it.
        async with WsClient.open(server.url) as late:
            resumed = await late.request("state_subscribe", topic="boards/1", since=3)
            assert resumed["result"].get("snapshot", False) is False
            assert resumed["result"]["patches"] == [[4, {"n": 4}], [5, {"n": 5}]]
            # And from a version the server never had: a snapshot.
            odd = await late.request("state_subscribe", topic="boards/1", since=99)
            assert odd["result"]["snapshot"] is True
            assert odd["result"]["document"] == {"title": "a", "n": 5}


async def test_if_version_is_compare_and_set() -> None:
    async with running_server() as server, WsClient.open(server.url) as client:
        await client.request("state_patch", topic="s", patch={"a": 1})
        stale = await client.request("state_patch", topic="s", patch={"a": 2}, if_version=0)
        assert stale["type"] == "error" and stale["code"] == 1640
        ok = await client.request("state_patch", topic="s", patch={"a": 2}, if_version=1)
        assert ok["result"]["version"] == 2


async def test_a_concurrent_compare_and_set_race_has_exactly_one_winner() -> None:
    async with (
        running_server() as server,
        WsClient.open(server.url) as setup,
    ):
        await setup.request("state_patch", topic="race", patch={"owner": None})

        async def racer(n: int) -> dict[str, Any]:
            async with WsClient.open(server.url) as client:
                return await client.request(
                    "state_patch", topic="race", patch={"owner": f"c{n}"}, if_version=1
                )

        answers = await asyncio.gather(*(racer(n) for n in range(8)))
        winners = [a for a in answers if a["type"] == "reply"]
        assert len(winners) == 1 and winners[0]["result"]["version"] == 2
        assert all(a["code"] == 1640 for a in answers if a["type"] == "error")
        async with WsClient.open(server.url) as reader:
            doc = await reader.request("state_subscribe", topic="race")
            assert doc["result"]["version"] == 2


async def test_lamport_ordered_patches_converge_whatever_the_arrival_order() -> None:
    async with running_server() as server, WsClient.open(server.url) as client:
        await client.request("state_subscribe", topic="l")
        await client.request("state_patch", topic="l", patch={"x": "second"}, lamport=10)
        late = await client.request(
            "state_patch", topic="l", patch={"x": "first", "y": 1}, lamport=5
        )
        assert late["result"]["version"] == 2
        pushes = [await client.push("state") for _ in range(2)]
        assert pushes[1]["patch"] == {"y": 1}  # the late one only adds what nothing later set
        snapshot = await client.request("state_subscribe", topic="l")
        assert snapshot["result"]["document"] == {"x": "second", "y": 1}


async def test_the_document_survives_a_restart_on_sqlite(tmp_path: Path) -> None:
    engine = f"sqlite://{tmp_path}"
    async with (
        running_server(engine=engine, state_snapshot_every=3) as server,
        WsClient.open(server.url) as client,
    ):
        for n in range(7):  # two snapshots on the way, patches after the last one
            await client.request("state_patch", topic="keep", patch={f"k{n}": n})
        await client.request("state_patch", topic="keep", patch={"k0": None})
        async with asyncio.timeout(10):  # the snapshots are written in the background
            while len((await server.node.bus.history("$state/acme/keep")).deliveries) < 2:
                await asyncio.sleep(0.05)
    async with running_server(engine=engine) as server, WsClient.open(server.url) as client:
        doc = await client.request("state_subscribe", topic="keep")
        assert doc["result"]["version"] == 8
        assert doc["result"]["document"] == {f"k{n}": n for n in range(1, 7)}
        more = await client.request("state_patch", topic="keep", patch={"z": 1}, if_version=8)
        assert more["result"]["version"] == 9
