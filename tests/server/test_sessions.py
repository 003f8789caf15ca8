"""Sessions that survive a flaky network (server/sessions.py, docs/protocol.md "Sessions").

Real connections only: the member is the Python client (hybridbus.client),
reaching the server through a TCP relay whose connections the test cuts as a
network would (a reset, no close frame) and keeps down for a while; watchers
and intruders are `websockets` clients speaking the protocol by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.servers import Expiring, WsClient, event, running_server

import hybridbus.client
from hybridbus.client import ClientConfig
from hybridbus.core.backoff import Backoff
from hybridbus.core.identity import Identity
from hybridbus.core.revocation import Revocation
from hybridbus.errors import Disconnected

FAST = ClientConfig(backoff=Backoff(base=0.01, cap=0.05), request_timeout=10.0)
ROOM = "docs/42"
PRESENCE = ("join", "leave", "presence")
_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close sends a reset


class Relay:
    """A TCP relay to the server; `down()` cuts every connection (RST) and refuses new ones."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.up = True
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.down()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def down(self) -> None:
        self.up = False
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            _reset(writer)
            return
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            _reset(writer)
            return
        self._writers |= {writer, upstream}
        await asyncio.gather(
            _pump(reader, upstream), _pump(upstream_reader, writer), return_exceptions=True
        )
        for end in (writer, upstream):
            self._writers.discard(end)
            _reset(end)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    writer.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


@contextlib.asynccontextmanager
async def relay_to(port: int) -> AsyncIterator[Relay]:
    relay = Relay(port)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


async def presence_push(watcher: WsClient, seen: list[dict[str, Any]]) -> dict[str, Any]:
    """The watcher's next presence push (join, leave or presence), also kept in `seen`."""
    async with asyncio.timeout(10):
        while True:
            while watcher.pushes:
                message = watcher.pushes.pop(0)
                if message["type"] in PRESENCE:
                    seen.append(message)
                    return message
            await watcher.read()


async def watching(watcher: WsClient, topic: str = ROOM) -> list[dict[str, Any]]:
    reply = await watcher.request("presence", topic=topic, watch=True)
    assert reply["type"] == "reply", reply
    clients: list[dict[str, Any]] = reply["result"]["clients"]
    return clients


async def test_a_client_back_within_the_grace_continues_its_session_without_leave_or_join() -> None:
    async with (
        running_server(session_grace=10.0) as server,
        relay_to(server.port) as relay,
        WsClient.open(server.url) as watcher,
    ):
        await watching(watcher)
        seen: list[dict[str, Any]] = []
        async with hybridbus.client.connect(relay.url(), config=FAST) as member:
            assert member.session is not None and member.resumes == 0
            async with member.subscribe(ROOM) as sub:
                joined = await presence_push(watcher, seen)
                assert joined["type"] == "join" and "state" not in joined["info"]  # active
                who = joined["info"]["client"]
                reply = await watcher.request("publish", topic=ROOM, event=event("e1", data=1))
                assert reply["type"] == "reply"
                assert (await anext(sub)).event.data == 1
                relay.down()  # the network fails: the server sees a reset socket
                degraded = await presence_push(watcher, seen)
                assert (degraded["type"], degraded["state"]) == ("presence", "degraded")
                assert degraded["info"]["client"] == who
                # Still present, as degraded, for the whole grace period.
                members = await watching(watcher)
                assert [(m["client"], m["state"]) for m in members] == [(who, "degraded")]
                for n in (2, 3):  # published while it is away
                    reply = await watcher.request("publish", topic=ROOM, event=event(data=n))
                    assert reply["type"] == "reply"
                relay.up = True
                active = await presence_push(watcher, seen)
                assert (active["type"], active["state"], active["info"]["client"]) == (
                    "presence",
                    "active",
                    who,
                )
                reply = await watcher.request("publish", topic=ROOM, event=event("e4", data=4))
                assert reply["type"] == "reply"
                # No gap, no repeat: what came while it was away, once, then the live one.
                assert [(await anext(sub)).event.data for _ in range(3)] == [2, 3, 4]
                assert member.resumes == 1 and member.connects == 2
                assert [m["client"] for m in await watching(watcher)] == [who]
        # It closes for good (1000): it leaves at once.
        left = await presence_push(watcher, seen)
        assert (left["type"], left["info"]["client"]) == ("leave", who)
        assert [m["type"] for m in seen] == ["join", "presence", "presence", "leave"]
        assert joined["info"]["session"] not in server.node.sessions


