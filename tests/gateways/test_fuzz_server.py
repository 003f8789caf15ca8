"""Fuzz the running server: arbitrary frames never crash it, every answer uses a documented code.

The sans-I/O sessions are fuzzed in tests/proto/test_fuzz.py; this sends
hypothesis-made frames over real WebSocket connections (the `websockets`
library) to a real server, after a valid connect, then checks that a fresh
client is still served.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.servers import JSON, MSGPACK, event, running_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hybridbus.errors import ErrorCode
from hybridbus.proto.codes import CloseCode

ERROR_CODES = {int(code) for code in ErrorCode}
CLOSE_CODES = {int(code) for code in CloseCode}

names = st.sampled_from(
    ["connect", "subscribe", "unsubscribe", "publish", "history", "presence", "ping", "pong", "x"]
)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
near_commands = st.fixed_dictionaries(
    {"type": names},
    optional={
        "id": st.integers(-3, 2**60) | values,
        "pattern": st.sampled_from(["docs/+", "docs/#", "a/#/b", "", "+"]) | values,
        "topic": st.sampled_from(["docs/1", "docs/+", ""]) | values,
        "event": st.just(event()) | values,
        "since": st.text(max_size=12) | values,
        "limit": st.integers(-5, 20_000) | values,
    },
)
frames = st.lists(
    st.binary(max_size=64) | st.text(max_size=64) | st.lists(near_commands, min_size=1, max_size=4),
    min_size=1,
    max_size=4,
)


def encode(frame: Any, subprotocol: str) -> str | bytes:
    if not isinstance(frame, list):
        return frame  # junk as it is
    if subprotocol == JSON:
        return "\n".join(json.dumps(message) for message in frame)
    return msgspec.msgpack.encode(frame)


async def exchange(port: int, subprotocol: str, sent: list[Any]) -> int | None:
    """Send `sent` after a connect; return the server's close code (None: still open)."""
    url = f"ws://127.0.0.1:{port}/v1/ws"
    decode = json.loads if subprotocol == JSON else msgspec.msgpack.decode
    async with connect(url, subprotocols=[subprotocol]) as ws:  # type: ignore[list-item]
        hello = {"type": "connect", "id": 1}
        await ws.send(encode([hello], subprotocol))
        await asyncio.wait_for(ws.recv(), 5)
        try:
            for frame in sent:
                await ws.send(encode(frame, subprotocol))
            while True:
                data = await asyncio.wait_for(ws.recv(), 0.2)
                messages = (
                    [decode(line) for line in data.split("\n")]  # not splitlines (U+2028)
                    if subprotocol == JSON
                    else decode(data)
                )
                for message in messages:
                    if message.get("type") == "error":
                        assert message["code"] in ERROR_CODES, message
                    if message.get("type") == "disconnect":
                        assert message["code"] in CLOSE_CODES, message
        except TimeoutError:
            return None  # the server is waiting for more: fine
        except ConnectionClosed as closed:
            return -1 if closed.rcvd is None else closed.rcvd.code


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=frames, subprotocol=st.sampled_from([JSON, MSGPACK]))
def test_arbitrary_frames_never_break_the_server(frames: list[Any], subprotocol: str) -> None:
    async def run() -> None:
        async with running_server() as server:
            code = await exchange(server.port, subprotocol, frames)
            assert code is None or code in CLOSE_CODES
            # The server still serves a well-behaved client.
            async with connect(server.url, subprotocols=[JSON]) as ws:  # type: ignore[list-item]
                await ws.send(json.dumps({"type": "connect", "id": 1}))
                reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert reply["type"] == "reply"

    asyncio.run(run())
