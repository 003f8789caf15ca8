"""A recovery backlog far larger than the per-connection bound arrives whole, on every way in.

The bound on what a server queues for one client (`max_pending_bytes`) cuts
off a reader that stopped reading (tests/gateways/test_ways_in.py). History a
client asks for by subscribing from an old position is another thing: it is
read at the client's pace, however large. Found by the code-change benchmark
(a 49 MB snapshot in 16 KB chunks): over WebSocket each page of recovered
history (1,000 events of ~22 KB) went out at once, crossed the 8 MiB bound,
the server closed with 4001 and the client, reconnecting from the same
position, got the same again — for ever.

Parametrized over the ways that hold a stream: a WebSocket (`websockets`),
SSE (httpx), gRPC Subscribe (the generated stubs), each reading with a small
pause now and then so the socket really fills.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from tests.gateways.grpc_support import GrpcClient
from tests.gateways.support import SseReader
from tests.servers import Server, WsClient, running_server

import hybridbus.client

pytestmark = pytest.mark.timeout(120)

BOUND = 1 << 20  # max_pending_bytes: 1 MiB
COUNT = 400
BODY = "x" * 30_000  # 400 x ~30 KB = ~12 MB of history, 12x the bound, ~3 pages


async def fill(server: Server) -> str:
    """Publish the history; the position before it."""
    async with hybridbus.client.connect(server.url) as client:
        start = str((await client.history("big/t", limit=0)).position)
        for first in range(0, COUNT, 50):
            await client.publish_many(
                "big/t",
                [
                    {"id": f"e{i}", "source": "/t", "type": "t", "data": {"n": i, "body": BODY}}
                    for i in range(first, first + 50)
                ],
            )
    return start


async def read_ws(server: Server, since: str) -> AsyncIterator[int]:
    async with WsClient.open(server.url) as ws:
        reply = await ws.request("subscribe", pattern="big/t", since=since)
        assert reply["type"] == "reply", reply
        while True:
            push = await ws.push("event")
            yield int(push["event"]["data"]["n"])


async def read_sse(server: Server, since: str) -> AsyncIterator[int]:
    async with (
        httpx.AsyncClient(base_url=server.http, timeout=30.0) as client,
        client.stream("GET", "/v1/sse", params={"pattern": "acme/big/t", "since": since}) as resp,
    ):
        assert resp.status_code == 200, await resp.aread()
        lines = resp.aiter_lines()

        async def next_line() -> str | None:
            return await anext(lines, None)

        reader = SseReader(next_line)
        while True:
            got = await reader.next()
            assert got is not None, "the stream ended"
            if got.event == "event":
                yield int(json.loads(got.data)["data"]["n"])


async def read_grpc(server: Server, since: str) -> AsyncIterator[int]:
    async with GrpcClient.open(server) as client:
        async for message in client.subscribe("acme/big/t", since=since):
            if message.HasField("delivery"):
                yield int(json.loads(message.delivery.event.text_data)["n"])


READERS: dict[str, Any] = {"websocket": read_ws, "sse": read_sse, "grpc": read_grpc}


@pytest.mark.parametrize("way", list(READERS))
async def test_a_backlog_twelve_times_the_bound_is_recovered_whole_and_in_order(way: str) -> None:
    async with running_server(max_pending_bytes=BOUND, grpc_port=0) as server:
        since = await fill(server)
        seen: list[int] = []
        async with asyncio.timeout(90):
            async for n in READERS[way](server, since):
                seen.append(n)
                if len(seen) % 40 == 0:
                    await asyncio.sleep(0.05)  # a reader slower than the server now and then
                if len(seen) == COUNT:
                    break
        assert seen == list(range(COUNT))
