"""The Python client against a real server: commands, and drops it survives without loss."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import defaultdict

import pytest
from tests.servers import Server, event, running_server

import hybridbus.client
from hybridbus.client import ClientConfig, ConnectFailed
from hybridbus.core.backoff import Backoff
from hybridbus.errors import Disconnected, InvalidEvent, RemoteError

FAST = ClientConfig(backoff=Backoff(base=0.01, cap=0.05), request_timeout=10.0)


def drop_all(server: Server) -> int:
    """Cut every client connection as a network failure would (no close handshake)."""
    connections = list(server.node._connections.values())
    for connection in connections:
        connection.abort()
    return len(connections)


async def test_publish_subscribe_history_presence_ping() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as c,
    ):
        async with c.subscribe("docs/+") as sub:
            ack = await c.publish("docs/42", event("e1", data={"n": 1}))
            assert (ack.offset, ack.duplicate) == (1, False)
            again = await c.publish("docs/42", event("e1", data={"n": 1}))
            assert again.duplicate and again.offset == 1
            got = await asyncio.wait_for(anext(sub), 5)
            assert (got.topic, got.offset, got.event.data) == ("docs/42", 1, {"n": 1})
            assert sub.position == got.token
            assert [i.event.id for i in (await c.history("docs/42")).events] == ["e1"]
        async with c.subscribe("docs/42"):
            clients = await c.presence("docs/42")
            assert len(clients) == 1
        await c.ping()


async def test_bad_input_is_refused_locally_or_with_the_servers_code() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as c,
    ):
        with pytest.raises(InvalidEvent):
            await c.publish("docs/1", {"id": "", "source": "/s", "type": "t"})
        with pytest.raises(RemoteError) as info:
            await c.publish("docs/+", event())
        assert info.value.code == 1002
        with pytest.raises(RemoteError):
            async with c.subscribe("docs/#/x"):
                pass
        assert (await c.publish("docs/1", event())).offset == 1  # the connection carries on


async def test_every_event_once_in_order_across_repeated_drops() -> None:
    """A subscriber's connection is cut again and again while a publisher keeps publishing."""
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as publisher,
        hybridbus.client.connect(server.url, config=FAST) as subscriber,
    ):
        total = 400
        acked: list[tuple[str, int]] = []

        async def publish_all() -> None:
            for n in range(total):
                ack = await publisher.publish(f"docs/{n % 3}", event(f"p{n}"))
                acked.append((f"docs/{n % 3}", ack.offset))
                if n % 20 == 0:
                    await asyncio.sleep(0.005)

        got: list[tuple[str, int]] = []
        async with subscriber.subscribe("docs/+") as sub:

            async def consume() -> None:
                async for received in sub:
                    got.append((received.topic, received.offset))
                    if len(got) == total:
                        return

            consumer = asyncio.create_task(consume())
            producer = asyncio.create_task(publish_all())
            drops = 0
            while not producer.done():
                await asyncio.sleep(0.03)
                drops += drop_all(server)
            await producer
            await asyncio.wait_for(consumer, 10)
        assert drops >= 3
        assert subscriber.connects > 3
        assert sub.recovered
        assert len(got) == len(set(got)) == total, "lost or repeated an event"
        assert sorted(got) == sorted(acked)
        last: dict[str, int] = defaultdict(int)
        for topic, offset in got:
            assert offset == last[topic] + 1, f"{topic} out of order"
            last[topic] = offset


async def test_a_publish_in_flight_during_a_drop_is_stored_once() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as c,
    ):
        pending = [asyncio.create_task(c.publish("docs/1", event(f"x{n}"))) for n in range(50)]
        await asyncio.sleep(0)
        drop_all(server)
        acks = await asyncio.gather(*pending)
        page = await c.history("docs/1", limit=1000)
        assert sorted(i.event.id for i in page.events) == sorted(f"x{n}" for n in range(50))
        assert sorted(a.offset for a in acks) == list(range(1, 51))


async def test_a_terminal_close_ends_the_client() -> None:
    async with running_server(anonymous_tenant=None) as server:
        with pytest.raises(Disconnected) as info:
            await hybridbus.client.connect(server.url, config=FAST)
        assert info.value.close_code == 4501


async def test_the_first_connection_failing_raises_at_once() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{sock.getsockname()[1]}/v1/ws"
    started = time.monotonic()
    with pytest.raises(ConnectFailed) as info:
        await hybridbus.client.connect(url, config=ClientConfig(request_timeout=30.0))
    assert time.monotonic() - started < 2.0  # not the 30 s request timeout
    assert isinstance(info.value, Disconnected)
    assert (info.value.url, info.value.close_code) == (url, None)
    assert str(info.value).startswith(f"cannot connect to {url}: ")


async def test_a_client_that_was_connected_reconnects_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hybridbus.client")
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as c,
    ):
        assert drop_all(server) == 1
        await c.ping()  # sent again on the next connection
        assert c.connects == 2
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("hybridbus.client")]
    assert messages[0].startswith("reconnecting (attempt 1, in ")
    assert messages[1] == "reconnected"
