"""The node over real sockets: heartbeat, slow consumers, shutdown, token expiry, refresh."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from typing import Any

import pytest
from tests.servers import Expiring, WsClient, event, running_server, stalled_client
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.timeout(30)


async def test_a_silent_client_is_closed_no_ping_while_one_that_answers_stays() -> None:
    async with running_server(ping_interval=0.2) as server:
        async with WsClient.open(server.url) as silent, WsClient.open(server.url) as lively:

            async def observe_silence() -> tuple[int | None, int, float]:
                started = time.monotonic()
                pings = 0
                while True:  # read without ever answering the server's pings
                    try:
                        frame = await asyncio.wait_for(silent.ws.recv(), 5)
                    except ConnectionClosed as exc:
                        code = exc.rcvd.code if exc.rcvd else None
                        return code, pings, time.monotonic() - started
                    messages = [json.loads(line) for line in str(frame).split("\n") if line]
                    pings += sum(m["type"] == "ping" for m in messages)

            async def stay_lively(seconds: float) -> None:
                # WsClient.read answers every server ping with a pong.
                deadline = time.monotonic() + seconds
                while (left := deadline - time.monotonic()) > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left):
                            await lively.read()

            (code, pings, elapsed), _ = await asyncio.gather(observe_silence(), stay_lively(1.0))
            assert code == 4002
            assert pings >= 1
            assert 0.35 <= elapsed < 2.0  # two intervals of silence, on a ~50 ms ticker
            assert (await lively.request("ping"))["type"] == "reply"
        assert server.sample("hybridbus_disconnects_total", code="4002") == 1


async def test_a_stalled_consumer_is_cut_off_while_another_keeps_its_latency() -> None:
    async with running_server(max_pending_bytes=64 * 1024) as server:
        subscribe = {"type": "subscribe", "id": 2, "pattern": "firehose"}
        stalled = await stalled_client(server.port, subscribe)
        try:
            async with WsClient.open(server.url) as healthy, WsClient.open(server.url) as pub:
                await healthy.request("subscribe", pattern="firehose")
                for _ in range(100):  # the stalled one's subscribe has been executed
                    if server.sample("hybridbus_subscriptions", transport="websocket") == 2:
                        break
                    await asyncio.sleep(0.01)
                latencies: list[float] = []
                payload = "x" * 30_000
                for n in range(300):  # ~9 MB in all: far more than socket buffers hold
                    sent = time.monotonic()
                    ack = await pub.request(
                        "publish", topic="firehose", event=event(id=f"f{n}", data=payload)
                    )
                    assert ack["type"] == "reply"
                    push = await healthy.push()
                    latencies.append(time.monotonic() - sent)
                    assert push["event"]["id"] == f"f{n}"
                    if server.sample("hybridbus_disconnects_total", code="4001") and n > 150:
                        break
                assert server.sample("hybridbus_disconnects_total", code="4001") == 1
                assert server.sample("hybridbus_drops_total", reason="slow_consumer") >= 1
                latencies.sort()
                assert latencies[len(latencies) * 99 // 100] < 0.25, latencies[-5:]
                # the healthy subscriber is still connected and served
                assert (await healthy.request("ping"))["type"] == "reply"
            # the server dropped the stalled socket (aborted it: it does not read)
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(10):
                while True:
                    try:
                        chunk = await loop.sock_recv(stalled, 1 << 20)
                    except ConnectionResetError:
                        break
                    if not chunk:
                        break
        finally:
            stalled.close()
        assert server.node.connections == 0


async def test_close_connections_flushes_then_closes_4000() -> None:
    async with running_server() as server:
        async with WsClient.open(server.url) as sub, WsClient.open(server.url) as pub:
            await sub.request("subscribe", pattern="t")
            await pub.send(*[pub.command("publish", topic="t", event=event()) for _ in range(50)])
            await pub.answer(50 + 1)  # the last publish (ids 2..51) was acknowledged
            shutdown = asyncio.create_task(server.node.close_connections())
            events = await sub.events(50)  # everything queued still arrives first
            assert [e["offset"] for e in events] == list(range(1, 51))
            disconnect = await sub.push("disconnect")
            assert disconnect == {
                "type": "disconnect",
                "code": 4000,
                "reason": "the server is shutting down",
                "reconnect": True,
            }
            assert (await sub.closed()).code == 4000
            assert (await pub.closed()).code == 4000
            await shutdown
        assert server.node.connections == 0
        assert not server.node.ready


async def test_after_shutdown_began_new_connections_are_refused() -> None:
    import httpx

    async with running_server() as server, httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.get("/readyz")).status_code == 200
        await server.node.close_connections()
        assert (await http.get("/readyz")).status_code == 503
        assert (await http.get("/healthz")).status_code == 200
        response = await http.get(
            "/v1/ws",
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
            },
        )
        assert response.status_code == 503


async def test_metrics_endpoint_exposes_the_server_metrics() -> None:
    import httpx

    async with running_server() as server:
        async with WsClient.open(server.url) as client:
            await client.request("subscribe", pattern="m")
            await client.request("publish", topic="m", event=event())
            await client.push()
            async with httpx.AsyncClient(base_url=server.http) as http:
                response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = response.text
        assert 'hybridbus_connections{transport="websocket"} 1.0' in text
        assert 'hybridbus_subscriptions{transport="websocket"} 1.0' in text
        assert 'hybridbus_publishes_total{gateway="websocket"} 1.0' in text
        assert 'hybridbus_deliveries_total{transport="websocket"} 1.0' in text
        assert "hybridbus_publish_deliver_seconds_count 1.0" in text


async def test_an_expired_token_closes_4004_unless_refreshed() -> None:
    async with (
        running_server(authenticator=Expiring()) as server,
        WsClient.open(server.url, token="ann:0.3") as lapsing,
        WsClient.open(server.url, token="bob:0.3") as refreshing,
    ):
        reply = await refreshing.request("refresh", token="bob:60")
        assert reply["result"]["expires"] > time.time() + 50
        closed = await lapsing.closed()
        assert closed.code == 4004
        assert (await refreshing.request("ping"))["type"] == "reply"


async def test_a_refused_or_foreign_refresh_closes_the_connection() -> None:
    async with running_server(authenticator=Expiring()) as server:
        async with WsClient.open(server.url, token="ann:60") as client:
            await client.send(client.command("refresh", token="bad"))
            assert (await client.closed()).code == 4501
        async with WsClient.open(server.url, token="ann:60") as client:
            await client.send(client.command("refresh", token="eve:60"))
            assert (await client.closed()).code == 4502


async def test_a_client_that_drops_mid_stream_frees_everything() -> None:
    async with running_server(session_grace=0.5) as server:
        raw = await stalled_client(
            server.port,
            {"type": "subscribe", "id": 2, "pattern": "x"},
            {"type": "presence", "id": 3, "topic": "x", "watch": True},
        )
        for _ in range(100):
            if server.sample("hybridbus_subscriptions", transport="websocket") == 1:
                break
            await asyncio.sleep(0.01)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        raw.close()  # RST: no close frame
        for _ in range(200):
            if server.node.connections == 0:
                break
            await asyncio.sleep(0.01)
        assert server.node.connections == 0
        assert server.sample("hybridbus_subscriptions", transport="websocket") == 0
        # Its session waits for it for the grace period (docs/protocol.md, "Sessions"),
        # holding nothing but its place in the topic; then that goes too.
        assert [info.state for info in server.node.clients("acme/x")] == ["degraded"]
        for _ in range(500):
            if not server.node.clients("acme/x"):
                break
            await asyncio.sleep(0.01)
        assert server.node.clients("acme/x") == []
        assert len(server.node.sessions) == 0


async def test_shutdown_is_bounded_when_a_client_never_answers_the_close() -> None:
    async with running_server(shutdown_timeout=1.0) as server:
        deaf = await stalled_client(server.port, {"type": "subscribe", "id": 2, "pattern": "x"})
        try:
            async with WsClient.open(server.url) as polite:
                started = time.monotonic()
                await server.node.close_connections()
                assert time.monotonic() - started < 3.0
                assert (await polite.closed()).code == 4000
            assert server.node.connections == 0
        finally:
            deaf.close()


async def test_deliveries_of_several_subscriptions_share_frames_and_stop_at_unsubscribe() -> None:
    async with (
        running_server() as server,
        WsClient.open(server.url) as sub,
        WsClient.open(server.url) as pub,
    ):
        await sub.request("subscribe", pattern="a")
        await sub.request("subscribe", pattern="+")
        await pub.send(*[pub.command("publish", topic="a", event=event()) for _ in range(40)])
        await pub.answer(40 + 1)
        pushes = await sub.events(80)
        assert sorted(p["offset"] for p in pushes if p["pattern"] == "a") == list(range(1, 41))
        assert [p["offset"] for p in pushes if p["pattern"] == "+"] == list(range(1, 41))
        assert sub.frames < 40  # both subscriptions' pushes coalesced into few frames
        # An unsubscribe answered while events flow: nothing of "a" after its reply.
        await pub.send(*[pub.command("publish", topic="a", event=event()) for _ in range(200)])
        unsubscribe = sub.command("unsubscribe", pattern="a")
        await sub.send(unsubscribe)
        seen: list[dict[str, Any]] = list(sub.pushes)
        sub.pushes.clear()
        while not (
            any(m.get("pattern") == "+" and m["offset"] == 240 for m in seen)
            and any(m.get("id") == unsubscribe["id"] for m in seen)
        ):
            seen += await sub.read()
        replied = next(i for i, m in enumerate(seen) if m.get("id") == unsubscribe["id"])
        assert {m["pattern"] for m in seen[replied + 1 :] if m["type"] == "event"} <= {"+"}


async def test_connect_timeout_and_in_flight_limit_come_from_the_config() -> None:
    async with running_server(connect_timeout=0.3, max_in_flight=2) as server:
        assert server.node.session_config.max_in_flight == 2
        started = time.monotonic()
        async with WsClient.open(server.url, connect_first=False) as silent:
            closed = await silent.closed()
        assert closed.code == 4002
        assert 0.25 <= time.monotonic() - started < 2.0
        async with WsClient.open(server.url) as client:
            await client.send(*[client.command("history", pattern="x") for _ in range(3)])
            answers = [await client.answer(id) for id in (2, 3, 4)]
            refused = [a["type"] == "error" and a["code"] == 1016 for a in answers]
            assert refused == [False, False, True]  # two in flight, the third refused


async def test_a_batch_of_pushes_is_encoded_once_and_shared_unless_filtered() -> None:
    from hybridbus.core.event import Event
    from hybridbus.core.log import Delivery
    from hybridbus.proto.codec import JSON

    def deliveries(*positions: int) -> list[Delivery]:
        return [
            Delivery("acme/t", p, 0, p, 1.0, Event(id=str(p), source="/s", type="x"))
            for p in positions
        ]

    async with running_server() as server:
        node = server.node
        first = node.pushes.push_batch(JSON, "acme/t", "t", "acme/", deliveries(1, 2, 3))
        again = node.pushes.push_batch(JSON, "acme/t", "t", "acme/", deliveries(1, 2, 3))
        assert again is first  # one list for every connection draining this run
        assert [JSON.decode_server(m)[0].position for m in first] == [1, 2, 3]
        shorter = node.pushes.push_batch(JSON, "acme/t", "t", "acme/", deliveries(1, 2))
        assert shorter is not first and len(shorter) == 2
        pushes = node.pushes
        filtered = pushes.push_batch(JSON, "acme/t", "t", "acme/", deliveries(1, 3), whole=False)
        assert [JSON.decode_server(m)[0].position for m in filtered] == [1, 3]
        admin = node.pushes.push_batch(JSON, "acme/t", "acme/t", "", deliveries(1, 2, 3))
        assert admin is not first  # an admin's pushes name the absolute topic
        assert JSON.decode_server(admin[0])[0].topic == "acme/t"
