"""The WebSocket gateway end to end: a `websockets` client speaking docs/protocol.md as written.

Every test runs the real application on a free loopback port; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from tests.servers import JSON, MSGPACK, WsClient, event, running_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hybridbus.server.auth import Identity, Unauthorized

pytestmark = pytest.mark.timeout(30)


# -- connect -------------------------------------------------------------------


async def test_anonymous_connect_is_accepted_in_the_configured_tenant() -> None:
    async with (
        running_server(anonymous_tenant="acme", ping_interval=7.0) as server,
        WsClient.open(server.url, connect_first=False) as client,
    ):
        assert client.ws.subprotocol == JSON
        reply = await client.request("connect", name="test", version="1", device="d1")
        result = reply["result"]
        assert result["tenant"] == "acme"
        assert result["client"].startswith("c-")
        assert result["ping"] == 7.0
        assert result["max_frame_size"] == 1 << 20
        assert isinstance(result["version"], str)


@pytest.mark.parametrize("token", [None, "some-token"])
async def test_connect_without_anonymous_tenant_or_with_a_token_closes_4501(
    token: str | None,
) -> None:
    tenant = "acme" if token else None  # a token is refused even when anonymous is allowed
    async with (
        running_server(anonymous_tenant=tenant) as server,
        WsClient.open(server.url, connect_first=False) as client,
    ):
        fields = {"token": token} if token else {}
        await client.send(client.command("connect", **fields))
        disconnect = await client.push("disconnect")
        assert disconnect["code"] == 4501
        assert disconnect["reconnect"] is False
        closed = await client.closed()
        assert closed.code == 4501


async def test_a_command_before_connect_closes_4500() -> None:
    async with (
        running_server() as server,
        WsClient.open(server.url, connect_first=False) as client,
    ):
        await client.send(client.command("ping"))
        assert (await client.closed()).code == 4500


@pytest.mark.parametrize("offered", [["chat.v2"], []])
async def test_unsupported_subprotocol_is_closed_4504(offered: list[str]) -> None:
    async with running_server() as server:
        async with connect(server.url, subprotocols=offered or None) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol is None
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 4504
        assert server.sample("hybridbus_disconnects_total", code="4504") == 1


async def test_the_ws_alias_path_serves_the_protocol() -> None:
    async with running_server() as server:
        url = server.url.replace("/v1/ws", "/ws")
        async with WsClient.open(url) as client:
            assert (await client.request("ping"))["result"] == {}


# -- subscribe, publish, pushes -------------------------------------------------------


async def test_subscribe_then_live_pushes_with_relative_topics() -> None:
    async with (
        running_server() as server,
        WsClient.open(server.url) as sub,
        WsClient.open(server.url) as pub,
    ):
        reply = await sub.request("subscribe", pattern="docs/+")
        result = reply["result"]
        assert result["recovered"] is True
        assert result["position"].startswith(result["epoch"] + "-")
        sent = [event(data={"n": n}) for n in range(3)]
        for n, ev in enumerate(sent):
            ack = await pub.request("publish", topic=f"docs/{n % 2}", event=ev)
            assert ack["type"] == "reply", ack
        pushes = await sub.events(3)
        assert [p["event"]["id"] for p in pushes] == [e["id"] for e in sent]
        assert [p["topic"] for p in pushes] == ["docs/0", "docs/1", "docs/0"]
        assert [p["offset"] for p in pushes] == [1, 1, 2]
        assert {p["pattern"] for p in pushes} == {"docs/+"}
        assert pushes[0]["event"]["data"] == {"n": 0}
        positions = [p["position"] for p in pushes]
        assert positions == sorted(positions)


async def test_publish_ack_has_offset_and_the_same_id_is_deduplicated() -> None:
    async with (
        running_server() as server,
        WsClient.open(server.url) as sub,
        WsClient.open(server.url) as pub,
    ):
        await sub.request("subscribe", pattern="orders")
        ev = event(id="order-1", source="/shop")
        first = (await pub.request("publish", topic="orders", event=ev))["result"]
        again = (await pub.request("publish", topic="orders", event=ev))["result"]
        other = (await pub.request("publish", topic="orders", event=event()))["result"]
        assert first["offset"] == 1 and first["duplicate"] is False
        assert again == {**first, "duplicate": True}
        assert other["offset"] == 2
        pushes = await sub.events(2)
        assert [p["offset"] for p in pushes] == [1, 2]  # the duplicate was not pushed
        assert server.sample("hybridbus_duplicates_total", gateway="websocket") == 1
        assert server.sample("hybridbus_publishes_total", gateway="websocket") == 3


async def test_frames_are_coalesced_per_loop_turn() -> None:
    async with (
        running_server() as server,
        WsClient.open(server.url) as sub,
        WsClient.open(server.url) as pub,
    ):
        await sub.request("subscribe", pattern="burst")
        commands = [pub.command("publish", topic="burst", event=event()) for _ in range(200)]
        await pub.send(*commands)  # 200 publishes in one frame: appended in few batches
        frames_before = sub.frames
        pushes = await sub.events(200)
        assert [p["offset"] for p in pushes] == list(range(1, 201))
        assert sub.frames - frames_before <= 20  # ~10x fewer frames than events
        for command in commands:
            assert (await pub.answer(command["id"]))["type"] == "reply"


async def test_one_encoding_per_delivery_shared_by_every_subscriber(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hybridbus.proto.codec import JSON as JSON_CODEC

    encoded: list[Any] = []
    pushes: list[str] = []
    encode_event = JSON_CODEC.encode_event
    encode_push = JSON_CODEC.encode_push

    def count_event(ev: Any) -> bytes:
        encoded.append(ev)
        return encode_event(ev)

    def count_push(pattern: str, *args: Any, **kwargs: Any) -> bytes:
        pushes.append(pattern)
        return encode_push(pattern, *args, **kwargs)

    monkeypatch.setattr(JSON_CODEC, "encode_event", count_event)
    monkeypatch.setattr(JSON_CODEC, "encode_push", count_push)
    async with (
        running_server() as server,
        WsClient.open(server.url) as a,
        WsClient.open(server.url) as b,
        WsClient.open(server.url) as c,
        WsClient.open(server.url) as pub,
    ):
        await a.request("subscribe", pattern="room/+")
        await b.request("subscribe", pattern="room/+")
        await c.request("subscribe", pattern="room/#")
        await pub.request("publish", topic="room/1", event=event())
        received = [await client.push() for client in (a, b, c)]
        assert received[0] == received[1]
        assert received[2]["pattern"] == "room/#"
    assert len(encoded) == 1  # one event encoding for three subscribers
    assert sorted(pushes) == ["room/#", "room/+"]  # one push per pattern


async def test_unsubscribe_stops_pushes() -> None:
    async with (
        running_server() as server,
        WsClient.open(server.url) as sub,
        WsClient.open(server.url) as pub,
    ):
        await sub.request("subscribe", pattern="a")
        await sub.request("subscribe", pattern="b")
        assert (await sub.request("unsubscribe", pattern="a"))["result"] == {}
        await pub.request("publish", topic="a", event=event())
        await pub.request("publish", topic="b", event=event())
        push = await sub.push()
        assert push["topic"] == "b"
        assert server.sample("hybridbus_subscriptions", transport="websocket") == 1


async def test_subscribe_and_unsubscribe_in_one_frame_answers_both_in_order() -> None:
    async with running_server() as server, WsClient.open(server.url) as client:
        subscribe = client.command("subscribe", pattern="x/#")
        unsubscribe = client.command("unsubscribe", pattern="x/#")
        again = client.command("subscribe", pattern="x/#")
        await client.send(subscribe, unsubscribe, again)
        assert (await client.answer(subscribe["id"]))["type"] == "reply"
        assert (await client.answer(unsubscribe["id"]))["result"] == {}
        assert (await client.answer(again["id"]))["type"] == "reply"
        async with WsClient.open(server.url) as pub:
            await pub.request("publish", topic="x/1", event=event(id="only"))
        push = await client.push()
        assert push["event"]["id"] == "only"


async def test_exclude_self_skips_the_connection_or_its_device() -> None:
    async with (
        running_server() as server,
        WsClient.open(server.url, device="laptop") as me,
        WsClient.open(server.url, device="laptop") as my_tab,
        WsClient.open(server.url, device="phone") as other,
    ):
        for client in (me, my_tab, other):
            await client.request("subscribe", pattern="doc")
        ev1, ev2, marker = event(id="e1"), event(id="e2"), event(id="marker")
        await me.request("publish", topic="doc", event=ev1, exclude_self="connection")
        await me.request("publish", topic="doc", event=ev2, exclude_self="device")
        await me.request("publish", topic="doc", event=marker)
        assert [p["event"]["id"] for p in await me.events(1)] == ["marker"]
        assert [p["event"]["id"] for p in await my_tab.events(2)] == ["e1", "marker"]
        assert [p["event"]["id"] for p in await other.events(3)] == ["e1", "e2", "marker"]


# -- recovery -------------------------------------------------------------------------


class Tracker:
    """A subscriber's exactly-once bookkeeping, as docs/protocol.md §7 describes it."""

    def __init__(self) -> None:
        self.epoch = ""
        self.positions: list[int] = []
        self.ids: list[str] = []

    def start(self, result: dict[str, Any]) -> None:
        epoch, _, positions = result["position"].rpartition("-")
        self.epoch = epoch
        self.positions = [int(p) for p in positions.split(".")]

    def take(self, push: dict[str, Any]) -> None:
        shard, position = push["shard"], push["position"]
        assert position > self.positions[shard], f"pushed twice: {push}"
        self.positions[shard] = position
        self.ids.append(push["event"]["id"])

    @property
    def token(self) -> str:
        return f"{self.epoch}-" + ".".join(map(str, self.positions))


