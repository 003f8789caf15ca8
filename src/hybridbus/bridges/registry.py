"""The bridges of one process: made from their settings, started, stopped, listed, measured.

Owns: `Bridges` (every bridge of the settings file by name: made by its
kind's module, started in order, stopped in reverse; their `BridgeInfo`s;
the log's head, read once a second while an "out" bridge runs, for their
lag) and `BridgeCollector` (their figures on `/metrics`). Must not hold a
kind's logic nor know HTTP: `gateways.bridges` shows what `infos()` returns.

Kinds. `KINDS` maps a settings `kind` to the module that makes it; the
module is imported only when a bridge of that kind starts, so a process
without bridges never loads a broker's client library, and a missing one
(`pip install 'hybridbus[bridges]'`) fails that start with its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from hybridbus.bridges.base import Bridge, BridgeInfo
from hybridbus.bridges.settings import BridgeSettings
from hybridbus.errors import InvalidSettings

if TYPE_CHECKING:
    from hybridbus.hub.bus import Bus

__all__ = ["KINDS", "BridgeCollector", "Bridges"]

log = logging.getLogger("hybridbus.bridges")

# kind -> the module whose `make(settings, bus)` returns the bridge.
KINDS: Final[dict[str, str]] = {
    "mqtt": "hybridbus.bridges.mqtt",
    "postgres": "hybridbus.bridges.postgres",
    "kafka": "hybridbus.bridges.kafka",
    "amqp": "hybridbus.bridges.amqp",
}
_HEAD_EVERY: Final = 1.0  # seconds between reads of the log's head (for the lag)

Make = Callable[[Any, "Bus"], Bridge[Any]]


def maker(kind: str) -> Make:
    """The `make` of a kind's module; `InvalidSettings` if its library is missing."""
    module_name = KINDS.get(kind)
    if module_name is None:
        raise InvalidSettings(f"unknown bridge kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidSettings(
            f"the {kind} bridge needs {exc.name or 'a library'}: pip install 'hybridbus[bridges]'"
        ) from exc
    make: Make = module.make
    return make


class Bridges:
    """Every bridge of a process (see the module docstring)."""

    def __init__(self, bus: Bus, settings: Sequence[BridgeSettings]) -> None:
        self.bus = bus
        self._settings = list(settings)
        self._bridges: dict[str, Bridge[Any]] = {}
        self._head_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Make and start every enabled bridge; a failure stops those started and raises.

        Raises `InvalidSettings` for a name set twice or a kind whose library is
        missing. A broker that cannot be reached is no failure: its bridge retries.
        """
        names: set[str] = set()
        for one in self._settings:
            if one.name in names:
                raise InvalidSettings(f"bridge {one.name!r} is set twice")
            names.add(one.name)
        try:
            for settings in self._settings:
                if not settings.enabled:
                    continue
                bridge = maker(settings.kind)(settings, self.bus)
                await bridge.start()
                self._bridges[settings.name] = bridge
                log.info(
                    "bridge %s started (%s, %s)", settings.name, settings.kind, settings.direction
                )
        except BaseException:
            await self.close()
            raise
        if any(b.reads_log for b in self._bridges.values()):
            self._head_task = asyncio.get_running_loop().create_task(
                self._follow_head(), name="bridges head"
            )

    async def close(self) -> None:
        """Stop every bridge, the last started first."""
        task, self._head_task = self._head_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for name in reversed(list(self._bridges)):
            bridge = self._bridges.pop(name)
            try:
                await bridge.stop()
            except Exception as exc:  # noqa: BLE001 - stopping the others matters more
                log.warning("bridge %s did not stop cleanly: %s", name, exc)

    def all(self) -> list[Bridge[Any]]:
        """The running bridges, in the order of the settings."""
        return list(self._bridges.values())

    def get(self, name: str) -> Bridge[Any] | None:
        return self._bridges.get(name)

    def infos(self) -> list[BridgeInfo]:
        """What is known of every bridge of the settings, by name (disabled ones `stopped`)."""
        out = [bridge.info() for bridge in self._bridges.values()]
        for settings in self._settings:
            if settings.name not in self._bridges:
                out.append(
                    BridgeInfo(
                        name=settings.name,
                        kind=settings.kind,
                        direction=settings.direction,
                        state="stopped",
                        lag=0,
                        received=0,
                        delivered=0,
                        duplicates=0,
                        rejected=0,
                        errors=0,
                        last_error="" if not settings.enabled else "not started",
                        last_error_time=None,
                        connected_since=None,
                        group=None,
                        position=None,
                        settings=settings.shown(),
                    )
                )
        return sorted(out, key=lambda info: info.name)

    async def _follow_head(self) -> None:
        engine = self.bus.engine
        while True:
            try:
                head = tuple(await engine.head())
            except Exception as exc:  # noqa: BLE001 - a task boundary: the lag goes stale
                log.debug("bridges: cannot read the head: %s", exc)
            else:
                for bridge in self._bridges.values():
                    if bridge.reads_log:
                        bridge.head = head
            await asyncio.sleep(_HEAD_EVERY)

    def expose(self, registry: CollectorRegistry) -> None:
        """Show the bridges' figures on `/metrics` from now on (`BridgeCollector`)."""
        BridgeCollector(self, registry)


