"""One SSE stream's state, and what every stream shares: the frames and the encoded events.

Owns: `Stream` (a stream's frames encoded and not yet written, their size,
and how it ends: the first `stop` wins, a cut drops what is pending and
hurries the write in progress), `Encoded` (the CloudEvents JSON of recent
deliveries, encoded once for every stream), the SSE framing helpers, and
the filter a request's query asks for (`query_filter`: `level`, `contains`,
`regex`, `field=k:v` repeatable, `type` repeatable; also read by the HTTP
history routes). Must not write to a response nor take from a subscription: the SSE gateway
(`gateways.sse`) does, and its docstring is the theory of operation.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from typing import Final

import msgspec
from aiohttp import web

from hybridbus.core.codecs import encode_json
from hybridbus.core.filters import FieldValue, Filter, compile_filter, parse_field
from hybridbus.core.log import Delivery
from hybridbus.errors import AccessError, BusError, InvalidInput
from hybridbus.gateways.httputil import BadParameter, query_all, query_text
from hybridbus.hub.subscription import Subscription

__all__ = ["CUT_GRACE", "Encoded", "Stream", "frame", "gone", "query_filter", "unsubscribed"]

# Seconds the write in progress gets to finish once the stream is cut (too slow,
# revoked, expired): then the socket is aborted.
CUT_GRACE: Final = 1.0


class Encoded:
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


def query_filter(request: web.Request) -> Filter | None:
    """The filter of `?level=&contains=&regex=&field=k:v&type=` (None without any).

    A bad one is a `BadParameter` naming the parameter (400, code 1000).
    """
    fields: dict[str, FieldValue] = {}
    for text in query_all(request, "field"):
        try:
            key, value = parse_field(text)
        except InvalidInput as exc:
            raise BadParameter(str(exc), "field") from None
        fields[key] = value
    found = Filter(
        level=query_text(request, "level"),
        contains=query_text(request, "contains"),
        regex=query_text(request, "regex"),
        fields=fields,
        types=query_all(request, "type"),
    )
    if found.empty():
        return None
    for name in ("level", "contains", "regex", "field", "type"):
        try:
            compile_filter(_only(found, name))
        except InvalidInput as exc:
            raise BadParameter(str(exc), name) from None
    return found


def _only(spec: Filter, name: str) -> Filter:
    """The part of `spec` the query parameter `name` gave (to name the bad one)."""
    if name == "field":
        return Filter(fields=spec.fields)
    if name == "type":
        return Filter(types=spec.types)
    return Filter(**{name: getattr(spec, name)})


def frame(name: bytes, data: bytes, token: str | None = None) -> bytes:
    head = b"id: " + token.encode() + b"\n" if token is not None else b""
    return head + b"event: " + name + b"\ndata: " + data + b"\n\n"


def unsubscribed(pattern: str, code: int, reason: str, retriable: bool) -> bytes:
    data = {"pattern": pattern, "code": code, "reason": reason, "retriable": retriable}
    return frame(b"unsubscribed", msgspec.json.encode(data))


def gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class Stream:
    """One open stream: its frames encoded and not yet written, and how it ends."""

    __slots__ = (
        "cut",
        "deadline",
        "ending",
        "frames",
        "gone",
        "request",
        "size",
        "stopped",
        "sub",
        "wake",
    )

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.sub: Subscription | None = None
        # (frame, append time of a live delivery, or 0.0), oldest first; `size`: their bytes.
        self.frames: deque[tuple[bytes, float]] = deque()
        self.size = 0
        self.stopped = False
        self.ending: BusError | None = None  # None once stopped: end without a word
        self.cut = False  # the ending dropped what was pending and hurries the writes
        self.gone = False  # the client left
        self.wake: asyncio.Future[None] | None = None
        self.deadline: asyncio.Timeout | None = None  # of the write in progress

    def stop(self, error: BusError | None, *, cut: bool = False) -> None:
        """End the stream (the first call wins): write what is pending, then `error`.

        With `cut`, what is pending is dropped and the write in progress must
        finish within `CUT_GRACE`.
        """
        if self.stopped:
            return
        self.stopped = True
        self.ending = error
        if cut:
            self.cut = True
            self.frames.clear()
            self.size = 0
            deadline = self.deadline
            if deadline is not None:
                limit = asyncio.get_running_loop().time() + CUT_GRACE
                when = deadline.when()
                if when is None or when > limit:
                    deadline.reschedule(limit)
        if self.sub is not None:
            self.sub.end(error)  # no more deliveries; its queue is released
        self.poke()

    def end(self, error: AccessError) -> None:
        """The holder's `end`: revoked or expired, the stream is cut at once."""
        self.stop(error, cut=True)

    def poke(self) -> None:
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)
