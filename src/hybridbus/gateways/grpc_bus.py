"""The gRPC gateway: the `hybridbus.v1.Bus` service (protos/) on a port of its own.

Owns: the `grpc.aio` server and its four calls — `Publish` (unary), `Ingest`
(client-streaming), `Subscribe` (server-streaming), `History` (unary) —
reading credentials from call metadata, and ending calls with a status whose
trailing metadata carries the hybridbus error code (`gateways.grpc_codec`
maps them; docs/grpc.md is the reference). Must not decide who may do what:
every call goes through the same hooks as the HTTP API (`HttpAccess`: the
same principals, rules and tenant scoping; `Guard.take`: the same publish
buckets; `Node.hold`: streams count with the user's connections and end at
revocation and at the token's expiry).

Theory of operation. A streaming call (`Subscribe`, `Ingest`) is held by
its principal for as long as it runs, and ends early at revocation, expiry or
shutdown (1210): `gateways.grpc_streams.Ending`.

`Subscribe` writes `subscribed`, then each batch the subscription hands out
(what its `filter`, if any, lets through: the hub's subscription applies it),
a message per delivery, through an `Outbox` (gateways.grpc_streams) bounded
in bytes: a reader that does not keep up lets it fill, and the call ends
with 1201 (ABORTED: resubscribe from the last token), as a WebSocket or SSE
subscriber does.
If continuity breaks in the middle of a recovery after `subscribed` said
`recovered: true`, the call ends with 1200 (ABORTED) before the gap.

`Ingest` reads the stream into a small queue (bounded: a producer faster
than the log waits in HTTP/2 flow control) and appends what it holds in one
engine call at a time, in order. Each event is authorized (once per topic
per call), decoded, checked by the bus, and taken from the publish buckets;
over the rate the call waits for the bucket instead of failing (a log
shipper wants back-pressure, not a refusal). The first refused event ends the
call after the events before it are appended: its status says why, with
`hybridbus-index` (its place in the stream, from 0) and `hybridbus-accepted`
(events appended: resend from there; duplicates by `source` + `id` are
answered, never appended twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import unquote

import grpc
import msgspec

from hybridbus.core.filters import Filter, compile_filter
from hybridbus.core.identity import Identity
from hybridbus.core.log import Ack, Position
from hybridbus.core.topics import validate_topic
from hybridbus.errors import (
    AccessError,
    BusClosed,
    BusError,
    InvalidInput,
    RateLimited,
    SubscriberTooSlow,
    SubscriptionEnded,
    Unauthorized,
)
from hybridbus.gateways.access import HttpAccess
from hybridbus.gateways.grpc_codec import (
    INDEX_KEY,
    Malformed,
    Tokens,
    ack_message,
    delivery_message,
    event_of,
    generated,
    message_of,
    parsed,
    request_parser,
    status_of,
    trailers_of,
)
from hybridbus.gateways.grpc_streams import Ending, Outbox
from hybridbus.hub.bus import Bus, Prepared
from hybridbus.hub.guard import Guard, Principal
from hybridbus.hub.subscription import Subscription
from hybridbus.hub.tracing import trace_delivered
from hybridbus.proto.frames import MAX_HISTORY_LIMIT
from hybridbus.server.metrics import Metrics
from hybridbus.server.tls import ServerTls

__all__ = ["GrpcConfig", "GrpcGateway", "Hold"]

log = logging.getLogger(__name__)

# The hold hook (`Node.hold`): count a stream of `identity`, end it by `end(error)`;
# returns its release.
Hold = Callable[[Identity, Callable[[AccessError], None]], Callable[[], None]]
_DEFAULT_LIMIT: Final = 100
_ACCEPTED_KEY: Final = "hybridbus-accepted"
_bus_pb2, _, _ = generated()
_SERVICE: Final = "hybridbus.v1.Bus"


class GrpcConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the gRPC gateway. Sizes are bytes, durations seconds."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port (`GrpcGateway.port` says which)
    reuse_port: bool = False  # several processes share the port (`--workers`)
    # One message: an event at the bus's limit (1 MiB) and its envelope. Larger
    # ones are refused by gRPC itself (RESOURCE_EXHAUSTED, no hybridbus-code).
    max_message_size: int = (1 << 20) + (64 << 10)
    # A history page stops early (more: true) past this: clients receive 4 MiB by default.
    max_page_bytes: int = 3 << 20
    # Live responses a Subscribe may have waiting for its client before it ends (1201),
    # as a WebSocket connection's outbox (the server's `max_pending_bytes`).
    max_pending_bytes: int = 8 << 20
    ingest_batch: int = 512  # events of an Ingest call appended in one engine call at most
    keepalive: float = 25.0  # HTTP/2 pings on idle connections, to notice clients gone
    grace: float = 1.0  # seconds calls get to finish once the server stops


class _Refused(Exception):
    """A call ends with `error`, and `trailers` beside its code."""

    def __init__(self, error: BusError, **trailers: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.trailers = trailers


def _credential(context: Any) -> str | None:
    """The call's credential: `authorization: Bearer <...>`, else `x-api-key`, else none."""
    metadata: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            metadata.setdefault(key.lower(), value)
    header = metadata.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("the authorization metadata must be 'Bearer <token or API key>'")
        return value.strip()
    key = metadata.get("x-api-key")
    return key.strip() if key is not None else None


