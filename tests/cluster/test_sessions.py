"""Sessions across nodes sharing one real redis-server (docs/protocol.md, "Sessions").

The member is the Python client behind a relay the test cuts; the watcher is
on the OTHER node and learns of every state change through Redis
(server/presence_redis.py mirrors the state): `degraded` when the member's
connection drops, `active` when its session continues, no leave and no join.
A session continues on any node: one whose client comes back elsewhere is
taken from the node that holds it, and the sessions of a node killed with
SIGKILL are adopted by the node that notices its lapse first, which ends
them (`leave`, on every node) when their grace is over unless their clients
come back — on any node — first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.cluster.nodes import nodes
from tests.server.test_sessions import FAST, ROOM, presence_push, relay_to, watching
from tests.servers import Expiring, Server, ServerProcess, WsClient, event
from tests.services import RedisServer

import hybridbus.client
from hybridbus.server.sessions import SessionRecord

TTL = 2.0


async def _mirrored(server: Server, sid: str) -> SessionRecord | None:
    """The record of the session `sid` in the shared Redis, as `server` finds it."""
    mirror = server.node.sessions.mirror
    assert mirror is not None
    return (await mirror.lookup(sid))[1]


async def test_the_other_node_sees_degraded_then_active_never_leave_or_join(
    redis_server: Callable[..., RedisServer],
) -> None:
    engine = redis_server().url
    async with (
        nodes(engine, "n1", "n2", registry_ttl=TTL, session_grace=10.0) as (one, two),
        relay_to(one.port) as relay,
        WsClient.open(two.url) as watcher,
    ):
        await watching(watcher)
        seen: list[dict[str, Any]] = []
        async with (
            hybridbus.client.connect(relay.url(), config=FAST) as member,
            member.subscribe(ROOM) as sub,
        ):
            joined = await presence_push(watcher, seen)
            who = joined["info"]["client"]
            relay.down()
            degraded = await presence_push(watcher, seen)
            assert (degraded["type"], degraded["state"], degraded["info"]["client"]) == (
                "presence",
                "degraded",
                who,
            )
            members = await watching(watcher)
            assert [(m["client"], m["state"]) for m in members] == [(who, "degraded")]
            reply = await watcher.request("publish", topic=ROOM, event=event("away", data=1))
            assert reply["type"] == "reply"
            relay.up = True
            active = await presence_push(watcher, seen)
            assert (active["type"], active["state"]) == ("presence", "active")
            assert (await anext(sub)).event.data == 1  # published on the other node, not lost
            assert member.resumes == 1
            assert [m["client"] for m in await watching(watcher)] == [who]
        left = await presence_push(watcher, seen)
        assert (left["type"], left["info"]["client"]) == ("leave", who)
        assert [m["type"] for m in seen] == ["join", "presence", "presence", "leave"]


async def test_a_session_presented_on_another_node_continues_there(
    redis_server: Callable[..., RedisServer],
) -> None:
    engine = redis_server().url
    async with (
        nodes(engine, "n1", "n2", registry_ttl=TTL, session_grace=10.0) as (one, two),
        WsClient.open(two.url) as watcher,
    ):
        await watching(watcher)
        seen: list[dict[str, Any]] = []
        async with WsClient.open(one.url, connect_first=False) as first:
            token = (await first.request("connect"))["result"]["session"]
            assert (await first.request("subscribe", pattern=ROOM))["type"] == "reply"
            who = (await presence_push(watcher, seen))["info"]["client"]
            for connection in list(one.node._connections.values()):
                if connection.info is not None and connection.info.client == who:
                    connection.abort()  # its node loses it
            assert (await presence_push(watcher, seen))["state"] == "degraded"
        sid = token.partition(".")[0]
        # A wrong secret is refused on the other node too, and the owner keeps the session.
        async with WsClient.open(two.url, connect_first=False) as guess:
            await guess.send(guess.command("connect", session=f"{sid}.x"))
            closed = await guess.closed()
            assert closed.code == 4502 and "session" in closed.reason
        async with WsClient.open(two.url, connect_first=False) as second:
            result = (await second.request("connect", session=token))["result"]
            assert result.get("resumed") is True and result["client"] == who
            assert (await second.request("subscribe", pattern=ROOM))["type"] == "reply"
            active = await presence_push(watcher, seen)
            assert (active["type"], active["state"]) == ("presence", "active")
            async with asyncio.timeout(5):  # n1 lets it go when it hears `took`
                while sid in one.node.sessions:
                    await asyncio.sleep(0.02)
            assert sid in two.node.sessions
            assert [m["client"] for m in await watching(watcher)] == [who]
        left = await presence_push(watcher, seen)
        assert (left["type"], left["info"]["client"]) == ("leave", who)
        assert [m["type"] for m in seen] == ["join", "presence", "presence", "leave"]


async def test_another_user_presenting_a_session_held_by_another_node_is_refused(
    redis_server: Callable[..., RedisServer],
) -> None:
    engine = redis_server().url
    async with (
        nodes(
            engine, "n1", "n2", registry_ttl=TTL, session_grace=10.0, authenticator=Expiring()
        ) as (one, two),  # fmt: skip
        WsClient.open(one.url, connect_first=False) as ann,
    ):
        token = (await ann.request("connect", token="ann:60"))["result"]["session"]
        assert (await ann.request("subscribe", pattern=ROOM))["type"] == "reply"
        sid = token.partition(".")[0]
        async with asyncio.timeout(5):  # the mirror writes within milliseconds
            while (await _mirrored(two, sid)) is None:
                await asyncio.sleep(0.02)
        async with WsClient.open(two.url, connect_first=False) as eve:
            await eve.send(eve.command("connect", token="eve:60", session=token))
            closed = await eve.closed()
            assert closed.code == 4502 and "session" in closed.reason
        assert sid in one.node.sessions and sid not in two.node.sessions


def _serve(engine: str, tmp: Path, grace: float) -> ServerProcess:
    env = {
        "HYBRIDBUS_NODE_ID": "doomed",
        "HYBRIDBUS_REGISTRY_TTL": str(TTL),
        "HYBRIDBUS_SESSION_GRACE": str(grace),
        "HYBRIDBUS_ANONYMOUS_TENANT": "acme",
    }
    return ServerProcess("--engine", engine, "--host", "127.0.0.1", logs=tmp / "doomed.log",
                         env=env)  # fmt: skip


async def test_a_client_whose_node_died_continues_its_session_on_another_node(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    engine = redis_server().url
    doomed = _serve(engine, tmp_path, grace=20.0)
    try:
        await doomed.wait_listening()
        async with (
            nodes(
                engine, "n1", "n2", registry_ttl=TTL, session_grace=20.0, anonymous_tenant="acme"
            ) as (one, two),  # fmt: skip
            relay_to(doomed.port) as relay,
            WsClient.open(one.url) as watcher,
        ):
            await watching(watcher)
            seen: list[dict[str, Any]] = []
            async with (
                hybridbus.client.connect(relay.url(), config=FAST) as member,
                member.subscribe(ROOM) as sub,
            ):
                who = (await presence_push(watcher, seen))["info"]["client"]
                await doomed.kill()  # kill -9: no goodbye, no degraded from the node itself
                relay.down()  # its socket is reset; it cannot come back until the node lapsed
                degraded = await presence_push(watcher, seen)  # its lease lapsed
                assert (degraded["type"], degraded["state"]) == ("presence", "degraded")
                assert [(m["client"], m["state"]) for m in await watching(watcher)] == [
                    (who, "degraded")
                ]
                reply = await watcher.request("publish", topic=ROOM, event=event("away", data=1))
                assert reply["type"] == "reply"
                relay.target, relay.up = two.port, True  # the balancer sends it to n2
                active = await presence_push(watcher, seen)
                assert (active["type"], active["state"]) == ("presence", "active")
                assert (await anext(sub)).event.data == 1  # its topic carried on: nothing lost
                assert member.resumes == 1
                assert [m["client"] for m in await watching(watcher)] == [who]
            left = await presence_push(watcher, seen)
            assert (left["type"], left["info"]["client"]) == ("leave", who)
            assert [m["type"] for m in seen] == ["join", "presence", "presence", "leave"]
    finally:
        await doomed.kill()


async def test_a_dead_nodes_session_nobody_resumes_leaves_after_its_grace_on_every_node(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    engine = redis_server().url
    grace = 1.5
    doomed = _serve(engine, tmp_path, grace=grace)
    try:
        await doomed.wait_listening()
        async with (
            nodes(engine, "n1", "n2", registry_ttl=TTL, anonymous_tenant="acme") as (one, two),
            WsClient.open(doomed.url) as member,
            WsClient.open(one.url) as on_one,
            WsClient.open(two.url) as on_two,
        ):
            seen: dict[str, list[dict[str, Any]]] = {"one": [], "two": []}
            await watching(on_one)
            await watching(on_two)
            assert (await member.request("subscribe", pattern=ROOM))["type"] == "reply"
            who = (await presence_push(on_one, seen["one"]))["info"]["client"]
            await presence_push(on_two, seen["two"])
            await doomed.kill()
            killed = time.monotonic()
            for name, watcher in (("one", on_one), ("two", on_two)):
                while (await presence_push(watcher, seen[name]))["type"] != "leave":
                    pass
            elapsed = time.monotonic() - killed
            for name in seen:
                assert [(m["type"], m.get("state")) for m in seen[name]] == [
                    ("join", None), ("presence", "degraded"), ("leave", None)
                ], name  # fmt: skip
                assert seen[name][-1]["info"]["client"] == who
            # Lapse within the ttl, then the grace (from the lapse); slack for a loaded machine.
            assert grace <= elapsed < TTL + grace + 2.0, elapsed
            assert await watching(on_one) == [] and await watching(on_two) == []
    finally:
        await doomed.kill()
