"""The node registry: which nodes of a deployment are alive, each under a heartbeat lease.

Owns: what a node says about itself (`NodeInfo`: its id, the addresses it
listens on, version, config fingerprint, start time and live figures), the
heartbeat that keeps its entry alive (`Registry`: registered when the server
starts, refreshed every third of `registry_ttl`, removed at once at graceful
shutdown; an entry whose heartbeats stop — kill -9, a lost host — lapses
within `registry_ttl`), retrying with backoff while the store cannot be
reached (the node keeps serving; only the listing fails, `RegistryUnavailable`),
the config fingerprint (`fingerprint`) and picking the store for the settings
(`registry_of`). Must not speak a store's protocol (`registry_redis`,
`registry_etcd` do) nor serve HTTP (`gateways.nodes` does).

Stores, by the `registry` setting (docs/scale-out.md, "Node registry"):

    ""            follow the engine: its Redis for redis[s][+cluster]://, else local
    local         this node only (the embedded engines: memory, sqlite)
    redis://...   a key per node with a PX TTL, plus an index (`registry_redis`)
    etcd://...    an etcd lease per node, its key put with the lease (`registry_etcd`)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from hybridbus.core.backoff import Backoff
from hybridbus.errors import InvalidInput, RegistryUnavailable
from hybridbus.server.config import ServerConfig
from hybridbus.tasks import stop

__all__ = [
    "LocalStore",
    "NodeInfo",
    "Registry",
    "Store",
    "fingerprint",
    "public_url",
    "registry_of",
]

log = logging.getLogger("hybridbus.registry")

_REPORT_EVERY: Final = 30.0  # seconds between two warnings while the store is unreachable
_CLOSE_TIMEOUT: Final = 2.0  # seconds graceful shutdown gives the deregistration
# Settings that hold secrets (at any depth: jwt_keys, webhooks, outbound_webhooks, ...):
# left out of the fingerprint, which others may read. Settings naming this node's own
# place are left out too: nodes of one deployment differ in them by design.
_SECRET_NAMES: Final = frozenset(
    {"jwt_secret", "secret", "secrets", "private_key", "hash", "password", "token"}
)
_PER_NODE: Final = frozenset({"host", "port", "node_id", "workers", "reuse_port"})
_REDIS_SCHEMES: Final = frozenset({"redis", "rediss", "redis+cluster", "rediss+cluster"})


class NodeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One node as the registry shows it (docs/http.md, `GET /v1/nodes`).

    Times are Unix seconds; `heartbeat` is when this entry was written,
    `ttl` how long it lives without the next one.
    """

    id: str
    addresses: list[str]  # host:port it listens on ([v6]:port)
    hostname: str
    pid: int
    version: str
    engine: str  # the engine URL, without credentials or settings
    fingerprint: str  # of its settings, without secrets (`fingerprint`)
    started: float
    heartbeat: float
    ttl: float
    connections: int  # WebSocket connections open now


class Store(Protocol):
    """Where the entries live. Every method raises `RegistryUnavailable` when it cannot reach it."""

    kind: str  # "local", "redis", "etcd"

    async def put(self, node: NodeInfo, ttl: float) -> None:
        """Register `node`, or refresh its entry: it lives `ttl` seconds more."""

    async def remove(self, node_id: str) -> None:
        """Remove the entry of `node_id` at once (nothing if there is none)."""

    async def nodes(self) -> list[NodeInfo]:
        """Every live entry."""

    async def close(self) -> None:
        """Release connections (the entries stay until removed or lapsed)."""


class LocalStore:
    """The store of a node alone (an embedded engine): it lists this node only."""

    kind = "local"

    def __init__(self) -> None:
        self._node: NodeInfo | None = None

    async def put(self, node: NodeInfo, ttl: float) -> None:
        self._node = node

    async def remove(self, node_id: str) -> None:
        if self._node is not None and self._node.id == node_id:
            self._node = None

    async def nodes(self) -> list[NodeInfo]:
        return [] if self._node is None else [self._node]

    async def close(self) -> None:
        pass


def public_url(url: str) -> str:
    """`url` without credentials and query (what may be shown and hashed)."""
    parts = urlsplit(url)
    if not parts.scheme:
        return ""
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}"  # memory:// keeps its slashes


def _without_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_secrets(v) for k, v in value.items() if k not in _SECRET_NAMES}
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    if isinstance(value, str) and "://" in value and "@" in value:
        return public_url(value)  # a password in an engine or registry URL
    return value


def fingerprint(config: ServerConfig) -> str:
    """A short hash of the effective settings, secrets and this node's own place left out.

    Nodes of one deployment should show the same one: a different one is a
    node started with other settings (docs/scale-out.md).
    """
    settings = msgspec.to_builtins(config)
    for name in _PER_NODE:
        settings.pop(name, None)
    encoded = msgspec.json.encode(_without_secrets(settings), order="sorted")
    return hashlib.sha256(encoded).hexdigest()[:16]


