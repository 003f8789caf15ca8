"""The AMQP 0-9-1 bridge (RabbitMQ), both ways, with aio-pika: manual acks in, confirms out.

Owns: turning AMQP messages into events and events into messages as the
CloudEvents AMQP protocol binding says — binary mode (each attribute but
`datacontenttype` a header named `cloudEvents:<name>` — or `cloudEvents_<name>`,
`ce-<name>` with `prefix` —, its value the canonical string; `datacontenttype` the
`content-type` property; `data` the body), structured mode (the JSON format as
the body, `content-type: application/cloudevents+json; charset=UTF-8`) — and
the connection. AMQP 0-9-1 has no application-properties section: its
message headers table is where RabbitMQ puts them (its AMQP 1.0 plugin maps
one to the other). Must not decide retries, order or dead letters ("out":
the group does, `bridges.base`).

In: the queues are consumed on one channel with manual acknowledgements and
a prefetch of `prefetch` messages (the broker sends no more until some are
acknowledged: that bounds what the bridge holds). A batch of received
messages is appended to the bus in one durable write, and only then
acknowledged (one `basic.ack` with `multiple` for the last of the batch:
every earlier delivery tag of the channel is in this batch or an earlier
one). A bridge that dies before the ack gets the messages again (the broker
requeues what a closed channel left unacknowledged); their events carry the
same `source` + `id` (their own, or the wrap rule's: the `message_id`
property by default, else a hash), so the bus drops the second append. When
the bus pushes back (`EngineUnavailable`), the same batch is appended again
after a backoff; the prefetch window stays full meanwhile, so the broker
holds the rest. Which form a message has: `content-type`
`application/cloudevents+json` -> structured; a `cloudEvents:specversion`,
`cloudEvents_specversion` or `ce-specversion` header -> binary (values of AMQP types are
read as their canonical strings: timestamps as RFC 3339, booleans as
`true`/`false`, bytes as UTF-8 or base64); a JSON object body with
`"specversion"` -> structured; anything else is wrapped (`wrap`, whose
`{topic}` is the routing key — the queue's name when it is empty), or
rejected when `wrap = false`.

Out: each event is published to `exchange` with publisher confirms and acked
in the group once the broker confirmed it (`basic.ack`); a `basic.nack`
fails the attempt (the group sends it again after its backoff). With
`mandatory`, a message no queue takes comes back (`basic.return`): the event
becomes a dead letter at once (`Permanent`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import logging
import random
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
)
from aio_pika.exceptions import DeliveryError, PublishError

from hybridbus.bridges.base import InBridge, Incoming, OutBridge, Permanent, bus_values, incoming
from hybridbus.bridges.settings import BUS_PLACEHOLDERS, DOTTED_PLACEHOLDERS, AmqpBridge
from hybridbus.core.backoff import Backoff
from hybridbus.core.bindings import (
    TopicTemplate,
    to_binary,
    to_structured,
)
from hybridbus.core.event import Event
from hybridbus.errors import EngineUnavailable
from hybridbus.hub.bus import Bus
from hybridbus.hub.member import GroupDelivery

__all__ = ["PREFIXES", "AmqpIn", "AmqpOut", "decode", "encode", "make"]

log = logging.getLogger("hybridbus.bridges")

# Every prefix is read; `prefix` picks the one written. `ce-` is the draft AMQP 0-9-1
# binding's (the CloudEvents Python SDK's `rabbitmq` binding writes it).
PREFIXES: Final = ("cloudEvents:", "cloudEvents_", "ce-")
STRUCTURED: Final = "application/cloudevents+json; charset=UTF-8"
_TIMEOUT: Final = 10.0  # seconds for connecting and declaring
_PUSHBACK: Final = Backoff(base=0.1, factor=2.0, cap=5.0)


def make(settings: AmqpBridge, bus: Bus) -> AmqpIn | AmqpOut:
    """The bridge of these settings (`bridges.registry.KINDS`)."""
    return AmqpIn(settings, bus) if settings.direction == "in" else AmqpOut(settings, bus)


async def _connect(settings: AmqpBridge) -> AbstractConnection:
    tls = ssl.create_default_context() if settings.url.startswith("amqps://") else None
    return await aio_pika.connect(
        settings.url,
        timeout=_TIMEOUT,
        ssl_context=tls,
        client_properties={"connection_name": f"hybridbus-{settings.name}"},
    )


# -- mapping -----------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    """The canonical string of an AMQP field value (None: not an attribute value)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal | float):
        return str(value)
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return base64.b64encode(value).decode()
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return str(value.isoformat()).replace("+00:00", "Z")
    return None


def decode(
    message: AbstractIncomingMessage, queue: str, settings: AmqpBridge, template: TopicTemplate
) -> Incoming:
    """The bus topic and event of one message taken from `queue` (or why there is none)."""
    body = bytes(message.body)
    source_topic = message.routing_key or queue
    topic = template.render({"topic": source_topic})
    attributes: dict[str, str] = {}
    properties: dict[str, str] = {}
    for name, value in (message.headers or {}).items():
        text = _text(value)
        if text is None:
            continue
        for prefix in PREFIXES:
            if name[: len(prefix)].lower() == prefix.lower():
                attributes.setdefault(name[len(prefix) :].lower(), text)
                break
        else:
            properties.setdefault(name, text)
    if message.message_id:
        properties.setdefault("message_id", message.message_id)
    content_type = message.content_type or None
    wrap = settings.wrapper

    def wrapped() -> Event:
        assert wrap is not None
        return wrap.event(settings.name, source_topic, body, properties, None, content_type)

    return incoming(
        topic, source_topic, body, content_type, attributes, wrapped if wrap is not None else None
    )


