"""Prometheus metrics of one server process.

Owns: the metric names and labels hybridbus exposes on `/metrics`, in a
registry of its own (so several nodes in one process, as in tests, do not
collide), and the cheap ways to count on the delivery path: a latency
histogram that takes many equal observations at once (`Latency`) and a
`Tally` of the frames written in one loop turn, recorded once at its end
instead of once per frame; and the consumer groups' figures, read from
`hub.groups.Groups` when `/metrics` is scraped (`GroupCollector`); and the
node's counters as one JSON-ready summary (`Metrics.snapshot`, what the
console's `/v1/stats` answers). Must not decide anything: components only
count through it.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from hybridbus.core.log import Position

if TYPE_CHECKING:
    from hybridbus.hub.groups import GroupInfo, Groups

__all__ = ["CONTENT_TYPE", "GroupCollector", "Latency", "Metrics", "Tally", "group_lag"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# Publish → deliver latency buckets, seconds: 100 µs … 5 s.
_LATENCY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
)  # fmt: skip
# An outbound webhook's answer, seconds: 5 ms … 15 s (the default timeout) and beyond.
_WEBHOOK_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0,
)  # fmt: skip


class Latency:
    """A Prometheus histogram (no labels) whose `observe` takes a count of equal observations.

    The exposition is that of `prometheus_client.Histogram` (`_bucket`,
    `_count`, `_sum`); only the event loop's thread observes.
    """

    def __init__(
        self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = buckets
        self._counts = [0] * (len(buckets) + 1)  # the last one: over every bound (+Inf)
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float, count: int = 1) -> None:
        """Observe `value` (seconds) `count` times."""
        # A bound is inclusive (le): the first bucket whose bound is >= value.
        self._counts[bisect_left(self._bounds, value)] += count
        self._sum += value * count

    def collect(self) -> Iterator[Metric]:
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*self._bounds, float("inf")), self._counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=buckets, sum_value=self._sum
        )

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._documentation)


class Tally:
    """Deliveries written in one loop turn, recorded once at the end of the turn.

    `frame(counter, delivered, oldest)` notes a frame carrying `delivered`
    deliveries, the oldest appended at `oldest` (Unix time), counted in
    `counter` (a child of `Metrics.deliveries`). At the end of the loop turn
    the counters get their sums and the latency histogram one observation per
    frame (`now - oldest`, `now` read once): the same figures as counting
    every frame as it is written, for a dictionary update per frame.
    """

    __slots__ = (
        "_clock",
        "_counter",
        "_counts",
        "_delivered",
        "_first",
        "_frames",
        "_latency",
        "_oldest",
        "_scheduled",
    )

    def __init__(self, latency: Latency, clock: Callable[[], float] = time.time) -> None:
        self._latency = latency
        self._clock = clock
        self._counts: dict[Counter, int] = {}
        self._oldest: dict[float, int] = {}  # append time of a frame's oldest -> frames
        self._scheduled = False
        # The run of frames noted last: same counter, same oldest (one push to many).
        self._counter: Counter | None = None
        self._first = 0.0
        self._delivered = 0
        self._frames = 0

    def frame(self, counter: Counter, delivered: int, oldest: float) -> None:
        """A frame with `delivered` (> 0) deliveries, the oldest appended at `oldest`, left."""
        if counter is self._counter and oldest == self._first:
            self._delivered += delivered
            self._frames += 1
            return
        self._end_run()
        self._counter = counter
        self._first = oldest
        self._delivered = delivered
        self._frames = 1
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.record)

    def _end_run(self) -> None:
        counter = self._counter
        if counter is not None:
            counts = self._counts
            counts[counter] = counts.get(counter, 0) + self._delivered
            frames = self._oldest
            frames[self._first] = frames.get(self._first, 0) + self._frames
            self._counter = None

    def record(self) -> None:
        """Put what was noted into the metrics (at the end of the loop turn; idempotent)."""
        self._scheduled = False
        self._end_run()
        counts, self._counts = self._counts, {}
        frames, self._oldest = self._oldest, {}
        for counter, delivered in counts.items():
            counter.inc(delivered)
        if frames:
            now = self._clock()
            observe = self._latency.observe
            for oldest, count in frames.items():
                observe(max(0.0, now - oldest), count)


def _samples(metric: Any, suffix: str = "") -> Iterable[tuple[dict[str, str], float]]:
    """(labels, value) of a metric's samples named `<name><suffix>` (a counter's: `_total`)."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == family.name + suffix:
                yield sample.labels, float(sample.value)