async def test_since_recovers_exactly_once_across_reconnects_while_another_publishes() -> None:
    async with running_server() as server:
        acked: list[str] = []
        done = asyncio.Event()

        async def publish() -> None:
            async with WsClient.open(server.url) as pub:
                for n in range(300):
                    ev = event(id=f"p{n}")
                    reply = await pub.request("publish", topic=f"feed/{n % 3}", event=ev)
                    assert reply["type"] == "reply"
                    acked.append(ev["id"])
                    if n % 10 == 0:
                        await asyncio.sleep(0.005)
            done.set()

        tracker = Tracker()
        publisher = asyncio.create_task(publish())
        published_at_reconnect: list[int] = []
        for round in range(4):
            if round:
                published_at_reconnect.append(len(acked))
            async with WsClient.open(server.url) as sub:
                fields = {"since": tracker.token} if round else {}
                reply = await sub.request("subscribe", pattern="feed/#", **fields)
                assert reply["result"]["recovered"] is True
                if round == 0:
                    tracker.start(reply["result"])
                target = len(tracker.ids) + 40
                while len(tracker.ids) < target or (round == 3 and len(tracker.ids) < 300):
                    if round == 3 and done.is_set() and len(tracker.ids) >= len(acked):
                        break
                    tracker.take(await sub.push())
            # leaving the block drops the connection mid-stream
        await publisher
        assert tracker.ids == acked
        assert len(acked) == 300
        assert min(published_at_reconnect) < 300  # reconnected while publishing went on


