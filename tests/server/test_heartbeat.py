"""The node's heartbeat over real sockets: each pass ticks only the connections due.

Counted, not timed: how many connections the ticker touched, against the
N x tick / interval a timing wheel should touch, while every connection is
still pinged every interval.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest
from tests.servers import JSON, running_server

pytestmark = pytest.mark.timeout(60)

N = 200
INTERVAL = 1.0


async def _open(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(url, protocols=(JSON,))
    await ws.send_str('{"type":"connect","id":1}')
    assert '"reply"' in await ws.receive_str()
    return ws


async def _answer_pings(ws: aiohttp.ClientWebSocketResponse, pings: list[int], n: int) -> None:
    """Read until closed, answering every server ping with a pong (and counting them)."""
    async for message in ws:
        if message.type is aiohttp.WSMsgType.TEXT:
            count = message.data.count('{"type":"ping"}')
            if count:
                pings[n] += count
                await ws.send_str('{"type":"pong"}')


async def test_a_pass_ticks_only_the_connections_due_and_every_one_is_pinged() -> None:
    async with (
        running_server(ping_interval=INTERVAL) as server,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
    ):
        node = server.node
        tick = node.tick_interval
        sockets = await asyncio.gather(*(_open(session, server.url) for _ in range(N)))
        pings = [0] * N
        readers = [
            asyncio.create_task(_answer_pings(ws, pings, n)) for n, ws in enumerate(sockets)
        ]
        try:
            await asyncio.sleep(4 * tick)  # the connects' own look at each connection is past
            passes, ticked = node.heartbeat_passes, node.heartbeat_ticked
            node.heartbeat_most = 0
            window = 2.5 * INTERVAL
            await asyncio.sleep(window)
            passes = node.heartbeat_passes - passes
            ticked = node.heartbeat_ticked - ticked
            assert passes >= 10  # the ticker ran (at 1/tick a second when the loop keeps up)
            # Each connection about once per interval (a ticker walking all of them
            # every pass would have touched N x passes).
            assert ticked <= 2 * N * window / INTERVAL + N
            assert ticked < N * passes / 5
            # Connected together, they ping at spread times: no pass ticks them all.
            assert node.heartbeat_most <= N // 4
            assert min(pings) >= 2  # every connection pinged every interval
            assert node.connections == N
            assert node.heartbeat_waiting == N
        finally:
            for reader in readers:
                reader.cancel()
            for ws in sockets:
                with contextlib.suppress(Exception):
                    await ws.close()
        assert server.sample("hybridbus_disconnects_total", code="4002") == 0


async def test_without_a_heartbeat_connected_sessions_leave_the_ticker_alone() -> None:
    async with (
        running_server(ping_interval=0, connect_timeout=5.0) as server,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
    ):
        node = server.node
        idle = await session.ws_connect(server.url, protocols=(JSON,))  # no connect yet
        assert node.heartbeat_waiting == 1  # its connect timeout
        connected = [await _open(session, server.url) for _ in range(3)]
        await asyncio.sleep(4 * node.tick_interval)
        assert node.heartbeat_waiting == 1  # only the one that has not connected
        await idle.close()
        for ws in connected:
            await ws.close()
        for _ in range(100):
            if node.heartbeat_waiting == 0:
                break
            await asyncio.sleep(0.02)
        assert node.heartbeat_waiting == 0  # a closed connection leaves the wheel
