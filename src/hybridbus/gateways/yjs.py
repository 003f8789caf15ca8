"""The Yjs gateway: `/v1/yjs/{room}` for the stock `y-websocket` provider, unchanged.

Owns: the endpoint — the handshake (who the client is, which room, may it
write), the socket as the room's `Sink` (binary messages framed once per
payload and written straight to the transport, cut when the client stops
reading), the read loop decoding y-protocols messages (`core.yjs_protocol`)
into the room, and the close codes (`YjsCloseCode`). Must not keep
documents or awareness (that is `server.rooms`) nor decide permissions (the
`HttpAccess` principal and rules, the same as every other way in, do).

Handshake: the credential is `?token=` (the provider's `params` option), an
`Authorization: Bearer` header (not from a browser), or — when neither is
given — a hybridbus auth message as the client's FIRST message
(`encode_auth_token`); a client whose first message is anything else is
anonymous (if the server allows anonymous clients). The room `r` is topic
`<tenant>/docs/r`: reading it takes `subscribe` and `history` there,
writing `publish`. A refusal closes the socket after the upgrade with a
44xx code (4401, 4403, 4404, 4410, 4411), after which y-websocket 3.1
stops reconnecting (its `closed` event carries the code); a full per-user
count closes 4529, which it retries with backoff. A client without `publish` is
read-only: each update it sends is answered with an auth permission-denied
message (the provider logs it) and dropped, not stored nor broadcast.

With `ws_check_origin`, an upgrade from a browser page whose `Origin`
`cors_origins` does not allow is refused (403), as on `/v1/ws`.

The connection counts as one of its user's connections (`Node.hold`) and
closes 4410 the instant its token expires and 4411 at its revocation. Bytes
written and not yet taken by the client are bounded by `max_pending_bytes`:
past it, the socket is closed 4530 and aborted a second later. Each update
is one publish against `publish_rate` and `tenant_publish_rate`; over the
rate the socket is not read until the bucket allows it (`_charge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from aiohttp import WSCloseCode, WSMsgType, hdrs, web

from hybridbus.core.cors import CorsPolicy
from hybridbus.core.yjs_protocol import (
    AuthToken,
    Message,
    SyncStep2,
    SyncUpdate,
    YjsCloseCode,
    decode_messages,
    update_of,
)
from hybridbus.errors import (
    AccessError,
    BusClosed,
    BusError,
    Forbidden,
    InvalidTopic,
    RateLimited,
    Revoked,
    TokenExpired,
    TooManyConnections,
    Unauthorized,
    YjsMessageInvalid,
)
from hybridbus.gateways.access import HttpAccess
from hybridbus.gateways.cors import origin_refusal
from hybridbus.gateways.websocket import Frames, close_reason
from hybridbus.hub.guard import Principal
from hybridbus.server.node import Node
from hybridbus.server.rooms import Peer, Room, room_topic
from hybridbus.server.rooms_node import Rooms

__all__ = ["PATH", "YjsGateway", "close_code_of"]

log = logging.getLogger("hybridbus.gateways.yjs")

PATH: Final = "/v1/yjs/{room}"
_CUT_GRACE: Final = 1.0  # seconds a closing socket gets before it is aborted
_TOO_LARGE: Final = b"a message over max_frame_size"
_MOST_WAIT: Final = 1.0  # seconds one wait for the publish rate lasts before taking again
_UPDATES: Final = (SyncUpdate, SyncStep2)  # a tuple: `A | B` makes a union at each call


def close_code_of(error: BaseException) -> YjsCloseCode:
    """The close code telling a client why `error` ended its socket."""
    if isinstance(error, TokenExpired):
        return YjsCloseCode.TOKEN_EXPIRED
    if isinstance(error, Revoked):
        return YjsCloseCode.REVOKED
    if isinstance(error, Unauthorized):
        return YjsCloseCode.UNAUTHORIZED
    if isinstance(error, TooManyConnections):
        return YjsCloseCode.TOO_MANY_CONNECTIONS
    if isinstance(error, Forbidden | AccessError):
        return YjsCloseCode.FORBIDDEN
    if isinstance(error, InvalidTopic):
        return YjsCloseCode.BAD_ROOM
    if isinstance(error, YjsMessageInvalid):
        return YjsCloseCode.BAD_MESSAGE
    if isinstance(error, BusClosed):
        return YjsCloseCode.SHUTDOWN
    return YjsCloseCode.SERVER_ERROR


class _WebSocketResponse(web.WebSocketResponse):
    """aiohttp closes a frame over its limit with 1009; this endpoint's code is 4413."""

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG:
            code, message = YjsCloseCode.MESSAGE_TOO_LARGE, _TOO_LARGE
        return await super().close(code=code, message=message, drain=drain)


