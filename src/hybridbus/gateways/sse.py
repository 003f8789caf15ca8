"""The SSE gateway: a topic or pattern as a `text/event-stream`, resumable with Last-Event-ID.

Owns: `GET /v1/sse` — one bus subscription per stream, the SSE framing of
what it delivers, the bound in bytes of what a stream has encoded and not yet
written, keep-alives, noticing clients that left, and ending the stream: when
its subscription ends, when its reader is too slow, when the holder of the
stream (the `hold` hook: the node, for revocations and expiry) ends it. Must
not decide who may open or hold a stream (the `authorize` and `hold` hooks
do), route deliveries, nor know any other route; it never stops a client
from resuming.

A stream (docs/http.md is the reference for clients):

    : hybridbus                     a comment, then the reconnect delay
    retry: 2000

    id: <token>                     first: where the stream starts
    event: subscribed
    data: {"pattern":…,"epoch":…,"position":<token>,"recovered":true}

    id: <token after this event>    one per delivery, in log order
    event: event
    data: <the CloudEvent, structured JSON, one line>

    : keepalive                     after `keepalive` seconds of silence

    event: unsubscribed             last, when the server ends the stream
    data: {"pattern":…,"code":1201,"reason":…,"retriable":true}

Every `id` is a resume token, so the browser's automatic reconnect sends the
token after the last event it got as `Last-Event-ID` and the new stream goes
on exactly there (`Last-Event-ID` wins over `?since=`). A filter
(`?level=&contains=&regex=&field=k:v&type=`, `sse_stream.query_filter`)
leaves events out; a reconnect must repeat it (an EventSource keeps its URL),
and the events it left out after the last `id` are left out again. `recovered: false`
says continuity could not be kept (another epoch, or retention removed missed
events). If continuity breaks in the middle of a recovery, after `subscribed`
said true, the stream ends with code 1200 before the gap, so the reconnect
says `recovered: false`.

Theory of operation. The handler writes the preamble and `subscribed`, then
takes recovered history a page at a time, encoding and writing it a write's
worth at a time before it takes the next: the log holds the rest, so a slow
reader only slows its own recovery (and a stalled one is dropped after
`write_timeout`). Once live with nothing queued it `attach`es the
subscription: the bus's route then notes the stream (once per batch), a
callback one loop turn later takes every queued delivery and encodes it into
the stream's pending frames, and the handler writes those — at most `batch`
events and about 1 MiB per write, each write waiting for the transport to
drain. Pending frames are bounded by `max_pending_bytes` (like a WebSocket
connection's outbox): past it the reader is too slow, what is pending is
dropped and the stream ends with 1201. Live, a stream pins at most that
bound plus one write.

Endings (`unsubscribed`, then the response ends):

    1101 TOKEN_EXPIRED        at the token's `exp`            retriable: false
    1104 REVOKED              its token, session or user      retriable: false
    1201 SUBSCRIBER_TOO_SLOW  over `max_pending_bytes`        retriable: true
    1200 SUBSCRIPTION_ENDED   continuity lost in recovery     retriable: true
    1210 BUS_CLOSED           the server shuts down (`close`) retriable: true
    1399 INTERNAL_ERROR       a failure (details in the log)  retriable: true

The first three drop what is pending and give the write in progress one
second to finish; a client that does not take it by then is cut off without
the event (the socket is aborted). The others write what is pending first.
A stream's holder (`hold`) ends it at expiry and at revocation; a stream it
refuses (`TooManyConnections`) is a problem (429) before the stream starts.

Leaving clients: the stream ends when the server sees the connection gone —
at once with `handler_cancellation=True`, else within a second (one sweep
for every stream, not a timer each).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
from aiohttp import web

from hybridbus.core.log import Delivery, Position
from hybridbus.errors import (
    AccessError,
    BusClosed,
    BusError,
    ErrorCode,
    InvalidPosition,
    SubscriberTooSlow,
    SubscriptionEnded,
)
from hybridbus.gateways.httputil import (
    Authorize,
    allow_all,
    problem,
    public_detail,
    query_bool,
    query_text,
    required_text,
)
from hybridbus.gateways.sse_stream import (
    CUT_GRACE,
    Encoded,
    Stream,
    frame,
    gone,
    query_filter,
    unsubscribed,
)
from hybridbus.hub.bus import Bus
from hybridbus.hub.subscription import Subscription
from hybridbus.hub.tracing import trace_delivered
from hybridbus.proto.frames import HistoryEvent
from hybridbus.server.metrics import Metrics

__all__ = ["EVENT_STREAM", "End", "Hold", "Release", "SseConfig", "SseGateway", "hold_nothing"]

log = logging.getLogger(__name__)

EVENT_STREAM: Final = "text/event-stream"

# Bytes one write gathers at most (a single larger event goes alone).
_WRITE_BYTES: Final = 1 << 20
# Seconds between two looks for clients that left (without handler cancellation).
_SWEEP_INTERVAL: Final = 1.0

# The hold hook: called once a stream is authorized and before it starts, with
# how to end it (`end(error)`: at revocation, at expiry); returns the release,
# called when the stream is over. It raises (e.g. `TooManyConnections`) to refuse.
End = Callable[[AccessError], None]
Release = Callable[[], None]
Hold = Callable[[web.Request, End], Awaitable[Release]]


def _release_nothing() -> None:
    pass


async def hold_nothing(request: web.Request, end: End) -> Release:
    """A hold hook that holds nothing (no count, no expiry): for tests and embedding.

    `hybridbus serve` uses `gateways.access.HttpAccess.holding(node.hold)` instead.
    """
    return _release_nothing


def _peer(request: web.Request) -> str:
    """`host:port` of the client's end of the stream's HTTP connection (else its address)."""
    transport = request.transport
    peer = None if transport is None else transport.get_extra_info("peername")
    if not isinstance(peer, tuple) or len(peer) < 2:  # gone, or not TCP
        return request.remote or "?"
    host = str(peer[0])
    return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"


class SseConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the SSE gateway. Durations are seconds, sizes bytes."""

    keepalive: float = 15.0  # silence before a keep-alive comment
    retry: int = 2000  # milliseconds a browser waits before it reconnects
    write_timeout: float = 30.0  # a write to a stalled client fails after this
    batch: int = 512  # deliveries coalesced into one write at most
    # Encoded and not yet written, per stream, before it ends as too slow (1201).
    max_pending_bytes: int = 8 << 20


