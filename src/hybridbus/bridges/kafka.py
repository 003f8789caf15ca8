"""The Kafka bridge, both ways, with aiokafka: a consumer group in, the idempotent producer out.

Owns: turning Kafka records into events and events into records as the
CloudEvents Kafka protocol binding says — binary mode (each attribute but
`datacontenttype` a header `ce_<name>` with its value as UTF-8 text,
`datacontenttype` the `content-type` header, `data` the record's value; an
event without data is a record without a value), structured mode (the JSON
format as the value, `content-type: application/cloudevents+json;
charset=UTF-8`) — and the two clients. Must not decide retries, order or
dead letters ("out": the group does, `bridges.base`).

In: a consumer in the Kafka consumer group `consumer_group` (offsets never
committed automatically) reads the topics, `getmany` gives a batch, the
batch is appended to the bus in one durable write and only THEN are the
offsets after it committed. A bridge that dies in between reads the same
records again; their events carry the same `source` + `id` (their own, or
the wrap rule's: by default `<topic>-<partition>-<offset>`), so the bus drops
the second append within its dedupe window. When the bus pushes back (the
append raises `EngineUnavailable`), the assigned partitions are paused — the
fetcher stops asking for more and drops what it had buffered — and the same
batch is appended again after a backoff, polling meanwhile so the consumer
stays in its group; they resume once it is in. Which form a record has:
`content-type` `application/cloudevents+json` -> structured; a
`ce_specversion` header -> binary; a JSON object value with
`"specversion"` -> structured; anything else is wrapped (`wrap`), or
rejected when `wrap = false`. The lag per partition is the broker's high
watermark minus the next offset to append (`partition_lags`).

Out: each event of the group is sent with the idempotent producer
(`enable_idempotence`, `acks=all`: the broker writes each batch once, in
order, even when the producer retries) and acked in the group once the
broker acknowledged it. The record key is the event's `partitionkey`, else
its bus topic, so one key's events land in one partition; with the group's
`ordered` (one event in flight per key) they are in log order there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any, Final

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.errors import (  # type: ignore[import-untyped]
    CommitFailedError,
    IllegalStateError,
    InvalidTopicError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)
from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]

from hybridbus.bridges.base import InBridge, Incoming, OutBridge, Permanent, bus_values, incoming
from hybridbus.bridges.settings import BUS_PLACEHOLDERS, DOTTED_PLACEHOLDERS, KafkaBridge
from hybridbus.core.backoff import Backoff
from hybridbus.core.bindings import (
    TopicTemplate,
    Wrap,
    to_binary,
    to_structured,
)
from hybridbus.core.event import Event
from hybridbus.errors import EngineUnavailable
from hybridbus.hub.bus import Bus
from hybridbus.hub.member import GroupDelivery

__all__ = ["KafkaIn", "KafkaOut", "decode", "decode_batch", "encode", "make", "record_key"]

log = logging.getLogger("hybridbus.bridges")

PREFIX: Final = "ce_"
STRUCTURED: Final = "application/cloudevents+json; charset=UTF-8"
_TOPIC_NAME: Final = re.compile(r"^[A-Za-z0-9._\-]{1,249}$")
_PUSHBACK: Final = Backoff(base=0.1, factor=2.0, cap=5.0)  # between appends the bus refused
_NEVER: Final = (
    InvalidTopicError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)  # what sending again cannot fix: the event becomes a dead letter at once


def make(settings: KafkaBridge, bus: Bus) -> KafkaIn | KafkaOut:
    """The bridge of these settings (`bridges.registry.KINDS`)."""
    return KafkaIn(settings, bus) if settings.direction == "in" else KafkaOut(settings, bus)


def _client_options(settings: KafkaBridge) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.servers,
        "client_id": settings.client_id or f"hybridbus-{settings.name}",
    }
    if settings.url.startswith("kafka+ssl://"):
        options["security_protocol"] = "SSL"
        options["ssl_context"] = ssl.create_default_context()
    return options


# -- mapping -----------------------------------------------------------------------------


def decode(record: ConsumerRecord, settings: KafkaBridge, template: TopicTemplate) -> Incoming:
    """The bus topic and event of one record (or why there is none)."""
    return _decode(
        record, template.render({"topic": record.topic}), settings.name, settings.wrapper
    )


def decode_batch(
    records: Iterable[ConsumerRecord], settings: KafkaBridge, template: TopicTemplate
) -> list[Incoming]:
    """`decode` of each record; what is the same for every record of a topic is made once."""
    name, wrap = settings.name, settings.wrapper
    topics: dict[str, str] = {}
    items = []
    for record in records:
        topic = topics.get(record.topic)
        if topic is None:
            topic = topics[record.topic] = template.render({"topic": record.topic})
        items.append(_decode(record, topic, name, wrap))
    return items


def _decode(record: ConsumerRecord, topic: str, name: str, wrap: Wrap | None) -> Incoming:
    value: bytes = record.value if record.value is not None else b""
    headers: dict[str, str] = {}
    for header, raw in record.headers or ():
        headers.setdefault(header.lower(), bytes(raw).decode(errors="replace"))
    content_type = headers.get("content-type")
    attributes = (
        {k[len(PREFIX) :]: v for k, v in headers.items() if k.startswith(PREFIX)}
        if headers and f"{PREFIX}specversion" in headers
        else None
    )

    def wrapped() -> Event:
        assert wrap is not None
        key = record.key.decode(errors="replace") if record.key is not None else None
        properties = (
            {k: v for k, v in headers.items() if k != "content-type"}
            if content_type is not None
            else headers
        )
        position = f"{record.topic}-{record.partition}-{record.offset}"
        return wrap.event(name, record.topic, value, properties, position, content_type, key=key)

    return incoming(
        topic, record.topic, value, content_type, attributes, wrapped if wrap is not None else None
    )


def encode(event: Event, mode: str) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """The value and headers of an event's record (binary or structured mode)."""
    if mode == "structured":
        return to_structured(event), [("content-type", STRUCTURED.encode())]
    attributes, content_type, payload = to_binary(event)
    headers = [(PREFIX + name, value.encode()) for name, value in attributes.items()]
    if content_type:
        headers.append(("content-type", content_type.encode()))
    return (payload if event.data is not None else None), headers