async def test_a_client_back_after_the_grace_is_a_new_member() -> None:
    async with (
        running_server(session_grace=0.3) as server,
        relay_to(server.port) as relay,
        WsClient.open(server.url) as watcher,
    ):
        await watching(watcher)
        seen: list[dict[str, Any]] = []
        async with hybridbus.client.connect(relay.url(), config=FAST) as member:
            first = member.session
            async with member.subscribe(ROOM):
                who = (await presence_push(watcher, seen))["info"]["client"]
                relay.down()
                assert (await presence_push(watcher, seen))["state"] == "degraded"
                left = await presence_push(watcher, seen)  # the grace is over
                assert (left["type"], left["info"]["client"]) == ("leave", who)
                assert first is not None and first.partition(".")[0] not in server.node.sessions
                relay.up = True
                again = await presence_push(watcher, seen)
                assert again["type"] == "join" and again["info"]["client"] != who
                assert member.resumes == 0 and member.session not in (None, first)


async def test_another_user_presenting_a_session_is_refused_and_the_owner_keeps_it() -> None:
    async with (
        running_server(authenticator=Expiring(), session_grace=10.0) as server,
        WsClient.open(server.url, connect_first=False) as ann,
    ):
        reply = await ann.request("connect", token="ann:60")
        result = reply["result"]
        token, grace = result["session"], result["grace"]
        assert grace == 10.0 and result.get("resumed", False) is False
        sid, _, secret = token.partition(".")
        assert len(secret) >= 32  # 192 random bits
        assert (await ann.request("subscribe", pattern=ROOM))["type"] == "reply"
        # Eve has ann's session token (say, stolen): her own token is another user's.
        async with WsClient.open(server.url, connect_first=False) as eve:
            await eve.send(eve.command("connect", token="eve:60", session=token))
            closed = await eve.closed()
            assert closed.code == 4502 and "session" in closed.reason
        # Ann herself with a guessed secret: refused as well.
        async with WsClient.open(server.url, connect_first=False) as guess:
            await guess.send(guess.command("connect", token="ann:60", session=f"{sid}.x"))
            assert (await guess.closed()).code == 4502
        # A session id nobody holds (over, or never was): a new session.
        async with WsClient.open(server.url, connect_first=False) as late:
            fresh = await late.request("connect", token="ann:60", session="gone.secret")
            assert fresh["type"] == "reply" and fresh["result"]["session"] != token
            assert fresh["result"].get("resumed", False) is False
        # Ann's session is untouched: still one active member, hers.
        members = (await ann.request("presence", topic=ROOM))["result"]["clients"]
        assert [(m["session"], m.get("state", "active")) for m in members] == [(sid, "active")]


async def test_a_session_resumed_while_its_old_connection_lingers_moves_without_noise() -> None:
    async with (
        running_server(session_grace=10.0) as server,
        WsClient.open(server.url) as watcher,
        WsClient.open(server.url, connect_first=False) as old,
    ):
        await watching(watcher)
        seen: list[dict[str, Any]] = []
        token = (await old.request("connect"))["result"]["session"]
        assert (await old.request("subscribe", pattern=ROOM))["type"] == "reply"
        who = (await presence_push(watcher, seen))["info"]["client"]
        # The client believes the old connection dead (its network changed) and comes back.
        async with WsClient.open(server.url, connect_first=False) as new:
            result = (await new.request("connect", session=token))["result"]
            assert result["resumed"] is True and result["client"] == who
            closed = await old.closed()  # the server lets the old one go
            assert closed.code == 1000
            assert (await new.request("subscribe", pattern=ROOM))["type"] == "reply"
            members = await watching(watcher)
            assert [(m["client"], m.get("state", "active")) for m in members] == [(who, "active")]
        assert (await presence_push(watcher, seen))["type"] == "leave"
        assert [m["type"] for m in seen] == ["join", "leave"]


