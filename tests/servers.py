"""Test helpers for the network server (imported as `tests.servers`).

`running_server(...)` starts the real application in-process on a free
loopback port (aiohttp `AppRunner` + the server's `ListenerSite` on port 0)
and reads the port back. `WsClient` is a client written from docs/protocol.md
alone on top of the third-party `websockets` library: it sends commands as
JSON lines (or MessagePack arrays) and sorts what comes back into replies and
pushes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hybridbus.gateways.listener import ListenerConfig, ListenerSite
from hybridbus.serve import METRICS_KEY, NODE_KEY, TLS_KEY, create_app
from hybridbus.server.auth import Authenticator, Identity, Unauthorized
from hybridbus.server.config import ServerConfig
from hybridbus.server.metrics import Metrics
from hybridbus.server.node import Node

JSON = "hybridbus.v1.json"
MSGPACK = "hybridbus.v1.msgpack"
TIMEOUT = 10.0
# Roles the test server lets do everything in their tenant: anonymous clients, and "user".
OPEN_ROLES = ("anonymous", "user")


@dataclass
class Server:
    """A server running in this process."""

    port: int
    app: web.Application

    @property
    def tls(self) -> bool:
        """Whether it serves HTTPS and WSS (the settings `tls_cert` and `tls_key`)."""
        return TLS_KEY in self.app

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}/v1/ws"

    @property
    def http(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def node(self) -> Node:
        return self.app[NODE_KEY]

    @property
    def metrics(self) -> Metrics:
        return self.app[METRICS_KEY]

    def sample(self, name: str, **labels: str) -> float:
        """The current value of a metric sample (0 if it was never set)."""
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def running_server(
    *, authenticator: Authenticator | None = None, **settings: Any
) -> AsyncIterator[Server]:
    """The server app on 127.0.0.1:<free port>; `settings` override `ServerConfig` fields.

    Defaults for tests: the memory engine, anonymous clients in tenant `acme`.
    """
    settings.setdefault("engine", "memory://")
    settings.setdefault("anonymous_tenant", "acme")
    # Anonymous clients and the role "user" may do everything in their tenant.
    settings.setdefault("roles", {name: [{"allow": "*", "topics": "#"}] for name in OPEN_ROLES})
    config = ServerConfig(**{"host": "127.0.0.1", "port": 0, **settings})
    app = await create_app(config, authenticator=authenticator)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        tls = app.get(TLS_KEY)  # as `hybridbus serve` listens (with tls_cert: HTTPS, WSS)
        site = ListenerSite(runner, ListenerConfig.of(config), tls=tls)
        await site.start()
        port = runner.addresses[0][1]
        yield Server(port, app)
    finally:
        await runner.cleanup()


def event(id: str | None = None, source: str = "/test", **fields: Any) -> dict[str, Any]:
    """A CloudEvent in the JSON structured format."""
    return {
        "specversion": "1.0",
        "id": id or uuid.uuid4().hex,
        "source": source,
        "type": "test.event",
        **fields,
    }


class Closed(Exception):
    """The server closed the connection; `code` and `reason` as the close frame said."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed with {code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass
class WsClient:
    """A protocol client over `websockets`, speaking JSON lines or MessagePack arrays."""

    ws: ClientConnection
    binary: bool
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    replies: dict[int, dict[str, Any]] = field(default_factory=dict)
    pushes: list[dict[str, Any]] = field(default_factory=list)
    frames: int = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, url: str, subprotocol: str = JSON, *, connect_first: bool = True, **connect_fields: Any
    ) -> AsyncIterator[WsClient]:
        async with connect(
            url,
            subprotocols=[subprotocol],
            max_size=64 << 20,
            ping_interval=None,
            open_timeout=TIMEOUT,
            close_timeout=2,
        ) as ws:
            client = cls(ws, binary=subprotocol == MSGPACK)
            if connect_first:
                result = await client.request("connect", **connect_fields)
                assert result["type"] == "reply", result
            yield client

    def encode(self, messages: list[dict[str, Any]]) -> str | bytes:
        if self.binary:
            return msgspec.msgpack.encode(messages)
        return "\n".join(json.dumps(m, separators=(",", ":")) for m in messages)

    async def send(self, *messages: dict[str, Any]) -> None:
        """Send `messages` in one frame."""
        try:
            await self.ws.send(self.encode(list(messages)))
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            raise Closed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "") from exc

    def command(self, type: str, **fields: Any) -> dict[str, Any]:
        return {"type": type, "id": next(self.ids), **fields}

    async def request(self, type: str, **fields: Any) -> dict[str, Any]:
        """Send one command; its answer (`reply` or `error`), pushes kept aside."""
        message = self.command(type, **fields)
        await self.send(message)
        return await self.answer(message["id"])

    async def answer(self, id: int) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT):
            while id not in self.replies:
                await self.read()
        return self.replies.pop(id)

    async def read(self) -> list[dict[str, Any]]:
        """Read one frame; sort its messages into `replies` and `pushes`."""
        try:
            data = await self.ws.recv()
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            raise Closed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "") from exc
        self.frames += 1
        if isinstance(data, bytes) and self.binary:
            messages = msgspec.msgpack.decode(data)
        else:
            text = data if isinstance(data, str) else data.decode()
            messages = [json.loads(line) for line in text.split("\n") if line.strip()]
        for message in messages:
            if message["type"] in ("reply", "error"):
                self.replies[message["id"]] = message
            elif message["type"] == "ping":
                await self.send({"type": "pong"})
            else:
                self.pushes.append(message)
        return messages

    async def push(self, type: str = "event") -> dict[str, Any]:
        """The next push of `type` (others before it are dropped)."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                while self.pushes:
                    message = self.pushes.pop(0)
                    if message["type"] == type:
                        return message
                await self.read()

    async def events(self, count: int) -> list[dict[str, Any]]:
        """The next `count` event pushes."""
        return [await self.push("event") for _ in range(count)]

    async def closed(self) -> Closed:
        """Read until the server closes; the close it sent."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    await self.read()
                except Closed as closed:
                    return closed


