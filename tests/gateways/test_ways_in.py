"""Every way in has the same properties: expiry, revocation, the per-user limit, stalled readers.

ONE suite, parametrized over the ways a client reaches the server — a
WebSocket connection (the `websockets` library), an SSE stream (httpx, as an
EventSource reads it; a raw socket for the stalled reader), a gRPC Subscribe
stream (the stubs generated from protos/, over `grpc.aio`), a Yjs document
socket (`/v1/yjs/{room}`, the `websockets` library speaking y-protocols) and, where the
property applies, plain HTTP requests and a consumer group's waiting HTTP
fetch ("fetch") — each against the real application
on a loopback port (`tests.servers.running_server`). Tokens are real HS256
JWTs with exact (fractional) `exp` claims, so "< 1 s after expiry" is
measured from the instant the token lapses.

    property                                  websocket   sse         grpc (3)   http      fetch
    expiry ends it (< 1 s after exp)          close 4004  1101 event  UNAUTH 1101 401 1101  401 1101
    revocation ends it (< 1 s), each kind     close 4502  1104 event  DENIED 1104 403 1104  403 1104
    ... and its consumer-group memberships    left        —           —          —         —
    one per-user count for every way in       counted     counted     counted    not held  (1)
    a stalled reader is cut, memory bounded   4001        1201/abort  ABORTED    —         (2)
                                                                      1201 (4)

    yjs (a Yjs document socket): expiry close 4410, revocation close 4411, counted (full:
    close 4529), a stalled reader (5).

(1) a waiting fetch counts as one of the user's connections:
tests/gateways/test_groups_http.py. (2) an answer is at most `max` (1,000)
deliveries; deliveries an unwritable answer held go back to the group.
(3) a status (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED) with the
code in the trailing metadata `hybridbus-code`; an Ingest stream is held and
ended the same way (tests/gateways/test_grpc.py). (4) a Subscribe that stops
reading: its writes wait for HTTP/2 flow control while the server takes its
deliveries on, so what waits for it is bounded in bytes (`max_pending_bytes`,
as a WebSocket's outbox): past it the call ends 1201 (ABORTED). (5) close 4530
past `max_pending_bytes`, then aborted: tests/yjs/test_access.py.

Ways in that take a request body — an HTTP publish, NDJSON log lines (`POST
/v1/logs/...`), a state topic's merge patch (`PATCH /v1/states/...`) and an
inbound webhook (`POST /v1/webhooks/...`, signed, no token) — share their
limits, and a gRPC Publish answers the same codes:

    property                          http, logs, state, webhook     grpc Publish
    a body over the limit             413 1004                       INVALID_ARGUMENT 1004
    a body slower than body_timeout   408                            — (HTTP/2 streams)
    over the rate                     429 1121 + Retry-After         RESOURCE_EXHAUSTED 1121
                                                                     + retry-after
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc
import httpx
import jwt
import pytest
from tests.gateways.grpc_support import GrpcClient, refused
from tests.gateways.support import SseReader, event
from tests.servers import Server, WsClient, running_server, stalled_client
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

import hybridbus.client
from hybridbus.core.filters import Filter
from hybridbus.core.logs import LogRecord, log_event
from hybridbus.errors import ErrorCode
from hybridbus.gateways.grpc_gen import bus_pb2
from hybridbus.server.access import new_api_key

pytestmark = pytest.mark.timeout(60)

Way = Literal["websocket", "sse", "grpc", "http", "fetch", "yjs"]
HELD: tuple[Way, ...] = ("websocket", "sse", "grpc", "yjs")  # the ways that hold a stream open
# "fetch": a consumer group's HTTP pull, waiting for deliveries (docs/http.md §10)
WAYS: tuple[Way, ...] = (*HELD, "http", "fetch")

SECRET = "a-test-secret-of-at-least-32-bytes-long!"
ADMIN_KEY, ADMIN_HASH = new_api_key()
CLOUDEVENT = {"content-type": "application/cloudevents+json"}
PROBLEM = "application/problem+json"

# What each way answers when its token lapses or is revoked: a close code, or an error code.
EXPIRED: dict[Way, int] = {
    "websocket": 4004, "sse": 1101, "grpc": 1101, "http": 1101, "fetch": 1101, "yjs": 4410
}
REVOKED: dict[Way, int] = {
    "websocket": 4502, "sse": 1104, "grpc": 1104, "http": 1104, "fetch": 1104, "yjs": 4411
}
# What a full per-user count answers a new stream: a close code, an HTTP status, a gRPC status.
FULL: dict[Way, int | str] = {
    "websocket": 4005, "sse": 429, "grpc": "RESOURCE_EXHAUSTED", "yjs": 4529
}


def token(sub: str = "alice", **claims: Any) -> str:
    """An HS256 token of tenant acme with the role `user` (5 minutes unless `exp` is given)."""
    now = time.time()
    payload = {"sub": sub, "tenantid": "acme", "roles": ["user"], "iat": int(now), "exp": now + 300}
    payload.update(claims)
    return jwt.encode(payload, SECRET, algorithm="HS256")


@contextlib.asynccontextmanager
async def secured(**settings: Any) -> AsyncIterator[Server]:
    """A server with the test secret, no anonymous clients, `user` allowed all, an admin key."""
    settings.setdefault("jwt_secret", SECRET)
    settings.setdefault("anonymous_tenant", None)
    settings.setdefault("roles", {"user": [{"allow": "*", "topics": "#"}]})
    settings.setdefault("api_keys", [{"name": "ops", "hash": ADMIN_HASH, "admin": True}])
    settings.setdefault("grpc_port", 0)  # the gRPC API too, on a free port
    async with running_server(**settings) as server:
        yield server


def admin(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.http, timeout=5.0, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


# -- one handle per way in ----------------------------------------------------------------------


@dataclass
class Ending:
    """How a way in ended: its code, when the client saw it (Unix time), what it said."""

    code: int
    at: float
    said: dict[str, Any]


class Held:
    """A client of one way in, holding what that way holds (a connection, a stream, nothing)."""

    async def alive(self) -> bool:
        """True if the server still serves it (an event reaches it, a request is answered)."""
        raise NotImplementedError

    async def ending(self, seconds: float) -> Ending:
        """Wait (at most `seconds`) until the server ends it; how it ended."""
        raise NotImplementedError


class HeldWebSocket(Held):
    def __init__(self, client: WsClient) -> None:
        self.client = client

    async def alive(self) -> bool:
        async with asyncio.timeout(3):
            return (await self.client.request("ping"))["type"] == "reply"

    async def ending(self, seconds: float) -> Ending:
        async with asyncio.timeout(seconds):
            closed = await self.client.closed()
        at = time.time()
        disconnects = [p for p in self.client.pushes if p["type"] == "disconnect"]
        assert len(disconnects) == 1, self.client.pushes
        assert closed.code == disconnects[0]["code"]
        return Ending(closed.code or 0, at, disconnects[0])


class HeldYjs(Held):
    """A Yjs document socket (`/v1/yjs/x`) speaking y-protocols, its first sync step read."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def alive(self) -> bool:
        await self.ws.send(b"\x03")  # queryAwareness: answered with an awareness message
        async with asyncio.timeout(3):
            while True:
                if (await self.ws.recv())[:1] == b"\x01":
                    return True

    async def ending(self, seconds: float) -> Ending:
        async with asyncio.timeout(seconds):
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await self.ws.recv()
        at = time.time()
        code = self.ws.close_code or 0
        return Ending(code, at, {"reason": self.ws.close_reason})


