"""The Redis that nodes share for presence and tenant limits: which one, and a client to it.

Owns: picking that Redis from the settings (`shared_redis`) and opening a
redis-py asyncio client to it (imported only when there is one). Must not
hold any feature's keys (`server.presence_redis`, `server.limits_redis` do).

The rule (docs/scale-out.md, "Presence and limits across nodes"): the
`registry` setting when it names a Redis, with its `prefix` (default
`hybridbus:`); else the engine's Redis when the engine is one with a host,
with the prefix `hybridbus:<the engine's prefix>:` — the same Redis and
prefix as a node registry that follows the engine; else none: the node is
alone (memory, sqlite), and presence and limits stay in the process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from hybridbus.errors import InvalidInput
from hybridbus.server.config import ServerConfig
from hybridbus.server.registry import _following

__all__ = ["Channel", "SharedRedis", "connect", "driver_errors", "shared_redis"]

_SCHEMES: Final = frozenset({"redis", "rediss", "redis+cluster", "rediss+cluster"})
_DEFAULT_PREFIX: Final = "hybridbus:"


class SharedRedis(msgspec.Struct, frozen=True):
    """A Redis the nodes share: the URL redis-py opens, whether it is a Cluster, the prefix."""

    url: str
    cluster: bool
    prefix: str


def shared_redis(config: ServerConfig) -> SharedRedis | None:
    """The Redis `config`'s nodes share (module docstring), or None for a node alone."""
    url = config.registry
    if url.partition("://")[0] not in _SCHEMES:
        url = _following(config.engine)
        if url == "local":
            return None
    parts = urlsplit(url)
    prefix = _DEFAULT_PREFIX
    driver = []  # TLS settings, for redis-py
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "prefix":
            prefix = value
        elif key.startswith("ssl_"):
            driver.append((key, value))
    scheme, _, cluster = parts.scheme.partition("+")
    server = urlunsplit((scheme, parts.netloc, parts.path, urlencode(driver), ""))
    return SharedRedis(server, bool(cluster), prefix)


def connect(shared: SharedRedis, timeout: float, name: str) -> Any:
    """A redis-py asyncio client to `shared` that never retries by itself (callers do).

    Every command and connect gives up after `timeout` seconds.
    """
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError as exc:  # pragma: no cover - redis-py is installed with the engine
        raise InvalidInput(
            "presence and limits shared in Redis need redis-py: pip install 'redis[hiredis]'"
        ) from exc
    client = aioredis.RedisCluster if shared.cluster else aioredis.Redis
    try:
        return client.from_url(
            shared.url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            client_name=name,
        )
    except ValueError as exc:
        raise InvalidInput(f"bad Redis URL for presence and limits: {exc}") from exc


class Channel:
    """A pub/sub channel of the shared Redis, sharded on a Cluster (`SPUBLISH` / `SSUBSCRIBE`:
    the channel lives on one shard, like a key) and plain on a single Redis."""

    def __init__(self, redis: Any, shared: SharedRedis, name: str) -> None:
        self._redis = redis
        self._cluster = shared.cluster
        self.name = name

    def publish(self, pipe: Any, data: bytes) -> None:
        """Add a publish of `data` to `pipe` (a redis-py pipeline)."""
        if self._cluster:
            pipe.spublish(self.name, data)
        else:
            pipe.publish(self.name, data)

    async def subscribe(self) -> tuple[Any, Callable[[float], Awaitable[bytes | None]]]:
        """A pub/sub connection subscribed to the channel, and `read(wait)`: the next
        message's data, or None when none came within `wait` seconds. Close it with
        `aclose()`."""
        pubsub = self._redis.pubsub()
        if self._cluster:
            await pubsub.ssubscribe(self.name)
            get = pubsub.get_sharded_message
        else:
            await pubsub.subscribe(self.name)
            get = pubsub.get_message

        async def read(wait: float) -> bytes | None:
            message = await get(ignore_subscribe_messages=True, timeout=wait)
            if message is not None and message.get("type") in ("message", "smessage"):
                return bytes(message["data"])
            return None

        return pubsub, read


def driver_errors() -> tuple[type[BaseException], ...]:
    """What redis-py raises when Redis cannot be reached or refuses (and timeouts)."""
    import redis.asyncio as aioredis

    return (aioredis.RedisError, OSError, TimeoutError)
