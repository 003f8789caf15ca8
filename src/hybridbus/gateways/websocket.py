"""The WebSocket gateway: the client protocol (docs/protocol.md) over aiohttp.

Owns: the `/v1/ws` endpoint (and its `/ws` alias), subprotocol negotiation,
the frame-size limit at the socket, the read loop feeding a `Connection`, and
the `Transport` over an aiohttp WebSocket (data frames built once per
payload and written straight to the socket), and, with `ws_check_origin`, the
refusal (403, before upgrading) of a browser page whose `Origin` is not in
`cors_origins` (`gateways.cors`). Must not execute commands or keep protocol
state (that is `server.connection` and `proto`).

aiohttp's own heartbeat and automatic pong are off: the protocol has its own
heartbeat, and a WebSocket ping from the client is answered here and counts
as hearing from it. Compression is off: an encoded push is shared by every
subscriber, compressing it per connection would undo that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.http_websocket import WebSocketError

from hybridbus.core.cors import CorsPolicy
from hybridbus.gateways.cors import origin_refusal
from hybridbus.proto.codec import SUBPROTOCOLS, codec_for
from hybridbus.proto.codes import CloseCode
from hybridbus.server.node import Node

__all__ = ["PATHS", "AiohttpTransport", "Frames", "WebSocketGateway", "frame_of"]

log = logging.getLogger("hybridbus.gateways.websocket")

PATHS: Final = ("/v1/ws", "/ws")
_MAX_REASON: Final = 123  # bytes a close frame's reason may hold
_OVERSIZED: Final = b"a frame over max_frame_size"


def close_reason(reason: str) -> bytes:
    """`reason` as UTF-8, cut to what a close frame holds (never inside a character)."""
    return reason.encode("utf-8")[:_MAX_REASON].decode("utf-8", "ignore").encode("utf-8")


class _WebSocketResponse(web.WebSocketResponse):
    """aiohttp refuses a frame over its limit before buffering it, closing with 1009;
    the protocol's code for that is 4503 (MESSAGE_TOO_LARGE)."""

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG:
            code, message = CloseCode.MESSAGE_TOO_LARGE, _OVERSIZED
        return await super().close(code=code, message=message, drain=drain)


class Frames:
    """Server WebSocket frames (header and payload), the last one kept for the next writer.

    A server's frames are not masked: the frame of a payload is the same bytes
    for every connection. The connections of one write pass mostly write the
    same payload object (a push shared by every subscriber), so the frame is
    built once and the same bytes go to every socket.
    """

    __slots__ = ("_binary", "_frame", "_payload")

    def __init__(self) -> None:
        self._payload = b""
        self._binary = False
        self._frame = frame_of(b"", False)

    def of(self, payload: bytes, binary: bool) -> bytes:
        """The whole frame carrying `payload` (a binary message, or text if not `binary`)."""
        if payload is self._payload and binary is self._binary:
            return self._frame
        frame = frame_of(payload, binary)
        self._payload = payload
        self._binary = binary
        self._frame = frame
        return frame


def frame_of(payload: bytes, binary: bool) -> bytes:
    """One unmasked, final WebSocket frame (RFC 6455 §5.2) carrying `payload`."""
    first = 0x82 if binary else 0x81
    size = len(payload)
    if size < 126:
        header = bytes((first, size))
    elif size < 1 << 16:
        header = bytes((first, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((first, 127)) + size.to_bytes(8, "big")
    return header + payload


class AiohttpTransport:
    """A `server.connection.Transport` over an aiohttp WebSocket.

    aiohttp does the handshake, reads, answers pings and writes the close
    frame; data frames are written here, straight to the socket's transport
    (`Frames`), as aiohttp's own writer would, without a coroutine per frame.
    """

    __slots__ = ("_frames", "_protocol", "_raw", "_request", "_stream", "_ws")

    def __init__(
        self, ws: web.WebSocketResponse, request: web.Request, frames: Frames | None = None
    ) -> None:
        self._ws = ws
        self._request = request
        self._raw = request.transport
        self._protocol = request.protocol
        self._stream = request.writer
        self._frames = frames or Frames()

    def write(self, frame: bytes, binary: bool) -> bool:
        raw = self._raw
        # Not once aiohttp began its close (its close frame must be the last).
        if raw is None or raw.is_closing() or self._ws.closed:
            raise ConnectionResetError("the WebSocket is closed")
        raw.write(self._frames.of(frame, binary))
        return not self._protocol.writing_paused

    async def drain(self) -> None:
        raw = self._raw
        if raw is None or raw.is_closing():
            raise ConnectionResetError("the WebSocket is closed")
        await self._stream.drain()

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code=code, message=close_reason(reason))

    def abort(self) -> None:
        transport = self._request.transport
        if transport is not None:
            transport.abort()


class WebSocketGateway:
    """Serves the client protocol at `PATHS` for one node."""

    def __init__(self, node: Node) -> None:
        self._node = node
        config = node.config
        self._origins = CorsPolicy(config.cors_origins) if config.ws_check_origin else None
        self._frames = Frames()  # shared by every connection's transport

    def routes(self) -> list[web.RouteDef]:
        """The routes to mount on the application."""
        return [web.get(path, self.handle) for path in PATHS]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """One WebSocket connection, from the upgrade to the close."""
        node = self._node
        if self._origins is not None:
            refusal = origin_refusal(self._origins, request)
            if refusal is not None:
                log.debug("upgrade refused: %s", refusal.text)
                raise refusal
        if not node.accepting:
            raise web.HTTPServiceUnavailable(text="the server is shutting down")
        max_frame = node.config.max_frame_size
        ws = _WebSocketResponse(
            protocols=SUBPROTOCOLS,
            autoping=False,
            heartbeat=None,
            compress=False,
            # Frames up to twice the limit reach the session, which closes with
            # a `disconnect` message first; larger ones aiohttp refuses unread.
            max_msg_size=2 * max_frame,
            timeout=node.close_timeout,
        )
        await ws.prepare(request)
        codec = codec_for(ws.ws_protocol)
        if codec is None:
            node.metrics.disconnects.labels(str(int(CloseCode.UNSUPPORTED))).inc()
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(node.close_timeout):
                    await ws.close(
                        code=CloseCode.UNSUPPORTED,
                        message=close_reason("offer one of " + ", ".join(SUBPROTOCOLS)),
                    )
            return ws
        connection = node.open_connection(AiohttpTransport(ws, request, self._frames), codec)
        code: int | None = None
        try:
            while True:
                message = await ws.receive()
                kind = message.type
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    await connection.receive(message.data)
                elif kind is WSMsgType.PING:
                    connection.heard()
                    with contextlib.suppress(ConnectionError):
                        await ws.pong(message.data)
                elif kind is WSMsgType.PONG:
                    connection.heard()
                else:
                    code = _close_code(ws, message.data if kind is WSMsgType.ERROR else None)
                    break
        finally:
            connection.lost(code)
            if not connection.done:
                await asyncio.wait({connection.finished}, timeout=2 * node.close_timeout)
        return ws


def _close_code(ws: web.WebSocketResponse, error: Any) -> int | None:
    if isinstance(error, WebSocketError) and error.code == WSCloseCode.MESSAGE_TOO_BIG:
        return int(CloseCode.MESSAGE_TOO_LARGE)
    return ws.close_code
