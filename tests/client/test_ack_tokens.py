"""Every publish ack carries a resume token: `since=<token>` gives exactly what came after.

Over the WebSocket protocol (a raw `websockets` client), the HTTP API (httpx), and
the Python client; on the one-shard memory engine and on a two-shard log
(`tests/client/sharded.py`), where the token's other shards hold the heads the
engine had when it appended (`hybridbus.core.log.Ack.token`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from tests.client.sharded import sharded_server, topic_in
from tests.servers import Server, WsClient, event, running_server

import hybridbus.client
from hybridbus.client import ClientConfig
from hybridbus.core.backoff import Backoff
from hybridbus.core.log import Position

FAST = ClientConfig(backoff=Backoff(base=0.01, cap=0.05), request_timeout=10.0)


async def publish(ws: WsClient, topic: str, id: str) -> dict[str, Any]:
    reply = await ws.request("publish", topic=topic, event=event(id))
    assert reply["type"] == "reply", reply
    result: dict[str, Any] = reply["result"]
    return result


async def replayed(ws: WsClient, pattern: str, since: str) -> list[str]:
    """The ids a subscription from `since` recovers (everything retained after the token)."""
    reply = await ws.request("subscribe", pattern=pattern, since=since)
    assert reply["type"] == "reply" and reply["result"]["recovered"], reply
    ids: list[str] = []
    while True:
        try:
            push = await asyncio.wait_for(ws.push("event"), 0.3)
        except TimeoutError:
            break
        ids.append(push["event"]["id"])
    await ws.request("unsubscribe", pattern=pattern)
    return ids


async def test_a_websocket_ack_token_resumes_right_after_the_event() -> None:
    async with running_server() as server, WsClient.open(server.url) as ws:
        acks = [await publish(ws, f"docs/{n % 2}", f"e{n}") for n in range(5)]
        assert [a["token"] for a in acks] == [f"{a['epoch']}-{a['position']}" for a in acks]
        assert await replayed(ws, "docs/+", acks[1]["token"]) == ["e2", "e3", "e4"]
        assert await replayed(ws, "docs/1", acks[1]["token"]) == ["e3"]
        again = await publish(ws, "docs/0", "e2")  # a duplicate: the original's token
        assert again["duplicate"] and again["token"] == acks[2]["token"]
        history = await ws.request("history", pattern="docs/+", since=acks[3]["token"])
        assert [e["event"]["id"] for e in history["result"]["events"]] == ["e4"]


async def test_an_http_ack_token_resumes_right_after_the_event() -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=server.http) as http:
        tokens = []
        for n in range(3):
            response = await http.post(
                "/v1/topics/acme/docs/1/events",
                json=event(f"h{n}"),
                headers={"content-type": "application/cloudevents+json"},
            )
            assert response.status_code == 201, response.text
            (ack,) = response.json()["acks"]
            assert ack["token"] == f"{ack['epoch']}-{ack['position']}"
            tokens.append(ack["token"])
        batch = await http.post(
            "/v1/topics/acme/docs/1/events",
            json=[event("h1"), event("h3")],  # a duplicate and a new one
            headers={"content-type": "application/cloudevents-batch+json"},
        )
        duplicate, new = batch.json()["acks"]
        assert duplicate["duplicate"] and duplicate["token"] == tokens[1]
        assert new["token"] == f"{new['epoch']}-{new['position']}"
        page = await http.get("/v1/events", params={"pattern": "acme/docs/#", "since": tokens[0]})
        assert [e["event"]["id"] for e in page.json()["events"]] == ["h1", "h2", "h3"]
        assert await sse_ids(http, "acme/docs/#", tokens[0], 3) == ["h1", "h2", "h3"]


async def sse_ids(
    http: httpx.AsyncClient, pattern: str, last_event_id: str, count: int
) -> list[str]:
    """The ids of the first `count` events an SSE stream resumed from `last_event_id` sends."""
    ids: list[str] = []
    headers = {"Last-Event-ID": last_event_id}
    async with (
        asyncio.timeout(10),
        http.stream("GET", "/v1/sse", params={"pattern": pattern}, headers=headers) as stream,
    ):
        async for line in stream.aiter_lines():
            if line.startswith("data:") and '"specversion"' in line:
                ids.append(json.loads(line.removeprefix("data:"))["id"])
                if len(ids) == count:
                    break
    return ids


async def test_the_python_clients_ack_has_the_token() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as c,
    ):
        first = await c.publish("docs/1", event("p1"))
        await c.publish("docs/1", event("p2"))
        assert first.token == f"{first.epoch}-{first.position}"
        async with c.subscribe("docs/#", since=first.token) as sub:
            got = await asyncio.wait_for(anext(sub), 5)
        assert got.event.id == "p2"


# -- several shards ---------------------------------------------------------------------


async def two_shard_topics(server: Server) -> tuple[str, str]:
    """Two relative topics of tenant acme, in shards 0 and 1."""
    assert server.node.bus.engine.shards == 2
    return (
        topic_in(0, 2, "acme/docs/").removeprefix("acme/"),
        topic_in(1, 2, "acme/docs/").removeprefix("acme/"),
    )


async def test_with_two_shards_a_token_holds_the_heads_of_the_other_shard() -> None:
    async with sharded_server(2) as server, WsClient.open(server.url) as ws:
        a, b = await two_shard_topics(server)
        acks = {}
        for id, topic in [("a1", a), ("b1", b), ("a2", a), ("b2", b), ("a3", a), ("b3", b)]:
            acks[id] = await publish(ws, topic, id)
        assert (acks["a2"]["shard"], acks["b2"]["shard"]) == (0, 1)
        # The other shard's position is its head before the append: b1 was there, b2 not yet.
        assert Position.parse(acks["a2"]["token"]).positions == (2, 1)
        assert Position.parse(acks["b2"]["token"]).positions == (2, 2)
        # Exactly the later events: of the same topic, and of the other shard's.
        assert await replayed(ws, a, acks["a2"]["token"]) == ["a3"]
        assert sorted(await replayed(ws, "docs/+", acks["a2"]["token"])) == ["a3", "b2", "b3"]
        assert sorted(await replayed(ws, "docs/+", acks["b2"]["token"])) == ["a3", "b3"]
        again = await publish(ws, a, "a2")
        assert again["duplicate"]
        assert Position.parse(again["token"]).positions == (2, 3)  # the original's position


async def test_with_two_shards_http_acks_carry_the_same_tokens() -> None:
    async with sharded_server(2) as server, httpx.AsyncClient(base_url=server.http) as http:
        a, b = await two_shard_topics(server)

        async def post(topic: str, id: str) -> str:
            response = await http.post(
                f"/v1/topics/acme/{topic}/events",
                json=event(id),
                headers={"content-type": "application/cloudevents+json"},
            )
            assert response.status_code == 201, response.text
            token: str = response.json()["acks"][0]["token"]
            return token

        await post(b, "b1")
        token = await post(a, "a1")
        assert Position.parse(token).positions == (1, 1)
        await post(b, "b2")
        page = await http.get("/v1/events", params={"pattern": "acme/docs/+", "since": token})
        assert [e["event"]["id"] for e in page.json()["events"]] == ["b2"]
