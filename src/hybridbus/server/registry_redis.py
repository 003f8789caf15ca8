"""The node registry in Redis: a key per node that lapses, and an index to list them.

Owns: the registry's keys in one Redis database and the commands on them
(redis-py asyncio, imported only when this store is used). Must not decide
when to beat or what a node says (`server.registry` does).

Keys (one hash tag, so they share a Redis Cluster slot):

    {<prefix>nodes}:node:<id>   the node's entry (JSON), SET with PX = ttl on every heartbeat
    {<prefix>nodes}             a sorted set of node ids (score: last heartbeat, ms)

An entry lives as long as its key: a node whose heartbeats stop drops out
when its key expires, within the ttl (Redis's own expiry; no clock of ours
decides it). The index only finds the keys; a listing drops the ids whose
key is gone. `prefix` (URL `?prefix=`, default `hybridbus:`) keeps several
deployments apart on one database.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from hybridbus.errors import InvalidInput, RegistryUnavailable
from hybridbus.server.registry import NodeInfo

__all__ = ["RedisStore"]

log = logging.getLogger("hybridbus.registry")

_TIMEOUT: Final = 3.0  # seconds for one command (the registry bounds each call too)
_DEFAULT_PREFIX: Final = "hybridbus:"
_TLS_SETTINGS: Final = frozenset({"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"})


class RedisStore:
    """The registry in the Redis at `url`: `redis[s][+cluster]://[user:pass@]host:port/db`.

    Its settings: `prefix`, and the TLS files of `rediss://` (`ssl_ca_certs`, ...).
    """

    kind = "redis"

    def __init__(self, url: str) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError as exc:  # pragma: no cover - redis-py is installed with the engine
            raise InvalidInput(
                "a Redis node registry needs redis-py: pip install 'redis[hiredis]'"
            ) from exc
        parts = urlsplit(url)
        prefix = _DEFAULT_PREFIX
        driver = []  # TLS settings, for redis-py
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "prefix":
                prefix = value
            elif key in _TLS_SETTINGS:
                driver.append((key, value))
            else:
                raise InvalidInput(
                    f"unknown setting {key!r} in the registry URL: prefix or TLS (ssl_*) only"
                )
        scheme, _, cluster = parts.scheme.partition("+")
        tag = "{" + prefix + "nodes}"
        self._index = tag
        self._key_prefix = f"{tag}:node:"
        self._errors: tuple[type[BaseException], ...] = (aioredis.RedisError, OSError)
        try:
            # No retries of its own: the registry retries with backoff, and a
            # listing must fail fast (503) rather than wait out redis-py's retries.
            server = urlunsplit((scheme, parts.netloc, parts.path, urlencode(driver), ""))
            client = aioredis.RedisCluster if cluster else aioredis.Redis
            self._redis: Any = client.from_url(
                server,
                socket_timeout=_TIMEOUT,
                socket_connect_timeout=_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise InvalidInput(f"bad registry URL: {exc}") from exc

    def _key(self, node_id: str) -> str:
        return self._key_prefix + node_id

    def _unavailable(self, exc: BaseException) -> RegistryUnavailable:
        return RegistryUnavailable(f"Redis: {type(exc).__name__}: {exc}")

    async def put(self, node: NodeInfo, ttl: float) -> None:
        milliseconds = max(1, round(ttl * 1000))
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(self._key(node.id), msgspec.json.encode(node), px=milliseconds)
                pipe.zadd(self._index, {node.id: int(time.time() * 1000)})
                await pipe.execute()
        except self._errors as exc:
            raise self._unavailable(exc) from exc

    async def remove(self, node_id: str) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.delete(self._key(node_id))
                pipe.zrem(self._index, node_id)
                await pipe.execute()
        except self._errors as exc:
            raise self._unavailable(exc) from exc

    async def nodes(self) -> list[NodeInfo]:
        try:
            ids = [raw.decode() for raw in await self._redis.zrange(self._index, 0, -1)]
            values = await self._redis.mget([self._key(i) for i in ids]) if ids else []
            gone = [node_id for node_id, value in zip(ids, values, strict=True) if value is None]
            if gone:  # lapsed: their keys expired
                await self._redis.zrem(self._index, *gone)
        except self._errors as exc:
            raise self._unavailable(exc) from exc
        found = []
        for node_id, value in zip(ids, values, strict=True):
            if value is None:
                continue
            try:
                found.append(msgspec.json.decode(value, type=NodeInfo))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                # Another version's entry, or not ours: shown to nobody, said in the log.
                log.warning("skipped a registry entry that cannot be read: %s", exc,
                            extra={"node": node_id})  # fmt: skip
        return found

    async def close(self) -> None:
        try:
            await self._redis.aclose()
        except self._errors as exc:  # closing a broken connection: nothing to release
            log.debug("closing the registry's Redis client: %s", exc)
