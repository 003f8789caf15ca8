"""Yjs documents end to end, with clients nobody here wrote: the stock Node provider.

Two `y-websocket` providers (yjs, y-websocket and ws from npm, tests/js/) edit the
same `Y.Text` concurrently — emoji, ZWJ sequences, flags and CJK — through the real
server (`tests.servers.running_server`), and must end with identical text, the
text the server's own pycrdt document holds.
"""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
from pycrdt import Text
from tests.servers import Server, running_server
from tests.yjs.node import converged, node_client, require_node

from hybridbus.serve import ROOMS_KEY

pytestmark = pytest.mark.timeout(90)


def yjs_url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}/v1/yjs"


def server_text(server: Server, room: str, tenant: str = "acme") -> str:
    loaded = server.app[ROOMS_KEY].get(f"{tenant}/docs/{room}")
    assert loaded is not None, "the room is not loaded"
    return str(loaded.doc.get("text", type=Text))


async def test_two_providers_editing_concurrently_converge_with_the_server() -> None:
    require_node()
    async with (
        running_server() as server,
        node_client(yjs_url(server), "r1") as one,
        node_client(yjs_url(server), "r1") as two,
    ):
        await asyncio.gather(one.synced(), two.synced())
        await asyncio.gather(
            one.call("edits", count=300, seed=1, pause=2),
            two.call("edits", count=300, seed=2, pause=2),
        )
        text = await converged(one, two)
        assert len(text) > 50
        assert any(ord(ch) > 0xFFFF for ch in text)  # astral-plane emoji made it through
        assert any("\u4e00" <= ch <= "\u9fff" for ch in text)  # and CJK
        async with asyncio.timeout(5):
            while server_text(server, "r1") != text:
                await asyncio.sleep(0.05)


async def test_a_late_joiner_gets_the_document_and_every_awareness_state_at_once() -> None:
    require_node()
    async with (
        running_server() as server,
        node_client(yjs_url(server), "r2") as one,
    ):
        await one.synced()
        await one.call("insert", value="héllo 😀 世界")
        await one.call("awareness", state={"user": "one", "cursor": 3})
        await asyncio.sleep(0.2)  # the server has it
        async with node_client(yjs_url(server), "r2") as late:
            seen = await late.expect(
                lambda e: (
                    e.get("event") == "awareness"
                    and any(s.get("user") == "one" for s in e["states"].values())
                )
            )
            assert seen["ms"] < 200, seen  # from the provider's creation: connect included
            await late.synced()
            assert await late.text() == "héllo 😀 世界"


async def test_a_dropped_clients_awareness_disappears_for_the_others_within_a_second() -> None:
    require_node()
    async with (
        running_server() as server,
        node_client(yjs_url(server), "r3") as one,
        node_client(yjs_url(server), "r3") as two,
    ):
        await asyncio.gather(one.synced(), two.synced())
        await one.call("awareness", state={"user": "one"})
        await two.expect(
            lambda e: (
                e.get("event") == "awareness"
                and any(s.get("user") == "one" for s in e["states"].values())
            )
        )
        killed = time.time()
        await one.kill()  # no close frame, no awareness removal of its own
        gone = await two.expect(
            lambda e: (
                e.get("event") == "awareness"
                and e["at"] / 1000 > killed
                and not any(s.get("user") == "one" for s in e["states"].values())
            )
        )
        assert gone["at"] / 1000 - killed < 1.0


async def test_a_read_only_roles_edits_are_not_applied() -> None:
    require_node()
    roles = {
        "anonymous": [{"allow": "*", "topics": "#"}],
        "viewer": [{"allow": ["subscribe", "history"], "topics": "docs/#"}],
    }
    secret = "a-test-secret-of-at-least-32-bytes-long!"

    viewer = jwt.encode(
        {
            "sub": "vera",
            "tenantid": "acme",
            "roles": ["viewer"],
            "iat": int(time.time()),
            "exp": time.time() + 300,
        },
        secret,
        algorithm="HS256",
    )
    async with (
        running_server(roles=roles, jwt_secret=secret) as server,
        node_client(yjs_url(server), "r4") as writer,
        node_client(yjs_url(server), "r4", viewer) as reader,
    ):
        await asyncio.gather(writer.synced(), reader.synced())
        await writer.call("insert", value="from the writer")
        async with asyncio.timeout(5):
            while await reader.text() != "from the writer":
                await asyncio.sleep(0.05)
        await reader.call("insert", index=0, value="NOT ")
        await writer.call("insert", value=" again")  # after the reader's edit, in order
        async with asyncio.timeout(5):
            while server_text(server, "r4") != "from the writer again":
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert await writer.text() == "from the writer again"
        assert server_text(server, "r4") == "from the writer again"
