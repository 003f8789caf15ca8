"""The SSE gateway: a topic or pattern as a `text/event-stream`, resumable with Last-Event-ID.

Owns: `GET /v1/sse` — one bus subscription per stream, the SSE framing of
what it delivers, keep-alives, and ending the stream when the subscription
ends. Must not route or buffer deliveries itself (the subscription's bounded
queue does) nor know any other route; it never stops a client from resuming.

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
on exactly there (`Last-Event-ID` wins over `?since=`). `recovered: false`
says continuity could not be kept (another epoch, or retention removed missed
events). If continuity breaks in the middle of a recovery, after `subscribed`
said true, the stream ends with code 1200 before the gap, so the reconnect
says `recovered: false`. A subscriber too slow for its queue ends with 1201,
a server shutting down (`close`) ends every stream with 1210; both: reconnect.

Leaving clients: when the server runs with `handler_cancellation=True` the
stream ends at once; otherwise at the next write, at most `keepalive` seconds
later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Final

import msgspec
from aiohttp import web

from hybridbus.core.codecs import encode_json
from hybridbus.core.log import Delivery
from hybridbus.errors import BusClosed, BusError, ErrorCode, InvalidPosition
from hybridbus.gateways.httputil import (
    Authorize,
    allow_all,
    problem,
    public_detail,
    query_bool,
    query_text,
    required_text,
)
from hybridbus.hub.bus import Bus
from hybridbus.hub.subscription import Subscription
from hybridbus.proto.frames import HistoryEvent
from hybridbus.server.metrics import Metrics

__all__ = ["EVENT_STREAM", "SseConfig", "SseGateway"]

log = logging.getLogger(__name__)

EVENT_STREAM: Final = "text/event-stream"


class SseConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the SSE gateway. Durations are seconds."""

    keepalive: float = 15.0  # silence before a keep-alive comment
    retry: int = 2000  # milliseconds a browser waits before it reconnects
    write_timeout: float = 30.0  # a write to a stalled client fails after this
    batch: int = 512  # deliveries coalesced into one write at most


class _Encoded:
    """The CloudEvents JSON of recent deliveries, shared by every stream that writes them.

    Keyed by the delivery object (the bus hands the same one to every
    subscription): an entry holds its delivery, so its id cannot be reused
    while cached. Bounded by count and by bytes; the oldest entry goes first.
    The bound is above a subscriber's default queue (10,000), so that a burst
    every stream writes is encoded once, not once per stream.
    """

    def __init__(self, max_entries: int = 16_384, max_bytes: int = 16 << 20) -> None:
        self._entries: OrderedDict[int, tuple[Delivery, bytes]] = OrderedDict()
        self._bytes = 0
        self._max_entries = max_entries
        self._max_bytes = max_bytes

    def __call__(self, delivery: Delivery) -> bytes:
        entry = self._entries.get(id(delivery))
        if entry is not None:  # held by the entry, so this id is this delivery's
            return entry[1]
        data = encode_json(delivery.event)
        if len(data) > self._max_bytes:
            return data
        entries = self._entries
        self._bytes += len(data)
        entries[id(delivery)] = (delivery, data)
        while len(entries) > self._max_entries or self._bytes > self._max_bytes:
            self._bytes -= len(entries.popitem(last=False)[1][1])
        return data


def _frame(name: bytes, data: bytes, token: str | None = None) -> bytes:
    head = b"id: " + token.encode() + b"\n" if token is not None else b""
    return head + b"event: " + name + b"\ndata: " + data + b"\n\n"


