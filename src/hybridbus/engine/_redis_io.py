"""The driver side of the Redis engine: the connection, script calls, errors and decoding.

Owns: turning an engine URL into a redis-py asyncio client (one Redis, or a
Redis Cluster), the key names of a shard (`ShardKeys`), which shard a topic
goes to, running the Lua scripts of `engine._redis_scripts` by SHA (loading
one with EVAL the first time a server has not seen it), wrapping every driver
exception into `hybridbus.errors` where it arises, and decoding stream
entries into deliveries. Must not hold engine state or start tasks.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from hybridbus.core.codecs import decode_msgpack
from hybridbus.core.event import Event
from hybridbus.core.log import Delivery
from hybridbus.errors import EngineCorrupt, EngineError, EngineUnavailable, InvalidEvent

__all__ = [
    "DEFAULT_SERVER",
    "Client",
    "Epochs",
    "RedisTarget",
    "ShardKeys",
    "call",
    "decode_entry",
    "dedupe_key",
    "lua_bytes",
    "new_epoch",
    "parse_target",
    "refusal",
    "shard_of",
    "wrap",
]

Client = aioredis.Redis | RedisCluster

# The server of a URL without a host (`redis:///<prefix>`): $HYBRIDBUS_REDIS_URL, else this.
DEFAULT_SERVER: Final = "redis://127.0.0.1:6379/0"
_SCHEMES: Final = {
    "redis": ("redis", False),
    "rediss": ("rediss", False),
    "redis+cluster": ("redis", True),
    "rediss+cluster": ("rediss", True),
}
# Query settings redis-py reads from the URL itself (TLS files and checks).
_DRIVER_SETTINGS: Final = frozenset(
    {"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}
)
REDIS_SETTINGS: Final = frozenset({"prefix", "timeout"}) | _DRIVER_SETTINGS


class RedisTarget(msgspec.Struct, frozen=True):
    """Where the engine's data lives: the server URL redis-py opens, and the key prefix."""

    url: str
    cluster: bool
    prefix: str
    timeout: float


def parse_target(url: str) -> RedisTarget:
    """Read `redis[s][+cluster]://[user:pass@]host:port[/db][?prefix=..&timeout=..]`.

    Without a host (`redis:///name`) the server is `$HYBRIDBUS_REDIS_URL`
    (default `redis://127.0.0.1:6379/0`) and `name` is the key prefix.
    """
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"not a Redis engine URL: {url!r}")
    scheme, cluster = _SCHEMES[parts.scheme]
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    prefix = query.pop("prefix", "main")
    try:
        timeout = float(query.pop("timeout", "5"))
    except ValueError:
        raise ValueError(f"timeout must be seconds, in {url!r}") from None
    if not timeout > 0:
        raise ValueError("timeout must be more than 0 seconds")
    unknown = set(query) - _DRIVER_SETTINGS
    if unknown:
        raise ValueError(f"unknown Redis setting {sorted(unknown)[0]!r}")
    if parts.netloc:
        server = urlunsplit((scheme, parts.netloc, parts.path, urlencode(query), ""))
    else:
        prefix = parts.path.lstrip("/") or prefix
        server = os.environ.get("HYBRIDBUS_REDIS_URL") or DEFAULT_SERVER
        default = urlsplit(server)
        if default.scheme in _SCHEMES:
            scheme, cluster = _SCHEMES[default.scheme]
            server = urlunsplit((scheme, *default[1:]))
    if not prefix or "{" in prefix or "}" in prefix:
        raise ValueError(f"the key prefix {prefix!r} must be non-empty, without braces")
    return RedisTarget(server, cluster, prefix, timeout)


# Connections to one Redis. A call finding them all busy waits for one (up to `timeout`)
# instead of failing: a burst of subscribes on a node must not be refused with 1301.
POOL_SIZE: Final = 128
# redis-py's Cluster client cannot wait for a free connection: a bound per node high
# enough that a burst does not reach it (connections are opened only as calls need them).
CLUSTER_POOL_SIZE: Final = 4096


def connect(target: RedisTarget) -> Client:
    """A client for `target` that never retries by itself (a retried append could land twice)."""
    common: dict[str, Any] = {
        "socket_timeout": target.timeout,
        "socket_connect_timeout": target.timeout,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
        "client_name": "hybridbus",
    }
    if target.cluster:
        return RedisCluster.from_url(target.url, max_connections=CLUSTER_POOL_SIZE, **common)
    pool = aioredis.BlockingConnectionPool.from_url(
        target.url, max_connections=POOL_SIZE, timeout=target.timeout, **common
    )
    return aioredis.Redis.from_pool(pool)  # owns the pool: `aclose()` closes its connections


class ShardKeys:
    """The names of one shard's keys (see `engine._redis_scripts`)."""

    __slots__ = ("log", "meta", "tag")

    def __init__(self, prefix: str, shard: int) -> None:
        self.tag = f"{{hb:{prefix}:{shard}}}"
        self.meta = self.tag + ":meta"
        self.log = self.tag + ":log"


