"""Real servers for tests: started from their binaries on free loopback ports, stopped by PID.

One small class per service (Redis, Valkey, a 3-master Redis Cluster, RabbitMQ, Mosquitto,
PostgreSQL, etcd, NATS, Kafka), each with `start()`, `stop()` (the service's own clean-stop
signal), `kill()` (SIGKILL), `pause()`/`resume()` (SIGSTOP/SIGCONT) and `restart()`, which
keeps the port and the data directory. Each instance owns a fresh directory under the system
temp dir (config, data, `server.log`), removed by `close()`. Readiness is a real probe
(PING, `pg_isready`'s protocol check, `/health`, ...) with a bounded wait; on timeout the error
carries the tail of the server's log.

`base` has the `Service` every class subclasses; `redis_servers`, `brokers` (RabbitMQ,
Mosquitto, NATS, Kafka) and `stores` (PostgreSQL, etcd) the classes; the pytest fixtures here
are registered for every test through tests/conftest.py (`pytest_plugins`):
function-scoped factories (`redis_server`, `valkey_server`, `redis_cluster`, `rabbitmq_server`,
`mosquitto_server`, `postgres_server`, `etcd_server`, `nats_server`, `kafka_server`,
`otel_collector`) for tests
that kill or restart a server, and session-scoped shared ones (`rabbitmq`, `kafka`) for the
slow starters, and `rabbitmq_mqtt` (RabbitMQ with its MQTT 3.1.1 plugin,
`.mqtt_port`). A missing binary skips the test with the reason, or fails it when
`HYBRIDBUS_REQUIRE_SERVICES=1` (CI). `scripts/install-services.sh` (`make services`) installs
them all; ../shared/SERVICES.md has the facts behind each start line.

The methods block (a Redis start takes ~20 ms, Kafka ~5 s): inside an async test whose
clients must keep running meanwhile, call them as `await asyncio.to_thread(server.restart)`.
This package does not know hybridbus: it only runs servers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from tests.services.base import REQUIRE_ENV, Service, ServiceError, free_port, require
from tests.services.brokers import (
    KafkaServer,
    MosquittoServer,
    NatsServer,
    RabbitMQMqttServer,
    RabbitMQServer,
)
from tests.services.collector import OtelCollector
from tests.services.redis_servers import RedisCluster, RedisServer, ValkeyServer
from tests.services.stores import EtcdServer, PostgresServer

__all__ = [
    "REQUIRE_ENV",
    "EtcdServer",
    "KafkaServer",
    "MosquittoServer",
    "NatsServer",
    "OtelCollector",
    "PostgresServer",
    "RabbitMQMqttServer",
    "RabbitMQServer",
    "RedisCluster",
    "RedisServer",
    "Service",
    "ServiceError",
    "ValkeyServer",
    "etcd_server",
    "free_port",
    "kafka",
    "kafka_server",
    "mosquitto_server",
    "nats_server",
    "otel_collector",
    "postgres_server",
    "rabbitmq",
    "rabbitmq_mqtt",
    "rabbitmq_server",
    "redis_cluster",
    "redis_server",
    "require",
    "valkey_server",
]

# -- the fixtures -------------------------------------------------------------------------

S = TypeVar("S", Service, RedisCluster)


def _factory(cls: type[S]) -> Iterator[Callable[..., S]]:
    require(*cls.binaries)
    made: list[S] = []

    def make(*args: Any, **kwargs: Any) -> S:
        service = cls(*args, **kwargs)
        made.append(service)
        service.start()
        return service

    yield make
    for service in reversed(made):
        service.close()


@pytest.fixture
def redis_server() -> Iterator[Callable[..., RedisServer]]:
    """`server = redis_server("--appendonly", "yes")`: a started RedisServer, closed after."""
    yield from _factory(RedisServer)


@pytest.fixture
def valkey_server() -> Iterator[Callable[..., ValkeyServer]]:
    """`server = valkey_server(*args)`: a started ValkeyServer, closed after the test."""
    yield from _factory(ValkeyServer)


@pytest.fixture
def redis_cluster() -> Iterator[Callable[..., RedisCluster]]:
    """`cluster = redis_cluster(*args)`: three started masters, `cluster.url`, `.nodes`."""
    yield from _factory(RedisCluster)


@pytest.fixture
def rabbitmq_server() -> Iterator[Callable[..., RabbitMQServer]]:
    """`broker = rabbitmq_server()`: a RabbitMQ of the test's own (~5 s to start)."""
    yield from _factory(RabbitMQServer)


@pytest.fixture
def mosquitto_server() -> Iterator[Callable[..., MosquittoServer]]:
    """`broker = mosquitto_server(*conf_lines)`: a started Mosquitto."""
    yield from _factory(MosquittoServer)


@pytest.fixture
def postgres_server() -> Iterator[Callable[..., PostgresServer]]:
    """`db = postgres_server()`: a fresh PostgreSQL 15 (`db.url`, user postgres, trust)."""
    yield from _factory(PostgresServer)


@pytest.fixture
def etcd_server() -> Iterator[Callable[..., EtcdServer]]:
    """`etcd = etcd_server()`: a one-member etcd (`etcd.url` is its client URL)."""
    yield from _factory(EtcdServer)


@pytest.fixture
def nats_server() -> Iterator[Callable[..., NatsServer]]:
    """`nats = nats_server(jetstream=True)`: a started nats-server."""
    yield from _factory(NatsServer)


@pytest.fixture
def kafka_server() -> Iterator[Callable[..., KafkaServer]]:
    """`kafka = kafka_server()`: a Kafka node of the test's own (~5 s to start)."""
    yield from _factory(KafkaServer)


def _shared(cls: type[S]) -> Iterator[S]:
    require(*cls.binaries)
    service = cls()
    try:
        service.start()
        yield service
    finally:
        service.close()


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQServer]:
    """One RabbitMQ for the whole session: share it by naming queues per test."""
    yield from _shared(RabbitMQServer)


@pytest.fixture(scope="session")
def rabbitmq_mqtt() -> Iterator[RabbitMQMqttServer]:
    """One RabbitMQ with its MQTT plugin (3.1.1) for the session: name topics per test."""
    yield from _shared(RabbitMQMqttServer)


@pytest.fixture
def otel_collector() -> Iterator[Callable[..., OtelCollector]]:
    """`collector = otel_collector()`: an OpenTelemetry Collector (OTLP in, `.spans()` out)."""
    yield from _factory(OtelCollector)


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaServer]:
    """One Kafka node for the whole session: share it by naming topics per test."""
    yield from _shared(KafkaServer)