def _address(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class Registry:
    """This node's entry in the registry: its heartbeat, and the listing of every node."""

    def __init__(
        self,
        store: Store,
        config: ServerConfig,
        connections: Callable[[], int] = lambda: 0,
        *,
        version: str = "",
    ) -> None:
        self.store = store
        self.ttl = config.registry_ttl
        self.hostname = socket.gethostname()
        self.id = config.node_id or f"{self.hostname}-{os.getpid()}"
        self._config = config
        self._connections = connections
        self._version = version
        self._fingerprint = fingerprint(config)
        self._engine = public_url(config.engine)
        self._started = time.time()
        self._addresses: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._backoff = Backoff(base=0.2, cap=max(0.2, self.ttl / 3))
        self._rng = random.Random()
        self._failing_since: float | None = None
        self._last_report = float("-inf")
        self.registered = False  # the last heartbeat reached the store

    @property
    def kind(self) -> str:
        """The store's kind: "local", "redis" or "etcd"."""
        return self.store.kind

    def info(self) -> NodeInfo:
        """This node's entry as of now."""
        return NodeInfo(
            id=self.id,
            addresses=list(self._addresses),
            hostname=self.hostname,
            pid=os.getpid(),
            version=self._version,
            engine=self._engine,
            fingerprint=self._fingerprint,
            started=self._started,
            heartbeat=time.time(),
            ttl=self.ttl,
            connections=self._connections(),
        )

    async def start(self) -> None:
        """Start the heartbeat; it registers this node in the background (never blocks on it).

        The first entry waits for `listening` to name the addresses, a third of
        the ttl at most (an embedder's runner that never calls it: no addresses).
        """
        if self._task is None:
            self._task = asyncio.create_task(self._beat(), name="hybridbus-registry")

    def listening(self, addresses: list[Any]) -> None:
        """The server listens on `addresses` ((host, port, ...) tuples): register them now."""
        self._addresses = [_address(address) for address in addresses]
        self._wake.set()

    async def nodes(self) -> list[NodeInfo]:
        """Every live node, by id; `RegistryUnavailable` when the store cannot be reached.

        This node's own entry is shown as of now (the others' as of their
        last heartbeat, at most a third of the ttl ago).
        """
        try:
            async with asyncio.timeout(self._timeout):
                found = await self.store.nodes()
        except TimeoutError:
            raise RegistryUnavailable(f"the {self.kind} registry did not answer in time") from None
        found = [self.info() if node.id == self.id else node for node in found]
        return sorted(found, key=lambda node: node.id)

    async def close(self) -> None:
        """Stop the heartbeat, remove this node's entry at once (graceful shutdown), disconnect."""
        task, self._task = self._task, None
        try:
            if task is not None:
                await stop(task)
                await self._deregister()
        finally:
            await self.store.close()

    async def _deregister(self) -> None:
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self.store.remove(self.id)
            log.info("deregistered", extra={"node": self.id, "registry": self.kind})
        except (RegistryUnavailable, TimeoutError) as exc:
            log.warning(  # it lapses by itself within the ttl
                "cannot deregister: %s", exc, extra={"node": self.id, "registry": self.kind}
            )

    @property
    def _timeout(self) -> float:
        return max(1.0, self.ttl / 3)

    async def _beat(self) -> None:
        """Put this node's entry every ttl/3 (at once when woken); retry failures with backoff.

        The first waits for `listening` (the addresses), a third of the ttl at most.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.ttl / 3):
                await self._wake.wait()
        attempt = 0
        while True:
            self._wake.clear()
            try:
                async with asyncio.timeout(self._timeout):
                    await self.store.put(self.info(), self.ttl)
            except (RegistryUnavailable, TimeoutError) as exc:
                self._failed(str(exc) or "no answer in time")
                delay = self._backoff.delay(attempt, self._rng)
                attempt += 1
            except Exception:  # a task boundary: log, and keep beating
                log.exception("the registry heartbeat failed", extra={"node": self.id})
                self._failed("unexpected error")
                delay = self._backoff.delay(attempt, self._rng)
                attempt += 1
            else:
                self._succeeded()
                attempt = 0
                delay = self.ttl / 3
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _failed(self, reason: str) -> None:
        self.registered = False
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._last_report >= _REPORT_EVERY:
            self._last_report = now
            log.warning(
                "the node registry cannot be reached; retrying: %s",
                reason,
                extra={"node": self.id, "registry": self.kind},
            )

    def _succeeded(self) -> None:
        if not self.registered:
            since, self._failing_since = self._failing_since, None
            extra: dict[str, Any] = {"node": self.id, "registry": self.kind}
            if since is not None:
                extra["unreachable_for"] = round(time.monotonic() - since, 3)
            log.info("registered", extra={**extra, "addresses": self._addresses})
        self.registered = True


def _following(engine: str) -> str:
    """The registry of an engine: in the same Redis, beside its keys; else local.

    The engine's key prefix `p` (default `main`) makes the registry's
    `hybridbus:p:`; its TLS settings carry over, its other settings do not.
    An engine URL without a host (`redis:///name`) gets a local registry:
    name the Redis in `registry`.
    """
    parts = urlsplit(engine)
    if parts.scheme not in _REDIS_SCHEMES or not parts.netloc:
        return "local"
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    kept = [(key, value) for key, value in query.items() if key.startswith("ssl_")]
    kept.append(("prefix", f"hybridbus:{query.get('prefix', 'main')}:"))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(kept), ""))


def registry_of(config: ServerConfig, connections: Callable[[], int], version: str) -> Registry:
    """The registry the settings name (module docstring), not yet started.

    Raises `InvalidInput` for a URL the store cannot use.
    """
    url = config.registry or _following(config.engine)
    store: Store
    if url == "local":
        store = LocalStore()
    elif url.partition("://")[0] in _REDIS_SCHEMES:
        from hybridbus.server.registry_redis import RedisStore

        store = RedisStore(url)
    elif url.startswith(("etcd://", "etcds://")):
        from hybridbus.server.registry_etcd import EtcdStore

        store = EtcdStore(url)
    else:
        raise InvalidInput(f"unknown registry {url!r}: use local, redis://..., or etcd://...")
    return Registry(store, config, connections, version=version)