async def test_degraded_sessions_are_bounded_the_oldest_ends_early() -> None:
    async with (
        running_server(session_grace=30.0, max_degraded_sessions=2) as server,
        WsClient.open(server.url) as watcher,
        contextlib.AsyncExitStack() as stack,
    ):
        await watching(watcher)
        seen: list[dict[str, Any]] = []
        members = []
        for _ in range(3):
            client = await stack.enter_async_context(WsClient.open(server.url))
            assert (await client.request("subscribe", pattern=ROOM))["type"] == "reply"
            members.append((await presence_push(watcher, seen))["info"]["client"])
        for connection in list(server.node._connections.values()):
            if connection.info is not None and connection.info.client in members:
                connection.abort()  # dropped as a network failure would, oldest first
        changes = [await presence_push(watcher, seen) for _ in range(4)]
        # Three degrade; the third is one over the bound: the oldest leaves at once.
        assert [(c["type"], c["info"]["client"]) for c in changes] == [
            ("presence", members[0]),
            ("presence", members[1]),
            ("presence", members[2]),
            ("leave", members[0]),
        ]
        assert server.node.sessions.degraded == 2
        assert server.node.sessions.terminated_early == 1


async def test_sessions_can_be_off_for_a_tenant() -> None:
    async with running_server(tenant_session_grace={"acme": 0.0}) as server:
        async with WsClient.open(server.url, connect_first=False) as client:
            result = (await client.request("connect"))["result"]
            assert "session" not in result and "grace" not in result
        async with hybridbus.client.connect(server.url, config=FAST) as c:
            assert c.session is None


async def test_a_refused_session_ends_the_python_client() -> None:
    async with (
        running_server(authenticator=Expiring(), session_grace=10.0) as server,
        WsClient.open(server.url, connect_first=False) as ann,
    ):
        token = (await ann.request("connect", token="ann:60"))["result"]["session"]
        client = hybridbus.client.Client(server.url, "eve:60", FAST)
        client.session = token
        with pytest.raises(Disconnected) as refused:
            await client.start()
        assert refused.value.close_code == 4502
        assert (await ann.request("ping"))["type"] == "reply"  # the owner goes on


async def test_a_revocation_ends_a_degraded_session_at_once() -> None:
    async with (
        running_server(authenticator=Expiring(), session_grace=30.0) as server,
        WsClient.open(server.url, token="watcher:60") as watcher,
        WsClient.open(server.url, token="ann:60") as ann,
    ):
        await watching(watcher)
        seen: list[dict[str, Any]] = []
        assert (await ann.request("subscribe", pattern=ROOM))["type"] == "reply"
        who = (await presence_push(watcher, seen))["info"]["client"]
        for connection in list(server.node._connections.values()):
            if connection.info is not None and connection.info.client == who:
                connection.abort()
        assert (await presence_push(watcher, seen))["state"] == "degraded"
        guard = server.node.guard
        now = time.time()
        admin = guard.admit(Identity(tenant="t", user="root", admin=True))
        await guard.revoke(
            admin, Revocation(kind="user", tenant="t", value="ann", until=now + 60, at=now)
        )
        left = await presence_push(watcher, seen)  # not 30 s later: now
        assert (left["type"], left["info"]["client"]) == ("leave", who)
        assert server.node.sessions.degraded == 0
