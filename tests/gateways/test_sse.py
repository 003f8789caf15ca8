"""SSE on a real aiohttp server, read by httpx and by `curl -N`, resumed with Last-Event-ID.

Every stream is parsed the way a browser's EventSource parses it
(`tests.gateways.support.SseReader`); resuming always sends the `id` of the
last event received as Last-Event-ID, as a browser does when it reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from tests.gateways.support import Api, GatedEngine, SseReader, event, serving

import hybridbus
from hybridbus.core.event import Event
from hybridbus.core.log import Delivery, Position
from hybridbus.engine.base import EngineConfig
from hybridbus.errors import ErrorCode, Revoked, TokenExpired, TooManyConnections
from hybridbus.gateways.http import HttpConfig, HttpGateway
from hybridbus.gateways.httputil import guarded
from hybridbus.gateways.sse import End, Release, SseConfig, SseGateway
from hybridbus.gateways.sse_stream import Encoded
from hybridbus.hub.bus import Bus, BusConfig
from hybridbus.server.metrics import Metrics

pytest.importorskip("cloudevents", minversion="2.2", reason="the cloudevents SDK is a test extra")

from cloudevents.core.formats.json import JSONFormat

PROBLEM = "application/problem+json"


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with hybridbus.open("memory://") as bus, serving(bus) as running:
        yield running


@contextlib.asynccontextmanager
async def stream(
    api: Api, pattern: str, last_event_id: str | None = None, **params: str
) -> AsyncIterator[SseReader]:
    """An SSE stream read with httpx, as an EventSource would."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    async with (
        httpx.AsyncClient(base_url=api.base, timeout=10.0) as client,
        client.stream(
            "GET", "/v1/sse", params={"pattern": pattern, **params}, headers=headers
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"].startswith("no-cache")
        lines = response.aiter_lines()

        async def next_line() -> str | None:
            try:
                return await anext(lines)
            except StopAsyncIteration:
                return None

        yield SseReader(next_line)


async def publish(api: Api, topic: str, *ids: str) -> list[str]:
    """Publish events with these ids; return the resume token after each (from history)."""
    for id_ in ids:
        await api.bus.publish(topic, event(id_, data={"id": id_}))
    return [
        str(Position(api.bus.engine.epoch, (d.position,)))
        for d in (await api.bus.history(topic)).deliveries
    ][-len(ids) :]


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_httpx_reads_subscribed_then_events_with_resume_tokens(api: Api) -> None:
    async with stream(api, "acme/docs/+") as sse:
        subscribed = await sse.next()
        assert subscribed is not None and subscribed.event == "subscribed"
        assert sse.retry == 2000
        assert "hybridbus" in sse.comments
        start = subscribed.json()
        assert start == {
            "pattern": "acme/docs/+",
            "epoch": api.bus.engine.epoch,
            "position": subscribed.id,
            "recovered": True,
        }
        tokens = await publish(api, "acme/docs/1", "a", "b")
        tokens += await publish(api, "acme/docs/2", "c")
        await publish(api, "acme/chat/1", "not-matched")
        got = await sse.events(3)
        assert [e.json()["id"] for e in got] == ["a", "b", "c"]
        assert [e.id for e in got] == [
            tokens[0],
            tokens[1],
            str(Position(api.bus.engine.epoch, (3,))),
        ]
        # `data` is the CloudEvent, one line, that a CloudEvents SDK reads as is.
        parsed = JSONFormat().read(None, got[0].data)
        assert parsed.get_attributes()["source"] == "/test"
        assert parsed.get_data() == {"id": "a"}
    assert api.sample("hybridbus_deliveries_total", transport="sse") == 3


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
async def test_last_event_id_resumes_exactly_with_the_missed_events(
    engine: str, tmp_path: Path
) -> None:
    url = "memory://" if engine == "memory" else f"sqlite://{tmp_path / 'data'}"
    async with hybridbus.open(url) as bus, serving(bus) as api:
        async with stream(api, "acme/#") as sse:
            await sse.events(1, "subscribed")
            await publish(api, "acme/a", "1", "2")
            first = await sse.events(2)
        # Away: three more are published.
        await publish(api, "acme/a", "3")
        await publish(api, "acme/b/c", "4", "5")
        # `since` is older; Last-Event-ID wins.
        async with stream(
            api, "acme/#", last_event_id=first[-1].id, since=str(Position(bus.engine.epoch, (0,)))
        ) as sse:
            subscribed = (await sse.events(1, "subscribed"))[0].json()
            assert subscribed["recovered"] and subscribed["position"] == first[-1].id
            missed = await sse.events(3)
            assert [e.json()["id"] for e in missed] == ["3", "4", "5"]
            await publish(api, "acme/a", "6")
            assert [e.json()["id"] for e in await sse.events(1)] == ["6"]


async def curl_lines(
    url: str, *headers: str
) -> tuple[asyncio.subprocess.Process, Callable[[], Awaitable[str | None]]]:
    args = [item for header in headers for item in ("-H", header)]
    process = await asyncio.create_subprocess_exec(
        "curl", "-sN", "--max-time", "20", *args, url, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    out = process.stdout

    async def next_line() -> str | None:
        line = await out.readline()
        return line.decode().rstrip("\r\n") if line else None

    return process, next_line


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_reads_the_stream_and_resumes_with_last_event_id() -> None:
    config = HttpConfig(sse=SseConfig(keepalive=0.2))
    async with hybridbus.open("memory://") as bus, serving(bus, config=config) as api:
        await curl_session(api)


async def curl_session(api: Api) -> None:
    url = f"{api.base}/v1/sse?pattern=acme/docs/%2B"
    process, next_line = await curl_lines(url)
    try:
        sse = SseReader(next_line)
        await sse.events(1, "subscribed")
        await publish(api, "acme/docs/1", "a", "b")
        got = await sse.events(2)
        assert [e.json()["id"] for e in got] == ["a", "b"]
    finally:
        process.terminate()
        await process.wait()
    await publish(api, "acme/docs/9", "c", "d")
    # As a person types it: a literal '+' (a plus, not a space).
    url = f"{api.base}/v1/sse?pattern=acme/docs/+"
    process, next_line = await curl_lines(url, f"Last-Event-ID: {got[-1].id}")
    try:
        sse = SseReader(next_line)
        assert (await sse.events(1, "subscribed"))[0].json()["recovered"]
        assert [e.json()["id"] for e in await sse.events(2)] == ["c", "d"]
    finally:
        process.terminate()
        await process.wait()
    # curl is gone: the next keep-alive notices, and the subscription is freed.
    await wait_for(lambda: api.sample("hybridbus_subscriptions", transport="sse") == 0)


async def test_envelope_carries_topic_and_offset(api: Api) -> None:
    async with stream(api, "acme/#", envelope="true") as sse:
        await sse.events(1, "subscribed")
        await publish(api, "acme/x/y", "a")
        (got,) = await sse.events(1)
        assert got.json() == {
            "topic": "acme/x/y",
            "offset": 1,
            "shard": 0,
            "position": 1,
            "event": event("a", data={"id": "a"}),
        }


async def test_a_token_from_another_epoch_says_not_recovered(api: Api) -> None:
    await publish(api, "acme/a", "old")
    async with stream(api, "acme/#", since="Zz9-7") as sse:
        subscribed = (await sse.events(1, "subscribed"))[0]
        assert subscribed.json()["recovered"] is False
        # The stream starts at the head; its `id` already resumes from there.
        assert subscribed.id == str(Position(api.bus.engine.epoch, (1,)))
        await publish(api, "acme/a", "new")
        assert [e.json()["id"] for e in await sse.events(1)] == ["new"]


async def test_continuity_lost_mid_recovery_ends_the_stream_then_says_so() -> None:
    engine = GatedEngine(config=EngineConfig(max_per_topic=6))
    bus = Bus(engine, BusConfig(page_size=2))
    await bus.start()
    async with bus, serving(bus) as api:
        await publish(api, "acme/a", *"123456")
        engine.hold_after = engine.reads + 1  # the first page reads, the second waits
        start = str(Position(engine.epoch, (0,)))
        async with stream(api, "acme/a", since=start) as sse:
            assert (await sse.events(1, "subscribed"))[0].json()["recovered"]
            got = await sse.events(2)
            assert [e.json()["id"] for e in got] == ["1", "2"]
            # Retention removes 3 before the stream could read it.
            for id_ in "789":
                await bus.publish("acme/a", event(id_, data={"id": id_}))
            engine.gate.set()
            (ended,) = await sse.events(1, "unsubscribed")
            assert ended.json()["code"] == ErrorCode.SUBSCRIPTION_ENDED
            assert ended.json()["retriable"] is True
            assert await sse.next() is None
        async with stream(api, "acme/a", last_event_id=got[-1].id) as sse:
            assert (await sse.events(1, "subscribed"))[0].json()["recovered"] is False
            assert [e.json()["id"] for e in await sse.events(6)] == list("456789")


async def test_a_slow_client_is_ended_and_resumes_without_loss() -> None:
    config = BusConfig(queue_size=4)
    async with hybridbus.open("memory://", bus=config) as bus, serving(bus) as api:
        # A fixed, small receive buffer: the kernel may not grow it to hold everything.
        small = httpx.AsyncHTTPTransport(
            socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)]
        )
        async with (
            httpx.AsyncClient(base_url=api.base, timeout=10.0, transport=small) as client,
            client.stream("GET", "/v1/sse", params={"pattern": "acme/#"}) as response,
        ):
            await wait_for(lambda: api.sample("hybridbus_subscriptions", transport="sse") == 1)
            # Not reading: ~25 MB fill the socket buffers, then the queue of 4.
            for i in range(100):
                await bus.publish("acme/big", event(str(i), data="x" * 250_000))
            lines = response.aiter_lines()

            async def next_line() -> str | None:
                return await anext(lines, None)

            first = await SseReader(next_line).rest()
        assert first[0].event == "subscribed"
        assert first[-1].event == "unsubscribed"
        assert first[-1].json()["code"] == ErrorCode.SUBSCRIBER_TOO_SLOW
        assert first[-1].json()["retriable"] is True
        delivered = [e for e in first if e.event == "event"]
        assert 0 < len(delivered) < 100
        async with stream(api, "acme/#", last_event_id=delivered[-1].id) as sse:
            await sse.events(1, "subscribed")
            rest = await sse.events(100 - len(delivered))
        ids = [e.json()["id"] for e in delivered + rest]
        assert ids == [str(i) for i in range(100)]