async def stalled_client(port: int, *messages: dict[str, Any]) -> socket.socket:
    """A raw TCP WebSocket client: connects, sends `messages` in one frame, then never reads.

    Its receive buffer is made small, so the server's writes back up soon.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))

    async def read_exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = await loop.sock_recv(sock, count - len(data))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        return data

    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET /v1/ws HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {JSON}\r\n\r\n"
    )
    async with asyncio.timeout(TIMEOUT):
        await loop.sock_sendall(sock, request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += await read_exactly(1)  # byte by byte: nothing past the headers
        assert response.startswith(b"HTTP/1.1 101"), response
        await loop.sock_sendall(sock, masked_frame(b'{"type":"connect","id":1}'))
        # The connect reply: one unmasked server frame, read exactly.
        head = await read_exactly(2)
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await read_exactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await read_exactly(8), "big")
        reply = json.loads(await read_exactly(length))
        assert reply["type"] == "reply" and reply["id"] == 1, reply
        payload = "\n".join(json.dumps(m) for m in messages).encode()
        await loop.sock_sendall(sock, masked_frame(payload))
    return sock


def masked_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One client WebSocket frame (FIN, masked) carrying `payload`."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


class ServerProcess:
    """`python -m hybridbus serve` in a subprocess; its JSON logs go to a file.

    With `port=0` the server picks a free port; `wait_listening` reads it back
    from the `listening` log line.
    """

    def __init__(self, *args: str, logs: Path, port: int = 0, env: dict[str, str] | None = None):
        self.port = port
        self.log_path = logs
        self._log_file = logs.open("ab")
        if "--config" not in args:  # the test default: OPEN_ROLES may do everything
            config = logs.with_suffix(".toml")
            config.write_text(
                "".join(f'[[roles.{r}]]\nallow = "*"\ntopics = "#"\n' for r in OPEN_ROLES)
            )
            args = ("--config", str(config), *args)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hybridbus", "serve", "--port", str(port), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            env={**os.environ, "HYBRIDBUS_LOG_LEVEL": "info", **(env or {})},
            cwd=Path(__file__).resolve().parent.parent,
        )

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines this process wrote so far."""
        records = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def _listening(self) -> dict[str, Any] | None:
        for record in self.logs():
            if record.get("message") == "listening" and record.get("pid") == self.process.pid:
                return record
        return None

    async def wait_listening(self, timeout: float = 20.0) -> None:
        """Wait until this process logs `listening` (it accepts connections)."""
        async with asyncio.timeout(timeout):
            while (record := self._listening()) is None:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited with {self.process.returncode}")
                await asyncio.sleep(0.05)
        self.port = int(record["addresses"][0][1])

    def signal(self, number: signal.Signals) -> None:
        self.process.send_signal(number)

    async def wait(self, timeout: float = 20.0) -> int:
        """The exit status, waiting for it without blocking the loop."""
        try:
            return await asyncio.to_thread(self.process.wait, timeout)
        finally:
            if self.process.poll() is not None:
                self._log_file.close()

    async def kill(self) -> None:
        """kill -9, and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        await self.wait()


class Expiring:
    """Tokens are "<user>:<seconds to live>"; "bad" is refused, "boom" fails the server."""

    async def authenticate(self, token: str | None, device: str | None) -> Identity:
        if token is None or token == "bad":
            raise Unauthorized("bad token")
        if token == "boom":
            raise RuntimeError("the token service is down")
        user, _, ttl = token.partition(":")
        return Identity(
            tenant="t",
            user=user,
            device=device,
            roles=("user",),
            expires=time.time() + float(ttl),
        )
