"""The Python client's connection: asyncio and aiohttp around `proto.ClientSession`.

Owns: the WebSocket, reconnecting with exponential backoff and full jitter
(`core.backoff`), replaying what a drop interrupted on the next connection
(resubscribe each subscription from its position; resend in-flight commands
— a publish with the same event, which the server dedupes by source + id),
request futures with timeouts, write coalescing and the heartbeat timer.
Must not import the server: it speaks docs/protocol.md through `proto` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar

import aiohttp
import msgspec

from hybridbus.client.subscription import ClientSubscription
from hybridbus.core.backoff import Backoff
from hybridbus.core.event import Event, check_event, event_from_dict
from hybridbus.core.log import Position
from hybridbus.core.opening import Opening
from hybridbus.errors import BusError, Disconnected, InvalidInput, RemoteError
from hybridbus.proto.client import (
    ClientSession,
    Ended,
    Failed,
    HistoryPage,
    Received,
    Replied,
)
from hybridbus.proto.codec import codec_for
from hybridbus.proto.codes import reconnect_allowed, retriable
from hybridbus.proto.frames import (
    ClientInfo,
    Connect,
    PresenceResult,
    PublishResult,
    Subscribe,
    SubscribeResult,
)

__all__ = ["Client", "ClientConfig", "connect"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class ClientConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of one client connection."""

    subprotocol: str = "hybridbus.v1.json"
    backoff: Backoff = Backoff(base=0.05, cap=5.0)
    request_timeout: float = 30.0  # seconds a command may wait, reconnects included
    queue_size: int = 10_000  # deliveries a subscription holds for the application
    tick: float = 1.0  # seconds between heartbeat checks
    name: str | None = None
    device: str | None = None


class _Request:
    """A command the application awaits; `issue` sends it on a session, again after a drop."""

    __slots__ = ("future", "issue")

    def __init__(self, issue: Callable[[ClientSession], int], future: asyncio.Future[Any]) -> None:
        self.issue = issue
        self.future = future