async def yjs_closed(server: Server, credential: str) -> int | None:
    """Open a Yjs socket expecting the server to close it: its close code."""
    url = f"ws://127.0.0.1:{server.port}/v1/yjs/x?token={credential}"
    async with asyncio.timeout(5), ws_connect(url) as ws:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()
    return ws.close_code


class HeldStream(Held):
    def __init__(self, server: Server, sse: SseReader) -> None:
        self.server = server
        self.sse = sse

    async def alive(self) -> bool:
        id_ = f"alive-{uuid.uuid4().hex}"
        async with admin(self.server) as client:
            response = await client.post(
                "/v1/topics/acme/x/events", json=event(id_), headers=CLOUDEVENT
            )
            assert response.status_code == 201, response.text
        while True:  # events published for other clients of the topic come first
            (got,) = await self.sse.events(1)
            if got.json()["id"] == id_:
                return True

    async def ending(self, seconds: float) -> Ending:
        async with asyncio.timeout(seconds):
            while True:
                got = await self.sse.next()
                assert got is not None, "the stream ended without an `unsubscribed` event"
                if got.event == "unsubscribed":
                    break
        at = time.time()
        said = got.json()
        assert said["pattern"] == "acme/x" and said["reason"], said
        assert await self.sse.next() is None  # then the response ends
        return Ending(said["code"], at, said)


