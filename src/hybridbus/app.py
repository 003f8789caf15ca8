"""The app factory: `hybridbus.open(url)` picks an engine and opens a Bus on it.

Owns: engine URLs (`memory://`, `sqlite:///path`, with `?setting=value`
overrides) and the only place where concrete engines are chosen. Must not
hold any bus or engine logic.

    async with hybridbus.open("sqlite:///var/lib/hybridbus") as bus: ...
    bus = await hybridbus.open("memory://"); ...; await bus.close()

URL settings (query parameters) map to `EngineConfig` and `BusConfig` fields,
e.g. `sqlite://./data?max_per_topic=1000&dedupe_window=60`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import msgspec

from hybridbus.core.opening import Opening
from hybridbus.engine.base import Clock, Engine, EngineConfig, system_clock
from hybridbus.errors import InvalidInput
from hybridbus.hub.bus import Bus, BusConfig

__all__ = ["open", "open_engine", "parse_url"]

_ENGINE_FIELDS = frozenset(EngineConfig.__struct_fields__)
_BUS_FIELDS = frozenset(BusConfig.__struct_fields__)


def parse_url(
    url: str, engine: EngineConfig | None = None, bus: BusConfig | None = None
) -> tuple[str, str, EngineConfig, BusConfig]:
    """Split an engine URL into (scheme, path, engine config, bus config).

    Query parameters override fields of the given configs.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("memory", "sqlite"):
        raise InvalidInput(f"unknown engine URL {url!r}: use memory:// or sqlite:///path")
    path, _, query = rest.partition("?")
    engine_fields: dict[str, Any] = msgspec.to_builtins(engine or EngineConfig())
    bus_fields: dict[str, Any] = msgspec.to_builtins(bus or BusConfig())
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key in _ENGINE_FIELDS:
            engine_fields[key] = value
        elif key in _BUS_FIELDS:
            bus_fields[key] = value
        else:
            raise InvalidInput(f"unknown setting {key!r} in engine URL")
    if scheme == "sqlite" and not path:
        raise InvalidInput("sqlite:// needs a directory: sqlite:///abs/path or sqlite://rel/path")
    try:
        engine_config = msgspec.convert(engine_fields, EngineConfig, strict=False)
        bus_config = msgspec.convert(bus_fields, BusConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"bad setting in engine URL {url!r}: {exc}") from exc
    return scheme, path, engine_config, bus_config


def open_engine(scheme: str, path: str, config: EngineConfig, clock: Clock) -> Engine:
    """A new, not yet started engine for a parsed URL."""
    if scheme == "memory":
        from hybridbus.engine.memory import MemoryEngine

        return MemoryEngine(config, clock)
    from hybridbus.engine.sqlite import SqliteEngine

    return SqliteEngine(path, config, clock)


def open(  # the public name the API promises, shadowing the builtin on purpose
    url: str = "memory://",
    *,
    engine: EngineConfig | None = None,
    bus: BusConfig | None = None,
    clock: Clock = system_clock,
) -> Opening[Bus]:
    """Open a Bus on the engine named by `url` (`memory://` or `sqlite:///path`)."""
    scheme, path, engine_config, bus_config = parse_url(url, engine, bus)
    return Opening(Bus(open_engine(scheme, path, engine_config, clock), bus_config, clock))
