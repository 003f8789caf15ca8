"""The node: one server process's connections around one bus.

Owns: the set of open connections and their ids, the presence registry, the
ONE heartbeat ticker that drives every session's `tick` (not a timer per
connection), the encode-once caches of pushes (one encoding of a delivery's
event per codec, one push per codec and pattern, shared by every connection),
the record of who published what with `exclude_self`, and graceful shutdown.
Must not speak to a socket (connections talk to a `Transport`), nor pick an
engine (it is given a started `Bus`), nor parse the wire (that is `proto`).

The node is the one registry of everything a principal holds open: its
WebSocket connections (`admit` / `forget`) and the streams of other ways in
(`hold`: an SSE stream). Both count against `max_connections_per_user`
together, both end at once when a revocation names their identity, and both
end at their token's `exp` — on a timer at that instant (the ticker checks
too, as a fallback), so "at expiry" means within milliseconds, not a tick.

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
import secrets
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Final

from hybridbus.core.event import Event
from hybridbus.core.identity import Identity
from hybridbus.core.log import Delivery
from hybridbus.core.revocation import Revocation
from hybridbus.errors import AccessError, Revoked, TokenExpired, TooManyConnections
from hybridbus.hub.bus import Bus
from hybridbus.hub.guard import Guard
from hybridbus.proto.codec import WireCodec
from hybridbus.proto.codes import CloseCode
from hybridbus.proto.frames import ClientInfo
from hybridbus.proto.session import SessionConfig
from hybridbus.server.access import authenticator_of, limits_of, policy_of
from hybridbus.server.auth import Authenticator
from hybridbus.server.config import ServerConfig
from hybridbus.server.connection import Connection, Transport
from hybridbus.server.metrics import Metrics
from hybridbus.server.presence import PresenceRegistry
from hybridbus.server.subscriptions import Origin

__all__ = ["SERVER_VERSION", "End", "Node", "Release"]

log = logging.getLogger("hybridbus.server")


def _server_version() -> str:
    try:
        return version("hybridbus")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0"


SERVER_VERSION: Final = _server_version()

# Encoded events and pushes kept for sharing: a delivery is pushed to all its
# subscribers within a few loop turns, so a few thousand entries suffice.
_CACHE_SIZE: Final = 4096
# Batches of pushes kept for sharing: the connections drain them within a loop turn.
_BATCH_CACHE_SIZE: Final = 256
# Publishes with exclude_self remembered until their deliveries are pumped; a
# pump lagging further behind than this pushes the event back to its sender.
_ORIGINS_SIZE: Final = 65_536
# Seconds a slow consumer gets to take its close frame before it is aborted.
_SLOW_CLOSE_TIMEOUT: Final = 1.0


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


def _push_key(absolute: str, prefix: str) -> str:
    """The cache key of pushes for `absolute`: an admin (no prefix) sees other bytes."""
    return absolute if prefix else "/" + absolute


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
        self._events: dict[tuple[str, int, int, float], bytes] = {}
        self._pushes: dict[tuple[str, str, int, int, float], bytes] = {}
        self._batches: dict[tuple[str, str, int, int, float, int], list[bytes]] = {}
        self.origins: dict[tuple[str, str], Origin] = {}
        session = self.session_config
        # The ticker's period: fine enough for the heartbeat and connect timeout.
        period = min(session.ping_interval or 1.0, session.connect_timeout) / 4
        self.tick_interval = max(0.01, min(1.0, period))

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
        id = f"c-{self._prefix}{next(self._ids):x}"
        connection = Connection(self, transport, codec, id=id, transport_name=transport_name)
        self._connections[id] = connection
        self.metrics.connections.labels(transport_name).inc()
        if not self._accepting:
            connection.close(CloseCode.SHUTDOWN, "the server is shutting down")
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

    def clients(self, topic: str) -> list[ClientInfo]:
        """Who is present in the absolute `topic` (the HTTP gateway's presence hook)."""
        return self.presence.clients(topic)

    # -- encode once -----------------------------------------------------------

    def event_bytes(self, codec: WireCodec, delivery: Delivery) -> bytes:
        """`delivery`'s event in `codec`'s encoding, encoded once for every connection.

        Keyed by (subprotocol, shard, position, append time): the time keeps an
        entry from an older epoch (after an engine reset) from ever matching.
        """
        key = (codec.subprotocol, delivery.shard, delivery.position, delivery.time)
        events = self._events
        encoded = events.get(key)
        if encoded is None:
            encoded = codec.encode_event(delivery.event)
            if len(events) >= _CACHE_SIZE:
                del events[next(iter(events))]
            events[key] = encoded
        return encoded

    def push_bytes(
        self, codec: WireCodec, absolute: str, pattern: str, prefix: str, delivery: Delivery
    ) -> bytes:
        """The encoded `event` push of `delivery` for subscriptions to `absolute`.

        `pattern` is `absolute` as the client wrote it (without `prefix`, its tenant's);
        every connection subscribed to the same absolute pattern with the same
        codec gets the same bytes.
        """
        key = (
            codec.subprotocol,
            _push_key(absolute, prefix),
            delivery.shard,
            delivery.position,
            delivery.time,
        )
        pushes = self._pushes
        encoded = pushes.get(key)
        if encoded is None:
            topic = delivery.topic[len(prefix) :]
            encoded = codec.encode_push(
                pattern, delivery, self.event_bytes(codec, delivery), topic=topic
            )
            if len(pushes) >= _CACHE_SIZE:
                del pushes[next(iter(pushes))]
            pushes[key] = encoded
        return encoded

    def push_batch(
        self,
        codec: WireCodec,
        absolute: str,
        pattern: str,
        prefix: str,
        batch: list[Delivery],
        *,
        whole: bool = True,
    ) -> list[bytes]:
        """`push_bytes` of every delivery in `batch`, in order (the fan-out's hot path).

        The list is shared: callers copy from it, never change it. With `whole`
        (nothing of the subscription's stream was left out), the batch is a run
        of consecutive deliveries of one stream — every subscription to
        `absolute` gets the same stream — so its first delivery and its length
        name it: the connections that drain the same batch in one loop turn
        share one list, made once.
        """
        subprotocol = codec.subprotocol
        key = _push_key(absolute, prefix)
        batches = self._batches
        if whole:
            first, last = batch[0], batch[-1]
            run = (subprotocol, key, first.shard, first.position, first.time, last.position)
            found = batches.get(run)
            if found is not None and len(found) == len(batch):
                return found
        pushes = self._pushes
        out: list[bytes] = []
        for delivery in batch:
            encoded = pushes.get(
                (subprotocol, key, delivery.shard, delivery.position, delivery.time)
            )
            if encoded is None:
                encoded = self.push_bytes(codec, absolute, pattern, prefix, delivery)
            out.append(encoded)
        if whole:
            if len(batches) >= _BATCH_CACHE_SIZE:
                del batches[next(iter(batches))]
            batches[run] = out
        return out

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
            now = loop.time()
            wall = self.wall_clock()
            for connection in tuple(self._connections.values()):
                try:
                    connection.tick(now, wall)
                except Exception:
                    log.exception("heartbeat of connection %s failed", connection.id)

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
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self._bus_closed = True
        left = max(1.0, self.config.shutdown_timeout - (time.monotonic() - started))
        try:
            async with asyncio.timeout(left):
                await self.guard.drain_audits()  # in flight: appended, not dropped as closed
                await self.bus.close()
        except TimeoutError:
            log.exception("the engine did not close within %.1f s", left)
        log.info("shutdown complete", extra={"seconds": round(time.monotonic() - started, 3)})
