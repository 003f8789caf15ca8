"""The MQTT bridge, both ways, with aiomqtt: QoS 1, a persistent session, CloudEvents binding.

Owns: turning MQTT PUBLISH messages into events and events into PUBLISH
messages as the CloudEvents MQTT protocol binding says — MQTT 5 binary mode
(each attribute but `datacontenttype` a user property named as the
attribute, no prefix; `datacontenttype` the Content Type property; `data`
the payload), structured mode (the JSON format as the payload; MQTT 5 Content
Type `application/cloudevents+json`), MQTT 3.1.1 structured only — and the
connection: a client id and a session the broker keeps (`clean_start` false,
session expiry `session_expiry` s; MQTT 3.1.1: clean session false), so what
is published while the bridge is away waits for it. Must not decide
retries, order or dead letters ("out": the group does, `bridges.base`).

In: messages are acknowledged by hand (paho's `manual_ack`: aiomqtt does not
offer it, so its client's `_client` is reached for it). A batch of received
messages is appended in one durable write, and only then PUBACKed, in the
order received. A bridge killed before its PUBACKs gets the messages again
from the broker; their events carry the same `source` + `id` (their own, or
the wrap rule's), so the bus drops the second append within its dedupe
window. Which of an incoming message's forms is taken: MQTT 5 Content Type
`application/cloudevents+json` -> structured; a `specversion` user property
-> binary; a JSON object payload with `"specversion"` -> structured; anything
else is wrapped (`wrap`), or rejected when `wrap = false`.

Out: each event of the group is published with QoS 1 and acked in the group
once the broker's PUBACK came back (aiomqtt's `publish` waits for it).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hybridbus.bridges.base import InBridge, Incoming, OutBridge, Permanent, bus_values, incoming
from hybridbus.bridges.settings import BROKER_PLACEHOLDERS, BUS_PLACEHOLDERS, MqttBridge
from hybridbus.core.bindings import (
    JSON_CONTENT_TYPE,
    TopicTemplate,
    to_binary,
    to_structured,
)
from hybridbus.core.event import Event
from hybridbus.hub.bus import Bus
from hybridbus.hub.member import GroupDelivery

__all__ = ["MqttIn", "MqttOut", "client_of", "decode", "encode", "make"]

_TIMEOUT: Final = 10.0  # seconds for connecting, subscribing and each PUBACK


def make(settings: MqttBridge, bus: Bus) -> MqttIn | MqttOut:
    """The bridge of these settings (`bridges.registry.KINDS`)."""
    return MqttIn(settings, bus) if settings.direction == "in" else MqttOut(settings, bus)


def client_of(settings: MqttBridge, *, manual_ack: bool = False) -> aiomqtt.Client:
    """An aiomqtt client for the bridge's broker and persistent session (not yet connected)."""
    url = urlsplit(settings.url)
    v5 = settings.protocol == "5"
    properties: Properties | None = None
    if v5:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = settings.session_expiry
        properties.ReceiveMaximum = settings.receive_maximum
    tls = ssl.create_default_context() if url.scheme == "mqtts" else None
    client = aiomqtt.Client(
        url.hostname or "127.0.0.1",
        url.port or (8883 if tls else 1883),
        username=unquote(url.username) if url.username else None,
        password=unquote(url.password) if url.password else None,
        identifier=settings.session_id,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        clean_session=None if v5 else False,
        clean_start=False if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,  # 3.1.1: clean_session
        properties=properties,
        keepalive=settings.keepalive,
        timeout=_TIMEOUT,
        max_inflight_messages=settings.max_inflight,
        tls_context=tls,
    )
    client.pending_calls_threshold = 1 << 30  # many PUBACKs awaited at once is the point
    if manual_ack:
        client._client.manual_ack_set(True)
    return client


def _lost(client: aiomqtt.Client) -> bool:
    disconnected = client._disconnected
    if not disconnected.done():
        return False
    if not disconnected.cancelled():
        disconnected.exception()  # retrieved: the session reports the loss itself
    return True