async def test_keepalives_and_a_client_that_leaves_frees_the_subscription() -> None:
    config = HttpConfig(sse=SseConfig(keepalive=0.1))
    async with hybridbus.open("memory://") as bus, serving(bus, config=config) as api:
        before = len(asyncio.all_tasks())
        async with stream(api, "acme/#") as sse:
            await sse.events(1, "subscribed")
            await publish(api, "acme/a", "1")
            await sse.events(1)
            assert await sse.comment() == "keepalive"
            assert await sse.comment() == "keepalive"
            assert api.sample("hybridbus_connections", transport="sse") == 1
        # Without handler cancellation, the next keep-alive notices.
        await wait_for(lambda: api.sample("hybridbus_subscriptions", transport="sse") == 0)
        assert api.sample("hybridbus_connections", transport="sse") == 0
        await wait_for(lambda: len(asyncio.all_tasks()) <= before)
        await bus.publish("acme/a", event("after"))  # nobody left to deliver to


async def test_with_handler_cancellation_a_leaving_client_is_freed_at_once() -> None:
    config = HttpConfig(sse=SseConfig(keepalive=60))
    async with (
        hybridbus.open("memory://") as bus,
        serving(bus, config=config, handler_cancellation=True) as api,
    ):
        async with stream(api, "acme/#") as sse:
            await sse.events(1, "subscribed")
        await wait_for(lambda: api.sample("hybridbus_subscriptions", transport="sse") == 0, 2.0)