class HeldGrpc(Held):
    """A gRPC Subscribe stream of `acme/x`, `subscribed` read."""

    def __init__(self, server: Server, call: Any) -> None:
        self.server = server
        self.call = call

    async def alive(self) -> bool:
        id_ = f"alive-{uuid.uuid4().hex}"
        async with admin(self.server) as client:
            response = await client.post(
                "/v1/topics/acme/x/events", json=event(id_), headers=CLOUDEVENT
            )
            assert response.status_code == 201, response.text
        async with asyncio.timeout(5):
            while True:  # events published for other clients of the topic come first
                got = await self.call.read()
                assert got is not grpc.aio.EOF
                if got.delivery.event.id == id_:
                    return True

    async def ending(self, seconds: float) -> Ending:
        async with asyncio.timeout(seconds):
            try:
                while True:
                    got = await self.call.read()
                    assert got is not grpc.aio.EOF, "the stream ended with OK"
            except grpc.aio.AioRpcError as exc:
                said = refused(exc)
        at = time.time()
        assert said.code is not None and said.details, said
        retriable = said.trailers["hybridbus-retriable"] == "true"
        return Ending(said.code, at, {"status": said.status.name, "retriable": retriable})


class HeldRequests(Held):
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def alive(self) -> bool:
        return (await self.client.get("/v1/topics/acme/x/events")).status_code == 200

    async def ending(self, seconds: float) -> Ending:
        async with asyncio.timeout(seconds):
            while (response := await self.client.get("/v1/topics/acme/x/events")).is_success:
                await asyncio.sleep(0.02)
        at = time.time()
        assert response.headers["content-type"].startswith(PROBLEM)
        return Ending(response.json()["code"], at, response.json())


class HeldFetch(Held):
    """A group fetch waiting for deliveries (none come): the server must end it."""

    def __init__(self, client: httpx.AsyncClient, waiting: asyncio.Task[httpx.Response]) -> None:
        self.client = client
        self.waiting = waiting

    async def alive(self) -> bool:
        response = await self.client.post("/v1/groups/held/fetch", json={"wait": 0})
        return response.status_code == 200 and not self.waiting.done()

    async def ending(self, seconds: float) -> Ending:
        async with asyncio.timeout(seconds):
            response = await self.waiting
        at = time.time()
        assert response.headers["content-type"].startswith(PROBLEM), response.text
        return Ending(response.json()["code"], at, response.json())


@contextlib.asynccontextmanager
async def opened(way: Way, server: Server, credential: str) -> AsyncIterator[Held]:
    """A client of `way` presenting `credential`, accepted and started."""
    if way == "websocket":
        async with WsClient.open(server.url, token=credential) as client:
            yield HeldWebSocket(client)
    elif way == "sse":
        params = {"pattern": "acme/x", "token": credential}  # as an EventSource sends it
        async with (
            httpx.AsyncClient(base_url=server.http, timeout=10.0) as client,
            client.stream("GET", "/v1/sse", params=params) as response,
        ):
            assert response.status_code == 200, await response.aread()
            lines = response.aiter_lines()

            async def next_line() -> str | None:
                return await anext(lines, None)

            sse = SseReader(next_line)
            await sse.events(1, "subscribed")
            yield HeldStream(server, sse)
    elif way == "grpc":
        async with GrpcClient.open(server, credential) as client:
            call = client.subscribe("acme/x")
            first = await call.read()
            assert first is not grpc.aio.EOF and first.WhichOneof("kind") == "subscribed"
            try:
                yield HeldGrpc(server, call)
            finally:
                call.cancel()
    elif way == "yjs":
        async with ws_connect(f"ws://127.0.0.1:{server.port}/v1/yjs/x?token={credential}") as ws:
            assert (await ws.recv())[:2] == b"\x00\x00"  # sync step 1: it joined the room
            yield HeldYjs(ws)
    elif way == "fetch":
        headers = {"Authorization": f"Bearer {credential}"}
        async with httpx.AsyncClient(base_url=server.http, timeout=30.0, headers=headers) as client:
            made = await client.put("/v1/groups/held", json={"pattern": "acme/x"})
            assert made.status_code in (200, 201), made.text
            waiting = asyncio.create_task(
                client.post("/v1/groups/held/fetch", json={"max": 10, "wait": 25})
            )
            await asyncio.sleep(0.2)  # the fetch is waiting
            try:
                yield HeldFetch(client, waiting)
            finally:
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
    else:
        headers = {"Authorization": f"Bearer {credential}"}
        async with httpx.AsyncClient(base_url=server.http, timeout=5.0, headers=headers) as client:
            yield HeldRequests(client)