class _Failed(BusError):
    """An unexpected failure of a stream (the details are in the server's log)."""

    code = ErrorCode.INTERNAL_ERROR
    retriable = True


class SseGateway:
    """Serves `GET /v1/sse?pattern=…&since=…` (see the module docstring)."""

    def __init__(
        self,
        bus: Bus,
        metrics: Metrics,
        config: SseConfig | None = None,
        authorize: Authorize = allow_all,
        hold: Hold = hold_nothing,
    ) -> None:
        self._bus = bus
        self._config = config or SseConfig()
        self._authorize = authorize
        self._hold = hold
        self._encoded = Encoded()
        self._connections = metrics.connections.labels(transport="sse")
        self._subscriptions = metrics.subscriptions.labels(transport="sse")
        self._deliveries = metrics.deliveries.labels(transport="sse")
        self._drops = metrics.drops.labels(reason="slow_consumer")
        self._latency = metrics.latency
        self._streams: set[Stream] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    def close(self) -> None:
        """End every stream (`unsubscribed`, 1210: reconnect) and refuse new ones (503).

        For the server's shutdown: without it, open streams hold the shutdown
        until its timeout.
        """
        self._closed = True
        for stream in list(self._streams):
            self._end_if_closed(stream)
        if self._sweeper is not None:
            self._sweeper.cancel()

    def _end_if_closed(self, stream: Stream) -> None:
        if self._closed:
            stream.stop(BusClosed("the server is shutting down; reconnect"))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """The handler: refuse with a problem before the stream starts, never after."""
        pattern = required_text(request, "pattern")
        header = request.headers.get("Last-Event-ID") or None
        since = header or query_text(request, "since")
        envelope = query_bool(request, "envelope", False)
        wanted = query_filter(request)  # a bad filter is a 400 naming its parameter
        await self._authorize(request, "subscribe", pattern)
        if self._closed:
            raise BusClosed("the server is shutting down")
        stream = Stream(request)
        release = await self._hold(request, stream.end)  # may refuse: TooManyConnections
        try:
            try:
                sub = self._bus.subscribe(pattern, since, filter=wanted)
            except InvalidPosition as exc:
                return problem(exc, parameter="Last-Event-ID" if header else "since")
            stream.sub = sub
            async with sub:
                self._streams.add(stream)
                self._sweep_while_open()
                self._end_if_closed(stream)  # closed while this stream opened
                try:
                    if isinstance(stream.ending, AccessError):  # ended before it started
                        return problem(stream.ending)
                    return await self._serve(request, stream, sub, envelope)
                finally:
                    self._streams.discard(stream)
        finally:
            release()

    def _sweep_while_open(self) -> None:
        sweeper = self._sweeper
        if (sweeper is None or sweeper.done()) and not self._closed:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep(), name="hybridbus-sse-sweep"
            )

    async def _sweep(self) -> None:
        """End the streams whose clients left; runs while there are streams."""
        while self._streams:
            await asyncio.sleep(_SWEEP_INTERVAL)
            for stream in tuple(self._streams):
                if gone(stream.request):
                    stream.gone = True
                    stream.stop(None)

    async def _serve(
        self, request: web.Request, stream: Stream, sub: Subscription, envelope: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
        )
        response.content_type = EVENT_STREAM
        response.charset = "utf-8"
        response.force_close()  # a stream is never followed by another request
        await response.prepare(request)
        self._connections.inc()
        self._subscriptions.inc()
        try:
            await self._run(response, stream, sub, envelope)
        except ConnectionError:
            pass  # the client left
        except TimeoutError:
            # A write did not finish in time: the client stalled (or was cut). Drop it.
            if request.transport is not None:
                request.transport.abort()
        except Exception:
            log.exception("SSE stream of %r failed", sub.pattern)
            if not gone(request):
                reason = "internal error; the details are in the server's log"
                code = int(ErrorCode.INTERNAL_ERROR)
                # Best effort: the stream is failing anyway.
                ending = unsubscribed(sub.pattern, code, reason, True)
                try:
                    await self._write(stream, response, ending)
                except (ConnectionError, TimeoutError):
                    pass
        finally:
            stream.stop(None)
            self._subscriptions.dec()
            self._connections.dec()
        return response

    async def _write(
        self, stream: Stream, response: web.StreamResponse, data: bytes, within: float = 0.0
    ) -> None:
        async with asyncio.timeout(within or self._config.write_timeout) as deadline:
            stream.deadline = deadline
            try:
                await response.write(data)
            finally:
                stream.deadline = None

    async def _run(
        self, response: web.StreamResponse, stream: Stream, sub: Subscription, envelope: bool
    ) -> None:
        config = self._config
        start = sub.position
        promised = sub.recovered
        subscribed = msgspec.json.encode(
            {
                "pattern": sub.pattern,
                "epoch": start.epoch,
                "position": str(start),
                "recovered": promised,
            }
        )
        preamble = b": hybridbus\nretry: " + str(config.retry).encode() + b"\n\n"
        first = preamble + frame(b"subscribed", subscribed, str(start))
        await self._write(stream, response, first)
        encode = self._encoder(start, envelope)
        peer = _peer(stream.request)  # names the stream in `deliver` spans
        loop = asyncio.get_running_loop()

        def notify() -> None:  # inside the publisher's route: only note it
            loop.call_soon(self._drain, stream, encode, peer)

        # Recovery: each batch is written before the next is taken.
        while not stream.stopped and not sub.attach(notify):
            try:
                batch = await sub.take()
            except BusError as exc:
                stream.stop(exc)
                break
            if not batch:
                stream.stop(None)  # ended without an error
                break
            if promised and not sub.recovered:
                # Continuity broke during recovery. End before the gap: the
                # client comes back from its last token and hears `recovered: false`.
                reason = "events after the last position were removed before they could be read"
                stream.stop(SubscriptionEnded(reason))
                break
            await self._write_batch(stream, response, batch, encode, sub.live)
        # Live: the drain callback fills `frames`, this writes them.
        if not stream.stopped:
            watcher = loop.create_task(self._watch(sub, stream))
            try:
                await self._write_live(stream, response)
            finally:
                watcher.cancel()
        while stream.frames:  # what an ending that does not cut leaves
            await self._write_some(stream, response)
        error = stream.ending
        if error is not None and not stream.gone:
            retriable = error.retriable or isinstance(error, (BusClosed, SubscriptionEnded))
            ending = unsubscribed(sub.pattern, int(error.code), public_detail(error), retriable)
            await self._write(stream, response, ending, CUT_GRACE if stream.cut else 0.0)

    async def _write_live(self, stream: Stream, response: web.StreamResponse) -> None:
        loop = asyncio.get_running_loop()
        keepalive = self._config.keepalive
        while True:
            if stream.frames:
                await self._write_some(stream, response)
                continue
            if stream.stopped:
                return
            wake = stream.wake = loop.create_future()
            try:
                async with asyncio.timeout(keepalive):
                    await wake
            except TimeoutError:
                if gone(stream.request):
                    stream.gone = True
                    stream.stop(None)
                    return
                await self._write(stream, response, b": keepalive\n\n")
            finally:
                stream.wake = None

    @staticmethod
    async def _watch(sub: Subscription, stream: Stream) -> None:
        """Stop the stream when the bus ends its (attached) subscription."""
        try:
            await sub.finished()
        except BusError as exc:
            stream.stop(exc)
        else:
            stream.stop(None)

    def _encoder(self, start: Position, envelope: bool) -> Callable[[Delivery], bytes]:
        """The frame of each delivery, in order: its `id` is the resume token after it."""
        encoded = self._encoded
        # The last position handed out in each shard (as `sub.position` has it,
        # without building a Position each time).
        epoch = start.epoch.encode() + b"-"
        positions = list(start.positions)
        one_shard = len(positions) == 1

        def encode(delivery: Delivery) -> bytes:
            data = encoded(delivery)
            if envelope:
                data = msgspec.json.encode(
                    HistoryEvent(
                        topic=delivery.topic,
                        offset=delivery.offset,
                        shard=delivery.shard,
                        position=delivery.position,
                        event=msgspec.Raw(data),
                    )
                )
            if one_shard:
                token = epoch + str(delivery.position).encode()
            else:
                positions[delivery.shard] = delivery.position
                token = epoch + ".".join(map(str, positions)).encode()
            return b"id: " + token + b"\nevent: event\ndata: " + data + b"\n\n"

        return encode

    async def _write_batch(
        self,
        stream: Stream,
        response: web.StreamResponse,
        batch: list[Delivery],
        encode: Callable[[Delivery], bytes],
        live: bool,
    ) -> None:
        """Encode and write `batch` a write at a time (its frames are never all held at once)."""
        frames = stream.frames
        limit = self._config.batch
        for delivery in batch:
            frame = encode(delivery)
            frames.append((frame, delivery.time if live else 0.0))
            stream.size += len(frame)
            if stream.size >= _WRITE_BYTES or len(frames) >= limit:
                await self._write_some(stream, response)
                if stream.stopped:
                    return
        while frames and not stream.stopped:
            await self._write_some(stream, response)

    def _drain(self, stream: Stream, encode: Callable[[Delivery], bytes], peer: str) -> None:
        """Take what the live subscription queued into the stream's frames (a loop callback)."""
        sub = stream.sub
        if stream.stopped or sub is None or not sub.live:
            return
        try:
            batch = sub.take_nowait()
            if not batch:
                return
            frames = stream.frames
            for delivery in batch:
                frame = encode(delivery)
                frames.append((frame, delivery.time))
                stream.size += len(frame)
            trace_delivered(self._bus.tracer, batch, "sse", peer)
            limit = self._config.max_pending_bytes
            if stream.size > limit and len(frames) > 1:
                dropped = len(frames)
                stream.stop(
                    SubscriberTooSlow(
                        f"over {limit} bytes queued for the client; "
                        "reconnect with the last event's id as Last-Event-ID"
                    ),
                    cut=True,
                )
                self._drops.inc(dropped)
            else:
                stream.poke()
        except Exception:
            log.exception("SSE stream of %r failed", sub.pattern)
            stream.stop(_Failed("internal error; the details are in the server's log"), cut=True)

    async def _write_some(self, stream: Stream, response: web.StreamResponse) -> None:
        """Write the oldest pending frames: at most `batch` of them, about `_WRITE_BYTES`."""
        frames = stream.frames
        limit = self._config.batch
        parts: list[bytes] = []
        size = 0
        oldest = 0.0  # the append time of the first live delivery in this write
        while frames and len(parts) < limit and size < _WRITE_BYTES:
            frame, appended = frames.popleft()
            parts.append(frame)
            size += len(frame)
            if appended and not oldest:
                oldest = appended
        stream.size -= size
        await self._write(stream, response, b"".join(parts))
        self._deliveries.inc(len(parts))
        if oldest:
            # One sample per write, of its oldest delivery (as the WebSocket gateway does).
            self._latency.observe(max(time.time() - oldest, 0.0))