def encode(event: Event, settings: AmqpBridge) -> aio_pika.Message:
    """The AMQP message of an event (binary or structured mode)."""
    delivery_mode = (
        aio_pika.DeliveryMode.PERSISTENT
        if settings.persistent
        else aio_pika.DeliveryMode.NOT_PERSISTENT
    )
    if settings.mode == "structured":
        return aio_pika.Message(
            to_structured(event),
            content_type=STRUCTURED,
            delivery_mode=delivery_mode,
            message_id=event.id,
        )
    attributes, content_type, payload = to_binary(event)
    headers: dict[str, Any] = {settings.prefix + name: value for name, value in attributes.items()}
    return aio_pika.Message(
        payload,
        headers=headers,
        content_type=content_type,
        delivery_mode=delivery_mode,
        message_id=event.id,
    )


# -- in ----------------------------------------------------------------------------------


class AmqpIn(InBridge[AmqpBridge]):
    """AMQP -> bus: consume with manual acks, append each batch durably, then ack it."""

    def __init__(self, settings: AmqpBridge, bus: Bus) -> None:
        super().__init__(settings, bus)
        assert settings.topic is not None
        self._template = TopicTemplate(settings.topic, BUS_PLACEHOLDERS, "topic")
        self._rng = random.Random()

    async def session(self) -> None:
        settings = self.settings
        inbox: asyncio.Queue[tuple[str, AbstractIncomingMessage] | None] = asyncio.Queue()

        def closed(*_: Any) -> None:
            inbox.put_nowait(None)

        connection = await _connect(settings)
        try:
            connection.close_callbacks.add(closed)
            channel = await connection.channel(publisher_confirms=False)
            channel.close_callbacks.add(closed)
            await channel.set_qos(prefetch_count=settings.prefetch)
            for name in settings.queues:
                if settings.declare:
                    queue = await channel.declare_queue(name, durable=True, timeout=_TIMEOUT)
                    for binding in settings.bindings:
                        await queue.bind(binding.exchange, binding.routing_key, timeout=_TIMEOUT)
                else:
                    queue = await channel.declare_queue(name, passive=True, timeout=_TIMEOUT)

                async def take(message: AbstractIncomingMessage, queue_name: str = name) -> None:
                    inbox.put_nowait((queue_name, message))

                await queue.consume(take, no_ack=False, timeout=_TIMEOUT)
            self.running()
            while True:
                first = await inbox.get()
                if first is None:
                    raise ConnectionError("the AMQP connection was closed")
                batch = [first]
                while len(batch) < settings.batch and not inbox.empty():
                    more = inbox.get_nowait()
                    if more is None:
                        inbox.put_nowait(None)  # seen after this batch
                        break
                    batch.append(more)
                self.pending = len(batch)
                items = [decode(m, q, settings, self._template) for q, m in batch]
                await self._append(items)  # durable: only now may the broker forget them
                self.pending = 0
                await batch[-1][1].ack(multiple=True)
        finally:
            self.pending = 0
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), _TIMEOUT)

    async def _append(self, items: list[Incoming]) -> None:
        attempt = 0
        while True:
            try:
                await self.append(items)
                return
            except EngineUnavailable as exc:
                self.received -= len(items)  # counted again by the next attempt
                self.failed(exc)
                delay = _PUSHBACK.delay(attempt, self._rng)
                attempt += 1
                log.warning("bridge %s: the bus pushes back (%s)", self.name, exc)
                await asyncio.sleep(delay)


# -- out ---------------------------------------------------------------------------------


@dataclass
class _Link:
    connection: AbstractConnection
    channel: AbstractChannel
    exchange: AbstractExchange


class AmqpOut(OutBridge[AmqpBridge]):
    """Bus -> AMQP: publish with confirms (and `mandatory`), ack on `basic.ack`."""

    def __init__(self, settings: AmqpBridge, bus: Bus) -> None:
        super().__init__(settings, bus)
        self._template = TopicTemplate(settings.routing_key, DOTTED_PLACEHOLDERS, "routing_key")

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[_Link]:
        settings = self.settings
        assert settings.exchange is not None
        connection = await _connect(settings)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            if settings.exchange:
                exchange = await channel.get_exchange(settings.exchange, ensure=True)
            else:
                exchange = channel.default_exchange
            yield _Link(connection, channel, exchange)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), _TIMEOUT)

    def lost(self, connection: Any) -> bool:
        link: _Link = connection
        return bool(link.connection.is_closed or link.channel.is_closed)

    def routing_key(self, delivery: GroupDelivery) -> str:
        """The routing key of an event (`routing_key` filled in)."""
        return self._template.render(bus_values(delivery))

    async def send(self, connection: Any, delivery: GroupDelivery) -> None:
        link: _Link = connection
        settings = self.settings
        key = self.routing_key(delivery)
        if len(key.encode()) > 255:
            raise Permanent(f"the routing key {key!r:.100} is longer than 255 bytes")
        message = encode(delivery.event, settings)
        try:
            await link.exchange.publish(
                message, key, mandatory=settings.mandatory, timeout=settings.ack_wait
            )
        except PublishError as exc:  # basic.return: no queue takes it, now or later
            raise Permanent(f"returned by the broker: {_returned(exc)}") from exc
        except DeliveryError as exc:  # basic.nack: the broker could not take it now
            raise ConnectionError(f"refused by the broker: {exc}") from exc


def _returned(exc: PublishError) -> str:
    frame: Mapping[str, Any] | Any = exc.frame
    code = getattr(frame, "reply_code", "")
    text = getattr(frame, "reply_text", "")
    return f"{code} {text} (exchange {getattr(frame, 'exchange', '')!r}, " + (
        f"routing key {getattr(frame, 'routing_key', '')!r})"
    )