async def refusal(
    way: Way, server: Server, credential: str
) -> tuple[int | str | None, dict[str, Any]]:
    """Open `way` expecting a refusal: (the close code or HTTP status, what the server said)."""
    if way == "websocket":
        async with asyncio.timeout(5), WsClient.open(server.url, connect_first=False) as client:
            await client.send(client.command("connect", token=credential))
            closed = await client.closed()
        (disconnect,) = [p for p in client.pushes if p["type"] == "disconnect"]
        return closed.code, disconnect
    if way == "yjs":
        return await yjs_closed(server, credential), {}
    if way == "grpc":
        async with GrpcClient.open(server, credential) as grpc_client:
            try:
                async with asyncio.timeout(5):
                    got = await grpc_client.subscribe("acme/x").read()
            except grpc.aio.AioRpcError as exc:
                said = refused(exc)
                retriable = said.trailers["hybridbus-retriable"] == "true"
                return said.status.name, {"code": said.code, "retriable": retriable}
        raise AssertionError(f"not refused: {got}")
    params = {"pattern": "acme/x", "token": credential}
    async with (
        httpx.AsyncClient(base_url=server.http, timeout=5.0) as client,
        client.stream("GET", "/v1/sse", params=params) as response,
    ):
        assert response.headers["content-type"].startswith(PROBLEM), response.headers
        return response.status_code, dict((await response.aread()) and response.json())


# -- expiry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("way", WAYS)
async def test_expiry_ends_it_within_a_second(way: Way) -> None:
    async with secured() as server:
        expires = time.time() + 1.5
        async with opened(way, server, token(exp=expires)) as held:
            assert await held.alive()
            ending = await held.ending(seconds=5.0)
        assert ending.code == EXPIRED[way], ending
        assert expires <= ending.at < expires + 1.0, ending.at - expires
        if way == "sse":
            assert ending.said["retriable"] is False  # a new token is needed first


# -- revocation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["token", "session", "user"])
@pytest.mark.parametrize("way", WAYS)
async def test_revocation_ends_it_within_a_second(way: Way, kind: str) -> None:
    credential = token(jti="t-1", sid="s-1", iat=int(time.time()) - 1)
    bystander = token("bob", jti="t-2", sid="s-2")  # another user, session and token
    value = {"token": "t-1", "session": "s-1", "user": "alice"}[kind]
    async with (
        secured() as server,
        opened(way, server, credential) as held,
        opened(way, server, bystander) as other,
        admin(server) as operator,
    ):
        assert await held.alive()
        started = time.time()
        body = {"kind": kind, "value": value, "tenant": "acme"}
        response = await operator.post("/v1/revocations", json=body)
        assert response.status_code == 201, response.text
        ending = await held.ending(seconds=3.0)
        assert ending.code == REVOKED[way], ending
        assert ending.at - started < 1.0, ending.at - started
        if way == "sse":
            assert ending.said["retriable"] is False
            assert ending.said["reason"] == f"the {kind} was revoked"
        assert await other.alive()


@pytest.mark.parametrize("end", ["expiry", "revocation"])
async def test_expiry_and_revocation_end_a_websockets_group_memberships(end: str) -> None:
    async with secured() as server, admin(server) as operator:
        credential = token(jti="t-1", exp=time.time() + (1.5 if end == "expiry" else 300))
        async with WsClient.open(server.url, token=credential) as client:
            reply = await client.request("group_join", group="g", pattern="x/#")
            assert reply["type"] == "reply", reply
            assert server.node.bus.groups.all()[0].members == [reply["result"]["member"]]
            if end == "revocation":
                body = {"kind": "token", "value": "t-1", "tenant": "acme"}
                response = await operator.post("/v1/revocations", json=body)
                assert response.status_code == 201, response.text
            closed = await client.closed()
        assert closed.code == (EXPIRED if end == "expiry" else REVOKED)["websocket"]
        await wait_for(lambda: server.node.bus.groups.all()[0].members == [])


# -- one count for every way in -------------------------------------------------------------------


