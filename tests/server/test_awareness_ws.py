"""Awareness over the real server and a third-party WebSocket client (`websockets`):
a watcher gets every state at once, updates conflated to the rate with the newest last,
a `removed` push at once when a connection closes, limits answered with their codes."""

from __future__ import annotations

import asyncio
import time

from tests.servers import Closed, WsClient, running_server


async def test_a_watcher_gets_current_states_at_once_then_updates_and_removal() -> None:
    async with (
        running_server() as server,
        WsClient.open(server.url) as alice,
        WsClient.open(server.url) as bob,
    ):
        reply = await alice.request(
            "awareness_set", topic="docs/1", state={"cursor": {"pos": 3}, "status": "typing"}
        )
        assert reply["type"] == "reply" and reply["result"]["lamport"] >= 1
        watched = await bob.request("awareness_watch", topic="docs/1")
        [state] = watched["result"]["clients"]
        assert state["state"] == {"cursor": {"pos": 3}, "status": "typing"}
        alice_id = state["client"]
        await alice.request("awareness_set", topic="docs/1", state={"status": None})
        push = await bob.push("awareness")
        assert push["client"] == alice_id and push["state"] == {"cursor": {"pos": 3}}
        assert push["topic"] == "docs/1" and push["lamport"] > state["lamport"]
        started = time.monotonic()
        await alice.ws.close()
        removed = await bob.push("awareness")
        assert removed["removed"] is True and removed["client"] == alice_id
        assert time.monotonic() - started < 1.0  # "at once": generous for a loaded machine
        again = await bob.request("awareness_watch", topic="docs/1")
        assert again["result"].get("clients", []) == []


async def test_updates_are_conflated_to_the_rate_and_the_newest_always_arrives() -> None:
    async with (
        running_server(awareness_rate=5.0) as server,
        WsClient.open(server.url) as writer,
        WsClient.open(server.url) as reader,
    ):
        await reader.request("awareness_watch", topic="room")
        # 50 updates in one go: far more than 5/s
        await writer.send(
            *(writer.command("awareness_set", topic="room", state={"cursor": n}) for n in range(50))
        )
        seen: list[tuple[float, int]] = []
        async with asyncio.timeout(10):
            while not seen or seen[-1][1] != 49:
                push = await reader.push("awareness")
                seen.append((time.monotonic(), push["state"]["cursor"]))
        assert len(seen) <= 3  # the first at once, the newest after 1/5 s, maybe one between
        assert [n for _, n in seen] == sorted(n for _, n in seen)
        # and nothing more comes: the last state was sent once
        await reader.request("ping")
        assert [p for p in reader.pushes if p["type"] == "awareness"] == []


async def test_limits_are_refused_with_their_codes_and_a_writer_may_need_subscribe() -> None:
    async with (
        running_server(awareness_max_keys=2, awareness_max_bytes=64) as server,
        WsClient.open(server.url) as client,
    ):
        too_many = await client.request("awareness_set", topic="t", state={"a": 1, "b": 2, "c": 3})
        assert too_many["type"] == "error" and too_many["code"] == 1643
        too_big = await client.request("awareness_set", topic="t", state={"a": "x" * 100})
        assert too_big["type"] == "error" and too_big["code"] == 1644
        ok = await client.request("awareness_set", topic="t", state={"a": 1})
        assert ok["type"] == "reply"
    read_only = {"anonymous": [{"allow": ["subscribe"], "topics": "#"}]}
    async with running_server(roles=read_only) as server, WsClient.open(server.url) as viewer:
        shown = await viewer.request("awareness_set", topic="t", state={"cursor": 1})
        assert shown["type"] == "reply"  # a read-only role may show its cursor
        refused = await viewer.request("awareness_watch", topic="t")
        assert refused["type"] == "error" and refused["code"] == 1110  # needs presence
        try:
            await viewer.request("ping")
        except Closed:  # pragma: no cover - the connection must stay open
            raise AssertionError("a refusal closed the connection") from None


async def test_a_resumed_session_keeps_its_awareness_state_and_id_without_a_removal() -> None:
    """A state goes by the client's presence id, which a resumed session keeps, so watchers
    can match it with presence; the session's states go on with it to its new connection
    (the old one, let go, removes nothing): the watcher sees the next change as a change,
    with no removal in between, and the removal when the new connection closes."""
    async with (
        running_server(session_grace=10.0) as server,
        WsClient.open(server.url) as watcher,
        WsClient.open(server.url, connect_first=False) as old,
    ):
        connected = (await old.request("connect"))["result"]
        who, token = connected["client"], connected["session"]
        await old.request("awareness_set", topic="docs/1", state={"cursor": 1})
        [state] = (await watcher.request("awareness_watch", topic="docs/1"))["result"]["clients"]
        assert state["client"] == who
        async with WsClient.open(server.url, connect_first=False) as new:
            result = (await new.request("connect", session=token))["result"]
            assert result["resumed"] is True and result["client"] == who
            await old.closed()  # the server let the old connection go
            [held] = (await watcher.request("awareness_watch", topic="docs/1"))["result"]["clients"]
            assert (held["client"], held["state"]) == (who, {"cursor": 1})  # still there
            await new.request("awareness_set", topic="docs/1", state={"cursor": 2})
            push = await watcher.push("awareness")
            assert (push["client"], push["state"]) == (who, {"cursor": 2})
            assert not push.get("removed") and push["lamport"] > state["lamport"]
            await watcher.request("ping")
            assert [p for p in watcher.pushes if p["type"] == "awareness"] == []
        removed = await watcher.push("awareness")  # the new connection closed: now it goes
        assert removed["client"] == who and removed["removed"] is True