def _address(peer: str) -> str:
    """`host:port` of grpc's peer (`ipv4:127.0.0.1:5000`, `ipv6:%5B::1%5D:5000`); else as is."""
    family, _, address = peer.partition(":")
    return unquote(address) if family in ("ipv4", "ipv6") else peer


def _answered(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """`handler`, ending every call it fails with the status of the error (module docstring)."""

    async def call(self: GrpcGateway, request: Any, context: Any) -> Any:
        try:
            return await handler(self, parsed(request), context)
        except _Refused as exc:
            refusal, more = exc.error, exc.trailers
        except BusError as exc:
            refusal, more = exc, {}
        except Exception:
            log.exception("gRPC %s failed", handler.__name__)
            refusal, more = None, {}
        await context.abort(
            status_of(refusal), message_of(refusal), trailing_metadata=trailers_of(refusal, **more)
        )
        return None  # not reached: abort raises

    call.__name__ = handler.__name__
    return call


class GrpcGateway:
    """The `Bus` service over one bus: `await start()`, then `await close()` at shutdown."""

    def __init__(
        self,
        bus: Bus,
        guard: Guard,
        access: HttpAccess,
        hold: Hold,
        metrics: Metrics,
        config: GrpcConfig | None = None,
        tls: ServerTls | None = None,  # TLS (and mutual TLS) with reloads: grpc_tls.py
    ) -> None:
        self._tls = tls
        self._bus = bus
        self._guard = guard
        self._access = access
        self._hold = hold
        self._config = config or GrpcConfig()
        self._server: Any = None
        self._endings: set[Ending] = set()
        self._readers: set[asyncio.Future[None]] = set()  # of Ingest calls ending
        self._closed = False
        self.port = 0
        self._connections = metrics.connections.labels(transport="grpc")
        self._subscriptions = metrics.subscriptions.labels(transport="grpc")
        self._deliveries = metrics.deliveries.labels(transport="grpc")
        self._published = metrics.publishes.labels(gateway="grpc")
        self._duplicates = metrics.duplicates.labels(gateway="grpc")

    async def start(self) -> int:
        """Listen on the configured address; the port. Raises `OSError` if it cannot bind."""
        config = self._config
        keepalive_ms = int(config.keepalive * 1000)
        server = grpc.aio.server(
            options=[
                # a port in use is an error, not shared, unless workers share it
                ("grpc.so_reuseport", 1 if config.reuse_port else 0),
                ("grpc.max_receive_message_length", config.max_message_size),
                ("grpc.keepalive_time_ms", keepalive_ms),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ]
        )
        handlers = self._handlers()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
        server.add_registered_method_handlers(_SERVICE, handlers)
        address = f"{config.host}:{config.port}"
        try:
            if self._tls is None:
                port = int(server.add_insecure_port(address))
            else:
                from hybridbus.gateways.grpc_tls import server_credentials

                port = int(server.add_secure_port(address, server_credentials(self._tls)))
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
        if port == 0:
            raise OSError(f"cannot listen for gRPC on {address}")
        await server.start()
        self._server, self.port = server, port
        log.info("grpc listening", extra={"addresses": [[config.host, port]]})
        return port

    def _handlers(self) -> dict[str, Any]:
        """The four calls, as `bus_pb2_grpc.add_BusServicer_to_server` registers them, but
        with requests that do not parse handed to the call (`Malformed`): refused 1000."""
        pb = _bus_pb2
        return {
            "Publish": grpc.unary_unary_rpc_method_handler(
                self.Publish,
                request_deserializer=request_parser(pb.PublishRequest),
                response_serializer=pb.Ack.SerializeToString,
            ),
            "Ingest": grpc.stream_unary_rpc_method_handler(
                self.Ingest,
                request_deserializer=request_parser(pb.PublishRequest),
                response_serializer=pb.IngestResponse.SerializeToString,
            ),
            "Subscribe": grpc.unary_stream_rpc_method_handler(
                self.Subscribe,
                request_deserializer=request_parser(pb.SubscribeRequest),
                response_serializer=pb.SubscribeResponse.SerializeToString,
            ),
            "History": grpc.unary_unary_rpc_method_handler(
                self.History,
                request_deserializer=request_parser(pb.HistoryRequest),
                response_serializer=pb.HistoryResponse.SerializeToString,
            ),
        }

    async def close(self) -> None:
        """End every held call (1210: reconnect), refuse new ones, stop the server."""
        self._closed = True
        for ending in list(self._endings):
            ending.end(BusClosed("the server is shutting down; reconnect"))
        if self._server is not None:
            await self._server.stop(self._config.grace)
        for reader in list(self._readers):
            reader.cancel()

    # -- the calls -----------------------------------------------------------------------------

    async def _principal(self, context: Any) -> Principal:
        if self._closed:
            raise BusClosed("the server is shutting down")
        return await self._access.identify(_credential(context))

    @contextlib.asynccontextmanager
    async def _held(self, principal: Principal) -> Any:
        """The call held by `principal` (counted; ended at revocation, expiry, shutdown)."""
        ending = Ending()
        release = self._hold(principal.identity, ending.end)  # may refuse: 1122
        self._endings.add(ending)
        self._connections.inc()
        try:
            yield ending
        finally:
            self._connections.dec()
            self._endings.discard(ending)
            release()

    @_answered
    async def Publish(self, request: Any, context: Any) -> Any:  # the proto's names
        principal = await self._principal(context)
        topic = validate_topic(request.topic)
        await self._access.check(principal, "publish", topic)
        prepared = self._bus.prepare(topic, event_of(request.event))
        self._guard.take(principal)  # over the rate: RESOURCE_EXHAUSTED, retry-after
        (ack,) = await self._bus.append([prepared])
        self._count([ack])
        return ack_message(ack)

    @_answered
    async def History(self, request: Any, context: Any) -> Any:
        principal = await self._principal(context)
        pattern: str = request.pattern
        since: str | None = request.since or None
        limit = int(request.limit) if request.HasField("limit") else _DEFAULT_LIMIT
        if limit > MAX_HISTORY_LIMIT:
            raise InvalidInput(f"limit is at most {MAX_HISTORY_LIMIT}, not {limit}")
        wanted = _filter_of(request)
        await self._access.check(principal, "read", pattern)
        page = await self._bus.history(pattern, since, limit, filter=wanted)
        tokens = Tokens(_start(since, page.position))
        events: list[Any] = []
        size, position = 0, str(page.position)
        for delivery in page.deliveries:
            message = delivery_message(delivery, tokens.after(delivery))
            size += int(message.ByteSize())
            if events and size > self._config.max_page_bytes:
                return _bus_pb2.HistoryResponse(
                    events=events, position=position, more=True, exact=page.exact
                )
            events.append(message)
            position = message.token
        return _bus_pb2.HistoryResponse(
            events=events, position=str(page.position), more=page.more, exact=page.exact
        )

    @_answered
    async def Subscribe(self, request: Any, context: Any) -> None:
        principal = await self._principal(context)
        pattern: str = request.pattern
        wanted = _filter_of(request)
        await self._access.check(principal, "subscribe", pattern)
        async with self._held(principal) as ending:
            sub = self._bus.subscribe(pattern, request.since or None, filter=wanted)
            async with sub:
                self._subscriptions.inc()
                try:
                    error = await ending.run(self._pump(sub, context, int(request.batch)))
                finally:
                    self._subscriptions.dec()
        if error is not None:
            raise error

    async def _pump(
        self, sub: Subscription, context: Any, per_response: int = 1
    ) -> BusError | None:
        """Write `subscribed`, then every delivery; the error that ended the subscription.

        `per_response` above 1: deliveries go `per_response` (and about
        `max_page_bytes`) a response, in `deliveries`. A writer task writes
        the responses (each write waits for HTTP/2 flow control) while this
        loop takes the subscription's deliveries as they come, so that what
        waits for the client is bounded in bytes, as on a WebSocket: past
        `max_pending_bytes` of live responses the call ends with 1201.
        Recovered history is taken at the pace the client reads it instead.
        """
        response, Deliveries = _bus_pb2.SubscribeResponse, _bus_pb2.Deliveries
        start, promised = sub.position, sub.recovered
        subscribed = _bus_pb2.Subscribed(
            pattern=sub.pattern, epoch=start.epoch, position=str(start), recovered=promised
        )
        await context.write(response(subscribed=subscribed))
        tokens = Tokens(start)
        deliveries = self._deliveries
        most = max(1, per_response)
        limit = self._config.max_page_bytes
        bound = self._config.max_pending_bytes
        out = Outbox(context)
        peer = _address(context.peer())  # the call's HTTP/2 connection, for `deliver` spans
        paced = True  # history (and what it left queued) goes at the client's pace
        try:
            while True:
                if paced:
                    await out.below(bound // 4)
                    # Live with nothing held back: from now on deliveries are live, bounded.
                    paced = not (sub.live and not sub.queued)
                live = not paced
                try:
                    batch = await sub.take()
                except BusError as exc:
                    return exc
                if not batch:
                    await out.below(0)  # ended: what is queued goes out first
                    return None
                if promised and not sub.recovered:
                    reason = "events after the last position were removed before they could be read"
                    return SubscriptionEnded(reason)
                if most == 1:
                    for delivery in batch:
                        message = delivery_message(delivery, tokens.after(delivery))
                        out.add(response(delivery=message), int(message.ByteSize()))
                else:  # up to `most` a response, and about `max_page_bytes`
                    packed: list[Any] = []
                    size = 0
                    for delivery in batch:
                        message = delivery_message(delivery, tokens.after(delivery))
                        size += int(message.ByteSize())
                        if packed and (len(packed) >= most or size > limit):
                            out.add(response(deliveries=Deliveries(deliveries=packed)), size)
                            packed, size = [], int(message.ByteSize())
                        packed.append(message)
                    out.add(response(deliveries=Deliveries(deliveries=packed)), size)
                deliveries.inc(len(batch))
                trace_delivered(self._bus.tracer, batch, "grpc", peer)
                if live and out.size > bound:
                    return SubscriberTooSlow(
                        f"over {bound} bytes queued for the client; "
                        "subscribe again from the last token"
                    )
                await asyncio.sleep(0)  # let the writer start
        finally:
            await out.close()

    @_answered
    async def Ingest(self, requests: Any, context: Any) -> Any:
        principal = await self._principal(context)
        counts = _Counts()
        async with self._held(principal) as ending:
            try:
                await ending.run(self._ingest(principal, requests, counts))
            except BusError as exc:  # ended by the holder: revoked, expired, shutdown
                raise _Refused(exc, **{_ACCEPTED_KEY: str(counts.accepted)}) from None
        last = ack_message(counts.last) if counts.last is not None else None
        return _bus_pb2.IngestResponse(
            accepted=counts.accepted, duplicates=counts.duplicates, last=last
        )

    async def _ingest(self, principal: Principal, requests: Any, counts: _Counts) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue(self._config.ingest_batch)
        stop = asyncio.Event()
        reader = asyncio.ensure_future(_read(requests, queue, stop))
        try:
            allowed: set[str] = set()
            finished = False
            while not finished:
                items = [await queue.get()]
                while not queue.empty() and len(items) < self._config.ingest_batch:
                    items.append(queue.get_nowait())
                prepared: list[Prepared] = []
                for item in items:
                    if item is _END:
                        finished = True
                        break
                    if isinstance(item, BaseException):
                        raise item
                    if isinstance(item, Malformed):  # refused as an event is: 1000
                        await self._append(prepared, counts)
                        at = {INDEX_KEY: str(counts.seen), _ACCEPTED_KEY: str(counts.accepted)}
                        raise _Refused(item.error, **at)
                    topic: str | None = None
                    events = [item.event] if item.HasField("event") else []
                    events.extend(item.events)  # a batch of the same topic, in order
                    if not events:  # counted as one, refused: as a message without `event`
                        events = [item.event]
                    for event in events:
                        index = counts.seen
                        counts.seen += 1
                        try:
                            if topic is None:
                                topic = validate_topic(item.topic)
                                if topic not in allowed:
                                    await self._access.check(principal, "publish", topic)
                                    allowed.add(topic)
                            one = self._bus.prepare(topic, event_of(event))
                            await self._take(principal, prepared, counts)
                        except BusError as exc:
                            await self._append(prepared, counts)
                            index_of = {INDEX_KEY: str(index), _ACCEPTED_KEY: str(counts.accepted)}
                            raise _Refused(exc, **index_of) from None
                        prepared.append(one)
                        if len(prepared) >= self._config.ingest_batch:
                            await self._append(prepared, counts)
                await self._append(prepared, counts)
        finally:
            # Cancelling a pending read would cancel the call, before its status is
            # sent: the reader stops by itself once the call ends (owned till then).
            stop.set()
            while not queue.empty():
                queue.get_nowait()
            if not reader.done():
                self._readers.add(reader)
                reader.add_done_callback(self._readers.discard)

    async def _take(self, principal: Principal, prepared: list[Prepared], counts: _Counts) -> None:
        """Take one publish from the buckets; over the rate, append what waits and wait."""
        while True:
            try:
                self._guard.take(principal)
                return
            except RateLimited as exc:
                await self._append(prepared, counts)
                prepared.clear()
                await asyncio.sleep(exc.retry_after)

    async def _append(self, prepared: list[Prepared], counts: _Counts) -> None:
        if not prepared:
            return
        acks = await self._bus.append(prepared)  # one engine call: all or none
        prepared.clear()
        counts.add(acks)
        self._count(acks)

    def _count(self, acks: list[Ack]) -> None:
        self._published.inc(len(acks))
        duplicates = sum(ack.duplicate for ack in acks)
        if duplicates:
            self._duplicates.inc(duplicates)


class _Counts:
    """What an Ingest call has seen and appended so far."""

    __slots__ = ("accepted", "duplicates", "last", "seen")

    def __init__(self) -> None:
        self.seen = 0
        self.accepted = 0
        self.duplicates = 0
        self.last: Ack | None = None

    def add(self, acks: list[Ack]) -> None:
        self.accepted += len(acks)
        self.duplicates += sum(ack.duplicate for ack in acks)
        self.last = acks[-1]


_END: Final = object()


async def _read(requests: Any, queue: asyncio.Queue[Any], stop: asyncio.Event) -> None:
    """Every request of a stream into `queue`, then `_END` (or the error reading failed with).

    Once `stop` is set, what still comes is dropped until the call ends.
    """
    try:
        async for request in requests:
            if stop.is_set():
                return
            await queue.put(request)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 (a task boundary: the call raises it)
        await queue.put(exc)
        return
    await queue.put(_END)


def _filter_of(request: Any) -> Filter | None:
    """The `filter` of a Subscribe or History request (None when absent or empty).

    Checked here, so that a bad one is refused (INVALID_ARGUMENT, 1000) before anything starts.
    """
    if not request.HasField("filter"):
        return None
    message = request.filter
    found = Filter(
        level=message.level if message.HasField("level") else None,
        fields={str(k): str(v) for k, v in message.fields.items()},
        contains=message.contains if message.HasField("contains") else None,
        regex=message.regex if message.HasField("regex") else None,
        types=[str(t) for t in message.types],
    )
    compile_filter(found)
    return None if found.empty() else found


def _start(since: str | None, end: Position) -> Position:
    """Where the tokens of a history page start: `since` if it is of the page's epoch."""
    if since is not None:
        start = Position.parse(since)
        if start.epoch == end.epoch and len(start.positions) == len(end.positions):
            return start
    return Position(end.epoch, (0,) * len(end.positions))
