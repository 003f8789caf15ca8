"""One client connection: a `ServerSession` driven against the bus, over a `Transport`.

Owns: executing the commands the session hands out (connect, publish,
history, presence, ping, refresh; subscriptions go to `Subscriptions`), the
write path (ONE coalesced frame per loop turn, at most one write in flight),
and the close. Must not parse or encode frames itself (that is `proto`), know
the socket library (that is the gateway's `Transport`), or pick an engine.

Theory of operation. Everything a connection says goes through its session's
outbox. Whoever queues something (the read path, a command task, a pump, the
node's ticker) calls `flush()`, which wakes the writer task; a live
subscription that got deliveries calls `ready()`, which wakes it too. The
writer runs one loop turn later: it drains the ready subscriptions into the
outbox, and everything queued during the turn leaves as one frame
(`session.data_to_send()`). While its `send` waits for the transport to
drain, ready subscriptions are drained into the outbox by a callback each
turn instead, so new messages pile up there, whose bound cuts a consumer
that does not read off with SLOW_CONSUMER. The transport's own buffer stays bounded
because only the writer writes, one frame at a time, awaiting each.

Closing. When the session closes (a protocol violation, a refused connect,
silence, an expired token, an overflowing outbox, or `close()` from the node),
every command task and pump is cancelled, then the writer flushes what is
left (the `disconnect` message last) and the transport is closed with the
session's code; a slow consumer gets a short timeout, then is aborted.
`lost()` means the peer is gone: nothing more is sent.

Every operation goes through the node's `Guard` with the connection's
`Principal`: topics and patterns from the client are relative to its tenant
(an admin's are absolute) and are scoped there before they reach the bus, so
no pattern can leave the tenant; each operation is checked against the rules.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from hybridbus.core.event import Event
from hybridbus.core.identity import Identity
from hybridbus.core.log import Delivery, Position, is_exact
from hybridbus.core.topics import scope_topic
from hybridbus.errors import AccessError, BusError
from hybridbus.hub.guard import Principal
from hybridbus.proto.codec import Data, WireCodec
from hybridbus.proto.codes import CloseCode
from hybridbus.proto.frames import (
    ClientInfo,
    Connect,
    ConnectResult,
    History,
    Join,
    Leave,
    Ping,
    PingResult,
    Presence,
    PresenceResult,
    Publish,
    PublishResult,
    Refresh,
    RefreshResult,
    Subscribe,
    Unsubscribe,
)
from hybridbus.proto.session import ServerSession
from hybridbus.server.auth import close_code
from hybridbus.server.history import history_result
from hybridbus.server.subscriptions import Entry, Origin, Subscriptions

if TYPE_CHECKING:
    from hybridbus.server.node import Node

__all__ = ["Connection", "Transport"]

log = logging.getLogger("hybridbus.server")

# Share of max_frame_size a history reply may fill with events.
_HISTORY_SHARE = 0.75


class Transport(Protocol):
    """What a connection needs of a socket: write a frame, close, abort. Nothing else.

    `send` returns once the transport can take more (it drains): the
    connection never has more than one `send` in flight. `close` must finish
    in bounded time, aborting the socket if the peer does not take the close.
    Both may raise `ConnectionError` when the peer is gone.
    """

    async def send(self, frame: bytes, binary: bool) -> None:
        """Write one WebSocket message (binary, or text holding UTF-8 `frame`)."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close with `code` and `reason` (at most 123 bytes of it are sent)."""
        ...

    def abort(self) -> None:
        """Drop the socket at once (nothing more is sent)."""
        ...


