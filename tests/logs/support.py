"""Helpers of the log tests: reading a log topic back over HTTP, a free port, a lossy transport."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
from tests.servers import Server

from hybridbus.core.event import Event
from hybridbus.logs import Shipper
from hybridbus.logs.transports import Transport

TENANT = "acme"  # the anonymous tenant of tests.servers.running_server


async def history(server: Server, topic: str) -> list[dict[str, Any]]:
    """Every retained event of `topic` (absolute), oldest first, as the HTTP API gives them."""
    events: list[dict[str, Any]] = []
    since = ""
    async with aiohttp.ClientSession() as http:
        while True:
            params = {"limit": "1000", **({"since": since} if since else {})}
            async with http.get(f"{server.http}/v1/topics/{topic}/events", params=params) as r:
                assert r.status == 200, await r.text()
                page = await r.json()
            events.extend(item["event"] for item in page["events"])
            since = page["position"]
            if not page["more"]:
                return events


async def flush(shipper: Shipper, timeout: float = 30.0) -> bool:
    """`shipper.flush` off the event loop (the server under test runs on it)."""
    return await asyncio.to_thread(shipper.flush, timeout)


async def close(shipper: Shipper, timeout: float = 30.0) -> bool:
    return await asyncio.to_thread(shipper.close, timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LosesFirstAck:
    """A real transport whose first successful send is reported as failed (a lost ack).

    The batch was appended; the Shipper cannot know and sends it again.
    """

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.sends = 0

    async def open(self) -> None:
        await self.inner.open()

    async def send(self, topic: str, events: list[Event]) -> None:
        await self.inner.send(topic, events)
        self.sends += 1
        if self.sends == 1:
            raise ConnectionResetError("the ack was lost on the way back")

    async def close(self) -> None:
        await self.inner.close()
