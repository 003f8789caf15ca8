"""The Python client's connection: asyncio and aiohttp around `proto.ClientSession`.

Owns: the WebSocket, reconnecting with exponential backoff and full jitter
(`core.backoff`) and continuing the session (the connect presents the last
`session` token: presence shows "degraded", then "active", docs/protocol.md
§4.1), replaying what a drop interrupted on the next connection (resubscribe
each subscription from its position, `client.subscribing`; rejoin each consumer
group as the same member, `client.groups`; resend in-flight commands — a publish
with the same event, which the server dedupes by source + id; an ack, which is
idempotent), request futures with timeouts, write coalescing and the heartbeat
timer, and sending `refresh` on the connection whose token `client.tokens` renews.

Reconnecting is for connections that once worked: if the very first
connection fails (nothing listens, the handshake is refused, the server closes
before answering `connect`), `connect()` raises `ConnectFailed` at once
instead of retrying — a wrong URL or a server that is down is reported, not
waited out. A terminal close code at the first connect raises `Disconnected`
with that code. Each later reconnect is logged on this module's logger:
`reconnecting (attempt n, in x s): <reason>` (WARNING) before the wait, and
`reconnected` (INFO) once the server answered `connect` again.

Must not import the server: it speaks docs/protocol.md through `proto` only.
Must not decide about tokens: which token a connect or a refresh sends, when
to refresh and how to retry a failing provider are `client.tokens`'s (its
docstring has the whole story, 4004 included).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar

import aiohttp

from hybridbus.client.collab import Collaboration
from hybridbus.client.config import ClientConfig
from hybridbus.client.groups import ClientGroup, Memberships
from hybridbus.client.presence import Presence
from hybridbus.client.requests import Request, cancel, retrieve, why
from hybridbus.client.subscribing import Subscriptions
from hybridbus.client.subscription import ClientSubscription, Filter
from hybridbus.client.tls import Ca, client_context
from hybridbus.client.tokens import TokenProvider, TokenSource
from hybridbus.core.event import Event, check_event, event_from_dict
from hybridbus.core.log import Position
from hybridbus.core.opening import Opening
from hybridbus.errors import BusError, ConnectFailed, Disconnected, InvalidInput, RemoteError
from hybridbus.proto.client import (
    ClientSession,
    Ended,
    Failed,
    GroupEnded,
    GroupReceived,
    HistoryPage,
    Received,
    Replied,
)
from hybridbus.proto.codec import codec_for
from hybridbus.proto.codes import CloseCode, reconnect_allowed
from hybridbus.proto.frames import (
    AwarenessPush,
    Connect,
    ConnectResult,
    GroupJoin,
    Join,
    Leave,
    PresenceChanged,
    PublishResult,
    Refresh,
    RefreshResult,
    StatePush,
    Subscribe,
)

__all__ = ["Client", "ClientConfig", "ConnectFailed", "TokenProvider", "connect"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class Client(Collaboration, Presence):
    """A connection to a hybridbus server that survives drops. Use `connect()`.

    `expires` is when the connection's token expires (Unix time; None: never
    or unknown), as of the last connect or refresh reply. `info` is the last
    connect reply: `info.client` is this client's presence id, which a resumed
    session keeps and a new session changes (awareness names states by it).
    """

    def __init__(self, url: str, token: str | TokenProvider | None, config: ClientConfig) -> None:
        codec = codec_for(config.subprotocol)
        if codec is None:
            raise InvalidInput(f"unknown subprotocol {config.subprotocol!r}")
        self.url = url
        self.config = config
        self._token = token
        self._codec = codec
        self._rng = random.Random()
        self._tokens = TokenSource(token, config, self._rng, url)
        self._ssl = client_context(config.ca)  # None: aiohttp verifies with the system's CAs
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: ClientSession | None = None
        self._requests: dict[int, Request] = {}  # by id, on the current session
        self._waiting: list[Request] = []  # for the next connected session
        self._subs = Subscriptions(self)
        self._groups = Memberships(self, self._request, self._follow)
        # Connections to other nodes, for memberships of groups they coordinate (by URL).
        self._siblings: dict[str, tuple[Client, asyncio.Future[None]]] = {}
        self._ready = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._failure: BusError | None = None
        self._last_error: Exception | None = None  # why the last connect attempt failed
        self._closed = False
        self.connects = 0  # connections established (1 + reconnects)
        self.resumes = 0  # of which continued the session (docs/protocol.md, "Sessions")
        self.session: str | None = None  # the session token the next connect presents
        self.expires: float | None = None
        self.info: ConnectResult | None = None  # the last connect reply (class docstring)

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect; raise as soon as this first connection fails (module docstring).

        `ConnectFailed` if it could not be made or was not answered within the
        request timeout, `Disconnected` if the server refused it with a
        terminal close code (e.g. 4501 for a missing or invalid token).
        """
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
        # Not `_ready`: a connection answered and dropped at once is connected (it reconnects).
        if self._failure is not None or not self.connects:
            failure = self._failure or ConnectFailed(
                self.url, None, f"no answer within {self.config.request_timeout} s"
            )
            cause = self._last_error
            await self.close()
            raise failure from cause

    async def close(self) -> None:
        """Close the connection; pending commands fail with `Disconnected`, iterations stop."""
        if self._closed:
            return
        self._closed = True
        # One by one: stopping the runner stops the refresher, which may flush.
        await cancel(self._runner)
        for sibling, opening in self._siblings.values():
            opening.cancel()
            await sibling.close()
        await self._tokens.close()
        await cancel(self._flusher)
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
        return (await self.publish_many(topic, [event], exclude_self=exclude_self))[0]

    async def publish_many(
        self,
        topic: str,
        events: Iterable[Event | Mapping[str, Any]],
        *,
        exclude_self: Literal["connection", "device"] | None = None,
    ) -> list[PublishResult]:
        """Publish `events` to `topic` in one frame; one ack per event, in order.

        Each event is its own `publish` command, all sent in one frame: the
        server appends the commands of a frame together (one engine call, one
        commit), far cheaper than publishing one at a time. Every event is
        checked first (`InvalidEvent`, nothing sent; one whose data cannot be
        encoded raises as it is queued, after the ones before it). If the
        server refuses any, this raises the first refusal once every reply is
        in; the others were published — sending the same events again is
        safe, the server dedupes by source + id. Across a reconnect, as `publish`.
        """

        def issue(event: Event | Mapping[str, Any]) -> Callable[[ClientSession], int]:
            checked = (
                check_event(event)
                if isinstance(event, Event)
                else event_from_dict(event, require_specversion=False)
            )
            return lambda s: s.publish(topic, checked, exclude_self=exclude_self)

        results: list[PublishResult] = await self._request_many([issue(e) for e in events])
        return results

    async def history(
        self, pattern: str, *, since: Position | str | float | None = None, limit: int = 100
    ) -> HistoryPage:
        """Up to `limit` retained events of `pattern` after `since` (a float: a Unix time)."""
        page: HistoryPage = await self._request(
            lambda s: s.history(pattern, since=since, limit=limit)
        )
        return page

    async def ping(self) -> None:
        """A round trip to the server."""
        await self._request(lambda s: s.ping())

    async def refresh(self, token: str | None = None) -> float | None:
        """Hand the server a fresh token now: `token`, or one from the token provider.

        Returns when the new token expires (Unix time; None: never), and
        reschedules the automatic refresh from it. Raises what the server
        answers: `RemoteError`, or `Disconnected` when it refuses the token
        (it closes the connection with 4501/4502, which ends the client).
        Without a provider, `token` also becomes the token reconnects use, and
        without `token` the current fixed token is sent again.
        """
        fresh = await self._tokens.for_refresh(token)
        result: RefreshResult = await self._request(lambda s: s.refresh(fresh))
        return result.expires

    def group(
        self,
        name: str,
        pattern: str | None = None,
        *,
        member: str | None = None,
        **settings: Any,
    ) -> ClientGroup:
        """Join consumer group `name`: `async with c.group("billing", "invoices/#") as g`.

        Created over `pattern` with `settings` if it does not exist (see
        `hybridbus.client.groups` and docs/protocol.md §5.9); rejoined with the
        same member name after every reconnect.
        """
        return ClientGroup(self._groups, name, pattern, member, settings or None)

    def subscribe(
        self, pattern: str, since: Position | str | None = None, *, filter: Filter | None = None
    ) -> ClientSubscription:
        """A subscription (`async with c.subscribe(p) as sub`); the server applies `filter`."""
        token = Position.parse(since) if isinstance(since, str) else since
        size, subs = self.config.queue_size, self._subs
        return ClientSubscription(pattern, token, size, subs.open, subs.close, filter=filter)

    async def _follow(self, url: str) -> Memberships:
        """The memberships of this client's connection to `url` (another node), opened once.

        Same token (or provider) and settings; its groups come back here when
        their coordinator moves (`client.groups`). Raises why it cannot connect.
        """
        if url == self.url:
            return self._groups
        if self._closed:
            raise Disconnected(1000, "the client is closed")
        found = self._siblings.get(url)
        if found is None or found[0].failure() is not None or found[0]._closed:
            client = Client(url, self._token, self.config)
            client._groups = Memberships(client, client._request, self._follow, self._groups)
            opening = asyncio.ensure_future(client.start())
            opening.add_done_callback(lambda f: f.cancelled() or f.exception())
            found = self._siblings[url] = (client, opening)
        await asyncio.shield(found[1])
        return found[0]._groups

    async def _request(
        self,
        issue: Callable[[ClientSession], int],
        answered: Callable[[Any], None] | None = None,
    ) -> Any:
        """One command's result; `answered` sees it in the turn it came in (before the
        pushes read after it), the awaiting caller a turn later."""
        future = asyncio.get_running_loop().create_future()
        return (await self._await_requests([Request(issue, future, answered=answered)]))[0]

    async def _request_many(self, issues: list[Callable[[ClientSession], int]]) -> list[Any]:
        """Commands issued together (one frame); their results in order, or the first error."""
        loop = asyncio.get_running_loop()
        return await self._await_requests(
            [Request(issue, loop.create_future()) for issue in issues]
        )

    def _command(
        self,
        issue: Callable[[ClientSession], int],
        answered: Callable[[Any], None] | None = None,
        failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Send a command on this connection now, for it only (not sent again after a drop:
        who sent it does again on the next connection); nobody awaits it. `answered` sees
        its result in the turn it came in, `failed` its refusal or its loss. Between
        connections nothing is sent."""
        session = self.live()
        if session is None:
            return
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(future: asyncio.Future[Any]) -> None:
            error = asyncio.CancelledError() if future.cancelled() else future.exception()
            if error is not None and failed is not None:
                failed(error)

        future.add_done_callback(done)
        request = Request(issue, future, replay=False, answered=answered)
        self._requests[request.issue(session)] = request
        self._kick()

    async def _await_requests(self, requests: list[Request]) -> list[Any]:
        if self._closed:
            raise Disconnected(1000, "the client is closed")
        if self._failure is not None:
            raise self._failure
        session = self._session
        if session is not None and self._ready.is_set():
            issued = 0
            try:
                for request in requests:
                    self._requests[request.issue(session)] = request
                    issued += 1
            except BaseException:  # a bad event: the ones before it go out, unawaited
                for request in requests[:issued]:
                    request.future.add_done_callback(retrieve)
                raise
            finally:
                self._kick()
        else:
            self._waiting.extend(requests)
        try:
            async with asyncio.timeout(self.config.request_timeout):
                results = await asyncio.gather(
                    *(r.future for r in requests), return_exceptions=True
                )
        finally:
            self._forget_many(requests)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    def _forget_many(self, requests: list[Request]) -> None:
        done = set(requests)
        self._waiting = [r for r in self._waiting if r not in done]
        for id in [id for id, pending in self._requests.items() if pending in done]:
            del self._requests[id]

    # -- the connection loop ---------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0  # attempts since the last connection that worked
        while not self._closed:
            opened = await self._open()
            if opened is None:
                code, reason = None, why(self._last_error)
            else:
                ws, token = opened
                if ws.protocol != self.config.subprotocol:
                    await ws.close()
                    self._fail_all(Disconnected(None, "the server speaks no known subprotocol"))
                    return
                self._ws = ws
                try:
                    code, reason, connected = await self._serve(ws, token)
                finally:
                    self._ws = None
                    await ws.close()
                failure = self._terminal(code, reason)
                if failure is not None:
                    self._fail_all(failure)
                    return
                if connected:
                    attempt = 0
                if code is not None:
                    reason = f"closed with {code}: {reason}"
            if not self.connects:  # never connected: report it, don't wait it out
                self._fail_all(ConnectFailed(self.url, code, reason))
                return
            delay = self.config.backoff.delay(attempt, self._rng)
            attempt += 1
            log.warning("reconnecting (attempt %d, in %.1f s): %s", attempt, delay, reason)
            await asyncio.sleep(delay)

    async def _open(self) -> tuple[aiohttp.ClientWebSocketResponse, str | None] | None:
        """The token to connect with and an open WebSocket; None if getting either failed."""
        assert self._http is not None
        try:
            token = await self._tokens.for_connect()
        except Exception as exc:  # the provider is the application's code: log it, retry
            log.warning("the token provider failed", exc_info=True)
            self._last_error = exc
            return None
        try:
            ws = await self._http.ws_connect(
                self.url,
                protocols=(self.config.subprotocol,),
                autoping=True,
                heartbeat=None,
                max_msg_size=0,
                ssl=True if self._ssl is None else self._ssl,  # verified either way
            )
        except (aiohttp.ClientError, OSError) as exc:
            self._last_error = exc
            return None
        return ws, token

    def _terminal(self, code: int | None, reason: str) -> Disconnected | None:
        """What ends the client after a close with `code`; None: reconnect."""
        if code is None or code == 1000:
            return None
        if not reconnect_allowed(code):
            return Disconnected(code, reason)
        if code == CloseCode.TOKEN_EXPIRED and not self._tokens.renewable:
            # The same token would expire again (or be refused): only a provider helps.
            return Disconnected(code, f"{reason} (the client has no token provider)")
        return None

    async def _serve(
        self, ws: aiohttp.ClientWebSocketResponse, token: str | None
    ) -> tuple[int | None, str, bool]:
        """Speak the protocol on one WebSocket; return (close code, reason, connected)."""
        loop = asyncio.get_running_loop()
        session = ClientSession(self._codec, now=loop.time())
        self._session = session
        session.connect(
            token=token, name=self.config.name, device=self.config.device, session=self.session
        )
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
            self._tokens.stop()  # the next connection schedules its own refresh
            # What was in flight is sent again on the next connection, in order
            # (but not a refresh of this connection's token: the next one gets its own).
            in_flight = [self._requests[id] for id in sorted(self._requests)]
            self._waiting[:0] = [request for request in in_flight if request.replay]
            for request in in_flight:
                if not request.replay:
                    request.future.cancel()
            self._requests.clear()
            self._subs.disconnected()
            self._groups.disconnected()

    def _handle(self, session: ClientSession, event: object) -> bool:
        """Act on one thing the session handed out; True once the connect was answered."""
        if isinstance(event, Received):
            self._subs.received(event)
        elif isinstance(event, GroupReceived):
            self._groups.received(event)
        elif isinstance(event, GroupEnded):
            self._groups.ended(event)
        elif isinstance(event, AwarenessPush | StatePush):
            self._collab_pushed(event)  # client.collab
        elif isinstance(event, Join | Leave | PresenceChanged):
            self._presence_pushed(event)  # client.presence_watch
        elif isinstance(event, Replied):
            command, result = event.command, event.result
            if isinstance(command, Connect):
                if isinstance(result, ConnectResult):
                    self.info = result  # before `_connected`: the views know their own id
                self._connected(session)
                if isinstance(result, ConnectResult):
                    self._expiry(session, result.expires)
                    self.session, self.resumes = result.session, self.resumes + result.resumed
                return True
            if isinstance(command, Subscribe):
                self._subs.subscribed(event.id, result)
            elif isinstance(command, GroupJoin):
                self._groups.joined(event.id, result)
            else:
                request = self._requests.pop(event.id, None)
                if request is not None:
                    request.resolve(result)
                if isinstance(command, Refresh) and isinstance(result, RefreshResult):
                    self._expiry(session, result.expires)
        elif isinstance(event, Failed):
            error = RemoteError(event.code, event.message, event.retriable, event.node, event.url)
            self._subs.refused(event.id, error)
            self._groups.refused(event.id, error)
            request = self._requests.pop(event.id, None)
            if request is not None and not request.future.done():
                request.future.set_exception(error)
        elif isinstance(event, Ended):
            self._subs.ended(session, event)
        return False

    def _connected(self, session: ClientSession) -> None:
        self.connects += 1
        if self.connects > 1:
            log.info("reconnected")
        self._ready.set()
        self._subs.connected(session)
        self._groups.connected(session)
        if self.connects > 1:
            self._collab_reconnected()  # awareness and state views, again
            self._presence_reconnected()  # presence watches, again
        waiting, self._waiting = self._waiting, []
        for request in waiting:
            if request.future.done():
                continue
            try:
                self._requests[request.issue(session)] = request
            except BusError as exc:
                request.future.set_exception(exc)
        self._kick()

    def _fail_all(self, error: BusError, *, end_quietly: bool = False) -> None:
        """Fail every pending command with `error`; end every subscription (with it)."""
        self._failure = error
        for request in [*self._requests.values(), *self._waiting]:
            if not request.future.done():
                request.future.set_exception(error)
        self._requests.clear()
        self._waiting.clear()
        self._subs.fail_all(error, quietly=end_quietly)
        self._groups.fail_all(error, quietly=end_quietly)
        self._presence_ended(error, quietly=end_quietly)
        self._collab_ended(error, quietly=end_quietly)

    # -- tokens ------------------------------------------------------------------------

    def _expiry(self, session: ClientSession, expires: float | None) -> None:
        """The token of `session` expires at `expires`: (re)schedule its refresh."""
        self.expires = expires
        # A closed client only ends the pending refresh.
        self._tokens.schedule(
            None if self._closed else expires, lambda token: self._send_refresh(session, token)
        )

    async def _send_refresh(self, session: ClientSession, token: str) -> None:
        """Send `refresh` on `session`, not again on a later connection; await the reply."""
        if session is not self._session or session.closed:
            return  # the connection ended; the next one schedules its own refresh
        request = Request(
            lambda s: s.refresh(token), asyncio.get_running_loop().create_future(), replay=False
        )
        self._requests[request.issue(session)] = request
        self._kick()
        try:
            async with asyncio.timeout(self.config.request_timeout):
                await request.future
        finally:
            self._forget_many([request])

    # -- for the registries (client.subscribing.Link) ---------------------------------

    def live(self) -> ClientSession | None:
        """The session to send on now (its connect answered); None between connections."""
        return self._session if self._session is not None and self._ready.is_set() else None

    def kick(self) -> None:
        """Send what the session queued (coalesced, this loop turn)."""
        self._kick()

    def failure(self) -> BusError | None:
        """What ended the client for good, if anything did."""
        return self._failure

    def request_timeout(self) -> float:
        """Seconds to wait for an answer."""
        return self.config.request_timeout

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
    url: str,
    *,
    token: str | TokenProvider | None = None,
    config: ClientConfig | None = None,
    ca: Ca | None = None,
) -> Opening[Client]:
    """Connect to the server's WebSocket endpoint, e.g. `ws://127.0.0.1:8080/v1/ws`.

    `token` is a fixed token, or a `TokenProvider` the client calls for a fresh
    one at every connect and before the current one expires (module docstring).
    Awaiting it (or entering it) raises `ConnectFailed` at once if the first connection
    fails, and `Disconnected` if the server refuses it; once connected, the client
    reconnects by itself after drops. `ca`: see `ClientConfig.ca` (it replaces it).
    """
    return Opening(Client(url, token, (config or ClientConfig()).trusting(ca)))
