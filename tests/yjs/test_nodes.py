"""Yjs rooms on several nodes of one Redis engine, with the stock Node provider.

Providers on different nodes edit one room and converge with every node's own
document; their cursors cross nodes (the awareness relay, server/rooms_relay.py,
docs/collaboration.md "Many nodes"), a dropped client's and a killed node's go;
a provider whose node is killed (SIGKILL) goes on on another node and nothing
acknowledged is lost. Yjs updates count against the publish rate: over it, they
are delayed (the socket is not read), never dropped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Text
from tests.cluster.nodes import nodes
from tests.servers import Server, ServerProcess, WsClient, running_server
from tests.services import RedisServer
from tests.yjs.node import converged, node_client, require_node

from hybridbus.serve import ROOMS_KEY

pytestmark = pytest.mark.timeout(90)

CONFIG = 'anonymous_tenant = "acme"\n[[roles.anonymous]]\nallow = "*"\ntopics = "#"\n'


def yjs(server: Server | ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.port}/v1/yjs"


def server_text(server: Server, room: str) -> str | None:
    loaded = server.app[ROOMS_KEY].get(f"acme/docs/{room}")
    return None if loaded is None else str(loaded.doc.get("text", type=Text))


def shows(user: str, present: bool = True, after: float = 0.0) -> Callable[[dict[str, Any]], bool]:
    """An awareness event (after `after`, Unix seconds) where `user` is (or is not) seen."""

    def match(event: dict[str, Any]) -> bool:
        if event.get("event") != "awareness" or event["at"] / 1000 <= after:
            return False
        return any(s.get("user") == user for s in event["states"].values()) is present

    return match


async def test_providers_on_two_nodes_converge_with_each_nodes_document(
    redis_server: Callable[..., RedisServer],
) -> None:
    require_node()
    async with (
        nodes(redis_server().url + "?prefix=conv", "a", "b") as (a, b),
        node_client(yjs(a), "n1") as one,
        node_client(yjs(b), "n1") as two,
    ):
        await asyncio.gather(one.synced(), two.synced())
        await asyncio.gather(
            one.call("edits", count=300, seed=11, pause=2),
            two.call("edits", count=300, seed=12, pause=2),
        )
        text = await converged(one, two)
        assert len(text) > 50 and any(ord(ch) > 0xFFFF for ch in text)
        async with asyncio.timeout(10):
            while server_text(a, "n1") != text or server_text(b, "n1") != text:
                await asyncio.sleep(0.05)


async def test_cursors_cross_nodes_and_a_dropped_clients_goes_within_a_second(
    redis_server: Callable[..., RedisServer],
) -> None:
    require_node()
    async with (
        nodes(redis_server().url + "?prefix=aw", "a", "b", "c") as (a, b, c),
        node_client(yjs(a), "n2") as one,
        node_client(yjs(b), "n2") as two,
    ):
        await asyncio.gather(one.synced(), two.synced())
        sent = time.time()
        await one.call("awareness", state={"user": "one"})
        seen = await two.expect(shows("one"))
        assert seen["at"] / 1000 - sent < 1.0, seen
        await two.call("awareness", state={"user": "two"})
        await one.expect(shows("two"))

        # A late joiner on a node where the room was not loaded: both cursors, at once.
        async with node_client(yjs(c), "n2") as late:
            both = await late.expect(lambda e: shows("one")(e) and shows("two")(e))
            assert both["ms"] < 1000, both  # from the provider's creation: connect included

            killed = time.time()
            await one.kill()  # no close frame, no removal of its own
            for other in (two, late):
                gone = await other.expect(shows("one", present=False, after=killed))
                assert gone["at"] / 1000 - killed < 1.0, gone
            states = (await late.call("states"))["states"].values()
            assert [s.get("user") for s in states] == ["two"]  # the live one's stays


@contextlib.asynccontextmanager
async def serving(tmp: Path, engine: str, *names: str) -> Any:
    """`hybridbus serve` per name on `engine`, `registry_ttl` 1 s; killed at the end."""
    config = tmp / "nodes.toml"
    config.write_text(CONFIG)
    processes: list[ServerProcess] = []
    try:
        for name in names:
            processes.append(
                ServerProcess(
                    *("--config", str(config), "--engine", engine),
                    logs=tmp / f"{name}.log",
                    env={"HYBRIDBUS_NODE_ID": name, "HYBRIDBUS_REGISTRY_TTL": "1"},
                )
            )
        for process in processes:
            await process.wait_listening()
        yield processes
    finally:
        for process in processes:
            await process.kill()


async def test_a_killed_nodes_cursors_go_and_its_provider_goes_on_elsewhere(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    require_node()
    async with (
        serving(tmp_path, redis_server().url + "?prefix=kill", "a", "b") as (a, b),
        node_client(yjs(a), "doc") as writer,
        node_client(yjs(b), "doc") as observer,
    ):
        await asyncio.gather(writer.synced(), observer.synced())
        await writer.call("awareness", state={"user": "writer"})
        await observer.expect(shows("writer"))
        typing = asyncio.create_task(writer.call("type", count=1500, pause=2))
        async with asyncio.timeout(20):
            while len(await observer.text()) < 200:
                await asyncio.sleep(0.02)
        killed = time.time()
        await a.kill()  # kill -9 mid-session: the writer is still typing
        seen = await observer.text()  # broadcast by b: in the log, acknowledged
        gone = await observer.expect(shows("writer", present=False, after=killed))
        # registry_ttl = 1 s: a node silent for 0.75 s is dropped, checked every 0.25 s.
        assert gone["at"] / 1000 - killed < 2.0, gone

        await writer.call("server", url=yjs(b))  # its next reconnection goes to b
        await typing  # it typed on while disconnected
        typed = "".join(f"{i} " for i in range(1500))
        assert await writer.text() == typed
        assert await converged(writer, observer, timeout=20) == typed
        assert typed.startswith(seen) and len(seen) >= 200
        await observer.expect(shows("writer", after=killed))  # its cursor is back, from b
        async with node_client(yjs(b), "doc") as fresh:
            await fresh.synced()
            assert await fresh.text() == typed


async def arrivals(client: WsClient, times: list[float], updates: list[bytes]) -> None:
    """Record when each event push arrives (monotonic seconds) and its Yjs update."""
    while True:
        while client.pushes:
            push = client.pushes.pop(0)
            if push["type"] == "event":
                times.append(time.monotonic())
                updates.append(base64.b64decode(push["event"]["data_base64"]))
        await client.read()


def text_of(updates: list[bytes]) -> str:
    doc: Doc = Doc()
    doc["text"] = text = Text()
    for update in updates:
        doc.apply_update(update)
    return str(text)


async def test_updates_count_against_the_publish_rate_and_are_delayed_not_dropped() -> None:
    require_node()
    rate, burst, count = 10.0, 5.0, 30
    async with (
        running_server(publish_rate=rate, publish_burst=burst) as server,
        node_client(yjs(server), "rl") as writer,
        node_client(yjs(server), "rl") as reader,
        WsClient.open(server.url) as watcher,
    ):
        await asyncio.gather(writer.synced(), reader.synced())
        answer = await watcher.request("subscribe", pattern="docs/rl")
        assert answer["type"] == "reply", answer
        times: list[float] = []
        logged: list[bytes] = []
        recording = asyncio.create_task(arrivals(watcher, times, logged))
        try:
            await asyncio.sleep(1.0)  # the bucket fills again after the two syncs
            started = time.monotonic()
            await writer.call("type", count=count)  # every update at once
            typed = "".join(f"{i} " for i in range(count))
            async with asyncio.timeout(15):
                while await reader.text() != typed:
                    await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started
        finally:
            recording.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recording
        # What arrived together is one appended event (merged), and the log holds every update.
        assert text_of(logged) == typed
        # The burst at once, the rest at the rate: (30 - 5) / 10 s, less a lenient margin.
        assert elapsed >= 0.8 * (count - burst) / rate, elapsed
        for at in times:  # no second holds more than the rate allows (plus the burst)
            assert sum(at <= t < at + 1.0 for t in times) <= rate + burst + 1, times
        assert await writer.text() == typed


async def test_a_node_alone_has_no_relay() -> None:
    async with running_server() as server:
        assert server.app[ROOMS_KEY].relay is None
