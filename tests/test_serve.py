"""`python -m hybridbus serve` as a real process: graceful SIGTERM, and kill -9 mid-stream.

These spawn the server (sqlite engine in a temporary directory) and talk to it
with the `websockets` client over loopback.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.servers import Closed, ServerProcess, WsClient, event, running_server


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_sigterm_flushes_closes_4000_and_exits_0(tmp_path: Path) -> None:
    server = ServerProcess(
        "--engine", f"sqlite://{tmp_path / 'data'}", "--anonymous-tenant", "acme",
        logs=tmp_path / "server.log",
    )  # fmt: skip
    try:
        await server.wait_listening()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).json()["status"] == "ready"
        async with WsClient.open(server.url) as sub, WsClient.open(server.url) as pub:
            await sub.request("subscribe", pattern="docs/#")
            ack = await pub.request("publish", topic="docs/1", event=event(id="before"))
            assert ack["result"]["offset"] == 1
            assert (await sub.push())["event"]["id"] == "before"
            server.signal(signal.SIGTERM)
            for client in (sub, pub):
                disconnect = await client.push("disconnect")
                assert (disconnect["code"], disconnect["reconnect"]) == (4000, True)
                assert (await client.closed()).code == 4000
        assert await server.wait() == 0
        messages = [r["message"] for r in server.logs()]
        assert "shutdown complete" in messages
        assert messages[-1] == "stopped"
        assert all(r["level"] in ("info", "debug") for r in server.logs())
    finally:
        await server.kill()
    # The publish acknowledged before the shutdown was committed.
    again = ServerProcess(
        "--engine", f"sqlite://{tmp_path / 'data'}", "--anonymous-tenant", "acme",
        logs=tmp_path / "again.log",
    )  # fmt: skip
    try:
        await again.wait_listening()
        async with WsClient.open(again.url) as client:
            history = await client.request("history", pattern="docs/#")
            assert [e["event"]["id"] for e in history["result"]["events"]] == ["before"]
        again.signal(signal.SIGINT)
        assert await again.wait() == 0
    finally:
        await again.kill()


class Publisher:
    """Publishes with several commands in flight, as a busy client would."""

    def __init__(self) -> None:
        self.acked: dict[str, dict[str, Any]] = {}  # event id -> its PublishResult
        self.in_flight: dict[int, tuple[str, dict[str, Any]]] = {}  # command id -> (topic, event)
        self.count = 0

    async def run(self, client: WsClient, until: int, window: int = 8) -> None:
        """Publish new events until `until` are acknowledged (raises Closed if cut off)."""
        while len(self.acked) + len(self.in_flight) < until:
            while len(self.in_flight) < window:
                await self.send_next(client)
            await self.settle(client)
        while self.in_flight:
            await self.settle(client)

    async def send_next(self, client: WsClient) -> None:
        topic, ev = f"orders/{self.count % 3}", event(id=f"o{self.count}")
        self.count += 1
        await self.send(client, topic, ev)

    async def send_burst(self, client: WsClient, count: int) -> None:
        """`count` new publishes in one frame."""
        commands = []
        for _ in range(count):
            topic, ev = f"orders/{self.count % 3}", event(id=f"o{self.count}")
            self.count += 1
            command = client.command("publish", topic=topic, event=ev)
            self.in_flight[command["id"]] = (topic, ev)
            commands.append(command)
        await client.send(*commands)

    async def send(self, client: WsClient, topic: str, ev: dict[str, Any]) -> None:
        command = client.command("publish", topic=topic, event=ev)
        self.in_flight[command["id"]] = (topic, ev)
        await client.send(command)

    async def settle(self, client: WsClient) -> None:
        await client.read()
        for id in [i for i in self.in_flight if i in client.replies]:
            reply = client.replies.pop(id)
            assert reply["type"] == "reply", reply
            _, ev = self.in_flight.pop(id)
            self.acked[ev["id"]] = {**reply["result"], "topic": self.topic_of(ev)}

    async def settle_forever(self, client: WsClient) -> None:
        """Take answers until the connection is gone (raises Closed)."""
        while True:
            await self.settle(client)

    @staticmethod
    def topic_of(ev: dict[str, Any]) -> str:
        return f"orders/{int(ev['id'][1:]) % 3}"


class Subscriber:
    """Exactly-once bookkeeping of docs/protocol.md §7: pushed twice is a failure."""

    def __init__(self) -> None:
        self.positions: list[int] = []
        self.epoch = ""
        self.received: list[dict[str, Any]] = []

    def start(self, result: dict[str, Any]) -> None:
        epoch, _, positions = result["position"].rpartition("-")
        if not self.epoch:
            self.epoch = epoch
            self.positions = [int(p) for p in positions.split(".")]

    def take(self, push: dict[str, Any]) -> None:
        shard, position = push["shard"], push["position"]
        assert position > self.positions[shard], f"pushed twice: {push}"
        self.positions[shard] = position
        self.received.append(push)

    @property
    def token(self) -> str:
        return f"{self.epoch}-" + ".".join(map(str, self.positions))


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_kill_9_mid_publishing_then_restart_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    engine = f"sqlite://{tmp_path / 'data'}?synchronous=normal"  # survives a process crash
    args = ("--engine", engine, "--anonymous-tenant", "acme")
    publisher, subscriber = Publisher(), Subscriber()

    server = ServerProcess(*args, logs=tmp_path / "first.log")
    try:
        await server.wait_listening()
        port = server.port
        async with WsClient.open(server.url) as sub, WsClient.open(server.url) as pub:
            subscriber.start((await sub.request("subscribe", pattern="orders/#"))["result"])
            await publisher.run(pub, until=30)
            while len(subscriber.received) < 30:
                subscriber.take(await sub.push())
        # The subscriber is gone (it keeps its token); publishing goes on, then kill -9
        # with publishes in flight.
        async with WsClient.open(server.url) as pub:
            await publisher.run(pub, until=120)
            # One frame of 200 publishes: the server is still at them when it is killed,
            # however fast it is (8 sent one by one were all answered first on a busy CI box).
            await publisher.send_burst(pub, 200)
            await server.kill()
            with pytest.raises(Closed):
                await publisher.settle_forever(pub)
    finally:
        await server.kill()
    assert publisher.in_flight  # answers lost with the server
    missed = len(publisher.acked) - len(subscriber.received)
    assert missed >= 60  # acknowledged while the subscriber was away: only the log has them

    restarted = ServerProcess(*args, port=port, logs=tmp_path / "second.log")
    try:
        await restarted.wait_listening()
        async with WsClient.open(restarted.url) as pub:
            # The client's retry of unanswered publishes: same events, same ids.
            for id, (topic, ev) in list(publisher.in_flight.items()):
                del publisher.in_flight[id]
                await publisher.send(pub, topic, ev)
            while publisher.in_flight:
                await publisher.settle(pub)
        async with WsClient.open(restarted.url) as sub, WsClient.open(restarted.url) as pub:
            reply = await sub.request("subscribe", pattern="orders/#", since=subscriber.token)
            assert reply["result"]["recovered"] is True
            await publisher.run(pub, until=len(publisher.acked) + 30)  # live again, meanwhile
            while len(subscriber.received) < len(publisher.acked):
                subscriber.take(await sub.push())
            with pytest.raises(TimeoutError):  # and nothing more
                async with asyncio.timeout(0.3):
                    subscriber.take(await sub.push())
        restarted.signal(signal.SIGTERM)
        assert await restarted.wait() == 0
    finally:
        await restarted.kill()

    received_ids = [p["event"]["id"] for p in subscriber.received]
    assert sorted(received_ids) == sorted(publisher.acked)  # every acked event, exactly once
    for topic in ("orders/0", "orders/1", "orders/2"):  # in order, without gaps
        offsets = [p["offset"] for p in subscriber.received if p["topic"] == topic]
        assert offsets == list(range(1, len(offsets) + 1))
        for push in subscriber.received:
            if push["topic"] == topic:
                assert publisher.acked[push["event"]["id"]]["offset"] == push["offset"]


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_taken_port_fails_with_exit_status_1(tmp_path: Path) -> None:
    first = ServerProcess("--engine", "memory://", logs=tmp_path / "first.log")
    try:
        await first.wait_listening()
        second = ServerProcess(
            "--engine", "memory://", port=first.port, logs=tmp_path / "second.log"
        )
        assert await second.wait() == 1
        assert any(r["message"].startswith("cannot serve") for r in second.logs())
    finally:
        first.signal(signal.SIGTERM)
        await first.wait()
        await asyncio.sleep(0)


async def test_the_app_serves_http_api_websocket_and_presence_on_one_port() -> None:
    async with (
        running_server() as server,
        WsClient.open(server.url, name="editor") as ws,
        httpx.AsyncClient(base_url=server.http) as http,
    ):
        await ws.request("subscribe", pattern="docs/1")
        response = await http.post(
            "/v1/topics/acme/docs/1/events",
            content=json.dumps(event(id="via-http")),
            headers={"Content-Type": "application/cloudevents+json"},
        )
        assert response.status_code == 201, response.text
        push = await ws.push()
        assert (push["topic"], push["event"]["id"]) == ("docs/1", "via-http")
        presence = (await http.get("/v1/topics/acme/docs/1/presence")).json()
        assert [c["name"] for c in presence["clients"]] == ["editor"]
        assert (await http.get("/v1/openapi.json")).status_code == 200


def test_the_server_process_collects_cycles_rarely_and_never_scans_its_startup_objects() -> None:
    import gc

    from hybridbus import serve

    before = gc.get_threshold()
    try:
        serve._tune_gc()
        assert gc.get_threshold() == serve._GC_THRESHOLDS
        assert gc.get_threshold()[0] > before[0]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