# -- mapping -----------------------------------------------------------------------------


def decode(message: aiomqtt.Message, settings: MqttBridge, template: TopicTemplate) -> Incoming:
    """The bus topic and event of one incoming message (or why there is none)."""
    source_topic = str(message.topic)
    payload = (
        bytes(message.payload)
        if isinstance(message.payload, bytes | bytearray)
        else (str(message.payload if message.payload is not None else "").encode())
    )
    topic = template.render({"topic": source_topic})
    props = message.properties
    user: dict[str, str] = {}
    content_type: str | None = None
    if props is not None:
        for name, value in getattr(props, "UserProperty", None) or ():
            user.setdefault(name, value)
        content_type = getattr(props, "ContentType", None) or None
    wrap = settings.wrapper

    def wrapped() -> Event:
        assert wrap is not None
        return wrap.event(settings.name, source_topic, payload, user, None, content_type)

    return incoming(
        topic, source_topic, payload, content_type, user, wrapped if wrap is not None else None
    )


def encode(event: Event, settings: MqttBridge) -> tuple[bytes, Properties | None]:
    """The payload and MQTT 5 properties of an event (binary or structured mode)."""
    v5 = settings.protocol == "5"
    if settings.mode == "binary" and v5:
        attributes, content_type, payload = to_binary(event)
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.UserProperty = list(attributes.items())
        if content_type:
            properties.ContentType = content_type
        return payload, properties
    payload = to_structured(event)
    if not v5:
        return payload, None
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ContentType = JSON_CONTENT_TYPE
    return payload, properties


# -- in ----------------------------------------------------------------------------------


class MqttIn(InBridge[MqttBridge]):
    """MQTT -> bus: subscribe, append each batch durably, then PUBACK it (module docstring)."""

    def __init__(self, settings: MqttBridge, bus: Bus) -> None:
        super().__init__(settings, bus)
        assert settings.topic is not None
        self._template = TopicTemplate(settings.topic, BUS_PLACEHOLDERS, "topic")

    async def session(self) -> None:
        settings = self.settings
        client = client_of(settings, manual_ack=True)
        async with client:
            await client.subscribe([(f, 1) for f in settings.subscribe])
            self.running()
            messages = client.messages
            batch_size = settings.batch
            while True:
                first = await anext(messages)
                batch = [first]
                while len(messages) and len(batch) < batch_size:
                    batch.append(await anext(messages))
                self.pending = len(batch)
                items = [decode(m, settings, self._template) for m in batch]
                await self.append(items)  # durable (or raises: nothing is acknowledged)
                self.pending = 0
                inner = client._client
                for message in batch:
                    if message.qos > 0:
                        inner.ack(message.mid, message.qos)


# -- out ---------------------------------------------------------------------------------


class MqttOut(OutBridge[MqttBridge]):
    """Bus -> MQTT: publish each of the group's events with QoS 1, ack on PUBACK."""

    def __init__(self, settings: MqttBridge, bus: Bus) -> None:
        super().__init__(settings, bus)
        self._template = TopicTemplate(settings.mqtt_topic, BROKER_PLACEHOLDERS, "mqtt_topic")

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[aiomqtt.Client]:
        async with client_of(self.settings) as client:
            yield client

    def lost(self, connection: Any) -> bool:
        return _lost(connection)

    async def send(self, connection: Any, delivery: GroupDelivery) -> None:
        client: aiomqtt.Client = connection
        event = delivery.event
        topic = self._template.render(bus_values(delivery))
        if not topic or "+" in topic or "#" in topic or "\x00" in topic:
            raise Permanent(f"{topic!r:.200} is not an MQTT topic to publish to")
        payload, properties = encode(event, self.settings)
        try:
            await client.publish(
                topic, payload, qos=1, retain=self.settings.retain, properties=properties
            )
        except ValueError as exc:  # paho refuses the topic or the payload's size
            raise Permanent(str(exc)) from exc
