"""The listener against slowloris: header and body timeouts, the cap on waiting connections.

Raw TCP sockets play the attacker (a request line and nothing more, or a body
that never ends); `running_server` runs the real app behind the same listener
`hybridbus serve` uses, and a subprocess server shows the whole defence —
open-file limit included — holding 1,500 half-open requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tests.servers import ServerProcess, WsClient, event, running_server

pytestmark = pytest.mark.timeout(60)

HALF_OPEN = b"GET /healthz HTTP/1.1\r\n"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
ATTACKERS = 1500


async def connected(port: int, data: bytes = HALF_OPEN) -> socket.socket:
    """A raw TCP connection to the server that sent `data` (by default half a request)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    if data:
        # The server may have closed it already (as the oldest waiting connection).
        with contextlib.suppress(ConnectionError):
            await loop.sock_sendall(sock, data)
    return sock


async def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` within `seconds` (what it sends is read and dropped)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(seconds):
            while await loop.sock_recv(sock, 1 << 16):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def response(sock: socket.socket) -> bytes:
    """One HTTP response (headers and a Content-Length body) read from `sock`."""
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(10):
        while b"\r\n\r\n" not in data:
            chunk = await loop.sock_recv(sock, 1 << 16)
            assert chunk, f"closed after {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += await loop.sock_recv(sock, 1 << 16)
    return head + b"\r\n\r\n" + body


@contextlib.contextmanager
def closing(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


async def test_a_request_whose_headers_never_end_is_closed_after_header_timeout() -> None:
    async with running_server(header_timeout=0.5) as server:
        with closing([await connected(server.port)]) as (sock,):
            start = time.monotonic()
            assert await closed_within(sock, 10), "still open 10 s after half a request"
            assert time.monotonic() - start >= 0.4  # the timeout closed it, nothing else


async def test_headers_trickling_in_do_not_reset_the_header_timeout() -> None:
    async with running_server(header_timeout=0.8) as server:
        with closing([await connected(server.port, b"GET /healthz HTTP/1.1\r\n")]) as (sock,):
            loop = asyncio.get_running_loop()
            start = time.monotonic()
            with contextlib.suppress(ConnectionError):
                for _ in range(30):  # one header byte every 0.1 s: never a whole request
                    await loop.sock_sendall(sock, b"X")
                    if await closed_within(sock, 0.1):
                        break
            assert time.monotonic() - start < 2.5
            assert await closed_within(sock, 1)


async def test_each_keep_alive_request_has_its_own_header_timeout() -> None:
    async with running_server(header_timeout=0.5) as server:
        with closing([await connected(server.port, HEALTHZ)]) as (sock,):
            loop = asyncio.get_running_loop()
            assert (await response(sock)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(0.3)  # within the timeout: the connection is still good
            await loop.sock_sendall(sock, HEALTHZ)
            assert (await response(sock)).startswith(b"HTTP/1.1 200")
            await loop.sock_sendall(sock, HALF_OPEN)
            start = time.monotonic()
            assert await closed_within(sock, 10)
            assert time.monotonic() - start >= 0.4


async def test_pipelined_requests_are_all_answered() -> None:
    async with running_server(header_timeout=0.5) as server:
        with closing([await connected(server.port, HEALTHZ * 3)]) as (sock,):
            for _ in range(3):
                assert (await response(sock)).startswith(b"HTTP/1.1 200")
            assert await closed_within(sock, 10)  # and then the header timeout


async def test_a_long_response_read_slowly_is_not_cut_by_the_header_timeout() -> None:
    # A 7 MB history page: more than the kernel's socket buffers (4 MB here) hold, so the
    # server still has part of it to write at the first deadline while the client reads on.
    # (The kernel takes more only once a third of its buffer is free: about 0.5 s here.)
    async with running_server(header_timeout=1.0) as server:
        async with WsClient.open(server.url) as client:
            for number in range(8):
                big = event(data="x" * 900_000)
                reply = await client.request("publish", topic="big", event=big)
                assert reply["type"] == "reply", (number, reply)
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.setblocking(False)
        with closing([sock]):
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            await loop.sock_sendall(
                sock, b"GET /v1/topics/acme/big/events HTTP/1.1\r\nHost: test\r\n\r\n"
            )
            data = b""
            start = time.monotonic()
            async with asyncio.timeout(30):
                while b'"more":false' not in data[-200:]:
                    chunk = await loop.sock_recv(sock, 64 << 10)
                    assert chunk, f"cut after {len(data)} bytes, {time.monotonic() - start:.1f} s"
                    data += chunk
                    await asyncio.sleep(0.02)  # at most ~3 MB/s: several header timeouts long
            assert time.monotonic() - start > 1.5
            assert len(data) > 7_000_000


async def test_a_body_slower_than_body_timeout_is_refused_with_408() -> None:
    async with running_server(body_timeout=0.5, header_timeout=30) as server:
        head = (
            b"POST /v1/topics/acme/news/events HTTP/1.1\r\nHost: test\r\n"
            b"Content-Type: application/cloudevents+json\r\nContent-Length: 1000\r\n\r\n"
        )
        part = b'{"specversion":'
        with closing([await connected(server.port, head + part)]) as (sock,):
            start = time.monotonic()
            answer = await response(sock)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert time.monotonic() - start < 5
            # The rest of the body (aiohttp waits up to 10 s for it), then the next request.
            rest = b" " * (1000 - len(part))
            await asyncio.get_running_loop().sock_sendall(sock, rest + HEALTHZ)
            assert (await response(sock)).startswith(b"HTTP/1.1 200")


async def test_websockets_and_sse_streams_are_not_cut_by_the_header_timeout() -> None:
    async with (
        running_server(header_timeout=0.3) as server,
        WsClient.open(server.url) as client,
    ):
        with closing([await connected(server.port, b"")]) as (sse,):
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(
                sse, b"GET /v1/sse?pattern=acme/news HTTP/1.1\r\nHost: test\r\n\r\n"
            )
            await asyncio.sleep(1.0)
            reply = await client.request("publish", topic="news", event=event())
            assert reply["type"] == "reply", reply
            data = b""
            async with asyncio.timeout(10):
                while b"id:" not in data:  # the event reaches the stream
                    chunk = await loop.sock_recv(sse, 1 << 16)
                    assert chunk, f"the SSE stream was closed: {data!r}"
                    data += chunk


async def test_past_max_pending_connections_the_oldest_waiting_one_is_closed() -> None:
    async with (
        running_server(max_pending_connections=20, header_timeout=30) as server,
        WsClient.open(server.url) as client,  # served: never counted, never closed
    ):
        with closing([]) as socks:
            for _ in range(30):
                socks.append(await connected(server.port))
                await asyncio.sleep(0.005)  # so the server sees them in this order
            with closing([await connected(server.port, HEALTHZ)]) as (normal,):
                assert (await response(normal)).startswith(b"HTTP/1.1 200")
            # 31 arrived for 20 places: the 11 oldest were closed, the 20 newest wait.
            oldest = [await closed_within(sock, 2) for sock in socks[:11]]
            assert all(oldest), oldest
            newest = [await closed_within(sock, 0.01) for sock in socks[11:]]
            assert not any(newest), newest
            assert (await client.request("ping"))["type"] == "reply"


# -- 1,500 half-open requests against `hybridbus serve` ---------------------------------


@contextlib.contextmanager
def nofile_soft_limit(soft: int) -> Iterator[None]:
    """This process's soft open-file limit set to `soft` for the block (children inherit it)."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (before, hard))


@contextlib.asynccontextmanager
async def attackers(port: int, count: int) -> AsyncIterator[list[socket.socket]]:
    """`count` connections that each sent a request line and nothing more."""
    socks: list[socket.socket] = []
    try:
        for start in range(0, count, 100):
            batch = [connected(port) for _ in range(min(100, count - start))]
            socks.extend(await asyncio.gather(*batch))
        yield socks
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.slow
async def test_1500_half_open_requests_do_not_shut_a_normal_client_out(tmp_path: Path) -> None:
    needed = 2 * ATTACKERS + 200  # the attackers' sockets, the client's, pytest's own
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard open-file limit is {hard}: this test needs {needed}")
    enough = soft if soft == resource.RLIM_INFINITY else max(soft, needed)
    with nofile_soft_limit(enough):
        # The server starts with a common default soft limit (1024), as on most machines.
        with nofile_soft_limit(1024):
            server = ServerProcess("--engine", "memory://", logs=tmp_path / "server.log")
        try:
            await server.wait_listening()
            async with attackers(server.port, ATTACKERS):
                await asyncio.sleep(0.5)  # the server has them all
                with closing([await connected(server.port, b"")]) as (normal,):
                    start = time.monotonic()
                    loop = asyncio.get_running_loop()
                    await loop.sock_sendall(normal, HEALTHZ)
                    answer = await response(normal)
                    elapsed = time.monotonic() - start
                assert answer.startswith(b"HTTP/1.1 200"), answer
                assert elapsed < 1.0, f"served after {elapsed:.2f} s"
            limits = [r for r in server.logs() if r.get("message") == "nofile"]
            assert len(limits) == 1, limits
            assert limits[0]["soft_before"] == 1024
            assert limits[0]["soft"] == limits[0]["hard"]  # raised as far as it goes
        finally:
            await server.kill()


def _awaiting(coro: object) -> list[str]:
    """The qualified names of the coroutines `coro` awaits, itself first, down the chain."""
    names = []
    while coro is not None and hasattr(coro, "cr_code"):
        names.append(coro.cr_code.co_qualname)
        coro = getattr(coro, "cr_await", None)
    return names


async def test_a_websocket_handler_is_wrapped_in_no_frame_of_ours() -> None:
    # Each coroutine frame around a handler lives as long as a WebSocket: no
    # middleware (nor aiohttp's shim added with one), no awaiting wrapper.
    async with running_server() as server, WsClient.open(server.url):
        chains = [
            _awaiting(task.get_coro())
            for task in asyncio.all_tasks()
            if "WebSocketGateway.handle" in _awaiting(task.get_coro())
        ]
        assert len(chains) == 1, chains
        chain = chains[0]
        assert chain[: chain.index("WebSocketGateway.handle") + 1] == [
            "RequestHandler._handle_request",
            "Application._handle",
            "WebSocketGateway.handle",
        ]
