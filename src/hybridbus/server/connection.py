"""One client connection: a `ServerSession` driven against the bus, over a `Transport`.

Owns: executing the commands the session hands out (publish, history,
presence, ping; connect and refresh go to `server.admission`, subscriptions
to `Subscriptions`, consumer groups to `server.groups.Memberships`), the
write path (ONE coalesced frame per loop turn, written at once while the
socket takes it), and the close. Must not parse or encode frames itself (that
is `proto`), know the socket library (that is the gateway's `Transport`), or
pick an engine.

Theory of operation. Everything a connection says goes through its session's
outbox. Whoever queues something (the read path, a command task, a pump, the
node's ticker) calls `flush()`; a live subscription that got deliveries calls
`ready()`, inside the publisher's route. Either puts the connection, once per
loop turn, on the node's write pass (`Node.schedule`): ONE callback per turn
for every connection with something to say, no task or future per connection.
In the pass (`write_due`) the connection drains its ready subscriptions into
the outbox, and everything queued during the turn leaves as one frame,
written at once (`Transport.write`), counted in the node's `Tally`.

Flow control. `write` says when the socket's buffer went over its high-water
mark: the connection is then *blocked* and a task of its own (the drainer)
waits for the buffer to drain, then writes what queued meanwhile. While
blocked, the write pass still drains ready subscriptions into the outbox, so
new messages pile up there, whose bound cuts a consumer that does not read
off with SLOW_CONSUMER. The transport's own buffer stays bounded: nothing is
written to it once it is over the mark, but the one frame that crossed it.

Closing. When the session closes (a protocol violation, a refused connect,
silence, an expired token, an overflowing outbox, or `close()` from the node),
every command task and pump is cancelled; the closer waits for a drainer to
see the socket drain (never cancelling it: a transport's drain may be one
future shared by every waiter), writes what is left (the `disconnect` message
last) and closes the transport with the session's code, all within the close
timeout; a slow consumer gets a short one, then is aborted.
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
from typing import TYPE_CHECKING, Any

from hybridbus.core.identity import Identity
from hybridbus.core.log import Delivery, Position, is_exact
from hybridbus.errors import BusError
from hybridbus.hub.bus import Prepared
from hybridbus.hub.guard import Principal
from hybridbus.proto.codec import Data, WireCodec
from hybridbus.proto.codes import CloseCode
from hybridbus.proto.frames import (
    AwarenessCommand,
    ClientInfo,
    Connect,
    GroupCommand,
    History,
    Join,
    Leave,
    Ping,
    PingResult,
    Presence,
    PresenceChanged,
    PresenceResult,
    Publish,
    PublishResult,
    Refresh,
    StateCommand,
    Subscribe,
    Unsubscribe,
)
from hybridbus.proto.session import ServerSession
from hybridbus.server import admission
from hybridbus.server.groups import Memberships
from hybridbus.server.history import history_result
from hybridbus.server.presence import Change
from hybridbus.server.subscriptions import Entry, Origin, Subscriptions
from hybridbus.server.transport import Transport

if TYPE_CHECKING:
    from hybridbus.server.node import Node

__all__ = ["Connection", "Transport"]

log = logging.getLogger("hybridbus.server")

# Share of max_frame_size a history reply may fill with events.
_HISTORY_SHARE = 0.75


class Connection:
    """One client's connection to a node (see the module docstring)."""

    # Thousands of idle connections per process: no __dict__ each.
    __slots__ = (
        "_binary",
        "_blocked",
        "_closer",
        "_closing",
        "_deliveries",
        "_drainer",
        "_loop",
        "_lost",
        "_oldest",
        "_publishing",
        "_ready",
        "_scheduled",
        "_tally",
        "_tasks",
        "_transport",
        "_unsent",
        "device_key",
        "finished",
        "groups",
        "id",
        "identity",
        "info",
        "node",
        "principal",
        "session",
        "subscriptions",
        "transport_name",
        "wheel_slot",
    )

    def __init__(
        self,
        node: Node,
        transport: Transport,
        codec: WireCodec,
        *,
        id: str,
        transport_name: str = "websocket",
        phase: float = 1.0,
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
        self.session = ServerSession(
            codec, node.session_config, now=self._loop.time(), phase=phase
        )
        self.subscriptions = Subscriptions(self)
        self.groups = Memberships(self)
        self._binary = codec.binary
        # The command tasks and pumps it owns; made with the first one (most connections idle).
        self._tasks: set[asyncio.Task[Any]] | None = None
        # The node's heartbeat wheel slot this connection waits in (-1: none).
        self.wheel_slot = -1
        # On the node's write pass this turn; blocked on a full socket, and what waits for it.
        self._scheduled = False
        self._blocked = False
        self._drainer: asyncio.Task[None] | None = None
        self._tally = node.tally
        self._closing = False
        self._lost = False
        self._closer: asyncio.Task[None] | None = None
        # Deliveries queued since the last write, and the append time of the oldest.
        self._unsent = 0
        self._oldest = 0.0
        # Live subscriptions with deliveries queued, for the writer to drain.
        self._ready: list[Entry] = []
        # The `publish` commands checked this loop turn: (id, prepared event), appended together.
        self._publishing: list[tuple[int, Prepared]] = []
        self._deliveries = node.metrics.deliveries.labels(transport_name)
        self.finished: asyncio.Future[None] = self._loop.create_future()

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.session.state.value}>"

    @property
    def done(self) -> bool:
        """True once the connection is closed and forgotten by the node."""
        return self.finished.done()

    @property
    def blocked(self) -> bool:
        """True while the socket's buffer is over its high-water mark (writes wait for it)."""
        return self._blocked

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
                    await admission.connect(self, command)
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
                    self.spawn(admission.refresh(self, command))
                elif isinstance(command, GroupCommand):
                    self.groups.handle(command)
                elif isinstance(command, AwarenessCommand):
                    self.node.awareness.handle(self, command)
                elif isinstance(command, StateCommand):
                    self.node.states.handle(self, command)
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
        self.session.heard(self._loop.time())

    def lost(self, code: int | None) -> None:
        """The peer closed the connection, or it dropped (`code`: the peer's, if any)."""
        if self._closing:
            return
        self._lost = True
        self.session.close(CloseCode.NORMAL, "the connection was lost")
        self._begin_close(1006 if code is None else code)

    # -- driven by the node ------------------------------------------------------

    def tick(self, now: float, wall: float) -> float | None:
        """The node's heartbeat: `now` on the loop's clock, `wall` in Unix seconds.

        Returns when (on the loop's clock) the next tick has something to do;
        None: nothing ever, until the session changes state (`Node.admit`).
        """
        session = self.session
        before = session.pending_bytes
        session.tick(now)
        identity = self.identity
        if identity is not None and identity.expires is not None and wall >= identity.expires:
            session.close(CloseCode.TOKEN_EXPIRED, "the token expired; reconnect with a new one")
        if session.closed or session.pending_bytes != before:
            self.flush()
        return session.deadline

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
        if self._drainer is not None:
            self._drainer.cancel()
        self._transport.abort()
        self._finish()

    def presence_changed(self, change: Change, topic: str, info: ClientInfo) -> None:
        """A watched topic's member joined, left or changed state: push it (§6.3)."""
        principal = self.principal
        if principal is None or self.session.closed:
            return
        relative = principal.relative(topic)
        message: Join | Leave | PresenceChanged
        if change == "join":
            message = Join(topic=relative, info=info)
        elif change == "leave":
            message = Leave(topic=relative, info=info)
        else:
            message = PresenceChanged(topic=relative, info=info, state=change)
        self.session.push(self.session.codec.encode(message))
        self.flush()

    def close_moved(self, to: Connection | None) -> None:
        """Its session went on on `to`, a newer connection of the same client (None: on
        another node): close this one. Its awareness states go on with the session to `to`
        (no removal, no push); to another node, they go (its client sets them there again).
        """
        if to is not None:
            self.node.awareness.moved(self, to)
        self.close(CloseCode.NORMAL, "the session continued on another connection")

    # -- for the pumps and command tasks ----------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `coro` as a task this connection owns: it is cancelled on close."""
        task = self._loop.create_task(coro)
        tasks = self._tasks
        if tasks is None:
            tasks = self._tasks = set()
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    def pushed(self, count: int, appended: float) -> None:
        """`count` deliveries, the oldest appended at `appended` (Unix time), were queued.

        Only book-keeping: whoever queued them calls `flush()` (the write pass
        writes them anyway).
        """
        if not self._unsent:
            self._oldest = appended
        self._unsent += count

    def ready(self, entry: Entry) -> None:
        """`entry`'s live subscription has deliveries queued (called inside a publisher's route).

        The node's write pass drains it this loop turn; a connection blocked on
        its socket has it drained into the outbox then too, where the outbox
        bound holds.
        """
        ready = self._ready
        ready.append(entry)
        if not self._scheduled and len(ready) == 1:
            self._scheduled = True
            self.node.schedule(self)

    def flush(self) -> None:
        """Something may have been queued, or the session closed: act on it."""
        session = self.session
        if session.closed:
            self._begin_close(int(session.close_code or CloseCode.NORMAL))
        elif session.pending_bytes and not (self._scheduled or self._blocked):
            self._scheduled = True
            self.node.schedule(self)

    async def written(self) -> None:
        """Wait until what is queued has been handed to the socket (or the connection closes).

        While the socket is over its mark, that is when the drainer has
        written the outbox out; otherwise the write pass does it this turn.
        """
        session = self.session
        while session.pending_bytes and not (self._closing or session.closed):
            drainer = self._drainer
            if drainer is None:
                self.flush()
                await asyncio.sleep(0)
            else:
                await asyncio.wait({drainer})

    def write_due(self) -> None:
        """The node's write pass: drain the ready subscriptions, write what is queued."""
        try:
            if self._closing:
                return
            ready = self._ready
            if ready:
                self._ready = []
                self.subscriptions.drain(ready)
            session = self.session
            if session.closed:
                self._begin_close(int(session.close_code or CloseCode.NORMAL))
            elif not self._blocked and session.pending_bytes:
                self._write_queued()
        finally:
            self._scheduled = False

    # -- commands ----------------------------------------------------------------

    def _publish(self, command: Publish) -> None:
        """Check one `publish` now (a refusal is its reply); append it with its loop turn's.

        Every `publish` checked in one loop turn (those of one frame, at
        least) goes to the engine as one batch: one task, one engine call (one
        commit on sqlite), then one reply each. A batch is all or nothing (an
        engine failure answers every command of it), never a reordering.
        """
        principal = self.admitted
        topic = principal.topic(command.topic)
        event = self.session.codec.decode_event(command.event)
        prepared = self.node.guard.prepare(principal, command.topic, event)
        exclude = command.exclude_self
        if exclude is not None:
            device = self.device_key if exclude == "device" else None
            self.node.note_origin(prepared[1], topic, Origin(topic, self, device))
        publishing = self._publishing
        publishing.append((command.id, prepared))
        if len(publishing) == 1:
            # Its first step runs after this loop turn: it takes every publish of the turn.
            self.spawn(self._append())

    async def _append(self) -> None:
        batch, self._publishing = self._publishing, []
        principal = self.admitted
        session = self.session
        try:
            acks = await self.node.guard.append(principal, [prepared for _, prepared in batch])
        except Exception as exc:
            if not isinstance(exc, BusError):
                log.exception("publish of %s failed", self.id)
            for id, _ in batch:
                session.error(id, exc)
        else:
            metrics = self.node.metrics
            metrics.publishes.labels(self.transport_name).inc(len(acks))
            duplicates = sum(ack.duplicate for ack in acks)
            if duplicates:
                metrics.duplicates.labels(self.transport_name).inc(duplicates)
            for (id, _), ack in zip(batch, acks, strict=True):
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
        self.spawn(self._read_history(command, principal, since))

    async def _read_history(
        self, command: History, principal: Principal, since: Position | None
    ) -> None:
        session = self.session
        node = self.node
        id, pattern, limit = command.id, command.pattern, command.limit
        try:
            page = await node.guard.history(
                principal, pattern, since, limit, filter=command.filter, at=command.since_time
            )
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
                return node.pushes.event_bytes(codec, delivery)

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
        cursor = None
        if command.limit is None:  # every member (the first shape of the command)
            clients = presence.clients(topic)
        else:
            clients, cursor = presence.page(topic, command.limit, command.cursor)
        if command.watch:
            presence.watch(topic, self)
        result = PresenceResult(clients=clients, count=presence.count(topic), cursor=cursor)
        self.session.reply(command.id, result)

    # -- writing and closing -------------------------------------------------------

    def _write(self, frame: bytes) -> bool:
        """Write `frame` now, counting its deliveries; False once the socket is over its mark."""
        delivered = self._unsent
        more = self._transport.write(frame, self._binary)
        if delivered:
            self._unsent = 0
            self._tally.frame(self._deliveries, delivered, self._oldest)
        return more

    def _write_queued(self) -> None:
        """Write every frame queued, until the socket is over its mark: then block on it."""
        session = self.session
        try:
            while (frame := session.data_to_send()) is not None:
                if not self._write(frame):
                    self._blocked = True
                    self._drainer = self._loop.create_task(self._drain_writes())
                    return
        except ConnectionError:
            self.lost(None)

    async def _drain_writes(self) -> None:
        """Blocked: wait for the socket to drain, write what queued meanwhile, until all is out."""
        session = self.session
        transport = self._transport
        try:
            while True:
                await transport.drain()
                if self._closing:  # the closer writes the rest
                    return
                while (frame := session.data_to_send()) is not None:
                    if not self._write(frame):
                        break
                else:
                    self._blocked = False
                    return
        except ConnectionError:
            self.lost(None)
        finally:
            self._drainer = None

    def _begin_close(self, code: int) -> None:
        if self._closing:
            return
        self._closing = True
        self._ready.clear()
        self.node.sessions.dropped(self, code)  # its presence is held, or let go below
        self.subscriptions.close()
        self.groups.close()
        self.node.presence.unwatch_all(self)
        self.node.awareness.closed(self)  # a `removed` push to the watchers, at once
        self.node.states.closed(self)
        for task in self._tasks or ():
            task.cancel()
        metrics = self.node.metrics
        metrics.disconnects.labels(str(code)).inc()
        if code == CloseCode.SLOW_CONSUMER and self._unsent:
            metrics.drops.labels("slow_consumer").inc(self._unsent)
            self._unsent = 0
        if self._lost:  # nobody to say goodbye to
            if self._drainer is not None:
                self._drainer.cancel()
            self._finish()
        else:
            self._closer = self._loop.create_task(self._close(), name=f"{self.id}-close")

    async def _close(self) -> None:
        session = self.session
        node = self.node
        transport = self._transport
        try:
            slow = session.close_code is CloseCode.SLOW_CONSUMER
            timeout = node.slow_close_timeout if slow else node.close_timeout
            code = int(session.close_code or CloseCode.NORMAL)
            try:
                async with asyncio.timeout(timeout):
                    drainer = self._drainer
                    if drainer is not None:
                        # It returns once the socket drained, seeing the close. Not
                        # cancelled: the transport's drain may be one future shared
                        # by every waiter (aiohttp's is), cancelling it cancels all.
                        await asyncio.wait({drainer})
                    # What is left (the `disconnect` message, at least), then the close frame.
                    while (frame := session.data_to_send()) is not None:
                        if not self._write(frame):
                            await transport.drain()
                    await transport.close(code, session.close_reason or "")
            except (TimeoutError, ConnectionError):
                transport.abort()
        finally:
            if self._drainer is not None:
                self._drainer.cancel()
            self._finish()

    def _finish(self) -> None:
        for task in self._tasks or ():
            task.cancel()
        if not self.finished.done():
            self.finished.set_result(None)
        self.node.forget(self)
