"""Sessions across nodes sharing one real redis-server (docs/protocol.md, "Sessions").

The member is the Python client behind a relay the test cuts; the watcher is
on the OTHER node and learns of every state change through Redis
(server/presence_redis.py mirrors the state): `degraded` when the member's
connection drops, `active` when its session continues, no leave and no join.
A session is continued on the node that holds it; a client that comes back
on another node starts a new session there, and the old one ends after its
grace period on its own node (what docs/protocol.md says is supported).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.cluster.nodes import nodes
from tests.server.test_sessions import FAST, ROOM, presence_push, relay_to, watching
from tests.servers import WsClient, event
from tests.services import RedisServer

import hybridbus.client

TTL = 2.0


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


async def test_a_session_presented_on_another_node_starts_a_new_one_there(
    redis_server: Callable[..., RedisServer],
) -> None:
    engine = redis_server().url
    async with (
        nodes(engine, "n1", "n2", registry_ttl=TTL, session_grace=0.5) as (one, two),
        WsClient.open(two.url) as watcher,
    ):
        await watching(watcher)
        seen: list[dict[str, Any]] = []
        async with WsClient.open(one.url, connect_first=False) as first:
            token = (await first.request("connect"))["result"]["session"]
            assert (await first.request("subscribe", pattern=ROOM))["type"] == "reply"
            who = (await presence_push(watcher, seen))["info"]["client"]
            first_node = one.node._connections
            for connection in list(first_node.values()):
                if connection.info is not None and connection.info.client == who:
                    connection.abort()  # its node loses it
            assert (await presence_push(watcher, seen))["state"] == "degraded"
        async with WsClient.open(two.url, connect_first=False) as second:
            result = (await second.request("connect", session=token))["result"]
            assert result.get("resumed", False) is False and result["client"] != who
            assert (await second.request("subscribe", pattern=ROOM))["type"] == "reply"
            changes = [await presence_push(watcher, seen) for _ in range(2)]
            assert sorted((c["type"], c["info"]["client"]) for c in changes) == sorted(
                [("join", result["client"]), ("leave", who)]
            )