@pytest.mark.parametrize("way", HELD)
async def test_the_per_user_limit_counts_every_way_in_together(way: Way) -> None:
    async with secured(max_connections_per_user=2) as server:
        async with (
            opened("websocket", server, token()) as connection,
            opened("sse", server, token()) as stream,
        ):
            # One WebSocket and one stream: alice is full, whichever way she comes next.
            code, said = await refusal(way, server, token())
            assert code == FULL[way]
            if way == "websocket":
                assert (said["code"], said["reconnect"]) == (4005, True)
            elif way == "yjs":
                pass  # a close code and its reason only: 4529 is retried by the provider
            else:
                assert said["code"] == ErrorCode.TOO_MANY_CONNECTIONS and said["retriable"]
            # Plain requests hold nothing: they are still served.
            async with opened("http", server, token()) as requests:
                assert await requests.alive()
            async with opened(way, server, token("bob")) as bob:  # another user is unaffected
                assert await bob.alive()
            assert await connection.alive() and await stream.alive()
        # Both gone: their slots are free again.
        await wait_for(lambda: server.sample("hybridbus_connections", transport="sse") == 0)
        await wait_for(lambda: server.node.connections == 0)
        async with opened(way, server, token()) as first, opened(way, server, token()) as second:
            assert await first.alive() and await second.alive()


@pytest.mark.parametrize("way", HELD)
async def test_a_client_that_leaves_frees_its_slot_within_seconds(way: Way) -> None:
    async with secured(max_connections_per_user=1) as server:
        async with opened(way, server, token()) as held:
            assert await held.alive()
            assert (await refusal(way, server, token()))[0] == FULL[way]
        # It left without a word; the next keep-alive (15 s) is far: the server notices anyway.
        await wait_for(lambda: server.sample("hybridbus_connections", transport=way) == 0, 3.0)
        async with opened(way, server, token()) as again:
            assert await again.alive()


# -- the limits of the ways that take a body -------------------------------------------------------

Bodied = Literal["http", "logs", "state", "webhook"]
BODIED: tuple[Bodied, ...] = ("http", "logs", "state", "webhook")
# How each sends its body: an event, NDJSON log lines, a merge patch (PATCH), a signed webhook.
METHOD = {"http": "POST", "logs": "POST", "state": "PATCH", "webhook": "POST"}


def body_of(way: Bodied, n: int) -> bytes:
    """A valid body for `way` (the `n`th)."""
    if way == "logs":
        return json.dumps({"msg": f"line {n}", "level": "info"}).encode() + b"\n"
    if way == "state":
        return json.dumps({"n": n}).encode()
    return json.dumps(event(f"e{n}")).encode()


@contextlib.asynccontextmanager
async def bodied(way: Bodied, **settings: Any) -> AsyncIterator[tuple[Server, str, Any]]:
    """A server whose `way` is limited to 1 request/s (burst 1) and 4 KiB (webhook) bodies.

    Yields the server, the path to send to (`METHOD[way]`), and `sign(body) -> headers`.
    An HTTP publish, NDJSON log lines (`POST /v1/logs/...`) and a state topic's merge
    patch (`PATCH /v1/states/...`) are publishes: the publish rate limits them.
    """
    from hybridbus.core.webhook_routes import Endpoint
    from hybridbus.core.webhooks import new_secret, signing_key, standard_headers

    secret = new_secret()
    hook = Endpoint(name="in", tenant="acme", secrets=[secret], rate=1.0, max_body_size=4096)
    if way != "webhook":
        settings.update(publish_rate=1.0, publish_burst=1.0)
        path, kind = {
            "http": ("/v1/topics/acme/x/events", "application/cloudevents+json"),
            "logs": ("/v1/logs/api/host-1", "application/x-ndjson"),
            "state": ("/v1/states/acme/boards/1", "application/merge-patch+json"),
        }[way]

        def sign(body: bytes) -> dict[str, str]:
            return {"content-type": kind}

    else:

        def sign(body: bytes) -> dict[str, str]:
            msg_id, now = uuid.uuid4().hex, int(time.time())
            headers = standard_headers(msg_id, now, body, [signing_key(secret)])
            return {**headers, "content-type": "application/json"}

        path = "/v1/webhooks/acme/in"
    async with running_server(webhooks=[hook], **settings) as server:
        yield server, path, sign


