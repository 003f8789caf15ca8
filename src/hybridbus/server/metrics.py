"""Prometheus metrics of one server process.

Owns: the metric names and labels hybridbus exposes on `/metrics`, in a
registry of its own (so several nodes in one process, as in tests, do not
collide). Must not decide anything: components only count through it.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# Publish → deliver latency buckets, seconds: 100 µs … 5 s.
_LATENCY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
)  # fmt: skip


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
        self.latency = Histogram(
            "hybridbus_publish_deliver_seconds",
            "Time from append to the write of a delivery to a client.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
