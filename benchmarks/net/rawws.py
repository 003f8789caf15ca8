"""A lean WebSocket client for the load processes: so the client is not the bottleneck.

aiohttp's client turns every frame into a message object behind a future and a task
wake-up (~5-10 µs each); a server sending one frame per event per subscriber (Centrifugo,
the bare per-message peer) makes a Python client spend more than the server does. Here a
connection is an `asyncio.Protocol`: during set-up (connect, subscribe) frames are parsed
and handed out one by one (`recv`); then `scan()` hands the raw bytes of every later
`data_received` to a scanner, which counts events and reads their timestamps with
`bytes.find`/`bytes.count` over whole reads, never per frame in Python. That works
because server frames are unmasked and uncompressed (no extension is offered): event
text appears verbatim in the byte stream.

Client frames are masked, as RFC 6455 requires. Over TLS (`wss://`) the same: the
scanner sees the decrypted bytes.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import struct
from collections import deque
from collections.abc import Callable
from typing import Final

__all__ = ["RawWs", "connect", "frame"]

_OP_TEXT: Final = 0x1
_OP_BINARY: Final = 0x2
_OP_CLOSE: Final = 0x8
_OP_PING: Final = 0x9


def frame(text: str | bytes, opcode: int = _OP_TEXT) -> bytes:
    """One masked client frame."""
    payload = text.encode() if isinstance(text, str) else text
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    repeated = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")
    return header + mask + masked


class RawWs(asyncio.Protocol):
    """One client WebSocket connection (see the module docstring)."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self.transport: asyncio.Transport | None = None
        self._head = b""
        self.upgraded: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._buf = bytearray()
        self._frames: deque[str] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._scanner: Callable[[bytes], None] | None = None
        self.closed = False
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's is no asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self._scanner is not None:
            self._scanner(data)
            return
        if not self.upgraded.done():
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self._head[: self._head.find(b"\r\n")].decode(errors="replace")
            if " 101 " not in status + " ":
                self.upgraded.set_exception(RuntimeError(f"upgrade refused: {status}"))
                return
            headers = self._head[:end].decode(errors="replace").lower()
            protocol = ""
            for line in headers.split("\r\n"):
                if line.startswith("sec-websocket-protocol:"):
                    protocol = line.split(":", 1)[1].strip()
            data = self._head[end + 4 :]
            self._head = b""
            self.upgraded.set_result(protocol)
        self._buf += data
        self._parse()

    def _parse(self) -> None:
        buf = self._buf
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            n = buf[1] & 0x7F
            at = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n = struct.unpack_from("!H", buf, 2)[0]
                at = 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n = struct.unpack_from("!Q", buf, 2)[0]
                at = 10
            if len(buf) < at + n:
                break
            payload = bytes(buf[at : at + n])
            del buf[: at + n]
            if opcode in (_OP_TEXT, _OP_BINARY, 0):
                self._frames.append(payload.decode())
            elif opcode == _OP_PING:
                self.send(payload, 0xA)
            elif opcode == _OP_CLOSE:
                self._end()
                return
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def _end(self) -> None:
        self.closed = True
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed during the upgrade"))
        if not self.ended.done():
            self.ended.set_result(None)
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- use ------------------------------------------------------------------------------
    def send(self, text: str | bytes, opcode: int = _OP_TEXT) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(frame(text, opcode))

    async def recv(self, timeout: float = 60.0) -> str | None:
        """The next frame's text (set-up mode); None once the connection closed."""
        while not self._frames:
            if self.closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self._waiter, timeout)
        return self._frames.popleft()

    def scan(self, scanner: Callable[[bytes], None]) -> None:
        """From now on hand every read's raw bytes to `scanner` (frames still queued first)."""
        pending = b"".join(f.encode() + b"\n" for f in self._frames) + bytes(self._buf)
        self._frames.clear()
        self._buf.clear()
        self._scanner = scanner
        if pending:
            scanner(pending)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(frame(struct.pack("!H", 1000), _OP_CLOSE))
        self._end()


async def connect(
    port: int, path: str, protocol: str | None = None, tls: ssl.SSLContext | None = None
) -> RawWs:
    """A WebSocket to 127.0.0.1:`port` (`wss://` with `tls`: the client's context)."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    _, ws = await loop.create_connection(
        lambda: RawWs(request),
        "127.0.0.1",
        port,
        ssl=tls,
        server_hostname="127.0.0.1" if tls is not None else None,
    )
    got = await asyncio.wait_for(ws.upgraded, 30)
    if protocol and got != protocol:
        ws.close()
        raise RuntimeError(f"subprotocol {protocol!r} not selected ({got!r})")
    return ws