class Connection:
    """One client's connection to a node (see the module docstring)."""

    # Thousands of idle connections per process: no __dict__ each.
    __slots__ = (
        "_binary",
        "_closer",
        "_closing",
        "_deliveries",
        "_empty",
        "_loop",
        "_lost",
        "_oldest",
        "_ready",
        "_tasks",
        "_transport",
        "_unsent",
        "_wake",
        "_writer",
        "device_key",
        "finished",
        "id",
        "identity",
        "info",
        "node",
        "principal",
        "session",
        "subscriptions",
        "transport_name",
    )

    def __init__(
        self,
        node: Node,
        transport: Transport,
        codec: WireCodec,
        *,
        id: str,
        transport_name: str = "websocket",
    ) -> None:
        self.node = node
        self.id = id
        self.transport_name = transport_name
        self.identity: Identity | None = None
        self.principal: Principal | None = None
        self.info: ClientInfo | None = None
        self.device_key: tuple[object, ...] | None = None
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self.session = ServerSession(codec, node.session_config, now=self._loop.time())
        self.subscriptions = Subscriptions(self)
        self._binary = codec.binary
        self._empty = codec.frame([])
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake: asyncio.Future[None] | None = None
        self._closing = False
        self._lost = False
        self._closer: asyncio.Task[None] | None = None
        # Deliveries queued since the last write, and the append time of the oldest.
        self._unsent = 0
        self._oldest = 0.0
        # Live subscriptions with deliveries queued, for the writer to drain.
        self._ready: list[Entry] = []
        self._deliveries = node.metrics.deliveries.labels(transport_name)
        self.finished: asyncio.Future[None] = self._loop.create_future()
        self._writer = self._loop.create_task(self._write_loop(), name=f"{id}-writer")

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.session.state.value}>"

    @property
    def done(self) -> bool:
        """True once the connection is closed and forgotten by the node."""
        return self.finished.done()

    @property
    def admitted(self) -> Principal:
        """Who the connection acts as (once connected)."""
        principal = self.principal
        if principal is None:  # the session hands out nothing else before the connect
            raise RuntimeError("a command before the connect was accepted")
        return principal

    # -- fed by the gateway ----------------------------------------------------

    async def receive(self, data: Data) -> None:
        """Handle one WebSocket message from the client."""
        session = self.session
        for command in session.receive_data(data, self._loop.time()):
            try:
                if isinstance(command, Connect):
                    await self._connect(command)
                elif isinstance(command, Subscribe):
                    self.subscriptions.subscribe(command)
                elif isinstance(command, Publish):
                    self._publish(command)
                elif isinstance(command, Unsubscribe):
                    self.subscriptions.unsubscribe(command)
                elif isinstance(command, History):
                    self._history(command)
                elif isinstance(command, Presence):
                    self._presence(command)
                elif isinstance(command, Ping):
                    session.reply(command.id, PingResult())
                elif isinstance(command, Refresh):
                    self.spawn(self._refresh(command))
            except BusError as exc:
                session.error(command.id, exc)
            except Exception as exc:
                log.exception("command %s of %s failed", type(command).__name__, self.id)
                session.error(command.id, exc)
            if session.closed:
                break
        self.flush()

    def heard(self) -> None:
        """The peer sent something that is not a message (a WebSocket ping or pong)."""
        # An empty frame: the session notes the peer is alive and finds no command.
        self.session.receive_data(self._empty, self._loop.time())

    def lost(self, code: int | None) -> None:
        """The peer closed the connection, or it dropped (`code`: the peer's, if any)."""
        if self._closing:
            return
        self._lost = True
        self.session.close(CloseCode.NORMAL, "the connection was lost")
        self._begin_close(1006 if code is None else code)

    # -- driven by the node ------------------------------------------------------

    def tick(self, now: float, wall: float) -> None:
        """The node's heartbeat: `now` on the loop's clock, `wall` in Unix seconds."""
        session = self.session
        before = session.pending_bytes
        session.tick(now)
        identity = self.identity
        if identity is not None and identity.expires is not None and wall >= identity.expires:
            session.close(CloseCode.TOKEN_EXPIRED, "the token expired; reconnect with a new one")
        if session.closed or session.pending_bytes != before:
            self.flush()

    def close(self, code: CloseCode, reason: str) -> None:
        """Close from the server's side: flush, `disconnect`, close frame with `code`."""
        self.session.close(code, reason)
        self.flush()

    def abort(self) -> None:
        """Drop the connection now, without a goodbye (shutdown ran out of time)."""
        self._lost = True
        self.session.close(CloseCode.SHUTDOWN, "aborted")
        self._begin_close(int(CloseCode.SHUTDOWN))
        if self._closer is not None:
            self._closer.cancel()
        self._writer.cancel()
        self._transport.abort()
        self._finish()

    def presence_changed(self, joined: bool, topic: str, info: ClientInfo) -> None:
        """A watched topic gained or lost a member: push `join` / `leave`."""
        principal = self.principal
        if principal is None or self.session.closed:
            return
        relative = principal.relative(topic)
        message = Join(topic=relative, info=info) if joined else Leave(topic=relative, info=info)
        self.session.push(self.session.codec.encode(message))
        self.flush()

    # -- for the pumps and command tasks ----------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `coro` as a task this connection owns: it is cancelled on close."""
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def pushed(self, count: int, appended: float) -> None:
        """`count` deliveries, the oldest appended at `appended` (Unix time), were queued."""
        if not self._unsent:
            self._oldest = appended
        self._unsent += count
        self.flush()

    def ready(self, entry: Entry) -> None:
        """`entry`'s live subscription has deliveries queued (called inside a publisher's route).

        The writer drains it next loop turn; a writer busy sending has it drained
        into the outbox then too, where the outbox bound holds.
        """
        ready = self._ready
        ready.append(entry)
        if len(ready) == 1:
            wake = self._wake
            if wake is not None:
                self._wake = None
                wake.set_result(None)
            else:
                self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        if self._ready and not self._closing:
            ready, self._ready = self._ready, []
            self.subscriptions.drain(ready)

    def flush(self) -> None:
        """Something may have been queued, or the session closed: act on it."""
        session = self.session
        if session.closed:
            self._begin_close(int(session.close_code or CloseCode.NORMAL))
        elif session.pending_bytes:
            wake = self._wake
            if wake is not None:
                self._wake = None
                wake.set_result(None)

    # -- commands ----------------------------------------------------------------

    async def _connect(self, command: Connect) -> None:
        session = self.session
        node = self.node
        try:
            async with asyncio.timeout(node.session_config.connect_timeout):
                identity = await node.authenticator.authenticate(command.token, command.device)
            scope_topic(identity.tenant, "x")  # an authenticator must name a real tenant
            principal = node.guard.admit(identity)
            node.admit(self, identity)
        except AccessError as exc:
            session.reject(close_code(exc), str(exc))
            return
        except Exception:  # TimeoutError included: the client may try again
            log.exception("authenticating %s failed", self.id)
            session.reject(CloseCode.SERVER_ERROR, "internal error")
            return
        self.identity = identity
        self.principal = principal
        self.info = ClientInfo(
            client=self.id, user=identity.user, device=identity.device, name=command.name
        )
        if identity.device is not None:
            self.device_key = (identity.tenant, identity.user, identity.device)
        session.accept(
            ConnectResult(
                client=self.id,
                version=node.version,
                tenant=identity.tenant,
                expires=identity.expires,
            )
        )

    def _publish(self, command: Publish) -> None:
        principal = self.admitted
        topic = principal.topic(command.topic)
        event = self.session.codec.decode_event(command.event)
        exclude = command.exclude_self
        if exclude is not None:
            device = self.device_key if exclude == "device" else None
            self.node.note_origin(event, topic, Origin(topic, self, device))
        self.spawn(self._append(command.id, principal, command.topic, event))

    async def _append(self, id: int, principal: Principal, topic: str, event: Event) -> None:
        session = self.session
        try:
            ack = await self.node.guard.publish(principal, topic, event)
        except BusError as exc:
            session.error(id, exc)
        except Exception as exc:
            log.exception("publish of %s failed", self.id)
            session.error(id, exc)
        else:
            metrics = self.node.metrics
            metrics.publishes.labels(self.transport_name).inc()
            if ack.duplicate:
                metrics.duplicates.labels(self.transport_name).inc()
            result = PublishResult(
                offset=ack.offset,
                shard=ack.shard,
                position=ack.position,
                epoch=ack.epoch,
                duplicate=ack.duplicate,
                token=str(ack.token),
            )
            session.reply(id, result)
        self.flush()

    def _history(self, command: History) -> None:
        principal = self.admitted
        principal.pattern(command.pattern)  # a bad pattern is answered now
        self.node.guard.check(principal, "history", command.pattern)
        since = Position.parse(command.since) if command.since is not None else None
        self.spawn(self._read_history(command.id, principal, command.pattern, since, command.limit))

    async def _read_history(
        self, id: int, principal: Principal, pattern: str, since: Position | None, limit: int
    ) -> None:
        session = self.session
        node = self.node
        try:
            page = await node.guard.history(principal, pattern, since, limit)
        except BusError as exc:
            session.error(id, exc)
        except Exception as exc:
            log.exception("history of %s failed", self.id)
            session.error(id, exc)
        else:
            engine = node.bus.engine
            exact = since is not None and is_exact(since, engine.epoch, engine.shards)
            codec = session.codec

            def encode(delivery: Delivery) -> bytes:
                return node.event_bytes(codec, delivery)

            result = history_result(
                page,
                prefix=principal.prefix,
                encode=encode,
                budget=int(node.session_config.max_frame_size * _HISTORY_SHARE),
                start=since.positions if since is not None and exact else (0,) * engine.shards,
            )
            session.reply(id, result)
        self.flush()

    def _presence(self, command: Presence) -> None:
        topic = self.node.guard.presence(self.admitted, command.topic)
        presence = self.node.presence
        if command.watch:
            presence.watch(topic, self)
        self.session.reply(command.id, PresenceResult(clients=presence.clients(topic)))

    async def _refresh(self, command: Refresh) -> None:
        session = self.session
        current = self.identity
        node = self.node
        try:
            async with asyncio.timeout(node.session_config.connect_timeout):
                identity = await node.authenticator.authenticate(
                    command.token, None if current is None else current.device
                )
            principal = node.guard.admit(identity)
        except AccessError as exc:
            session.close(close_code(exc), str(exc))
        except Exception as exc:
            log.exception("refresh of %s failed", self.id)
            session.error(command.id, exc)
        else:
            same = current is None or (identity.tenant, identity.user, identity.admin) == (
                current.tenant,
                current.user,
                current.admin,
            )
            if same:
                self.identity = identity
                self.principal = principal  # decisions are made afresh for the new token
                session.reply(command.id, RefreshResult(expires=identity.expires))
            else:
                session.close(CloseCode.FORBIDDEN, "a refresh may not change the tenant or user")
        self.flush()

    # -- writing and closing -------------------------------------------------------

    async def _write_loop(self) -> None:
        session = self.session
        send = self._transport.send
        binary = self._binary
        latency = self.node.metrics.latency
        clock = self.node.wall_clock
        try:
            while not session.closed:
                wake = self._wake = self._loop.create_future()
                # An idle connection waits as long as nothing is queued; closing cancels it.
                await wake
                self._drain()
                while (frame := session.data_to_send()) is not None:
                    delivered, oldest = self._unsent, self._oldest
                    self._unsent = 0
                    await send(frame, binary)
                    if delivered:
                        self._deliveries.inc(delivered)
                        latency.observe(max(0.0, clock() - oldest))
        except ConnectionError:
            self.lost(None)

    def _begin_close(self, code: int) -> None:
        if self._closing:
            return
        self._closing = True
        self._ready.clear()
        self.subscriptions.close()
        self.node.presence.unwatch_all(self)
        for task in self._tasks:
            task.cancel()
        metrics = self.node.metrics
        metrics.disconnects.labels(str(code)).inc()
        if code == CloseCode.SLOW_CONSUMER and self._unsent:
            metrics.drops.labels("slow_consumer").inc(self._unsent)
            self._unsent = 0
        if self._lost:  # nobody to say goodbye to
            self._writer.cancel()
            self._finish()
        else:
            self._closer = self._loop.create_task(self._close(), name=f"{self.id}-close")

    async def _close(self) -> None:
        session = self.session
        node = self.node
        writer = self._writer
        transport = self._transport
        try:
            slow = session.close_code is CloseCode.SLOW_CONSUMER
            timeout = node.slow_close_timeout if slow else node.close_timeout
            if slow:
                writer.cancel()  # it waits on a peer that does not read
            else:
                wake = self._wake  # the writer flushes the outbox, then exits
                if wake is not None:
                    self._wake = None
                    wake.set_result(None)
            await asyncio.wait({writer}, timeout=timeout)
            writer.cancel()
            if self._lost:
                return
            code = int(session.close_code or CloseCode.NORMAL)
            try:
                async with asyncio.timeout(timeout):
                    # What the writer did not get to (the `disconnect` message, at least).
                    while (frame := session.data_to_send()) is not None:
                        await transport.send(frame, self._binary)
                    await transport.close(code, session.close_reason or "")
            except (TimeoutError, ConnectionError):
                transport.abort()
        finally:
            writer.cancel()
            self._finish()

    def _finish(self) -> None:
        for task in self._tasks:
            task.cancel()
        if not self.finished.done():
            self.finished.set_result(None)
        self.node.forget(self)