async def test_since_from_another_epoch_is_not_recovered() -> None:
    async with running_server() as server, WsClient.open(server.url) as client:
        reply = await client.request("subscribe", pattern="t", since="OtherEpoch-5")
        assert reply["result"]["recovered"] is False


# -- tenants ---------------------------------------------------------------------------


class TokenTenants:
    """A test authenticator: the token names the tenant."""

    async def authenticate(self, token: str | None, device: str | None) -> Identity:
        if token is None:
            raise Unauthorized("token required")
        return Identity(tenant=token, user=f"user-of-{token}", device=device, roles=("user",))


async def test_relative_topics_never_reach_another_tenant() -> None:
    async with running_server(authenticator=TokenTenants()) as server:
        async with (
            WsClient.open(server.url, token="acme") as acme,
            WsClient.open(server.url, token="globex") as globex,
        ):
            assert (await acme.request("subscribe", pattern="#"))["type"] == "reply"
            assert (await globex.request("subscribe", pattern="+/#"))["type"] == "reply"
            await globex.request("publish", topic="docs/1", event=event(id="g1"))
            await globex.request("publish", topic="acme/docs/1", event=event(id="g2"))
            await acme.request("publish", topic="docs/1", event=event(id="a1"))
            assert [p["event"]["id"] for p in await acme.events(1)] == ["a1"]
            assert acme.pushes == []
            got = await globex.events(2)
            assert [(p["topic"], p["event"]["id"]) for p in got] == [
                ("docs/1", "g1"),
                ("acme/docs/1", "g2"),  # globex's own topic named "acme/...", not acme's
            ]
            history = await acme.request("history", pattern="#")
            assert [e["event"]["id"] for e in history["result"]["events"]] == ["a1"]
        assert [i.tenant for i in server.node.clients("acme/docs/1")] == []