async def raw_post(
    port: int, path: str, headers: dict[str, str], length: int, sent: bytes, method: str = "POST"
) -> str:
    """A request announcing `length` bytes of body, sending `sent` only; what came back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{head}\r\n"
        writer.write(request.encode() + sent)
        await writer.drain()
        async with asyncio.timeout(10):
            return (await reader.read(65536)).decode(errors="replace")
    finally:
        writer.close()


@pytest.mark.parametrize("way", BODIED)
async def test_a_body_over_the_limit_is_413(way: Bodied) -> None:
    async with bodied(way) as (server, path, sign):
        answer = await raw_post(server.port, path, sign(b""), 9 << 20, b"", METHOD[way])  # 8 MiB
        assert answer.startswith("HTTP/1.1 413"), answer
        assert '"code":1004' in answer and PROBLEM in answer


@pytest.mark.parametrize("way", BODIED)
async def test_a_body_slower_than_the_body_timeout_is_408(way: Bodied) -> None:
    async with bodied(way, body_timeout=0.5) as (server, path, sign):
        started = time.monotonic()
        answer = await raw_post(server.port, path, sign(b"{}"), 100, b"{", METHOD[way])
        assert answer.startswith("HTTP/1.1 408"), answer
        assert PROBLEM in answer and 0.4 < time.monotonic() - started < 5


@pytest.mark.parametrize("way", BODIED)
async def test_over_the_rate_is_429_with_retry_after(way: Bodied) -> None:
    async with bodied(way) as (server, path, sign), httpx.AsyncClient(base_url=server.http) as c:
        statuses = []
        for n in range(2):
            body = body_of(way, n)
            response = await c.request(METHOD[way], path, content=body, headers=sign(body))
            statuses.append(response.status_code)
        assert statuses[0] in (200, 201) and statuses[1] == 429, response.text
        assert response.json()["code"] == ErrorCode.RATE_LIMITED
        assert response.headers["Retry-After"] == "1"


async def test_a_grpc_publish_answers_the_same_codes_over_the_limits() -> None:
    async with (
        running_server(grpc_port=0, publish_rate=1.0, publish_burst=1.0) as server,
        GrpcClient.open(server) as client,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:  # over the event size: 1004
            await client.publish("acme/x", event("big", data="x" * (1 << 20)))
        said = refused(caught.value)
        assert (said.status, said.code) == (grpc.StatusCode.INVALID_ARGUMENT, 1004)
        await client.publish("acme/x", event("e0"))  # the refused event cost nothing
        with pytest.raises(grpc.aio.AioRpcError) as caught:  # over the rate: 1121
            await client.publish("acme/x", event("e1"))
        said = refused(caught.value)
        assert (said.status, said.code) == (grpc.StatusCode.RESOURCE_EXHAUSTED, 1121)
        assert said.trailers["retry-after"] == "1"


# -- stalled readers ----------------------------------------------------------------------------


def rss() -> int:
    """This process's resident memory in bytes (the server runs in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def stalled_stream(port: int, pattern: str) -> socket.socket:
    """A raw SSE client: connects, sends the request, and never reads a byte."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    request = (
        f"GET /v1/sse?pattern={pattern} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    return sock


async def dropped(sock: socket.socket) -> None:
    """Read what the server sent until it closed or reset the socket."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(ConnectionResetError):
        while await loop.sock_recv(sock, 1 << 20):
            pass


