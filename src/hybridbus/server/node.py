"""The node: one server process's connections around one bus.

Owns: the set of open connections and their ids, the presence registry, the
ONE heartbeat ticker that drives every session's `tick` (not a timer per
connection), the encode-once caches of pushes (one encoding of a delivery's
event per codec, one push per codec and pattern, shared by every connection),
the record of who published what with `exclude_self`, and graceful shutdown.
Must not speak to a socket (connections talk to a `Transport`), nor pick an
engine (it is given a started `Bus`), nor parse the wire (that is `proto`).

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
from hybridbus.errors import TooManyConnections
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

__all__ = ["SERVER_VERSION", "Node"]

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
        # (tenant, user) -> how many connections it holds (authenticated users only).
        self._per_user: dict[tuple[str, str], int] = {}
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
            if identity is not None and identity.user is not None:
                key = (identity.tenant, identity.user)
                left = self._per_user.get(key, 0) - 1
                if left > 0:
                    self._per_user[key] = left
                else:
                    self._per_user.pop(key, None)
        self.presence.unwatch_all(connection)

    def admit(self, connection: Connection, identity: Identity) -> None:
        """Count `connection` against its user's limit; raise `TooManyConnections` if full."""
        if identity.user is None:
            return
        key = (identity.tenant, identity.user)
        held = self._per_user.get(key, 0)
        limit = self.config.max_connections_per_user
        if limit and held >= limit:
            raise TooManyConnections(f"user {identity.user!r} already holds {held} connections")
        self._per_user[key] = held + 1

    def _revoked(self, revocation: Revocation) -> None:
        """Close every live connection the new `revocation` names (at once)."""
        guard = self.guard
        for connection in tuple(self._connections.values()):
            identity = connection.identity
            if identity is not None and guard.revoked(identity) is not None:
                connection.close(CloseCode.FORBIDDEN, f"the {revocation.kind} was revoked")

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
                await self.bus.close()
        except TimeoutError:
            log.exception("the engine did not close within %.1f s", left)
        log.info("shutdown complete", extra={"seconds": round(time.monotonic() - started, 3)})