class Client:
    """A connection to a hybridbus server that survives drops. Use `connect()`."""

    def __init__(self, url: str, token: str | None, config: ClientConfig) -> None:
        codec = codec_for(config.subprotocol)
        if codec is None:
            raise InvalidInput(f"unknown subprotocol {config.subprotocol!r}")
        self.url = url
        self.config = config
        self._codec = codec
        self._token = token
        self._rng = random.Random()
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: ClientSession | None = None
        self._requests: dict[int, _Request] = {}  # by id, on the current session
        self._waiting: list[_Request] = []  # for the next connected session
        self._subs: dict[str, ClientSubscription] = {}
        self._subscribing: dict[int, ClientSubscription] = {}
        self._opened: dict[ClientSubscription, asyncio.Future[None]] = {}
        self._ready = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._failure: BusError | None = None
        self._closed = False
        self.connects = 0  # connections established (1 + reconnects)

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect; raise `Disconnected` if no connection succeeds within the request timeout."""
        self._http = aiohttp.ClientSession()
        self._runner = asyncio.create_task(self._run(), name=f"hybridbus-client {self.url}")
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait(
                [ready, self._runner],
                timeout=self.config.request_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            ready.cancel()
        if not self._ready.is_set():
            failure = self._failure or Disconnected(None, f"could not connect to {self.url}")
            await self.close()
            raise failure

    async def close(self) -> None:
        """Close the connection; pending commands fail with `Disconnected`, iterations stop."""
        if self._closed:
            return
        self._closed = True
        for task in (self._runner, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        self._fail_all(Disconnected(1000, "the client was closed"), end_quietly=True)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- commands ----------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        event: Event | Mapping[str, Any],
        *,
        exclude_self: Literal["connection", "device"] | None = None,
    ) -> PublishResult:
        """Publish `event` to `topic` (relative to the token's tenant); resolves with the ack.

        Across a reconnect it is sent again with the same id: the server's
        dedupe keeps "published once" once.
        """
        checked = (
            check_event(event)
            if isinstance(event, Event)
            else event_from_dict(event, require_specversion=False)
        )
        result: PublishResult = await self._request(
            lambda s: s.publish(topic, checked, exclude_self=exclude_self)
        )
        return result

    async def history(
        self, pattern: str, *, since: Position | str | None = None, limit: int = 100
    ) -> HistoryPage:
        """Up to `limit` retained events of `pattern` after `since`, oldest first."""
        page: HistoryPage = await self._request(
            lambda s: s.history(pattern, since=since, limit=limit)
        )
        return page

    async def presence(self, topic: str) -> list[ClientInfo]:
        """Who is subscribed to `topic` now."""
        result: PresenceResult = await self._request(lambda s: s.presence(topic))
        return result.clients

    async def ping(self) -> None:
        """A round trip to the server."""
        await self._request(lambda s: s.ping())

    def subscribe(self, pattern: str, since: Position | str | None = None) -> ClientSubscription:
        """A subscription: `async with c.subscribe(pattern) as sub: async for r in sub`."""
        token = Position.parse(since) if isinstance(since, str) else since
        config = self.config
        return ClientSubscription(
            pattern, token, config.queue_size, self._open_subscription, self._close_subscription
        )

    async def _request(self, issue: Callable[[ClientSession], int]) -> Any:
        if self._closed:
            raise Disconnected(1000, "the client is closed")
        if self._failure is not None:
            raise self._failure
        request = _Request(issue, asyncio.get_running_loop().create_future())
        session = self._session
        if session is not None and self._ready.is_set():
            self._requests[issue(session)] = request  # a bad event raises here, unsent
            self._kick()
        else:
            self._waiting.append(request)
        try:
            async with asyncio.timeout(self.config.request_timeout):
                return await request.future
        finally:
            self._forget(request)

    def _forget(self, request: _Request) -> None:
        if request in self._waiting:
            self._waiting.remove(request)
        for id, pending in list(self._requests.items()):
            if pending is request:
                del self._requests[id]

    async def _open_subscription(self, sub: ClientSubscription) -> None:
        if sub.pattern in self._subs:
            raise InvalidInput(f"already subscribed to {sub.pattern!r} on this client")
        if self._failure is not None:
            raise self._failure
        opened = asyncio.get_running_loop().create_future()
        self._subs[sub.pattern] = sub
        self._opened[sub] = opened
        if self._session is not None and self._ready.is_set():
            self._send_subscribe(self._session, sub)
        try:
            async with asyncio.timeout(self.config.request_timeout):
                await opened
        except BaseException:
            self._subs.pop(sub.pattern, None)
            raise
        finally:
            self._opened.pop(sub, None)

    async def _close_subscription(self, sub: ClientSubscription) -> None:
        if self._subs.get(sub.pattern) is sub:
            del self._subs[sub.pattern]
            session = self._session
            if session is not None and self._ready.is_set() and not session.closed:
                with contextlib.suppress(RuntimeError):
                    session.unsubscribe(sub.pattern)
                    self._kick()
        sub.end()

    def _send_subscribe(self, session: ClientSession, sub: ClientSubscription) -> None:
        self._subscribing[session.subscribe(sub.pattern, since=sub.position)] = sub
        self._kick()

    # -- the connection loop ---------------------------------------------------------

    async def _run(self) -> None:
        assert self._http is not None
        attempt = 0
        while not self._closed:
            try:
                ws = await self._http.ws_connect(
                    self.url,
                    protocols=(self.config.subprotocol,),
                    autoping=True,
                    heartbeat=None,
                    max_msg_size=0,
                )
            except (aiohttp.ClientError, OSError) as exc:
                log.info("connecting to %s failed: %s", self.url, exc)
            else:
                if ws.protocol != self.config.subprotocol:
                    await ws.close()
                    self._fail_all(Disconnected(None, "the server speaks no known subprotocol"))
                    return
                self._ws = ws
                try:
                    code, reason, connected = await self._serve(ws)
                finally:
                    self._ws = None
                    await ws.close()
                if code is not None and not reconnect_allowed(code) and code != 1000:
                    self._fail_all(Disconnected(code, reason))
                    return
                if connected:
                    attempt = 0
            await asyncio.sleep(self.config.backoff.delay(attempt, self._rng))
            attempt += 1

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str, bool]:
        """Speak the protocol on one WebSocket; return (close code, reason, connected)."""
        loop = asyncio.get_running_loop()
        session = ClientSession(self._codec, now=loop.time())
        self._session = session
        session.connect(token=self._token, name=self.config.name, device=self.config.device)
        self._kick()
        connected = False
        try:
            while not session.closed:
                try:
                    message = await ws.receive(timeout=self.config.tick)
                except TimeoutError:
                    session.tick(loop.time())
                    continue
                if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    data = message.data
                    for event in session.receive_data(
                        data.encode() if isinstance(data, str) else data, loop.time()
                    ):
                        connected = self._handle(session, event) or connected
                    self._kick()
                else:  # closed, closing or an error: the connection is over
                    return ws.close_code, str(message.extra or "connection lost"), connected
            return session.close_code, session.close_reason or "", connected
        finally:
            self._ready.clear()
            self._session = None
            # What was in flight is sent again on the next connection, in order.
            self._waiting[:0] = [self._requests[id] for id in sorted(self._requests)]
            self._requests.clear()
            self._subscribing.clear()

    def _handle(self, session: ClientSession, event: object) -> bool:
        """Act on one thing the session handed out; True once the connect was answered."""
        if isinstance(event, Received):
            sub = self._subs.get(event.pattern)
            if sub is not None:
                sub.deliver(event)
        elif isinstance(event, Replied):
            command = event.command
            if isinstance(command, Connect):
                self._connected(session)
                return True
            if isinstance(command, Subscribe):
                self._subscribed(event.id, event.result)
            else:
                request = self._requests.pop(event.id, None)
                if request is not None and not request.future.done():
                    request.future.set_result(event.result)
        elif isinstance(event, Failed):
            error = RemoteError(event.code, event.message, event.retriable)
            sub = self._subscribing.pop(event.id, None)
            if sub is not None:
                self._end(sub, error)
            request = self._requests.pop(event.id, None)
            if request is not None and not request.future.done():
                request.future.set_exception(error)
        elif isinstance(event, Ended):
            sub = self._subs.get(event.pattern)
            if sub is not None:
                if retriable(event.code) or event.code == 1200:
                    self._send_subscribe(session, sub)  # from where it got to
                else:
                    self._end(sub, RemoteError(event.code, event.reason, False))
        return False

    def _connected(self, session: ClientSession) -> None:
        self.connects += 1
        self._ready.set()
        for sub in self._subs.values():
            self._send_subscribe(session, sub)
        waiting, self._waiting = self._waiting, []
        for request in waiting:
            if request.future.done():
                continue
            try:
                self._requests[request.issue(session)] = request
            except BusError as exc:
                request.future.set_exception(exc)
        self._kick()

    def _subscribed(self, id: int, result: object) -> None:
        sub = self._subscribing.pop(id, None)
        if sub is None or not isinstance(result, SubscribeResult):
            return
        resumed = sub.position is not None
        sub.started(Position.parse(result.position))
        if resumed and not result.recovered:
            sub.gap("the server could not recover every event since the last one received")
        opened = self._opened.get(sub)
        if opened is not None and not opened.done():
            opened.set_result(None)

    def _end(self, sub: ClientSubscription, error: BusError) -> None:
        self._subs.pop(sub.pattern, None)
        opened = self._opened.get(sub)
        if opened is not None and not opened.done():
            opened.set_exception(error)
        sub.end(error)

    def _fail_all(self, error: BusError, *, end_quietly: bool = False) -> None:
        """Fail every pending command with `error`; end every subscription (with it)."""
        self._failure = error
        for request in [*self._requests.values(), *self._waiting]:
            if not request.future.done():
                request.future.set_exception(error)
        self._requests.clear()
        self._waiting.clear()
        for sub in list(self._subs.values()):
            if end_quietly:
                sub.end()
            else:
                self._end(sub, error)
        self._subs.clear()

    # -- writing -----------------------------------------------------------------------

    def _kick(self) -> None:
        """Send what the session queued, coalesced: one frame per loop tick."""
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        session, ws = self._session, self._ws
        if session is None or ws is None:
            return
        opcode = aiohttp.WSMsgType.BINARY if self._codec.binary else aiohttp.WSMsgType.TEXT
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            while (frame := session.data_to_send()) is not None:
                await ws.send_frame(frame, opcode)


def connect(
    url: str, *, token: str | None = None, config: ClientConfig | None = None
) -> Opening[Client]:
    """Connect to the server's WebSocket endpoint, e.g. `ws://127.0.0.1:8080/v1/ws`."""
    return Opening(Client(url, token, config or ClientConfig()))
