"""The WebSocket write path: frames written straight to the socket, one write pass per loop turn.

Every test runs the real application on a free loopback port; the frames are
read by `websockets` (its client, or its frame parser over raw socket bytes).
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import msgspec
import pytest
from tests.servers import JSON, MSGPACK, WsClient, event, running_server, stalled_client
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from hybridbus.gateways.websocket import Frames, frame_of

pytestmark = pytest.mark.timeout(30)


def parse_frames(data: bytes) -> list[Frame]:
    """Every server frame in `data`, parsed by `websockets` (unmasked, as a client reads)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames: list[Frame] = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:  # pragma: no cover - only complete frames are fed
            raise AssertionError("an incomplete frame")
    return frames


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536, 200_000])
def test_frame_of_is_a_final_unmasked_frame_websockets_reads(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    (text,) = parse_frames(frame_of(payload, binary=False))
    (binary,) = parse_frames(frame_of(payload, binary=True))
    assert (text.opcode, text.fin, text.data) == (Opcode.TEXT, True, payload)
    assert (binary.opcode, binary.fin, binary.data) == (Opcode.BINARY, True, payload)


def test_frames_builds_one_frame_per_payload_object() -> None:
    frames = Frames()
    payload = b'{"type":"event"}'
    first = frames.of(payload, False)
    assert frames.of(payload, False) is first  # the same bytes for the next connection
    assert frames.of(payload, True) == frame_of(payload, True)
    assert frames.of(b"other", False) == frame_of(b"other", False)


@pytest.mark.parametrize("subprotocol", [JSON, MSGPACK])
async def test_pushes_of_every_size_arrive_in_order_at_every_subscriber(subprotocol: str) -> None:
    # Payloads around the 126 and 65,536-byte length encodings of a frame header.
    sizes = [1, 60, 120, 130, 1_000, 65_400, 65_600, 150_000, 5]
    async with (
        running_server() as server,
        WsClient.open(server.url, subprotocol) as a,
        WsClient.open(server.url, subprotocol) as b,
        WsClient.open(server.url) as publisher,
    ):
        await a.request("subscribe", pattern="sizes")
        await b.request("subscribe", pattern="sizes")
        for n, size in enumerate(sizes):  # one at a time: one frame per push
            await publisher.request(
                "publish", topic="sizes", event=event(id=f"s{n}", data="y" * size)
            )
        for client in (a, b):
            pushes = await client.events(len(sizes))
            assert [p["event"]["id"] for p in pushes] == [f"s{n}" for n in range(len(sizes))]
            assert [len(p["event"]["data"]) for p in pushes] == sizes


async def test_a_reader_that_pauses_gets_everything_in_order_then_the_close_last() -> None:
    async with running_server() as server:
        subscribe = {"type": "subscribe", "id": 2, "pattern": "burst"}
        # A raw client with a small receive buffer that reads nothing for now.
        sock = await stalled_client(server.port, subscribe)
        try:
            async with WsClient.open(server.url) as publisher:
                while server.sample("hybridbus_subscriptions", transport="websocket") < 1:
                    await asyncio.sleep(0.01)
                (reader,) = [c for c in server.node._connections.values() if c.subscriptions]
                payload = "z" * 20_000
                count = 150  # ~3 MB: more than the socket buffers hold, less than the outbox bound
                blocked = False
                for n in range(count):
                    await publisher.request(
                        "publish", topic="burst", event=event(id=f"b{n}", data=payload)
                    )
                    blocked = blocked or reader.blocked
                assert blocked  # the socket filled up: writes waited for it to drain
                shutdown = asyncio.create_task(server.node.close_connections())
                data = await _read_until_closed(sock)
                await shutdown
        finally:
            sock.close()
    frames = parse_frames(data)
    assert frames[-1].opcode is Opcode.CLOSE
    assert int.from_bytes(frames[-1].data[:2], "big") == 4000
    messages: list[dict[str, Any]] = []
    for frame in frames[:-1]:
        assert frame.opcode is Opcode.TEXT and frame.fin
        messages += [json.loads(line) for line in frame.data.decode().split("\n")]
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "reply"  # the subscribe
    assert messages[-1]["type"] == "disconnect" and messages[-1]["code"] == 4000
    ids = [m["event"]["id"] for m in messages if m["type"] == "event"]
    assert ids == [f"b{n}" for n in range(count)]  # every one, in order, once


async def _read_until_closed(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    async with asyncio.timeout(20):
        while chunk := await loop.sock_recv(sock, 1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_deliveries_and_latency_are_counted_per_frame_once_per_loop_turn() -> None:
    async with (
        running_server() as server,
        WsClient.open(server.url) as a,
        WsClient.open(server.url, MSGPACK) as b,
        WsClient.open(server.url) as c,
    ):
        for client in (a, b, c):
            await client.request("subscribe", pattern="m")
        await a.send(*[a.command("publish", topic="m", event=event()) for _ in range(2)])
        for client in (a, b, c):
            await client.events(2)
        await asyncio.sleep(0.05)  # the loop turn that wrote them ended
        delivered = server.sample("hybridbus_deliveries_total", transport="websocket")
        frames = server.sample("hybridbus_publish_deliver_seconds_count")
        assert delivered == 6
        assert 3 <= frames <= 6  # one observation per frame (a frame may carry both)
        assert server.sample("hybridbus_publish_deliver_seconds_bucket", le="+Inf") == frames
        assert 0 <= server.sample("hybridbus_publish_deliver_seconds_sum") < frames * 5


async def test_a_connection_costs_no_task_while_it_is_idle_or_writes() -> None:
    async with running_server() as server:
        before = len(asyncio.all_tasks())
        async with WsClient.open(server.url) as first:
            await first.request("subscribe", pattern="idle")
            one = len(asyncio.all_tasks()) - before
            async with WsClient.open(server.url) as second, WsClient.open(server.url) as third:
                await second.request("subscribe", pattern="idle")
                await third.request("subscribe", pattern="idle")
                await first.request("publish", topic="idle", event=event())
                for client in (first, second, third):
                    await client.push()
                three = len(asyncio.all_tasks()) - before
        # Per connection: the websockets client's reader, aiohttp's handler, the
        # subscription's pump; no writer task (the node's write pass writes for all).
        assert (three - one) / 2 <= 3


def test_msgpack_frames_decode_as_arrays() -> None:
    # The session's frames for MessagePack are arrays of maps; a frame_of wraps them unchanged.
    payload = msgspec.msgpack.encode([{"type": "ping"}])
    (frame,) = parse_frames(frame_of(payload, binary=True))
    assert msgspec.msgpack.decode(frame.data) == [{"type": "ping"}]


async def test_the_last_run_of_pushes_is_shared_by_identity_never_across_streams() -> None:
    from hybridbus.core.event import Event
    from hybridbus.core.log import Delivery
    from hybridbus.proto.codec import JSON as JSON_CODEC
    from hybridbus.proto.codec import MSGPACK as MSGPACK_CODEC

    run = [
        Delivery("acme/t", p, 0, p, 1.0, Event(id=str(p), source="/s", type="x")) for p in (1, 2)
    ]
    async with running_server() as server:
        pushes = server.node.pushes
        tenant = pushes.push_batch(JSON_CODEC, "acme/t", "t", "acme/", run)
        assert pushes.push_batch(JSON_CODEC, "acme/t", "t", "acme/", list(run)) is tenant
        # The same delivery objects, another stream: never the tenant's pushes.
        admin = pushes.push_batch(JSON_CODEC, "acme/t", "acme/t", "", run)
        assert [JSON_CODEC.decode_server(m)[0].topic for m in admin] == ["acme/t"] * 2
        assert [JSON_CODEC.decode_server(m)[0].topic for m in tenant] == ["t"] * 2
        other = pushes.push_batch(JSON_CODEC, "acme/+", "+", "acme/", run)
        assert [JSON_CODEC.decode_server(m)[0].pattern for m in other] == ["+"] * 2
        binary = pushes.push_batch(MSGPACK_CODEC, "acme/t", "t", "acme/", run)
        assert [
            MSGPACK_CODEC.decode_server(MSGPACK_CODEC.frame([m]))[0].offset for m in binary
        ] == [1, 2]
        assert pushes.push_batch(JSON_CODEC, "acme/t", "t", "acme/", run[:1]) == tenant[:1]
