"""AMQP helpers of the bridge tests: pika (a client nobody here wrote) and rabbitmqctl.

pika's BlockingConnection runs in a thread (`asyncio.to_thread`): `publish` sends messages
with publisher confirms, `drain` takes every message of a queue with `basic_get` and
acknowledges them, `queue_counts` asks the broker itself (rabbitmqctl) how many messages a
queue has ready and unacknowledged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pika
from tests.services import RabbitMQServer

__all__ = ["Received", "declare", "drain", "publish", "queue_counts"]


def _connection(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def publish(
    url: str,
    exchange: str,
    messages: Sequence[tuple[str, bytes, dict[str, Any]]],
) -> None:
    """Each (routing key, body, properties) published with confirms, persistent."""
    connection = _connection(url)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for routing_key, body, properties in messages:
            channel.basic_publish(
                exchange,
                routing_key,
                body,
                pika.BasicProperties(delivery_mode=2, **properties),
                mandatory=True,
            )
    finally:
        connection.close()


def declare(url: str, queue: str, bindings: Sequence[tuple[str, str]] = ()) -> None:
    """A durable queue, bound to (exchange, routing key) each."""
    connection = _connection(url)
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        for exchange, routing_key in bindings:
            channel.queue_bind(queue, exchange, routing_key)
    finally:
        connection.close()


class Received:
    """One message taken from a queue: its routing key, properties and body."""

    def __init__(self, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        self.routing_key: str = method.routing_key
        self.headers: dict[str, Any] = dict(properties.headers or {})
        self.content_type: str | None = properties.content_type
        self.message_id: str | None = properties.message_id
        self.delivery_mode: int | None = properties.delivery_mode
        self.body = body


def drain(url: str, queue: str) -> list[Received]:
    """Every message the queue holds now, in order, acknowledged."""
    connection = _connection(url)
    out: list[Received] = []
    try:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append(Received(method, properties, body))
    finally:
        connection.close()


def queue_counts(broker: RabbitMQServer, queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of `queue`, as rabbitmqctl says."""
    done = broker.ctl("-q", "list_queues", "name", "messages_ready", "messages_unacknowledged")
    for line in done.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[0] == queue and fields[1].isdigit():
            return int(fields[1]), int(fields[2])
    raise AssertionError(f"no queue {queue!r}: {done.stdout}{done.stderr}")