def record_key(event: Event, topic: str) -> bytes:
    """The record key: the event's `partitionkey`, else its bus topic."""
    return (event.partitionkey or topic).encode()


# -- in ----------------------------------------------------------------------------------


class _Positions(ConsumerRebalanceListener):  # type: ignore[misc]
    """Keeps, per assigned partition, the next offset to append (for the lag)."""

    def __init__(self, bridge: KafkaIn, consumer: AIOKafkaConsumer) -> None:
        self.bridge = bridge
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            self.bridge.next_offsets.pop(tp, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        reset = self.bridge.settings.offset_reset
        unknown = []
        for tp in assigned:
            committed = await self.consumer.committed(tp)
            if committed is None:
                unknown.append(tp)
            else:
                self.bridge.next_offsets[tp] = committed
        if unknown:
            ends = (
                await self.consumer.beginning_offsets(unknown)
                if reset == "earliest"
                else await self.consumer.end_offsets(unknown)
            )
            self.bridge.next_offsets.update(ends)


class KafkaIn(InBridge[KafkaBridge]):
    """Kafka -> bus: a consumer group; append each batch durably, then commit (docstring)."""

    def __init__(self, settings: KafkaBridge, bus: Bus) -> None:
        super().__init__(settings, bus)
        assert settings.topic is not None
        self._template = TopicTemplate(settings.topic, BUS_PLACEHOLDERS, "topic")
        self.next_offsets: dict[TopicPartition, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._rng = random.Random()

    def partition_lags(self) -> dict[str, int]:
        consumer = self._consumer
        if consumer is None:
            return {}
        lags = {}
        for tp, next_offset in list(self.next_offsets.items()):
            with contextlib.suppress(IllegalStateError):
                high = consumer.highwater(tp)
                if high is not None:
                    lags[f"{tp.topic}-{tp.partition}"] = max(0, high - next_offset)
        return lags

    def lag(self) -> int:
        return self.pending + sum(self.partition_lags().values())

    async def session(self) -> None:
        settings = self.settings
        consumer = AIOKafkaConsumer(
            **_client_options(settings),
            group_id=settings.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset=settings.offset_reset,
            max_poll_records=settings.batch,
        )
        listener = _Positions(self, consumer)
        if settings.topics_regex is not None:
            consumer.subscribe(pattern=settings.topics_regex, listener=listener)
        else:
            consumer.subscribe(topics=settings.topics, listener=listener)
        try:
            await consumer.start()  # inside: cancelled while joining, it still leaves the group
            self._consumer = consumer
            self.running()
            while True:
                fetched = await consumer.getmany(timeout_ms=1000, max_records=settings.batch)
                if not fetched:
                    continue
                records = [record for batch in fetched.values() for record in batch]
                self.pending = len(records)
                items = decode_batch(records, settings, self._template)
                await self._append(consumer, items)  # durable: only now may offsets move
                self.pending = 0
                offsets = {tp: batch[-1].offset + 1 for tp, batch in fetched.items()}
                try:
                    await consumer.commit(offsets)
                except (CommitFailedError, IllegalStateError) as exc:
                    # A rebalance took the partitions: their new owner reads them again
                    # from the last commit, and the bus drops what is already appended.
                    self.failed(exc)
                    log.info("bridge %s: commit after a rebalance refused: %s", self.name, exc)
                else:
                    for tp, offset in offsets.items():
                        if tp in self.next_offsets:
                            self.next_offsets[tp] = offset
        finally:
            self._consumer = None
            self.next_offsets.clear()
            self.pending = 0
            await consumer.stop()

    async def _append(self, consumer: AIOKafkaConsumer, items: list[Incoming]) -> None:
        """Append `items`; while the bus pushes back, pause the partitions and try again."""
        attempt = 0
        paused: set[TopicPartition] = set()
        try:
            while True:
                try:
                    await self.append(items)
                    return
                except EngineUnavailable as exc:
                    self.received -= len(items)  # counted again by the next attempt
                    self.failed(exc)
                    if not paused:
                        paused = set(consumer.assignment())
                        consumer.pause(*paused)
                        log.warning("bridge %s: the bus pushes back (%s): paused", self.name, exc)
                    delay = _PUSHBACK.delay(attempt, self._rng)
                    attempt += 1
                    # Polling the paused partitions returns nothing, and keeps the
                    # consumer in its group (max.poll.interval).
                    await consumer.getmany(timeout_ms=int(delay * 1000) + 1)
        finally:
            if paused:
                consumer.resume(*(paused & consumer.assignment()))


# -- out ---------------------------------------------------------------------------------


class KafkaOut(OutBridge[KafkaBridge]):
    """Bus -> Kafka: the idempotent producer, `acks=all`; ack once the broker acked."""

    def __init__(self, settings: KafkaBridge, bus: Bus) -> None:
        super().__init__(settings, bus)
        assert settings.kafka_topic is not None
        self._template = TopicTemplate(settings.kafka_topic, DOTTED_PLACEHOLDERS, "kafka_topic")

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AIOKafkaProducer]:
        settings = self.settings
        producer = AIOKafkaProducer(
            **_client_options(settings),
            enable_idempotence=True,
            acks="all",
            linger_ms=settings.linger_ms,
            request_timeout_ms=max(1000, int(settings.ack_wait * 1000)),
        )
        await producer.start()
        try:
            yield producer
        finally:
            await producer.stop()

    def lost(self, connection: Any) -> bool:
        sender = getattr(connection, "_sender", None)
        task = getattr(sender, "sender_task", None)
        return task is not None and task.done()

    def kafka_topic(self, delivery: GroupDelivery) -> str:
        """The Kafka topic of an event (`kafka_topic` filled in)."""
        return self._template.render(bus_values(delivery))

    async def send(self, connection: Any, delivery: GroupDelivery) -> None:
        producer: AIOKafkaProducer = connection
        topic = self.kafka_topic(delivery)
        if not _TOPIC_NAME.match(topic) or topic in (".", ".."):
            raise Permanent(f"{topic!r:.200} is not a Kafka topic name")
        event = delivery.event
        value, headers = encode(event, self.settings.mode)
        try:
            sent = await producer.send(
                topic, value=value, key=record_key(event, delivery.topic), headers=headers
            )
            await asyncio.wait_for(sent, self.settings.ack_wait)
        except _NEVER as exc:
            raise Permanent(f"{type(exc).__name__}: {exc}") from exc