class BridgeCollector:
    """The bridges' figures, read from `Bridges.infos()` at each scrape.

    `hybridbus_bridge_up` (1 running, 0 otherwise), `_lag`, and the counters
    `hybridbus_bridge_messages_in` (taken from the source side),
    `_messages_out` (written to the target and confirmed), `_duplicates`,
    `_rejected`, `_errors`; labels `bridge`, `kind`, `direction`. A bridge
    whose source has partitions (Kafka "in") also gives
    `hybridbus_bridge_partition_lag` with a `partition` label (`<topic>-<n>`).
    """

    def __init__(self, bridges: Bridges, registry: CollectorRegistry) -> None:
        self._bridges = bridges
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        labels = ["bridge", "kind", "direction"]
        up = GaugeMetricFamily("hybridbus_bridge_up", "1 if the bridge is running.", labels=labels)
        lag = GaugeMetricFamily(
            "hybridbus_bridge_lag", "Messages or events not yet confirmed.", labels=labels
        )
        counters = {
            "received": CounterMetricFamily(
                "hybridbus_bridge_messages_in", "Taken from the source side.", labels=labels
            ),
            "delivered": CounterMetricFamily(
                "hybridbus_bridge_messages_out",
                "Written to the target side and confirmed.",
                labels=labels,
            ),
            "duplicates": CounterMetricFamily(
                "hybridbus_bridge_duplicates", "Appends the dedupe window dropped.", labels=labels
            ),
            "rejected": CounterMetricFamily(
                "hybridbus_bridge_rejected", "Messages that are not events.", labels=labels
            ),
            "errors": CounterMetricFamily(
                "hybridbus_bridge_errors", "Failed attempts and lost connections.", labels=labels
            ),
        }
        for info in self._bridges.infos():
            values = [info.name, info.kind, info.direction]
            up.add_metric(values, 1 if info.state == "running" else 0)
            lag.add_metric(values, info.lag)
            for field, family in counters.items():
                family.add_metric(values, getattr(info, field))
        partitions = GaugeMetricFamily(
            "hybridbus_bridge_partition_lag",
            "Messages of a source partition not yet appended and committed.",
            labels=[*labels, "partition"],
        )
        for bridge in self._bridges.all():
            settings = bridge.settings
            values = [settings.name, settings.kind, settings.direction]
            for partition, behind in sorted(bridge.partition_lags().items()):
                partitions.add_metric([*values, partition], behind)
        yield up
        yield lag
        yield partitions
        yield from counters.values()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected at each scrape