async def drain(call: Any) -> None:
    """Read a gRPC server stream to its end (its status raised, if not OK)."""
    async for _ in call:
        pass


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
@pytest.mark.parametrize("way", ["websocket", "sse", "grpc"])
async def test_stalled_readers_are_cut_and_their_memory_released(way: Way) -> None:
    readers = 20
    bound = 256 * 1024
    # Retention keeps the log itself small: what grows is what the server holds for readers.
    engine = "memory://?max_per_topic=32"
    async with running_server(engine=engine, max_pending_bytes=bound, grpc_port=0) as server:
        bus = server.node.bus

        async def load(prefix: str) -> None:
            # 3,000 distinct events of 32 kB: ~96 MB, hundreds of times each reader's bound.
            for n in range(3000):
                data = f"{n:08d}" * 4000
                await bus.publish("acme/firehose", event(f"{prefix}{n}", data=data))
                if n % 50 == 0:
                    await asyncio.sleep(0)  # let the writers run, as a busy server would

        # The same load without readers first: the heap grows to what the load itself needs.
        await load("warm-")
        before = rss()
        transport = way
        calls: list[Any] = []
        channels: list[Any] = []
        sockets: list[socket.socket] = []
        if way == "websocket":
            subscribe = {"type": "subscribe", "id": 2, "pattern": "firehose"}
            sockets = [await stalled_client(server.port, subscribe) for _ in range(readers)]
        elif way == "sse":
            sockets = [await stalled_stream(server.port, "acme/firehose") for _ in range(readers)]
        else:  # a Subscribe call nobody reads: the client's HTTP/2 windows fill, then the server's
            for _ in range(readers):
                client = GrpcClient.open(server)
                channels.append(client)
                calls.append((await client.__aenter__()).subscribe("acme/firehose"))
        try:
            await wait_for(
                lambda: server.sample("hybridbus_subscriptions", transport=transport) == readers
            )
            await load("e")
            # Every stalled reader was cut, and the server forgot it.
            await wait_for(
                lambda: server.sample("hybridbus_subscriptions", transport=transport) == 0, 15
            )
            await wait_for(
                lambda: server.sample("hybridbus_connections", transport=transport) == 0, 15
            )
            grown = rss() - before
            assert grown < 48 << 20, f"RSS grew by {grown >> 20} MB"
            if way == "grpc":  # each call ended ABORTED, 1201, once read
                for call in calls:
                    with pytest.raises(grpc.aio.AioRpcError) as ended:
                        await asyncio.wait_for(drain(call), 30)
                    assert ended.value.code() == grpc.StatusCode.ABORTED
                    assert refused(ended.value).code == ErrorCode.SUBSCRIBER_TOO_SLOW
                return
            assert server.sample("hybridbus_drops_total", reason="slow_consumer") >= readers
            async with asyncio.timeout(10):  # and dropped the socket
                await asyncio.gather(*(dropped(sock) for sock in sockets))
        finally:
            for sock in sockets:
                sock.close()
            for call in calls:
                call.cancel()
            for client in channels:
                await client.__aexit__(None, None, None)


# -- server-side filters ------------------------------------------------------------------------

Filtered = Literal["websocket", "sse", "grpc", "client", "in-process"]
FILTERED: tuple[Filtered, ...] = ("websocket", "sse", "grpc", "client", "in-process")
# At least warn, and "timeout" in the message: the same filter in each way's form.
WANTED = {"level": "warn", "contains": "timeout"}


def log_line(n: int) -> tuple[str, Any]:
    """Log event n on acme/logs/api/<1|2>: it matches WANTED iff n % 4 in (1, 2) and n % 3."""
    level = ("info", "warn", "error", "debug")[n % 4]
    message = f"request {n} timeout" if n % 3 else f"request {n} ok"
    record = LogRecord(message=message, level=level, fields={"n": n})
    event = log_event(record, service="api", instance=str(n % 2 + 1), source="/t", id=f"e{n}")
    return f"acme/logs/api/{n % 2 + 1}", event


def wanted(numbers: range) -> list[str]:
    return [f"e{n}" for n in numbers if n % 4 in (1, 2) and n % 3]


@contextlib.asynccontextmanager
async def filtered_stream(
    way: Filtered, server: Server, since: str
) -> AsyncIterator[Callable[[], Any]]:
    """A filtered subscription of acme/logs/# from `since`: yields `next()` -> (id, token)."""
    if way == "websocket":
        async with WsClient.open(server.url) as ws:
            reply = await ws.request("subscribe", pattern="logs/#", since=since, filter=WANTED)
            assert reply["type"] == "reply", reply
            epoch = reply["result"]["epoch"]

            async def next_ws() -> tuple[str, str]:
                push = await ws.push("event")  # one shard (memory): the token is its position
                return push["event"]["id"], f"{epoch}-{push['position']}"

            yield next_ws
    elif way == "sse":
        params = {"pattern": "acme/logs/#", "since": since, **WANTED}
        async with (
            httpx.AsyncClient(base_url=server.http, timeout=10.0) as client,
            client.stream("GET", "/v1/sse", params=params) as response,
        ):
            assert response.status_code == 200, await response.aread()
            lines = response.aiter_lines()
            sse = SseReader(lambda: anext(lines, None))
            await sse.events(1, "subscribed")

            async def next_sse() -> tuple[str, str]:
                (got,) = await sse.events(1)
                assert got.id is not None
                return got.json()["id"], got.id

            yield next_sse
    elif way == "grpc":
        async with GrpcClient.open(server) as client:
            request = bus_pb2.SubscribeRequest(
                pattern="acme/logs/#", since=since, filter=bus_pb2.Filter(**WANTED)
            )
            call = client.stub.Subscribe(request)
            first = await call.read()
            assert first.WhichOneof("kind") == "subscribed", first

            async def next_grpc() -> tuple[str, str]:
                async with asyncio.timeout(10):
                    got = await call.read()
                return got.delivery.event.id, got.delivery.token

            try:
                yield next_grpc
            finally:
                call.cancel()
    elif way == "client":
        async with (
            hybridbus.client.connect(server.url) as c,
            c.subscribe("logs/#", since=since, filter=hybridbus.client.Filter(**WANTED)) as sub,
        ):

            async def next_client() -> tuple[str, str]:
                async with asyncio.timeout(10):
                    received = await anext(sub)
                return received.event.id, str(received.token)

            yield next_client
    else:
        spec = Filter(**WANTED)
        async with server.node.bus.subscribe("acme/logs/#", since, filter=spec) as bus_sub:

            async def next_in_process() -> tuple[str, str]:
                async with asyncio.timeout(10):
                    delivery = await anext(bus_sub)
                return delivery.event.id, str(bus_sub.position)

            yield next_in_process