def _by(metric: Any, label: str, suffix: str = "_total") -> dict[str, float]:
    """A metric's values summed by one of its labels."""
    out: dict[str, float] = {}
    for labels, value in _samples(metric, suffix):
        key = labels.get(label, "")
        out[key] = out.get(key, 0.0) + value
    return out


def group_lag(info: GroupInfo, head: Sequence[int], epoch: str) -> int:
    """How far the group's cursor is behind `head` (log positions summed over shards).

    0 when the group's position is of another epoch (it starts over in the
    new one once it reads).
    """
    position = Position.parse(info.position)
    if position.epoch != epoch:
        return 0
    return sum(max(0, h - c) for h, c in zip(head, position.positions, strict=False))


class GroupCollector:
    """The consumer groups' gauges and counters, read from the groups at each scrape.

    Labels `tenant` and `group` (the name). `refresh()` (awaited before a
    scrape) reads the head of the log for the lag; the counters count since
    the group was loaded (they restart from 0 with the server, as Prometheus
    counters may).
    """

    _GAUGES: Final = (
        ("lag", "Log positions the group's cursor is behind the head of the log."),
        ("pending", "Events the group took and has not settled."),
        ("leased", "Pending events handed to a member now."),
        ("members", "Members of the group."),
        ("dead_letters", "Dead letters in the group's list."),
    )
    _COUNTERS: Final = (
        ("acked", "Deliveries acked."),
        ("redelivered", "Deliveries of an event after its first."),
        ("dead", "Events that became dead letters."),
    )

    def __init__(self, groups: Groups, registry: CollectorRegistry) -> None:
        self._groups = groups
        self._head: tuple[int, ...] = ()
        registry.register(self)

    async def refresh(self) -> None:
        """Read the head of the log (for the lag) before a scrape."""
        self._head = tuple(await self._groups.engine.head())

    def collect(self) -> Iterator[Metric]:
        infos = self._groups.all()
        epoch = self._groups.engine.epoch
        labels = ["tenant", "group"]
        gauges = {
            name: GaugeMetricFamily(f"hybridbus_group_{name}", text, labels=labels)
            for name, text in self._GAUGES
        }
        counters = {
            name: CounterMetricFamily(f"hybridbus_group_{name}", text, labels=labels)
            for name, text in self._COUNTERS
        }
        for info in infos:
            values = [info.tenant, info.name]
            head = self._head
            gauges["lag"].add_metric(values, group_lag(info, head, epoch) if head else 0)
            gauges["pending"].add_metric(values, info.pending)
            gauges["leased"].add_metric(values, info.leased)
            gauges["members"].add_metric(values, len(info.members))
            gauges["dead_letters"].add_metric(values, info.dead_letters)
            counters["acked"].add_metric(values, info.acked)
            counters["redelivered"].add_metric(values, info.redelivered)
            counters["dead"].add_metric(values, info.dead)
        yield from gauges.values()
        yield from counters.values()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected at each scrape: nothing to check at registration