class _Socket:
    """One client's socket as a room's `Sink`."""

    __slots__ = ("_closing", "_frames", "_limit", "_request", "_task", "_ws")

    def __init__(
        self, ws: web.WebSocketResponse, request: web.Request, frames: Frames, limit: int
    ) -> None:
        self._ws = ws
        self._request = request
        self._frames = frames
        self._limit = limit
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def send(self, payload: bytes) -> None:
        raw = self._request.transport
        if self._closing or raw is None or raw.is_closing() or self._ws.closed:
            return
        raw.write(self._frames.of(payload, True))
        if raw.get_write_buffer_size() > self._limit:
            self.close(YjsCloseCode.TOO_SLOW, "the client does not read what it is sent")

    def close(self, code: int, reason: str) -> None:
        if not self._closing:
            self._closing = True
            self._task = asyncio.create_task(self._close(code, reason), name="yjs-close")

    async def _close(self, code: int, reason: str) -> None:
        try:
            async with asyncio.timeout(_CUT_GRACE):
                await self._ws.close(code=code, message=close_reason(reason))
        except (TimeoutError, ConnectionError):
            transport = self._request.transport
            if transport is not None:
                transport.abort()

    async def closed(self) -> None:
        """Wait for a close begun by `close` (bounded: it aborts after a second)."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task


class YjsGateway:
    """Serves `PATH` for one node (see the module docstring)."""

    def __init__(self, node: Node, access: HttpAccess, rooms: Rooms) -> None:
        self._node = node
        config = node.config  # the WebSocket gateway's Origin check, for browser pages too
        self._origins = CorsPolicy(config.cors_origins) if config.ws_check_origin else None
        self._access = access
        self._rooms = rooms
        self._frames = Frames()
        self._sockets: set[_Socket] = set()
        self._connections = node.metrics.connections.labels("yjs")

    def routes(self) -> list[web.RouteDef]:
        """The routes to mount on the application."""
        return [web.get(PATH, self.handle)]

    async def close(self) -> None:
        """Close every socket (1001: reconnect) and unload every room (a last snapshot each)."""
        for socket in list(self._sockets):
            socket.close(YjsCloseCode.SHUTDOWN, "the server is shutting down")
        await asyncio.gather(*(socket.closed() for socket in list(self._sockets)))
        await self._rooms.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """One Yjs WebSocket, from the upgrade to the close."""
        node = self._node
        if self._origins is not None:
            refusal = origin_refusal(self._origins, request)
            if refusal is not None:
                raise refusal
        if not node.accepting:
            raise web.HTTPServiceUnavailable(text="the server is shutting down")
        ws = _WebSocketResponse(
            autoping=True,
            heartbeat=None,
            compress=False,
            max_msg_size=node.config.max_frame_size,
            timeout=node.close_timeout,
        )
        await ws.prepare(request)
        socket = _Socket(ws, request, self._frames, node.config.max_pending_bytes)
        self._sockets.add(socket)
        self._connections.inc()
        try:
            await self._serve(request, ws, socket)
        finally:
            self._sockets.discard(socket)
            self._connections.dec()
            await socket.closed()
        return ws

    async def _serve(
        self, request: web.Request, ws: web.WebSocketResponse, socket: _Socket
    ) -> None:
        node = self._node
        first: list[Message] = []
        room: Room | None = None
        peer: Peer | None = None
        release = None
        try:
            room_name = request.match_info["room"]
            room_topic("t", room_name)  # a bad name is refused before anything else
            credential = _credential(request)
            if credential is None:
                message = await ws.receive(timeout=node.config.connect_timeout)
                if message.type is not WSMsgType.BINARY:
                    return  # closed (or text, which no Yjs client sends) before saying anything
                first = decode_messages(message.data)
                if first and isinstance(first[0], AuthToken):
                    credential = first[0].token
                    del first[0]
            principal = await self._access.identify(credential)
            topic = room_topic(principal.tenant, room_name)
            await self._access.check(principal, "subscribe", topic)
            await self._access.check(principal, "read", topic)
            try:
                await self._access.check(principal, "publish", topic)
                writable = True
            except Forbidden:
                writable = False
            release = node.hold(
                principal.identity, lambda error: socket.close(close_code_of(error), str(error))
            )
            peer = Peer(socket, writable)
            room = await self._rooms.join(topic, peer)
            if first:
                await self._charge(principal, peer, first)
                if room.receive(peer, first):
                    await room.room_for_more()
            receive, take = ws.receive, node.guard.take
            while True:  # per message: no task, no wait unless the rate or the room says so
                message = await receive()
                kind = message.type
                if kind is WSMsgType.BINARY:
                    data = message.data
                    update = update_of(data) if writable else None
                    if update is not None:  # the common message: one update, no dispatch
                        try:
                            take(principal)
                        except RateLimited:
                            await self._charge(principal, peer, [SyncUpdate(update)])
                        full = room.update(peer, update)
                    else:
                        messages = decode_messages(data)
                        if writable and not self._take(principal, messages):
                            await self._charge(principal, peer, messages)
                        full = room.receive(peer, messages)
                    if full:  # the room's queue is at its bound: read on once it is not
                        await room.room_for_more()
                elif kind is WSMsgType.TEXT:
                    raise YjsMessageInvalid("a text message: Yjs messages are binary")
                else:
                    break
        except TimeoutError:
            socket.close(YjsCloseCode.UNAUTHORIZED, "no credentials and no first message in time")
        except BusError as exc:
            code = close_code_of(exc)
            if code is YjsCloseCode.SERVER_ERROR:
                log.warning("a Yjs socket failed: %s", exc)
            socket.close(code, str(exc))
        except ConnectionError:
            pass
        finally:
            if room is not None and peer is not None:
                self._rooms.leave(room, peer)
            if release is not None:
                release()

    def _take(self, principal: Principal, messages: list[Message]) -> bool:
        """Take one publish per update `messages` hold at once; False: over the rate, none taken."""
        count = 0
        for message in messages:
            if isinstance(message, _UPDATES):
                count += 1
        if count:
            try:
                self._node.guard.take(principal, count)
            except RateLimited:
                return False
        return True

    async def _charge(self, principal: Principal, peer: Peer, messages: list[Message]) -> None:
        """Take one publish per update `messages` hold; over the rate, wait (reading nothing).

        The y-websocket protocol cannot say "later", and an update refused
        would leave the server's document behind the client's until it
        reconnects: so an update over the rate is delayed, never dropped.
        Not reading is the back-pressure: the client's socket buffers, the
        server holds nothing more. Raises `LimitExceeded` when the rate can
        never allow one update (a burst under 1): the socket closes 4403.
        """
        if not peer.writable:
            return  # refused and dropped by the room: it costs nothing
        guard = self._node.guard
        for message in messages:
            if not isinstance(message, SyncUpdate | SyncStep2):
                continue
            while True:
                try:
                    guard.take(principal)
                    break
                except RateLimited as exc:
                    await asyncio.sleep(min(exc.retry_after, _MOST_WAIT))


def _credential(request: web.Request) -> str | None:
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.query.get("token") or None
