"""The node: one server process's connections around one bus.

Owns: the set of open connections and their ids, the presence registry, the
ONE heartbeat ticker that drives every session's `tick` (not a timer per
connection: a timing wheel, `core.wheel`, so each pass ticks only the
connections whose ping, silence or connect timeout is due — about N x
tick / ping interval of them, each connection's first ping phased by its
number — never all N), the write pass (ONE callback per loop turn drains and
writes every connection with something to say, `schedule`), the encode-once
caches of pushes (`server.pushes`: one encoding of a delivery's event per
codec, one push per codec and pattern, shared by every connection), the
record of who published what with `exclude_self`, and graceful shutdown.
Must not speak to a socket (connections talk to a `Transport`), nor pick an
engine (it is given a started `Bus`), nor parse the wire (that is `proto`).

The node is the one registry of everything a principal holds open: its
WebSocket connections (`admit` / `forget`) and the streams of other ways in
(`hold`: an SSE stream). Both count against `max_connections_per_user`
together, both end at once when a revocation names their identity, and both
end at their token's `exp` — on a timer at that instant (the heartbeat checks
too, as a fallback, when it ticks the connection), so "at expiry" means
within milliseconds, not a tick.

Shutdown, in order: stop accepting; close every connection with
`CloseCode.SHUTDOWN` (each flushes what it queued, then its `disconnect`
message, then the close frame); abort those not done within
`shutdown_timeout`; stop the ticker; close the bus (the engine commits).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import secrets
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Final

from hybridbus.core.awareness import AwarenessLimits
from hybridbus.core.event import Event
from hybridbus.core.identity import Identity
from hybridbus.core.log import Delivery
from hybridbus.core.revocation import Revocation
from hybridbus.core.wheel import Wheel
from hybridbus.errors import AccessError, Revoked, TokenExpired, TooManyConnections
from hybridbus.hub.bus import Bus
from hybridbus.hub.group_guard import GroupGuard
from hybridbus.hub.guard import Guard
from hybridbus.hub.states import StateConfig, StateTopics
from hybridbus.proto.codec import WireCodec
from hybridbus.proto.codes import CloseCode
from hybridbus.proto.frames import ClientInfo
from hybridbus.proto.session import SessionConfig
from hybridbus.server.access import authenticator_of, limits_of, policy_of
from hybridbus.server.auth import Authenticator
from hybridbus.server.awareness import AwarenessRooms
from hybridbus.server.config import ServerConfig
from hybridbus.server.connection import Connection, Transport
from hybridbus.server.metrics import Metrics, Tally
from hybridbus.server.presence import PresenceRegistry
from hybridbus.server.pushes import Pushes
from hybridbus.server.sessions import Sessions, SessionSettings
from hybridbus.server.states import StateSubscriptions
from hybridbus.server.subscriptions import Origin

__all__ = ["SERVER_VERSION", "End", "Node", "Release"]

log = logging.getLogger("hybridbus.server")


def _server_version() -> str:
    try:
        return version("hybridbus")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0"


SERVER_VERSION: Final = _server_version()

# Publishes with exclude_self remembered until their deliveries are pumped; a
# pump lagging further behind than this pushes the event back to its sender.
_ORIGINS_SIZE: Final = 65_536
# Seconds a slow consumer gets to take its close frame before it is aborted.
_SLOW_CLOSE_TIMEOUT: Final = 1.0
# The heartbeat ticker: passes per ping interval (or connect timeout, if shorter),
# the longest period, and the fewest connections a pass may tick.
_TICKS_PER_SPAN: Final = 50
_MAX_TICK: Final = 0.25
_MIN_BEAT: Final = 256
# Phases of consecutive connection numbers: n x golden ratio mod 1 spreads evenly.
_GOLDEN: Final = (math.sqrt(5) - 1) / 2


# How a held stream is ended (with why), and how its holder lets it go.
End = Callable[[AccessError], None]
Release = Callable[[], None]

_EXPIRED: Final = "the token expired; reconnect with a new one"


class _Held:
    """A stream held open by another way in than a WebSocket (see `Node.hold`)."""

    __slots__ = ("end", "ended", "identity", "timer")

    def __init__(self, identity: Identity, end: End) -> None:
        self.identity = identity
        self.end = end
        self.ended = False
        self.timer: asyncio.TimerHandle | None = None

    def stop(self, error: AccessError) -> None:
        """End it once, with `error` (the holder releases it when it is over)."""
        if not self.ended:
            self.ended = True
            try:
                self.end(error)
            except Exception:
                log.exception("ending a held stream failed")


class Node:
    """A bus behind the client protocol: connections, presence, heartbeat, shutdown."""

    def __init__(
        self,
        bus: Bus,
        config: ServerConfig,
        metrics: Metrics,
        authenticator: Authenticator | None = None,
        *,
        guard: Guard | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self.guard = guard or Guard(bus, policy_of(config), limits_of(config), clock=wall_clock)
        self.guard.on_revoke(self._revoked)
        # Consumer groups as principals reach them (every way in goes through it).
        self.groups = GroupGuard(self.guard)
        dropped = metrics.audit_dropped
        self.guard.on_audit_dropped(lambda kind: dropped.labels(kind=kind).inc())
        self.config = config
        self.metrics = metrics
        self.authenticator: Authenticator = authenticator or authenticator_of(config)
        self.session_config = SessionConfig(
            ping_interval=config.ping_interval,
            max_frame_size=config.max_frame_size,
            max_pending_bytes=config.max_pending_bytes,
            max_subscriptions=config.max_subscriptions,
            connect_timeout=config.connect_timeout,
            max_in_flight=config.max_in_flight,
        )
        self.presence = PresenceRegistry()
        # Awareness on plain topics (ephemeral) and state topics (folds of the log).
        self.awareness = AwarenessRooms(
            AwarenessLimits(
                rate=config.awareness_rate,
                max_keys=config.awareness_max_keys,
                max_bytes=config.awareness_max_bytes,
            )
        )
        self.states = StateSubscriptions(
            StateTopics(
                bus,
                StateConfig(
                    window=config.state_window,
                    max_bytes=config.state_max_bytes,
                    snapshot_every=config.state_snapshot_every,
                    idle=config.state_idle_unload,
                ),
            )
        )
        self.sessions = Sessions(
            self.presence,
            SessionSettings(
                grace=config.session_grace,
                tenant_grace=config.tenant_session_grace,
                max_degraded=config.max_degraded_sessions,
            ),
        )
        self.version = SERVER_VERSION
        self.wall_clock = wall_clock
        # How long a connection's close may take: flush, close frame, the peer's answer.
        self.close_timeout = min(5.0, config.shutdown_timeout)
        self.slow_close_timeout = min(_SLOW_CLOSE_TIMEOUT, self.close_timeout)
        self._connections: dict[str, Connection] = {}
        # (tenant, user) -> how many connections and held streams it has (authenticated users only).
        self._per_user: dict[tuple[str, str], int] = {}
        # Streams of other ways in (SSE), and the expiry timers of connections by id.
        self._held: set[_Held] = set()
        self._expiries: dict[str, asyncio.TimerHandle] = {}
        self._prefix = secrets.token_hex(3)
        self._ids = itertools.count(1)
        self._accepting = False
        self._bus_closed = False
        self._ticker: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Task[None] | None = None
        self.pushes = Pushes()  # the encode-once caches
        self.origins: dict[tuple[str, str], Origin] = {}
        # The write pass: connections with something to write or drain this loop
        # turn, handled by ONE callback (not a wake-up per connection), and the
        # deliveries it wrote, put into the metrics once per turn.
        self._due: list[Connection] = []
        self.tally = Tally(metrics.latency, wall_clock)
        session = self.session_config
        # The ticker's period: the heartbeat's and connect timeout's precision. Each
        # pass ticks only the connections due (a timing wheel), about N x period / span.
        span = min(session.ping_interval or session.connect_timeout, session.connect_timeout)
        self.tick_interval = max(0.01, min(_MAX_TICK, span / _TICKS_PER_SPAN))
        self._span = span
        self._wheel: Wheel[Connection] = Wheel(self.tick_interval)
        # Heartbeat book-keeping (tests, benchmarks): passes run, connections ticked
        # in all, and in the busiest pass.
        self.heartbeat_passes = 0
        self.heartbeat_ticked = 0
        self.heartbeat_most = 0

    # -- life ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the heartbeat ticker and accept connections (the bus is already started)."""
        if self._ticker is None:
            await self.guard.start()
            self._ticker = asyncio.create_task(self._tick_loop(), name="hybridbus-ticker")
        self._accepting = True

    @property
    def accepting(self) -> bool:
        """True while new connections are taken."""
        return self._accepting

    @property
    def ready(self) -> bool:
        """True while the node accepts connections and its bus is open (`/readyz`)."""
        return self._accepting and not self._bus_closed

    @property
    def connections(self) -> int:
        """How many connections are open (or closing)."""
        return len(self._connections)

    def open_connection(
        self, transport: Transport, codec: WireCodec, *, transport_name: str = "websocket"
    ) -> Connection:
        """A new connection over `transport`; refused with SHUTDOWN once the node stops."""
        number = next(self._ids)
        id = f"c-{self._prefix}{number:x}"
        # Consecutive numbers spread their first pings evenly over the second half
        # of the interval: a herd that connected together never pings together,
        # and no ping comes in the first half (while a client sets itself up).
        phase = 1.0 - 0.5 * ((number * _GOLDEN) % 1.0)
        connection = Connection(
            self, transport, codec, id=id, transport_name=transport_name, phase=phase
        )
        self._connections[id] = connection
        self.metrics.connections.labels(transport_name).inc()
        if not self._accepting:
            connection.close(CloseCode.SHUTDOWN, "the server is shutting down")
        else:
            deadline = connection.session.deadline  # the connect timeout
            if deadline is not None:
                self._wheel.schedule(connection, deadline)
        return connection

    def forget(self, connection: Connection) -> None:
        """Called by a connection once it is closed for good."""
        if self._connections.pop(connection.id, None) is not None:
            self.metrics.connections.labels(connection.transport_name).dec()
            identity = connection.identity
            if identity is not None:
                self._uncount(identity)
        timer = self._expiries.pop(connection.id, None)
        if timer is not None:
            timer.cancel()
        self._wheel.cancel(connection)
        self.presence.unwatch_all(connection)

    def admit(self, connection: Connection, identity: Identity) -> None:
        """Count `connection` against its user's limit; raise `TooManyConnections` if full.

        From here on the connection is closed 4004 the instant its token expires
        (unless a `refresh` moved `exp` on: the timer then waits for the new one).
        """
        self._count(identity)
        if identity.expires is not None:
            self._expiries[connection.id] = self._call_at(
                identity.expires, self._expire_connection, connection
            )
        # Its session is accepted next, which moves its heartbeat deadline (maybe
        # earlier): the next pass looks and schedules it by the new one.
        self._wheel.schedule(connection, asyncio.get_running_loop().time())

    def hold(self, identity: Identity, end: End) -> Release:
        """Count a stream `identity` holds open through another way in (an SSE stream).

        It counts against `max_connections_per_user` with the WebSocket
        connections (raises `TooManyConnections` when full), and `end(error)`
        is called once, at once, when a revocation names `identity`
        (`Revoked`) or its token expires (`TokenExpired`, at `exp` to the
        millisecond). Returns the release: call it when the stream is over,
        however it ended (calling it again does nothing).
        """
        self._count(identity)
        held = _Held(identity, end)
        self._held.add(held)
        if identity.expires is not None:
            held.timer = self._call_at(identity.expires, self._expire_held, held)

        def release() -> None:
            if held in self._held:
                self._held.discard(held)
                if held.timer is not None:
                    held.timer.cancel()
                self._uncount(identity)

        return release

    def _count(self, identity: Identity) -> None:
        if identity.user is None:
            return
        key = (identity.tenant, identity.user)
        held = self._per_user.get(key, 0)
        limit = self.config.max_connections_per_user
        if limit and held >= limit:
            raise TooManyConnections(f"user {identity.user!r} already holds {held} connections")
        self._per_user[key] = held + 1

    def _uncount(self, identity: Identity) -> None:
        if identity.user is None:
            return
        key = (identity.tenant, identity.user)
        left = self._per_user.get(key, 0) - 1
        if left > 0:
            self._per_user[key] = left
        else:
            self._per_user.pop(key, None)

    def _call_at(
        self, wall: float, callback: Callable[..., None], *args: object
    ) -> asyncio.TimerHandle:
        """Call `callback(*args)` at the Unix time `wall` (the loop's clock is monotonic)."""
        loop = asyncio.get_running_loop()
        return loop.call_later(max(0.0, wall - self.wall_clock()), callback, *args)

    def _expire_connection(self, connection: Connection) -> None:
        self._expiries.pop(connection.id, None)
        identity = connection.identity
        if connection.done or identity is None or identity.expires is None:
            return
        if self.wall_clock() < identity.expires:  # refreshed (or the clocks drifted): later
            self._expiries[connection.id] = self._call_at(
                identity.expires, self._expire_connection, connection
            )
            return
        connection.close(CloseCode.TOKEN_EXPIRED, _EXPIRED)

    def _expire_held(self, held: _Held) -> None:
        expires = held.identity.expires
        if held not in self._held or expires is None:
            return
        if self.wall_clock() < expires:
            held.timer = self._call_at(expires, self._expire_held, held)
            return
        held.timer = None
        held.stop(TokenExpired(_EXPIRED))

    def _revoked(self, revocation: Revocation) -> None:
        """Close every connection and end every held stream `revocation` names, at once."""
        guard = self.guard
        reason = f"the {revocation.kind} was revoked"
        for connection in tuple(self._connections.values()):
            identity = connection.identity
            if identity is not None and guard.revoked(identity) is not None:
                connection.close(CloseCode.FORBIDDEN, reason)
        for held in tuple(self._held):
            if guard.revoked(held.identity) is not None:
                held.stop(Revoked(reason))
        self.sessions.revoked(lambda identity: guard.revoked(identity) is not None)

    def clients(self, topic: str) -> list[ClientInfo]:
        """Who is present in the absolute `topic` (the HTTP gateway's presence hook)."""
        return self.presence.clients(topic)

    # -- the write pass ----------------------------------------------------------

    def schedule(self, connection: Connection) -> None:
        """Have `connection.write_due()` called this loop turn (the connection asks once)."""
        due = self._due
        due.append(connection)
        if len(due) == 1:
            asyncio.get_running_loop().call_soon(self._write_due)

    def _write_due(self) -> None:
        """Every scheduled connection drains its ready subscriptions and writes, in one pass."""
        due, self._due = self._due, []
        for connection in due:
            try:
                connection.write_due()
            except Exception:
                log.exception("writing to connection %s failed", connection.id)
                connection.abort()

    # -- exclude_self ----------------------------------------------------------

    def note_origin(self, event: Event, topic: str, origin: Origin) -> None:
        """Remember who publishes `event` to `topic`, BEFORE the publish reaches the bus.

        The engine hands the delivery to subscriptions before the publisher's
        ack resolves, and pumps run as tasks of their own: only a record made
        beforehand is sure to be there when a pump looks.
        """
        origins = self.origins
        key = (event.source, event.id)
        origins.pop(key, None)  # re-inserted last: the newest is evicted last
        if len(origins) >= _ORIGINS_SIZE:
            del origins[next(iter(origins))]
        origins[key] = origin

    def origin_of(self, delivery: Delivery) -> Origin | None:
        """The `exclude_self` origin of `delivery`, if its publisher asked for one."""
        event = delivery.event
        origin = self.origins.get((event.source, event.id))
        if origin is None or origin.topic != delivery.topic:
            return None
        return origin

    # -- heartbeat -------------------------------------------------------------

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.tick_interval
        while True:
            await asyncio.sleep(interval)
            self.beat(loop.time())

    def beat(self, now: float) -> int:
        """One heartbeat pass at `now` (the loop's clock): tick the connections due.

        Only connections whose deadline (a ping, a silent peer, the connect
        timeout) has come are touched, at most `heartbeat_limit` of them: the
        rest are first next pass. Each is then scheduled by its next deadline.
        Returns how many were ticked.
        """
        wheel = self._wheel
        due = wheel.due(now, self.heartbeat_limit)
        wall = self.wall_clock()
        for connection in due:
            try:
                deadline = connection.tick(now, wall)
            except Exception:
                log.exception("heartbeat of connection %s failed", connection.id)
                deadline = None if connection.session.closed else now + self._span
            if deadline is not None and not connection.done:
                wheel.schedule(connection, deadline)
        ticked = len(due)
        self.heartbeat_passes += 1
        self.heartbeat_ticked += ticked
        self.heartbeat_most = max(self.heartbeat_most, ticked)
        return ticked

    @property
    def heartbeat_waiting(self) -> int:
        """How many connections the heartbeat has a deadline for."""
        return len(self._wheel)

    @property
    def heartbeat_limit(self) -> int:
        """The most connections one heartbeat pass ticks: twice the share due per pass."""
        share = len(self._wheel) * self.tick_interval / self._span
        return max(_MIN_BEAT, math.ceil(2 * share))

    # -- shutdown --------------------------------------------------------------

    async def close_connections(
        self,
        code: CloseCode = CloseCode.SHUTDOWN,
        reason: str = "the server is shutting down",
        within: float | None = None,
    ) -> None:
        """Stop accepting; close every connection with `code`; abort those not done in time.

        `within` defaults to the configured `shutdown_timeout`.
        """
        self._accepting = False
        connections = tuple(self._connections.values())
        for connection in connections:
            connection.close(code, reason)
        waits = [connection.finished for connection in connections if not connection.done]
        if waits:
            limit = self.config.shutdown_timeout if within is None else within
            _, late = await asyncio.wait(waits, timeout=limit)
            if late:
                log.warning("aborting %d connections that did not close in time", len(late))
                for connection in connections:
                    if not connection.done:
                        connection.abort()

    async def shutdown(self) -> None:
        """Graceful shutdown: close every connection, stop the ticker, close the bus.

        Idempotent; concurrent callers wait for the same shutdown.
        """
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(self._run_shutdown(), name="hybridbus-shutdown")
        await asyncio.shield(self._shutdown)

    async def _run_shutdown(self) -> None:
        started = time.monotonic()
        await self.close_connections()
        self.sessions.close()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self._bus_closed = True
        left = max(1.0, self.config.shutdown_timeout - (time.monotonic() - started))
        try:
            async with asyncio.timeout(left):
                await self.guard.drain_audits()  # in flight: appended, not dropped as closed
                await self.states.topics.close()
                await self.guard.close()
                await self.bus.close()
        except TimeoutError:
            log.exception("the engine did not close within %.1f s", left)
        log.info("shutdown complete", extra={"seconds": round(time.monotonic() - started, 3)})