class Metrics:
    """The metrics of one node; `render()` is the `/metrics` body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "hybridbus_connections", "Open client connections.", ["transport"], registry=r
        )
        self.subscriptions = Gauge(
            "hybridbus_subscriptions", "Active subscriptions.", ["transport"], registry=r
        )
        self.publishes = Counter(
            "hybridbus_publishes", "Events published (acknowledged).", ["gateway"], registry=r
        )
        self.duplicates = Counter(
            "hybridbus_duplicates", "Publishes answered as duplicates.", ["gateway"], registry=r
        )
        self.deliveries = Counter(
            "hybridbus_deliveries", "Events delivered to clients.", ["transport"], registry=r
        )
        self.drops = Counter(
            "hybridbus_drops",
            "Deliveries dropped, by reason (slow_consumer, expired...).",
            ["reason"],
            registry=r,
        )
        self.audit_dropped = Counter(
            "hybridbus_audit_dropped",
            "Best-effort audit events (denials, key.use) that could not be appended, by kind.",
            ["kind"],
            registry=r,
        )
        self.disconnects = Counter(
            "hybridbus_disconnects", "Connections closed, by close code.", ["code"], registry=r
        )
        self.webhook_refused = Counter(
            "hybridbus_webhook_refused",
            "Inbound webhooks refused before publishing, by endpoint ('' if unknown) and code.",
            ["endpoint", "code"],
            registry=r,
        )
        self.webhook_attempts = Counter(
            "hybridbus_webhook_attempts",
            "Outbound webhook delivery attempts, by subscription (tenant/name) and outcome.",
            ["subscription", "outcome"],
            registry=r,
        )
        self.webhook_seconds = Histogram(
            "hybridbus_webhook_attempt_seconds",
            "Time from sending an outbound webhook to its answer (or failure), by subscription.",
            ["subscription"],
            buckets=_WEBHOOK_BUCKETS,
            registry=r,
        )
        self.latency = Latency(
            "hybridbus_publish_deliver_seconds",
            "Time from append to the write of a delivery to a client.",
            _LATENCY_BUCKETS,
            r,
        )

        self._groups: GroupCollector | None = None

    def webhook_attempt(self, subscription: str, outcome: str, seconds: float) -> None:
        """Count one outbound webhook attempt (`server.webhooks_out.Outbound`'s `on_attempt`)."""
        self.webhook_attempts.labels(subscription, outcome).inc()
        self.webhook_seconds.labels(subscription).observe(seconds)

    def watch_groups(self, groups: Groups) -> None:
        """Expose the consumer groups' metrics (`GroupCollector`) from now on."""
        if self._groups is None:
            self._groups = GroupCollector(groups, self.registry)

    async def refresh(self) -> None:
        """Read what a scrape computes from (the log's head): await it before `render`."""
        if self._groups is not None:
            await self._groups.refresh()

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, Any]:
        """The node's counters now, as JSON (`GET /v1/stats`, the console's charts).

        Each number is since the node started; a reader turns two snapshots
        into rates and percentiles (docs/console.md, "Metrics"):

            time              Unix time of the snapshot, seconds
            connections       open connections by transport (a gauge)
            subscriptions     active subscriptions by transport (a gauge)
            publishes         events published and acknowledged, every gateway
            duplicates        publishes answered as duplicates, every gateway
            deliveries        events delivered to clients, every transport
            drops             deliveries dropped, by reason
            disconnects       connections closed, by close code
            webhook_attempts  outbound webhook attempts, by outcome (every subscription)
            webhook_refused   inbound webhooks refused before publishing
            errors            drops + webhook_refused + outbound attempts not `delivered`
            latency           append -> delivery histogram: `buckets` ([le, cumulative
                              count], the last "+Inf"), `count`, `sum` (seconds)
        """
        attempts = _by(self.webhook_attempts, "outcome")
        drops = _by(self.drops, "reason")
        refused = sum(_by(self.webhook_refused, "code").values())
        failed = sum(n for outcome, n in attempts.items() if outcome != "delivered")
        latency = self.latency
        return {
            "time": time.time(),
            "connections": _by(self.connections, "transport", ""),
            "subscriptions": _by(self.subscriptions, "transport", ""),
            "publishes": sum(_by(self.publishes, "gateway").values()),
            "duplicates": sum(_by(self.duplicates, "gateway").values()),
            "deliveries": sum(_by(self.deliveries, "transport").values()),
            "drops": drops,
            "disconnects": _by(self.disconnects, "code"),
            "webhook_attempts": attempts,
            "webhook_refused": refused,
            "errors": sum(drops.values()) + refused + failed,
            "latency": {
                "buckets": [[labels["le"], n] for labels, n in _samples(latency, "_bucket")],
                "count": sum(n for _, n in _samples(latency, "_count")),
                "sum": sum(n for _, n in _samples(latency, "_sum")),
            },
        }