def _unsubscribed(pattern: str, code: int, reason: str, retriable: bool) -> bytes:
    data = {"pattern": pattern, "code": code, "reason": reason, "retriable": retriable}
    return _frame(b"unsubscribed", msgspec.json.encode(data))


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class SseGateway:
    """Serves `GET /v1/sse?pattern=…&since=…` (see the module docstring)."""

    def __init__(
        self,
        bus: Bus,
        metrics: Metrics,
        config: SseConfig | None = None,
        authorize: Authorize = allow_all,
    ) -> None:
        self._bus = bus
        self._config = config or SseConfig()
        self._authorize = authorize
        self._encoded = _Encoded()
        self._connections = metrics.connections.labels(transport="sse")
        self._subscriptions = metrics.subscriptions.labels(transport="sse")
        self._deliveries = metrics.deliveries.labels(transport="sse")
        self._latency = metrics.latency
        self._streams: set[Subscription] = set()
        self._closed = False

    def close(self) -> None:
        """End every stream (`unsubscribed`, 1210: reconnect) and refuse new ones (503).

        For the server's shutdown: without it, open streams hold the shutdown
        until its timeout.
        """
        self._closed = True
        for sub in list(self._streams):
            self._end_if_closed(sub)

    def _end_if_closed(self, sub: Subscription) -> None:
        if self._closed:
            sub.end(BusClosed("the server is shutting down; reconnect"))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """The handler: refuse with a problem before the stream starts, never after."""
        pattern = required_text(request, "pattern")
        header = request.headers.get("Last-Event-ID") or None
        since = header or query_text(request, "since")
        envelope = query_bool(request, "envelope", False)
        await self._authorize(request, "subscribe", pattern)
        if self._closed:
            raise BusClosed("the server is shutting down")
        try:
            sub = self._bus.subscribe(pattern, since)
        except InvalidPosition as exc:
            return problem(exc, parameter="Last-Event-ID" if header else "since")
        async with sub:
            self._streams.add(sub)
            self._end_if_closed(sub)  # closed while this stream opened
            try:
                return await self._serve(request, sub, envelope)
            finally:
                self._streams.discard(sub)

    async def _serve(
        self, request: web.Request, sub: Subscription, envelope: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
        )
        response.content_type = EVENT_STREAM
        response.charset = "utf-8"
        await response.prepare(request)
        self._connections.inc()
        self._subscriptions.inc()
        try:
            await self._run(request, response, sub, envelope)
        except ConnectionError:
            pass  # the client left
        except TimeoutError:
            # A write did not finish in time: the client stalled. Drop it.
            if request.transport is not None:
                request.transport.abort()
        except Exception:
            log.exception("SSE stream of %r failed", sub.pattern)
            if not _gone(request):
                reason = "internal error; the details are in the server's log"
                code = int(ErrorCode.INTERNAL_ERROR)
                # Best effort: the stream is failing anyway.
                try:
                    await self._write(response, _unsubscribed(sub.pattern, code, reason, True))
                except (ConnectionError, TimeoutError):
                    pass
        finally:
            self._subscriptions.dec()
            self._connections.dec()
        return response

    async def _write(self, response: web.StreamResponse, data: bytes) -> None:
        async with asyncio.timeout(self._config.write_timeout):
            await response.write(data)

    async def _run(
        self,
        request: web.Request,
        response: web.StreamResponse,
        sub: Subscription,
        envelope: bool,
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
        await self._write(response, preamble + _frame(b"subscribed", subscribed, str(start)))
        # The token after each delivery: the last position handed out in each
        # shard (as `sub.position` has it, without building a Position each time).
        epoch = start.epoch.encode() + b"-"
        positions = list(start.positions)
        one_shard = len(positions) == 1
        chunks: list[bytes] = []
        oldest: float | None = None  # append time of the first live delivery in `chunks`
        while True:
            if chunks and (not sub.backlog or len(chunks) >= config.batch):
                await self._flush(response, chunks, oldest)
                oldest = None
            try:
                if sub.backlog:
                    delivery = await anext(sub)  # queued: returns at once
                else:
                    async with asyncio.timeout(config.keepalive):
                        delivery = await anext(sub)
            except TimeoutError:
                if _gone(request):
                    return
                await self._write(response, b": keepalive\n\n")
                continue
            except StopAsyncIteration:
                return
            except BusError as exc:
                # BusClosed: this server is going away; another one (or this
                # one, restarted) takes the reconnect.
                retriable = exc.retriable or isinstance(exc, BusClosed)
                ending = _unsubscribed(sub.pattern, int(exc.code), public_detail(exc), retriable)
                await self._flush(response, chunks, oldest, ending)
                return
            if promised and not sub.recovered:
                # Continuity broke during recovery. End before the gap: the
                # client comes back from its last token and hears `recovered: false`.
                reason = "events after the last position were removed before they could be read"
                code = int(ErrorCode.SUBSCRIPTION_ENDED)
                ending = _unsubscribed(sub.pattern, code, reason, True)
                await self._flush(response, chunks, oldest, ending)
                return
            data = self._encoded(delivery)
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
            chunks.append(b"id: " + token + b"\nevent: event\ndata: " + data + b"\n\n")
            if oldest is None and sub.live:
                oldest = delivery.time

    async def _flush(
        self,
        response: web.StreamResponse,
        chunks: list[bytes],
        oldest: float | None,
        last: bytes = b"",
    ) -> None:
        count = len(chunks)
        await self._write(response, b"".join(chunks) + last)
        chunks.clear()
        if count:
            self._deliveries.inc(count)
        if oldest is not None:
            # One sample per write, of its oldest delivery (as the WebSocket gateway does).
            self._latency.observe(max(time.time() - oldest, 0.0))