async def test_closing_the_gateway_ends_streams_and_refuses_new_ones(api: Api) -> None:
    async with stream(api, "acme/#") as sse:
        await sse.events(1, "subscribed")
        api.gateway.close()
        (ended,) = await sse.events(1, "unsubscribed")
        assert ended.json() == {
            "pattern": "acme/#",
            "code": ErrorCode.BUS_CLOSED,
            "reason": "the server is shutting down; try another one or later",
            "retriable": True,
        }
        assert await sse.next() is None
    async with httpx.AsyncClient(base_url=api.base) as client:
        response = await client.get("/v1/sse", params={"pattern": "acme/#"})
        assert response.status_code == 503
        assert response.json()["code"] == ErrorCode.BUS_CLOSED


@pytest.mark.parametrize(
    ("query", "headers", "status", "code", "members"),
    [
        ({}, {}, 400, ErrorCode.INVALID_INPUT, {"parameter": "pattern"}),
        ({"pattern": "acme/#/x"}, {}, 400, ErrorCode.INVALID_PATTERN, {}),
        (
            {"pattern": "acme/#", "since": "bad"},
            {},
            400,
            ErrorCode.INVALID_POSITION,
            {"parameter": "since"},
        ),
        (
            {"pattern": "acme/#"},
            {"Last-Event-ID": "bad"},
            400,
            ErrorCode.INVALID_POSITION,
            {"parameter": "Last-Event-ID"},
        ),
        (
            {"pattern": "acme/#", "envelope": "maybe"},
            {},
            400,
            ErrorCode.INVALID_INPUT,
            {"parameter": "envelope"},
        ),
    ],
)
async def test_refusals_come_before_the_stream_as_problems(
    api: Api,
    query: dict[str, str],
    headers: dict[str, str],
    status: int,
    code: ErrorCode,
    members: dict[str, Any],
) -> None:
    async with httpx.AsyncClient(base_url=api.base) as client:
        response = await client.get("/v1/sse", params=query, headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["code"] == code
    for key, value in members.items():
        assert body[key] == value
    assert api.sample("hybridbus_subscriptions", transport="sse") == 0


def test_the_encoding_of_a_delivery_is_shared_and_bounded() -> None:
    encoded = Encoded(max_entries=3, max_bytes=10_000)
    deliveries = [
        Delivery("acme/a", i, 0, i, 0.0, Event(id=str(i), source="/s", type="t"))
        for i in range(1, 6)
    ]
    first = [encoded(d) for d in deliveries]
    assert [encoded(d) for d in deliveries[2:]] == first[2:]
    assert all(encoded(d) is first[i + 2] for i, d in enumerate(deliveries[2:]))  # cached
    assert len(encoded._entries) == 3  # the oldest went first
    big = Delivery("acme/a", 9, 0, 9, 0.0, Event(id="9", source="/s", type="t", data="x" * 20_000))
    assert encoded(big) == encoded(big) and id(big) not in encoded._entries  # over the byte bound


# -- memory, holders and leaving clients ----------------------------------------------------


async def test_a_reader_over_the_byte_bound_is_ended_1201_and_resumes_without_loss() -> None:
    # The subscription's own queue (10,000 events) is far away: the bound in bytes ends it.
    config = HttpConfig(sse=SseConfig(max_pending_bytes=256 * 1024))
    async with hybridbus.open("memory://") as bus, serving(bus, config=config) as api:
        small = httpx.AsyncHTTPTransport(
            socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)]
        )
        async with (
            httpx.AsyncClient(base_url=api.base, timeout=10.0, transport=small) as client,
            client.stream("GET", "/v1/sse", params={"pattern": "acme/#"}) as response,
        ):
            await wait_for(lambda: api.sample("hybridbus_subscriptions", transport="sse") == 1)
            # Not reading: 100 kB events fill the socket buffers, then the 256 kB bound.
            published = 0
            while not api.sample("hybridbus_drops_total", reason="slow_consumer"):
                await bus.publish("acme/big", event(str(published), data="x" * 100_000))
                published += 1
                await asyncio.sleep(0)
                assert published < 1000, "never ended"
            lines = response.aiter_lines()

            async def next_line() -> str | None:
                return await anext(lines, None)

            first = await SseReader(next_line).rest()  # read at once: the ending gets through
        assert first[0].event == "subscribed"
        assert first[-1].event == "unsubscribed"
        assert first[-1].json() == {
            "pattern": "acme/#",
            "code": ErrorCode.SUBSCRIBER_TOO_SLOW,
            "reason": "over 262144 bytes queued for the client; "
            "reconnect with the last event's id as Last-Event-ID",
            "retriable": True,
        }
        delivered = [e for e in first if e.event == "event"]
        assert 0 < len(delivered) < published
        await wait_for(lambda: api.sample("hybridbus_subscriptions", transport="sse") == 0)
        async with stream(api, "acme/#", last_event_id=delivered[-1].id) as sse:
            await sse.events(1, "subscribed")
            rest = await sse.events(published - len(delivered))
        ids = [e.json()["id"] for e in delivered + rest]
        assert ids == [str(i) for i in range(published)]


