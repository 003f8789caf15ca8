"""Turning `[tracing]` on for a bus: OpenTelemetry is imported only then.

Owns: the one place that starts tracing for a bus — the server (`serve`)
and the bridges run alone (`hybridbus bridge`) both call `trace` — and the
error when the `tracing` extra is missing. Must not know spans
(`server.tracing` does).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from hybridbus.errors import InvalidInput
from hybridbus.hub.bus import Bus
from hybridbus.server.config import TracingConfig

__all__ = ["trace"]


def trace(
    bus: Bus, config: TracingConfig, *, node: str, engine: str
) -> Callable[[], Awaitable[None]] | None:
    """Trace `bus` with OpenTelemetry if `config.enabled`: the close (None when off).

    `node` names the process in the spans (`service.instance.id`), `engine`
    its engine's scheme. Off, nothing is imported. InvalidInput if on and
    OpenTelemetry cannot load.
    """
    if not config.enabled:
        return None
    try:
        from hybridbus.server.tracing import start_tracing
    except ImportError as exc:  # the `tracing` extra is not installed
        raise InvalidInput(
            f"[tracing] is enabled but OpenTelemetry cannot load ({exc}): "
            "pip install -e '.[tracing]'"
        ) from exc
    tracer = start_tracing(config, node=node, engine=engine)
    bus.tracer = tracer
    return tracer.close
