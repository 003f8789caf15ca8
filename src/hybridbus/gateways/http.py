"""The HTTP API under `/v1`: publish, history, presence, topics; SSE and OpenAPI mounted too.

Owns: the routes of the server-side HTTP API (docs/http.md), reading
CloudEvents from requests in structured, binary and batch mode, and writing
acks, history pages, presence and topic lists as JSON. Must not validate
events or topics itself (the codecs and the bus do), speak the WebSocket
protocol, or pick an engine.

Topics here are ABSOLUTE (`acme/docs/42`): this is the API for servers. Every
route calls the `authorize` hook (`httputil.Authorize`; the server passes
`gateways.access.HttpAccess.authorize`) before it touches the bus.

    POST /v1/topics/{topic}/events     publish one event or a batch → acks
    GET  /v1/topics/{topic}/events     history of one topic
    GET  /v1/topics/{topic}/presence   who is subscribed to a topic
    GET  /v1/topics?prefix=…           the topics, by name
    GET  /v1/events?pattern=…          history of a topic or pattern
    GET  /v1/sse?pattern=…             an event stream (gateways/sse.py)
    GET  /v1/openapi.json              the OpenAPI 3.1 document of all of these

`{topic}` is the rest of the path, slashes included (`%2F` works too).

A batch is checked whole before anything of it is published: if event k is
invalid or too large, nothing is published and the problem names `index` k.
Its events are then appended in order in one engine call (`Bus.append`): all
of them or, if the engine fails, none. Sending the same batch again is safe
either way (the dedupe by `source` + `id` appends each event once).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final

import msgspec
from aiohttp import hdrs, web

from hybridbus.core.codecs import (
    JSON_BATCH_CONTENT_TYPE,
    decode_json,
    encode_json,
    from_http,
)
from hybridbus.core.codecs import JSON_CONTENT_TYPE as CLOUDEVENTS_JSON
from hybridbus.core.event import Event
from hybridbus.core.log import Ack, Position
from hybridbus.core.topics import MAX_TOPIC_LENGTH, validate_topic
from hybridbus.errors import InvalidEvent, InvalidInput, InvalidPosition
from hybridbus.gateways import openapi
from hybridbus.gateways.httputil import (
    Authorize,
    BadParameter,
    Charge,
    UnsupportedMediaType,
    allow_all,
    charge_nothing,
    guarded,
    json_response,
    problem,
    query_int,
    query_text,
    read_body,
    required_text,
)
from hybridbus.gateways.sse import Hold, SseConfig, SseGateway, hold_nothing
from hybridbus.gateways.sse_stream import query_filter
from hybridbus.hub.bus import Bus, History, Prepared
from hybridbus.proto.frames import MAX_HISTORY_LIMIT, ClientInfo, HistoryEvent, HistoryResult
from hybridbus.server.metrics import Metrics

__all__ = ["HttpConfig", "HttpGateway", "Visibility", "show_all"]

Presence = Callable[[str], Sequence[ClientInfo]]
# The visibility hook: for a request listing the topics under the absolute
# `prefix` (which `authorize` allowed), which topics the caller may see.
Visibility = Callable[[web.Request, str], Awaitable[Callable[[str], bool]]]


async def show_all(request: web.Request, prefix: str) -> Callable[[str], bool]:
    """A visibility hook that shows every topic: for tests and embedding.

    `hybridbus serve` uses `gateways.access.HttpAccess.visibility` instead.
    """
    return lambda topic: True


_DEFAULT_LIMIT: Final = 100
_TOPICS_LIMIT: Final = 1000
_TOPICS_READ: Final = 1000  # topics read at a time past hidden ones
_BatchItems = msgspec.json.Decoder(list[msgspec.Raw])


class HttpConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the HTTP API. Sizes are bytes, durations seconds."""

    max_body_size: int = 8 << 20  # a request body; one event is also held to the bus's limit
    max_batch: int = 1000  # events in one batch
    body_timeout: float = 30.0  # to receive a request body
    max_page_bytes: int = 8 << 20  # a history page stops early (more: true) past this
    sse: SseConfig = SseConfig()


class _AckJson(msgspec.Struct, frozen=True):
    """An ack as the API answers it (docs/http.md): the ack and its resume `token`."""

    topic: str
    offset: int
    shard: int
    position: int
    epoch: str
    duplicate: bool
    token: str


