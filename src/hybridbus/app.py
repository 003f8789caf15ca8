"""The app factory: `hybridbus.open(url)` picks an engine and opens a Bus on it.

Owns: engine URLs (`memory://`, `sqlite:///path`, `redis://host:port/db`,
`rediss://` for TLS, `redis+cluster://host:port` for a Redis Cluster, with
`?setting=value` overrides) and the only place where concrete engines are
chosen. Must not hold any bus or engine logic.

    async with hybridbus.open("sqlite:///var/lib/hybridbus") as bus: ...
    bus = await hybridbus.open("memory://"); ...; await bus.close()

URL settings (query parameters) map to `EngineConfig` and `BusConfig` fields,
e.g. `sqlite://./data?max_per_topic=1000&dedupe_window=60`. A Redis URL also
takes the Redis engine's own settings (`prefix`, `timeout`, the TLS files;
see `engine._redis_io.parse_target`), e.g.
`redis://127.0.0.1:6379/0?shards=4&prefix=prod`.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

import msgspec

from hybridbus.core.opening import Opening
from hybridbus.engine.base import Clock, Engine, EngineConfig, system_clock
from hybridbus.errors import InvalidInput
from hybridbus.hub.bus import Bus, BusConfig

__all__ = ["open", "open_engine", "parse_url"]

_ENGINE_FIELDS = frozenset(EngineConfig.__struct_fields__)
_BUS_FIELDS = frozenset(BusConfig.__struct_fields__)
_REDIS_SCHEMES: Final = frozenset({"redis", "rediss", "redis+cluster", "rediss+cluster"})
# The Redis engine's own URL settings (engine._redis_io.parse_target reads them).
_REDIS_FIELDS: Final = frozenset(
    {"prefix", "timeout", "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}
)
_KNOWN: Final = "use memory://, sqlite:///path or redis://host:port/db"


def parse_url(
    url: str, engine: EngineConfig | None = None, bus: BusConfig | None = None
) -> tuple[str, str, EngineConfig, BusConfig]:
    """Split an engine URL into (scheme, path, engine config, bus config).

    Query parameters override fields of the given configs.
    """
    scheme, sep, rest = url.partition("://")
    redis = scheme in _REDIS_SCHEMES
    if not sep or not (redis or scheme in ("memory", "sqlite")):
        raise InvalidInput(f"unknown engine URL {url!r}: {_KNOWN}")
    path, _, query = rest.partition("?")
    engine_fields: dict[str, Any] = msgspec.to_builtins(engine or EngineConfig())
    bus_fields: dict[str, Any] = msgspec.to_builtins(bus or BusConfig())
    redis_settings: list[tuple[str, str]] = []
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key in _ENGINE_FIELDS:
            engine_fields[key] = value
        elif key in _BUS_FIELDS:
            bus_fields[key] = value
        elif redis and key in _REDIS_FIELDS:
            redis_settings.append((key, value))
        else:
            raise InvalidInput(f"unknown setting {key!r} in engine URL")
    if redis_settings:
        path += "?" + urlencode(redis_settings)
    if scheme == "sqlite" and not path:
        raise InvalidInput("sqlite:// needs a directory: sqlite:///abs/path or sqlite://rel/path")
    try:
        engine_config = msgspec.convert(engine_fields, EngineConfig, strict=False)
        bus_config = msgspec.convert(bus_fields, BusConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"bad setting in engine URL {url!r}: {exc}") from exc
    if redis:
        try:
            from hybridbus.engine._redis_io import parse_target
        except ImportError as exc:
            raise InvalidInput(
                f"the Redis engine needs its driver: pip install 'hybridbus[redis]' ({exc})"
            ) from exc
        try:
            parse_target(f"{scheme}://{path}")
        except ValueError as exc:
            raise InvalidInput(f"bad Redis engine URL {url!r}: {exc}") from exc
    return scheme, path, engine_config, bus_config


def open_engine(scheme: str, path: str, config: EngineConfig, clock: Clock) -> Engine:
    """A new, not yet started engine for a parsed URL."""
    if scheme == "memory":
        from hybridbus.engine.memory import MemoryEngine

        return MemoryEngine(config, clock)
    if scheme in _REDIS_SCHEMES:
        from hybridbus.engine.redis import RedisEngine

        return RedisEngine(f"{scheme}://{path}", config, clock)
    from hybridbus.engine.sqlite import SqliteEngine

    return SqliteEngine(path, config, clock)


def open(  # the public name the API promises, shadowing the builtin on purpose
    url: str = "memory://",
    *,
    engine: EngineConfig | None = None,
    bus: BusConfig | None = None,
    clock: Clock = system_clock,
) -> Opening[Bus]:
    """Open a Bus on the engine named by `url` (`memory://`, `sqlite:///path`, `redis://...`)."""
    scheme, path, engine_config, bus_config = parse_url(url, engine, bus)
    return Opening(Bus(open_engine(scheme, path, engine_config, clock), bus_config, clock))