@dataclasses.dataclass
class Holder:
    """A `hold` hook that counts streams, refuses past `limit`, and can end them all."""

    limit: int
    ends: list[End] = dataclasses.field(default_factory=list)
    held: int = 0

    async def __call__(self, request: web.Request, end: End) -> Release:
        if self.held >= self.limit:
            raise TooManyConnections(f"already {self.held} streams")
        self.held += 1
        self.ends.append(end)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.held -= 1

        return release


@contextlib.asynccontextmanager
async def held_streams(bus: Bus, holder: Holder, keepalive: float = 15.0) -> AsyncIterator[Api]:
    """The SSE route alone, its streams held by `holder`."""
    metrics = Metrics()
    gateway = SseGateway(bus, metrics, SseConfig(keepalive=keepalive), hold=holder)
    app = web.Application()
    app.add_routes([web.get("/v1/sse", guarded(gateway.stream))])
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield Api(f"http://127.0.0.1:{port}", bus, metrics, HttpGateway(bus, metrics))
    finally:
        gateway.close()
        await runner.cleanup()


async def test_the_holder_counts_refuses_and_ends_streams() -> None:
    holder = Holder(limit=1)
    async with hybridbus.open("memory://") as bus, held_streams(bus, holder) as api:
        async with stream(api, "acme/#") as sse:
            await sse.events(1, "subscribed")
            assert holder.held == 1
            # Full: the next stream is refused before it starts, as a problem.
            async with httpx.AsyncClient(base_url=api.base) as client:
                response = await client.get("/v1/sse", params={"pattern": "acme/#"})
            assert response.status_code == 429
            assert response.headers["content-type"].startswith(PROBLEM)
            assert response.json()["code"] == ErrorCode.TOO_MANY_CONNECTIONS
            assert response.json()["retriable"] is True
            await bus.publish("acme/a", event("before"))
            assert [e.json()["id"] for e in await sse.events(1)] == ["before"]
            # The holder ends it (a revocation): the stream says why and ends.
            holder.ends[0](Revoked("the session was revoked"))
            await bus.publish("acme/a", event("after"))  # never delivered
            (ended,) = await sse.events(1, "unsubscribed")
            assert ended.json() == {
                "pattern": "acme/#",
                "code": ErrorCode.REVOKED,
                "reason": "the session was revoked",
                "retriable": False,
            }
            assert await sse.next() is None
        await wait_for(lambda: holder.held == 0)  # released
        # Its token expires: the same, with 1101.
        async with stream(api, "acme/#") as sse:
            await sse.events(1, "subscribed")
            holder.ends[-1](TokenExpired("the token expired; reconnect with a new one"))
            (ended,) = await sse.events(1, "unsubscribed")
            assert ended.json()["code"] == ErrorCode.TOKEN_EXPIRED
            assert ended.json()["retriable"] is False
        await wait_for(lambda: holder.held == 0)


async def test_a_client_that_leaves_is_released_within_seconds_without_a_keepalive() -> None:
    holder = Holder(limit=10)
    async with hybridbus.open("memory://") as bus, held_streams(bus, holder, keepalive=60) as api:
        async with stream(api, "acme/#") as sse:
            await sse.events(1, "subscribed")
            assert holder.held == 1
        # No handler cancellation, no keep-alive for a minute: the sweep notices.
        await wait_for(lambda: holder.held == 0, 3.0)
        assert api.sample("hybridbus_subscriptions", transport="sse") == 0
        assert api.sample("hybridbus_connections", transport="sse") == 0