def _ack_json(ack: Ack) -> _AckJson:
    token = str(ack.token)
    return _AckJson(ack.topic, ack.offset, ack.shard, ack.position, ack.epoch, ack.duplicate, token)


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _check_binary_headers(headers: Mapping[str, str]) -> None:
    """Refuse binary-mode headers that are not text (undecodable bytes)."""
    for key, value in headers.items():
        lower = key.lower()
        if lower.startswith("ce-") or lower == "content-type":
            try:
                value.encode()
            except UnicodeEncodeError:
                attribute = lower[3:] if lower.startswith("ce-") else "datacontenttype"
                raise InvalidEvent(
                    f"header {key} is not UTF-8 text (percent-encode it)", attribute
                ) from None


class HttpGateway:
    """The HTTP API over one bus: mount it with `app.add_routes(gateway.routes())`."""

    def __init__(
        self,
        bus: Bus,
        metrics: Metrics,
        presence: Presence | None = None,
        *,
        config: HttpConfig | None = None,
        authorize: Authorize = allow_all,
        charge: Charge = charge_nothing,
        hold: Hold = hold_nothing,
        visibility: Visibility = show_all,
    ) -> None:
        self._bus = bus
        self._charge = charge
        self._visibility = visibility
        self._presence = presence
        self._config = config or HttpConfig()
        self._authorize = authorize
        self._published = metrics.publishes.labels(gateway="http")
        self._duplicates = metrics.duplicates.labels(gateway="http")
        # `hold`: who holds each SSE stream open (counted, ended at revocation and expiry).
        self._sse = SseGateway(bus, metrics, self._config.sse, authorize, hold)
        self._openapi = msgspec.json.encode(openapi.document())

    def routes(self) -> list[web.RouteDef]:
        """Every route of the HTTP API and SSE; each answers errors as problem+json."""
        # `{topic}` takes any characters, newlines too: a bad topic is a 400, not a 404.
        topic = "/v1/topics/{topic:[\\s\\S]+}"
        return [
            web.post(f"{topic}/events", guarded(self.publish)),
            web.get(f"{topic}/events", guarded(self.topic_history), allow_head=False),
            web.get(f"{topic}/presence", guarded(self.presence), allow_head=False),
            web.get("/v1/topics", guarded(self.topics), allow_head=False),
            web.get("/v1/events", guarded(self.history), allow_head=False),
            web.get("/v1/sse", guarded(self._sse.stream), allow_head=False),
            web.get("/v1/openapi.json", guarded(self.openapi), allow_head=False),
        ]

    def close(self) -> None:
        """End the open SSE streams, refuse new ones: call it when the server shuts down."""
        self._sse.close()

    # -- publish ---------------------------------------------------------------

    async def publish(self, request: web.Request) -> web.Response:
        """Publish the event(s) in the body: 201 with the acks, 200 if all were duplicates."""
        topic = validate_topic(request.match_info["topic"])
        await self._authorize(request, "publish", topic)
        config = self._config
        body = await read_body(request, config.max_body_size, config.body_timeout)
        media = _media_type(request.headers.get(hdrs.CONTENT_TYPE))
        event: Event | None = None
        batch: list[Prepared] = []
        if media == JSON_BATCH_CONTENT_TYPE:
            decoded = self._decode_batch(topic, body)
            if isinstance(decoded, web.Response):
                return decoded
            batch = decoded
        elif media == CLOUDEVENTS_JSON:
            event = decode_json(body)
        elif "ce-specversion" in request.headers:
            _check_binary_headers(request.headers)
            event = from_http(request.headers, body)
        else:
            raise UnsupportedMediaType(
                f"a body of type {media or 'none'!r} without a ce-specversion header: send "
                f"{CLOUDEVENTS_JSON} (structured), {JSON_BATCH_CONTENT_TYPE} (batch), "
                "or any type with ce-* headers (binary mode)"
            )
        await self._charge(request, 1 if event is not None else len(batch))  # before publishing
        if event is not None:
            acks = [await self._bus.publish(topic, event)]
        else:
            acks = await self._bus.append(batch)  # one engine call: all or none
        duplicates = sum(ack.duplicate for ack in acks)
        self._published.inc(len(acks))
        if duplicates:
            self._duplicates.inc(duplicates)
        status = 200 if acks and duplicates == len(acks) else 201
        return json_response({"acks": [_ack_json(ack) for ack in acks]}, status)

    def _decode_batch(self, topic: str, body: bytes) -> list[Prepared] | web.Response:
        """Every event of a batch checked for the bus, or the problem naming the first bad one.

        The bus's checks of an event (`Bus.prepare`) are made here for the
        whole batch first, so that a bad event refuses the batch before any of
        it is published.
        """
        try:
            items = _BatchItems.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            raise InvalidEvent(f"a batch must be a JSON array of events: {exc}") from exc
        if len(items) > self._config.max_batch:
            raise InvalidInput(
                f"a batch holds at most {self._config.max_batch} events, not {len(items)}"
            )
        prepare = self._bus.prepare
        prepared = []
        for index, item in enumerate(items):
            try:
                prepared.append(prepare(topic, decode_json(bytes(item))))
            except InvalidInput as exc:
                return problem(exc, index=index)
        return prepared

    # -- history ---------------------------------------------------------------

    async def topic_history(self, request: web.Request) -> web.Response:
        """History of the topic in the path."""
        return await self._history(request, validate_topic(request.match_info["topic"]))

    async def history(self, request: web.Request) -> web.Response:
        """History of `?pattern=` (a topic or pattern)."""
        return await self._history(request, required_text(request, "pattern"))

    async def _history(self, request: web.Request, pattern: str) -> web.Response:
        since = query_text(request, "since")
        limit = query_int(request, "limit", _DEFAULT_LIMIT, 0, MAX_HISTORY_LIMIT)
        wanted = query_filter(request)  # as SSE's: level, contains, regex, field, type
        await self._authorize(request, "read", pattern)
        try:
            page = await self._bus.history(pattern, since, limit, filter=wanted)
        except InvalidPosition as exc:
            return problem(exc, parameter="since")
        events: list[HistoryEvent] = []
        size = 0
        for delivery in page.deliveries:
            data = encode_json(delivery.event)
            size += len(data)
            if events and size > self._config.max_page_bytes:
                return json_response(self._cut(page, events, since))
            events.append(
                HistoryEvent(
                    topic=delivery.topic,
                    offset=delivery.offset,
                    shard=delivery.shard,
                    position=delivery.position,
                    event=msgspec.Raw(data),
                )
            )
        return json_response(
            HistoryResult(
                events=events, position=str(page.position), more=page.more, exact=page.exact
            )
        )

    def _cut(self, page: History, events: list[HistoryEvent], since: str | None) -> HistoryResult:
        """A page cut short after `events`: the token continues right after the last one."""
        shards = len(page.position.positions)
        positions = [0] * shards
        if since is not None:
            start = Position.parse(since)
            if start.epoch == page.position.epoch and len(start.positions) == shards:
                positions = list(start.positions)
        for item in events:
            positions[item.shard] = item.position
        token = Position(page.position.epoch, tuple(positions))
        return HistoryResult(events=events, position=str(token), more=True, exact=page.exact)

    # -- presence and topics ---------------------------------------------------

    async def presence(self, request: web.Request) -> web.Response:
        """Who is subscribed to the topic in the path (none if presence is not wired)."""
        topic = validate_topic(request.match_info["topic"])
        await self._authorize(request, "presence", topic)
        clients = list(self._presence(topic)) if self._presence is not None else []
        return json_response({"topic": topic, "clients": clients})

    async def topics(self, request: web.Request) -> web.Response:
        """The topics starting with `?prefix=` the caller may see, by name, paged with `?after=`.

        Topics the visibility hook hides are skipped by reading on: a page
        holds `limit` topics whenever `more` is true, and `after` = its last
        topic continues it.
        """
        prefix = query_text(request, "prefix") or ""
        after = query_text(request, "after") or ""
        for name, value in (("prefix", prefix), ("after", after)):
            if len(value) > MAX_TOPIC_LENGTH:
                raise BadParameter(f"{name} is over {MAX_TOPIC_LENGTH} characters", name)
        limit = query_int(request, "limit", _DEFAULT_LIMIT, 0, _TOPICS_LIMIT)
        await self._authorize(request, "list", prefix)
        shown = await self._visibility(request, prefix)
        batch = limit + 1  # one more than a page: whether there is more
        read = await self._bus.topics(prefix, batch, after=after)
        found = [info for info in read if shown(info.topic)]
        while len(found) <= limit and len(read) == batch:
            batch = _TOPICS_READ
            read = await self._bus.topics(prefix, batch, after=read[-1].topic)
            found += [info for info in read if shown(info.topic)]
        return json_response({"topics": found[:limit], "more": len(found) > limit})

    async def openapi(self, request: web.Request) -> web.Response:
        """The OpenAPI 3.1 document of these routes."""
        return web.Response(body=self._openapi, content_type="application/json")