def shard_of(topic: str, shards: int) -> int:
    """The shard of `topic`: a stable hash of its tenant (its first segment).

    Every topic of a tenant is in one shard, so a topic's offsets follow its
    positions and the dedupe window (per tenant) is checked in one script.
    """
    if shards == 1:
        return 0
    return zlib.crc32(topic.partition("/")[0].encode()) % shards


def dedupe_key(topic: str, source: str, id_: str) -> bytes:
    """The dedupe key of an event: its tenant, source and id, unambiguously joined."""
    return msgspec.msgpack.encode((topic.partition("/")[0], source, id_))


# The MessagePack str header of each length below 256 (see `lua_bytes`).
_STR_HEADS: Final = tuple(bytes((0xA0 | n,)) if n < 32 else bytes((0xD9, n)) for n in range(256))


def lua_bytes(data: bytes) -> msgspec.Raw:
    """`data` as a MessagePack str, for Redis's Lua `cmsgpack.unpack`, which has no bin type.

    A Lua string holds any bytes, so the str type carries them unchanged.
    """
    n = len(data)
    if n < 0x100:
        return msgspec.Raw(_STR_HEADS[n] + data)
    if n < 0x10000:
        return msgspec.Raw(b"\xda" + n.to_bytes(2, "big") + data)
    return msgspec.Raw(b"\xdb" + n.to_bytes(4, "big") + data)


def new_epoch() -> str:
    """A fresh random epoch (hex: safe inside a position token)."""
    return secrets.token_hex(8)


class Epochs:
    """Errors a shard script raises about the epoch (see `engine._redis_scripts`)."""

    LOST: Final = "HBLOST"
    MOVED: Final = "HBEPOCH"

    @staticmethod
    def kind(exc: BaseException) -> str | None:
        """`LOST`, `MOVED` or None for an exception a script call raised."""
        if isinstance(exc, rex.ResponseError) and not isinstance(exc, rex.NoScriptError):
            text = str(exc)
            for kind in (Epochs.LOST, Epochs.MOVED):
                if text.startswith(kind):
                    return kind
        return None


def refusal(kind: str) -> Exception:
    """The exception a script raises for `kind`, for the same refusal found in Python."""
    return rex.ResponseError(f"{kind} (seen outside a script)")


_SHAS: dict[str, str] = {}


async def call(client: Client, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """Run `script` by SHA; a server that does not know it yet gets it with EVAL.

    Raises the driver's exception (callers wrap it; see `wrap`).
    """
    sha = _SHAS.get(script)
    if sha is None:
        sha = _SHAS[script] = hashlib.sha1(script.encode()).hexdigest()
    try:
        return await client.evalsha(sha, len(keys), *keys, *args)
    except rex.NoScriptError:
        # Not run: the server has not cached it (new, restarted, or failed over).
        return await client.eval(script, len(keys), *keys, *args)


_UNAVAILABLE: Final = (
    rex.ConnectionError,
    rex.TimeoutError,
    rex.ClusterDownError,
    rex.TryAgainError,
    rex.MasterDownError,
    rex.ReadOnlyError,
    rex.OutOfMemoryError,
    rex.BusyLoadingError,
    rex.ClusterError,
    rex.MaxConnectionsError,
    TimeoutError,
    OSError,
)
# Replies that mean "not now" rather than "never".
_BUSY_REPLIES: Final = ("BUSY", "LOADING", "MASTERDOWN", "NOREPLICAS", "TRYAGAIN", "CLUSTERDOWN")


def wrap(exc: BaseException, what: str) -> EngineError:
    """The hybridbus error for a driver exception: `EngineUnavailable` if it may pass."""
    if isinstance(exc, _UNAVAILABLE) or (
        isinstance(exc, rex.ResponseError) and str(exc).startswith(_BUSY_REPLIES)
    ):
        error: EngineError = EngineUnavailable(f"redis engine: {what}: {exc}")
    else:
        error = EngineError(f"redis engine: {what}: {exc}")
    error.__cause__ = exc
    return error


def decode_entry(
    shard: int,
    position: int,
    fields: dict[bytes, bytes],
    events: Mapping[bytes, Event] | None = None,
) -> Delivery:
    """The delivery of one stream entry (fields as the append script wrote them).

    `events`: events already at hand by their stored bytes (they are not decoded).
    """
    try:
        payload = fields[b"p"]
        event = events.get(payload) if events else None
        if event is None:
            event = decode_msgpack(payload)
        expires = fields.get(b"x")
        return Delivery(
            fields[b"t"].decode(),
            int(fields[b"o"]),
            shard,
            position,
            float(fields[b"m"]),
            event,
            float(expires) if expires is not None else None,
            payload,
        )
    except (InvalidEvent, KeyError, ValueError) as exc:
        raise EngineCorrupt(
            f"redis engine: the event at position {position} of shard {shard} "
            f"cannot be decoded: {exc}"
        ) from exc


def fields_of(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """A stream entry's fields from the flat list a script returns."""
    return dict(zip(flat[0::2], flat[1::2], strict=True))


def entry_position(entry_id: bytes | str) -> int:
    """The position of a stream entry id `<position>-0`."""
    if isinstance(entry_id, bytes):
        return int(entry_id.partition(b"-")[0])
    return int(entry_id.partition("-")[0])