# -- history, ping, presence -------------------------------------------------------------


async def test_history_pages_with_since_and_limit() -> None:
    async with running_server() as server, WsClient.open(server.url) as client:
        ids = [f"h{n}" for n in range(5)]
        for id in ids:
            await client.request("publish", topic="log/app", event=event(id=id))
        first = (await client.request("history", pattern="log/#", limit=2))["result"]
        assert [e["event"]["id"] for e in first["events"]] == ids[:2]
        assert first["more"] is True and first["exact"] is True
        assert [e["topic"] for e in first["events"]] == ["log/app"] * 2
        rest = (await client.request("history", pattern="log/#", since=first["position"]))["result"]
        assert [e["event"]["id"] for e in rest["events"]] == ids[2:]
        assert rest["more"] is False


async def test_history_is_cut_to_fit_a_frame() -> None:
    async with (
        running_server(max_frame_size=64 * 1024) as server,
        WsClient.open(server.url) as client,
    ):
        for n in range(10):
            ev = event(id=f"big{n}", data="x" * 20_000)
            assert (await client.request("publish", topic="big", event=ev))["type"] == "reply"
        seen: list[str] = []
        sizes: list[int] = []
        since = None
        for _ in range(10):
            fields = {"since": since} if since else {}
            page = (await client.request("history", pattern="big", **fields))["result"]
            sizes.append(len(page["events"]))
            seen += [e["event"]["id"] for e in page["events"]]
            since = page["position"]
            if not page["more"]:
                break
        assert seen == [f"big{n}" for n in range(10)]
        # Two 20 KB events fit in 75% of a 64 KiB frame, three do not.
        assert sizes == [2, 2, 2, 2, 2]


async def test_ping_round_trip() -> None:
    async with running_server() as server, WsClient.open(server.url) as client:
        assert await client.request("ping") == {"type": "reply", "id": 2, "result": {}}


async def test_presence_lists_members_and_pushes_join_and_leave_to_watchers() -> None:
    async with running_server() as server, WsClient.open(server.url, name="watcher") as watcher:
        reply = await watcher.request("presence", topic="room/1", watch=True)
        assert reply["result"] == {"clients": [], "count": 0}
        async with WsClient.open(server.url, device="tablet", name="app") as member:
            joined = await member.request("subscribe", pattern="room/1")
            assert joined["type"] == "reply"
            await member.request("subscribe", pattern="room/+")  # a pattern joins nothing
            join = await watcher.push("join")
            assert join["topic"] == "room/1"
            assert join["info"]["device"] == "tablet"
            assert join["info"]["name"] == "app"
            listed = (await watcher.request("presence", topic="room/1"))["result"]
            assert listed["clients"] == [join["info"]]
            await member.request("unsubscribe", pattern="room/1")
            assert (await watcher.push("leave"))["info"] == join["info"]
            await member.request("subscribe", pattern="room/1")
            await watcher.push("join")
        leave = await watcher.push("leave")  # the member's connection closed
        assert leave["topic"] == "room/1"
        assert server.node.clients("acme/room/1") == []


# -- errors ------------------------------------------------------------------------------


async def test_errors_are_answered_with_documented_codes() -> None:
    async with running_server() as server, WsClient.open(server.url) as client:

        async def code(type: str, **fields: Any) -> int:
            reply = await client.request(type, **fields)
            assert reply["type"] == "error", reply
            assert isinstance(reply["message"], str) and reply["message"]
            return int(reply["code"])

        assert await code("publish", topic="docs/1", event={"specversion": "1.0"}) == 1001
        assert await code("publish", topic="docs/+", event=event()) == 1002
        assert await code("subscribe", pattern="docs/++") == 1003
        assert await code("history", pattern="a/#/b") == 1003
        assert await code("history", pattern="docs", since="not a token") == 1005
        assert await code("subscribe", pattern="docs", since="nope") == 1005
        assert await code("frobnicate") == 1011
        assert await code("ping", extra=1) == 1012
        assert await code("history", pattern="docs", limit=5000) == 1012
        await client.request("subscribe", pattern="docs")
        assert await code("subscribe", pattern="docs") == 1013
        assert await code("unsubscribe", pattern="nothing") == 1014
        assert await code("presence", topic="a/+") == 1002
        # still connected, and still working
        assert (await client.request("ping"))["type"] == "reply"
        # the failed subscribes freed their patterns
        assert (await client.request("subscribe", pattern="docs/+"))["type"] == "reply"


