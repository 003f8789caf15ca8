"""A client's messages take effect in the order it sent them, however fast it sends;
what arrives together is stored merged (one log event a batch), every update kept.

A plain Python client (aiohttp, pycrdt, the y-protocols bytes of
`core.yjs_protocol`) sends thousands of one-character updates as fast as
its socket takes them, then a sync step 1: the sync step 2 it gets back must
hold every one of them (y-websocket servers answer in order; the benchmark's
writer and any provider that resyncs rely on it), and so must a joiner's.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from pycrdt import Doc, Text
from tests.servers import Server, running_server

from hybridbus.core.yjs_protocol import (
    SyncStep2,
    decode_messages,
    encode_sync_step1,
    encode_sync_update,
)
from hybridbus.serve import ROOMS_KEY
from hybridbus.server.rooms import UPDATE_TYPE

pytestmark = pytest.mark.timeout(90)

EDITS = 3000


def _updates(count: int) -> tuple[list[bytes], str]:
    doc: Doc = Doc()
    doc["text"] = text = Text()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(count):
        text.insert(len(text), chr(ord("a") + i % 26))
    return updates, str(text)


async def _step2(ws: aiohttp.ClientWebSocketResponse) -> bytes:
    """The next sync step 2 `ws` receives (other messages skipped)."""
    async with asyncio.timeout(30):
        async for message in ws:
            assert message.type is aiohttp.WSMsgType.BINARY, message
            for decoded in decode_messages(message.data):
                if isinstance(decoded, SyncStep2):
                    return decoded.update
    raise AssertionError("the socket closed before a sync step 2")


def _text_of(update: bytes) -> str:
    doc: Doc = Doc()
    doc["text"] = text = Text()
    doc.apply_update(update)
    return str(text)


async def _connect(
    session: aiohttp.ClientSession, server: Server, room: str
) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(f"ws://127.0.0.1:{server.port}/v1/yjs/{room}", max_msg_size=0)
    await ws.send_bytes(encode_sync_step1(Doc().get_state()))
    await _step2(ws)  # joined: the (empty) document
    return ws


@pytest.mark.parametrize("engine", ["memory://", "sqlite"])
async def test_a_sync_step_1_after_many_updates_is_answered_with_all_of_them(
    engine: str, tmp_path: object
) -> None:
    updates, expected = _updates(EDITS)
    url = "memory://" if engine == "memory://" else f"sqlite:///{tmp_path}/bus.db"
    async with running_server(engine=url) as server, aiohttp.ClientSession() as session:
        writer = await _connect(session, server, "fast")
        for update in updates:  # one WebSocket message each, as fast as the socket takes them
            await writer.send_bytes(encode_sync_update(update))
        await writer.send_bytes(encode_sync_step1(Doc().get_state()))
        assert _text_of(await _step2(writer)) == expected
        joiner = await _connect(session, server, "fast")
        await joiner.send_bytes(encode_sync_step1(Doc().get_state()))
        assert _text_of(await _step2(joiner)) == expected


async def test_updates_and_a_sync_step_1_in_one_message_are_answered_in_order() -> None:
    updates, expected = _updates(200)
    async with running_server() as server, aiohttp.ClientSession() as session:
        writer = await _connect(session, server, "one")
        wire = b"".join(encode_sync_update(update) for update in updates)
        await writer.send_bytes(wire + encode_sync_step1(Doc().get_state()))
        assert _text_of(await _step2(writer)) == expected


async def _logged(server: Server, room: str) -> list[bytes]:
    """The Yjs updates the room's log topic holds, in order (one per appended event)."""
    rooms = server.app[ROOMS_KEY]
    topic = f"acme/docs/{room}"
    loaded = rooms.get(topic)
    assert loaded is not None
    out: list[bytes] = []
    since = None
    while True:
        page = await rooms.bus.history(topic, since, 1000)
        out += [bytes(d.event.data) for d in page.deliveries if d.event.type == UPDATE_TYPE]
        since = page.position
        if not page.more:
            return out


async def test_a_burst_is_stored_merged_and_the_log_holds_every_update(tmp_path: object) -> None:
    """Updates queued while an append is in flight go to the log as one merged event."""
    updates, expected = _updates(EDITS)
    url = f"sqlite:///{tmp_path}/bus.db"
    async with running_server(engine=url) as server, aiohttp.ClientSession() as session:
        writer = await _connect(session, server, "burst")
        for update in updates:
            await writer.send_bytes(encode_sync_update(update))
        await writer.send_bytes(encode_sync_step1(Doc().get_state()))
        assert _text_of(await _step2(writer)) == expected
        logged = await _logged(server, "burst")
        assert len(logged) < EDITS / 10, len(logged)  # was one event per update
        assert _text_of_all(logged) == expected


async def test_a_burst_over_the_event_size_is_stored_in_several_merged_events(
    tmp_path: object,
) -> None:
    """A batch is merged in groups of at most half `max_event_size`: every one is stored."""
    updates, expected = _updates(EDITS)
    limit = 2048
    url = f"sqlite:///{tmp_path}/bus.db?max_event_size={limit}"
    async with running_server(engine=url) as server, aiohttp.ClientSession() as session:
        writer = await _connect(session, server, "big")
        for update in updates:
            await writer.send_bytes(encode_sync_update(update))
        await writer.send_bytes(encode_sync_step1(Doc().get_state()))
        assert _text_of(await _step2(writer)) == expected
        logged = await _logged(server, "big")
        assert sum(map(len, updates)) // limit < len(logged) < EDITS / 2, len(logged)
        assert max(map(len, logged)) <= limit
        assert _text_of_all(logged) == expected
        assert not writer.closed


async def test_an_update_that_does_not_decode_in_a_burst_costs_only_itself() -> None:
    """A group that does not merge is stored update by update: the bad one closes its
    sender 4400, the others (before and after it, in the same frame) are applied."""
    updates, expected = _updates(200)
    async with running_server() as server, aiohttp.ClientSession() as session:
        writer = await _connect(session, server, "bad")
        wire = [encode_sync_update(update) for update in updates]
        wire.insert(100, encode_sync_update(b"\xff\xff\xff"))
        await writer.send_bytes(b"".join(wire))
        async with asyncio.timeout(10):
            async for _ in writer:
                pass
        assert writer.close_code == 4400
        joiner = await _connect(session, server, "bad")
        await joiner.send_bytes(encode_sync_step1(Doc().get_state()))
        assert _text_of(await _step2(joiner)) == expected


def _text_of_all(updates: list[bytes]) -> str:
    doc: Doc = Doc()
    doc["text"] = text = Text()
    for update in updates:
        doc.apply_update(update)
    return str(text)
