"""The Yjs socket's own edges: refusals close 44xx at once, a stalled reader is cut.

(Expiry, revocation and the per-user count are in tests/gateways/test_ways_in.py, with
every other way in.)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket

import pytest
from pycrdt import Doc, Text
from tests.servers import running_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hybridbus.core.yjs_protocol import encode_sync_update

pytestmark = pytest.mark.timeout(60)


async def closed_with(url: str) -> int | None:
    async with asyncio.timeout(5), connect(url) as ws:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()
    return ws.close_code


async def test_refusals_close_in_the_44xx_range() -> None:
    async with running_server(anonymous_tenant=None, jwt_secret="x" * 32) as server:
        base = f"ws://127.0.0.1:{server.port}/v1/yjs"
        assert await closed_with(f"{base}/room?token=not-a-jwt") == 4401
    async with running_server() as server:  # anonymous in acme
        base = f"ws://127.0.0.1:{server.port}/v1/yjs"
        assert await closed_with(f"{base}/a+b") == 4404  # not a topic segment
        async with connect(f"{base}/room") as ws:
            await ws.send(b"\x00\x02\x05ab")  # a field running past the end of the message
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await ws.recv()
            assert ws.close_code == 4400


async def stalled(port: int, path: str) -> socket.socket:
    """A raw WebSocket client that upgrades, then never reads a byte."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    return sock


async def test_a_stalled_reader_is_cut_past_max_pending_bytes() -> None:
    bound = 256 * 1024
    async with running_server(max_pending_bytes=bound) as server:
        sock = await stalled(server.port, "/v1/yjs/big")
        try:
            url = f"ws://127.0.0.1:{server.port}/v1/yjs/big"
            async with connect(url, max_size=None) as writer:
                doc: Doc = Doc()
                text = doc.get("text", type=Text)
                for n in range(200):  # 200 updates of 32 kB: ~25 times the bound
                    before = doc.get_state()
                    text += f"{n:08d}" * 4000
                    await writer.send(encode_sync_update(doc.get_update(before)))
                    if n % 20 == 0:
                        await asyncio.sleep(0)

                def yjs_connections() -> float:
                    return server.sample("hybridbus_connections", transport="yjs")

                async with asyncio.timeout(10):
                    while yjs_connections() != 1:  # the writer only: the stalled one is gone
                        await asyncio.sleep(0.05)
        finally:
            sock.close()