@pytest.mark.parametrize("way", FILTERED)
async def test_a_filtered_subscription_gets_exactly_the_matching_events_across_a_resume(
    way: Filtered,
) -> None:
    async with running_server(grpc_port=0) as server, httpx.AsyncClient(base_url=server.http) as c:
        bus = server.node.bus
        head = await c.get("/v1/events", params={"pattern": "acme/logs/#", "limit": 0})
        start = head.json()["position"]
        got: list[str] = []
        async with filtered_stream(way, server, start) as next_event:
            await bus.publish_many([log_line(n) for n in range(12)])  # live
            for _ in wanted(range(12)):
                id_, token = await next_event()
                got.append(id_)
        assert got == wanted(range(12)) == ["e1", "e2", "e5", "e10"]
        # e11 (left out) came after the last token; the resume reads it again and leaves it out.
        await bus.publish_many([log_line(n) for n in range(12, 24)])  # recovered
        async with filtered_stream(way, server, token) as next_event:
            for _ in wanted(range(12, 24)):
                got.append((await next_event())[0])
            await bus.publish(*log_line(25))  # live again: nothing came between
            assert (await next_event())[0] == "e25"
        assert got == wanted(range(24)), got


async def test_a_bad_filter_is_refused_with_1000_by_every_way_in() -> None:
    async with (
        running_server(grpc_port=0) as server,
        httpx.AsyncClient(base_url=server.http) as c,
        WsClient.open(server.url) as ws,
        GrpcClient.open(server) as grpc_client,
    ):
        reply = await ws.request("subscribe", pattern="logs/#", filter={"regex": "(a)\\1"})
        assert reply["type"] == "error" and reply["code"] == 1000, reply
        assert "RE2" in reply["message"]
        response = await c.get("/v1/sse", params={"pattern": "acme/logs/#", "level": "loud"})
        assert response.status_code == 400, response.text
        assert (response.json()["code"], response.json()["parameter"]) == (1000, "level")
        response = await c.get("/v1/events", params={"pattern": "acme/#", "field": "nokey"})
        assert (response.status_code, response.json()["parameter"]) == (400, "field")
        request = bus_pb2.SubscribeRequest(pattern="acme/x", filter=bus_pb2.Filter(level="loud"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await grpc_client.stub.Subscribe(request).read()
        said = refused(caught.value)
        assert (said.status, said.code) == (grpc.StatusCode.INVALID_ARGUMENT, 1000)


async def test_connections_with_different_filters_never_share_a_batch_of_pushes() -> None:
    # Both filtered batches start and end with the same deliveries and are as long:
    # pushes shared as one run of the pattern's stream would hand one the other's.
    async with (
        running_server() as server,
        WsClient.open(server.url) as a,
        WsClient.open(server.url) as b,
    ):
        for ws, key in ((a, "a"), (b, "b")):
            spec = {"contains": f'"{key}":1'}
            reply = await ws.request("subscribe", pattern="x", filter=spec)
            assert reply["type"] == "reply", reply
        datas = [{"a": 1, "b": 1}, {"a": 1}, {"b": 1}, {"a": 1, "b": 1}]
        await server.node.bus.publish_many(
            "acme/x", [event(f"e{n}", data=data) for n, data in enumerate(datas)]
        )
        assert [p["event"]["id"] for p in await a.events(3)] == ["e0", "e1", "e3"]
        assert [p["event"]["id"] for p in await b.events(3)] == ["e0", "e2", "e3"]