async def test_event_over_the_size_limit_is_refused_with_1004() -> None:
    async with (
        running_server(engine="memory://?max_event_size=2048") as server,
        WsClient.open(server.url) as client,
    ):
        reply = await client.request("publish", topic="t", event=event(data="x" * 4096))
        assert (reply["type"], reply["code"]) == ("error", 1004)


async def test_oversized_frames_are_closed_with_4503() -> None:
    async with running_server(max_frame_size=4096) as server:
        # Just over the limit: the session refuses it and says why first.
        async with WsClient.open(server.url) as client:
            await client.ws.send("x" * 5000)
            disconnect = await client.push("disconnect")
            assert disconnect["code"] == 4503 and disconnect["reconnect"] is False
            assert (await client.closed()).code == 4503
        # Far over it: refused by the socket layer before it is read, same code.
        async with WsClient.open(server.url) as client:
            await client.ws.send(b"x" * 100_000)
            assert (await client.closed()).code == 4503
        await asyncio.sleep(0.05)
        assert server.sample("hybridbus_disconnects_total", code="4503") == 2


async def test_malformed_frame_closes_4500_and_the_server_goes_on() -> None:
    async with running_server() as server:
        async with WsClient.open(server.url) as client:
            await client.ws.send("{not json")
            closed = await client.closed()
            assert closed.code == 4500
        async with WsClient.open(server.url) as client:
            assert (await client.request("ping"))["type"] == "reply"


# -- MessagePack -------------------------------------------------------------------------


async def test_msgpack_subprotocol_end_to_end() -> None:
    async with (
        running_server() as server,
        WsClient.open(server.url, MSGPACK) as sub,
        WsClient.open(server.url, JSON) as pub,
    ):
        assert sub.ws.subprotocol == MSGPACK
        assert (await sub.request("subscribe", pattern="bin/#"))["type"] == "reply"
        await pub.request("publish", topic="bin/1", event=event(id="j1", data={"k": [1, 2]}))
        ev = {"id": "m1", "source": "/mp", "type": "t", "data": b"\x00\x01\xff"}
        ack = await sub.request("publish", topic="bin/2", event=ev)
        assert ack["result"]["offset"] == 1
        first, second = await sub.events(2)
        assert first["event"]["data"] == {"k": [1, 2]}
        assert second["event"]["data"] == b"\x00\x01\xff"
        assert second["topic"] == "bin/2"
        # the JSON client reads the binary data as data_base64
        replay = await pub.request("history", pattern="bin/2")
        assert replay["result"]["events"][0]["event"]["data_base64"] == "AAH/"


async def test_websocket_pings_from_the_client_are_answered() -> None:
    async with running_server() as server, WsClient.open(server.url) as client:
        pong = await client.ws.ping(b"hi")
        await asyncio.wait_for(pong, 5)


async def test_a_closed_client_is_forgotten() -> None:
    async with running_server() as server:
        async with WsClient.open(server.url) as client:
            await client.request("subscribe", pattern="x")
            assert server.node.connections == 1
        for _ in range(100):
            if server.node.connections == 0:
                break
            await asyncio.sleep(0.01)
        assert server.node.connections == 0
        assert server.sample("hybridbus_connections", transport="websocket") == 0
        assert server.sample("hybridbus_subscriptions", transport="websocket") == 0
        assert server.sample("hybridbus_disconnects_total", code="1000") == 1


def _lines(frame: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in frame.split("\n") if line]


async def test_a_spec_example_frame_is_answered_as_documented() -> None:
    """docs/protocol.md §2.1: a client frame with a pong and a ping command."""
    async with running_server() as server, WsClient.open(server.url) as client:
        await client.ws.send('{"type":"pong"}\n{"type":"ping","id":6}')
        raw = await asyncio.wait_for(client.ws.recv(), 5)
        assert isinstance(raw, str)
        assert _lines(raw) == [{"type": "reply", "id": 6, "result": {}}]
