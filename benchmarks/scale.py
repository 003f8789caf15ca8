"""Scale-out on the Redis engine (issue 12): one node beside two, side by side in one run.

Every node is a real `hybridbus serve --engine redis://...` subprocess on one local
redis-server (`appendonly yes`, `appendfsync everysec`, as `redis_engine.py` runs it),
each case on a fresh key prefix and fresh nodes; the load clients are the server
benchmark's (`benchmarks/net/`: `load.py`'s `subscribe` and `publish` roles, in
`ClientProcess`es pinned to the cores but 0 as `procs.py` pins them). Nodes and
redis-server are not pinned: the kernel spreads them over the cores, which is what
a second node is for. Rounds are interleaved (round 1 of every case, then round 2 ...).

Cases:
- `fanout`: `SUBSCRIBERS` WebSocket subscribers of one topic, all on one node or half on
  each of two; one publisher on the first node sends `FANOUT_EVENTS` events open-loop
  (faster than they can be delivered); deliveries/s from its first event until every
  subscriber has every event. The ideal for two nodes on 2 cores is ~1.8x one node.
- `max rate`: the same with `LATENCY_SUBSCRIBERS` subscribers, all on the second node
  (publisher on the first: across nodes) or all with the publisher on one node: events/s.
- `latency`: publish -> deliver, publisher on node A, `LATENCY_SUBSCRIBERS` subscribers on
  node B (across nodes), beside all on one node, at half the lower of the two max rates
  of the same round (the same rate for both), one event per frame on a fixed schedule:
  p50 / p99 of receive time - send time.
- the Redis engine beside raw pipelined XADD: `redis_engine.run`, in the same run.

    python -m benchmarks.run scale           # ~4 min -> benchmarks/results/scale.json
    python -m benchmarks.run scale --quick   # a smoke run (~1 min), figures are not results
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from benchmarks import redis_engine
from benchmarks.harness import Result, Settings, median
from benchmarks.net import stats
from benchmarks.net.procs import (
    PYTHON,
    ROOT,
    ClientProcess,
    Launched,
    ServerProcess,
    cpu_seconds,
    free_port,
)

__all__ = ["Sizes", "extra", "run"]

# The anonymous tenant of the load clients, as procs.py configures hybridbus.
_CONFIG: Final = """
anonymous_tenant = "bench"
max_connections_per_user = 0
max_in_flight = 100000
[[roles.anonymous]]
allow = "*"
topics = "#"
"""
_prefixes = itertools.count()
_extra: dict[str, Any] = {}


@dataclass(frozen=True)
class Sizes:
    """The sizes of each case; `quick()` for a smoke run."""

    subscribers: int = 2_000
    fanout_events: int = 1_000
    latency_subscribers: int = 100
    rate_events: int = 2_000  # events of a max-rate run
    latency_seconds: float = 3.0
    client_procs: int = max(1, min(4, (os.cpu_count() or 2) - 1))

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            subscribers=200,
            fanout_events=100,
            latency_subscribers=20,
            rate_events=300,
            latency_seconds=1.0,
            client_procs=1,
        )


def extra() -> dict[str, Any]:
    """What the last `run` recorded besides results: each round's figures, the sizes."""
    return dict(_extra)


class Node(Launched):
    """`hybridbus serve --engine <engine>` in a subprocess of its own, killed by PID."""

    def __init__(self, engine: str, node_id: str) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-node-{node_id}-"))
        config = self.dir / "hybridbus.toml"
        config.write_text(_CONFIG)
        argv = [PYTHON, "-m", "hybridbus", "serve", "--config", str(config), "--engine", engine,
                "--host", "127.0.0.1", "--port", str(self.port)]  # fmt: skip
        env = {**os.environ, "HYBRIDBUS_LOG_LEVEL": "warning", "HYBRIDBUS_NODE_ID": node_id}
        self._launch(f"node {node_id}", argv, cwd=ROOT, env=env, pinned=False)

    def cpu_s(self) -> float:
        return cpu_seconds(self.pid)


@contextlib.contextmanager
def _nodes(redis_port: int, count: int) -> Iterator[list[Node]]:
    """`count` nodes on a fresh log (its own key prefix) of the redis-server."""
    engine = f"redis://127.0.0.1:{redis_port}/0?prefix=scale{os.getpid()}x{next(_prefixes)}"
    nodes: list[Node] = []
    try:
        for n in range(count):
            nodes.append(Node(engine, f"n{n}"))
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _subscribers(port: int, count: int, procs: int, first: int = 0) -> list[ClientProcess]:
    """`count` subscribers of topic `t` on the node at `port`, over `procs` processes."""
    out = []
    for p in range(procs):
        n = count // procs + (1 if p < count % procs else 0)
        if n:
            out.append(
                ClientProcess(
                    "subscribe", "hybridbus", port, subscribers=n, offset=first, grace=120.0
                )
            )
            first += n
    return out


def _deliver(
    nodes: list[Node], placement: list[int], sizes: Sizes, events: int, rate: int, seconds: float
) -> dict[str, Any]:
    """Subscribers on `nodes` (`placement[i]` of them on node i), then the publisher on node 0.

    Open-loop: `rate` events/s (or as fast as the publisher can when that is more) for
    `seconds` or `events` events; every subscriber must get every event. The figures:
    deliveries/s from the first event sent to the last received, events/s, latencies.
    """
    procs = max(1, sizes.client_procs // len([p for p in placement if p]))
    subs = [
        sub
        for node, count in zip(nodes, placement, strict=True)
        if count
        for sub in _subscribers(node.port, count, procs)
    ]
    try:
        for sub in subs:
            sub.ready(timeout=300)
        cpu = [node.cpu_s() for node in nodes]
        publisher = ClientProcess(
            "publish",
            "hybridbus",
            nodes[0].port,
            rate=rate,
            seconds=seconds if seconds else events / rate,
            warmup_s=0,
        )
        subs.append(publisher)
        sent = publisher.ready(timeout=seconds + 120)
        began = time.perf_counter() - sent["seconds"]
        for sub in subs[:-1]:
            sub.go(f"stop {sent['sent']}")
        results = [sub.result() for sub in subs[:-1]]
        elapsed = time.perf_counter() - began
        node_cpu = sum(node.cpu_s() for node in nodes) - sum(cpu)
        publisher.go()
        publisher.result()
    finally:
        for sub in subs:
            sub.close()
    received = sum(r["received"] for r in results)
    summary = stats.summary(stats.merge(r["hist"] for r in results))
    return {
        "deliveries_per_s": received / elapsed,
        "events_per_s": sent["sent"] / elapsed,
        "seconds": elapsed,
        "sent": sent["sent"],
        "delivered": received,
        "lost": sum(r["lost"] for r in results),
        "p50_ms": summary.get("p50_ms"),
        "p99_ms": summary.get("p99_ms"),
        "max_ms": summary.get("max_ms"),
        "node_cpu_us_per_delivery": node_cpu / received * 1e6 if received else None,
        "publisher_max_lag_ms": sent["max_lag_ms"],
    }


_FLOOD: Final = 50_000  # events/s asked of the open-loop publisher when measuring a maximum


def _fanout(redis_port: int, sizes: Sizes, nodes: int) -> dict[str, Any]:
    half = sizes.subscribers // nodes
    placement = [half + (sizes.subscribers - half * nodes if n == 0 else 0) for n in range(nodes)]
    with _nodes(redis_port, nodes) as running:
        return _deliver(running, placement, sizes, sizes.fanout_events, _FLOOD, 0.0)


def _max_rate(redis_port: int, sizes: Sizes, across: bool) -> dict[str, Any]:
    placement = [0, sizes.latency_subscribers] if across else [sizes.latency_subscribers]
    with _nodes(redis_port, len(placement)) as running:
        return _deliver(running, placement, sizes, sizes.rate_events, _FLOOD, 0.0)


def _latency(redis_port: int, sizes: Sizes, across: bool, rate: int) -> dict[str, Any]:
    placement = [0, sizes.latency_subscribers] if across else [sizes.latency_subscribers]
    with _nodes(redis_port, len(placement)) as running:
        return _deliver(running, placement, sizes, 0, rate, sizes.latency_seconds)


# id, label, unit, figure of a run's dict, peer id
_ROWS: Final = (
    ("scale.fanout.2", "fan-out, 2 nodes: subscribers half on each, publisher on the first",
     "deliveries/s", "fanout2", "deliveries_per_s", "scale.fanout.1"),
    ("scale.fanout.1", "fan-out, 1 node: every subscriber and the publisher on it",
     "deliveries/s", "fanout1", "deliveries_per_s", None),
    ("scale.fanout.cpu.2", "fan-out, 2 nodes: node CPU per delivery, both nodes summed",
     "µs/delivery", "fanout2", "node_cpu_us_per_delivery", "scale.fanout.cpu.1"),
    ("scale.fanout.cpu.1", "fan-out, 1 node: node CPU per delivery",
     "µs/delivery", "fanout1", "node_cpu_us_per_delivery", None),
    ("scale.rate.across", "max events/s, publisher on A, subscribers on B",
     "events/s", "rate_across", "events_per_s", "scale.rate.local"),
    ("scale.rate.local", "max events/s, publisher and subscribers on one node",
     "events/s", "rate_local", "events_per_s", None),
    ("scale.latency.across.p50", "publish -> deliver p50, across nodes, at half the max rate",
     "ms", "latency_across", "p50_ms", "scale.latency.local.p50"),
    ("scale.latency.local.p50", "publish -> deliver p50, one node, same rate",
     "ms", "latency_local", "p50_ms", None),
    ("scale.latency.across.p99", "publish -> deliver p99, across nodes, at half the max rate",
     "ms", "latency_across", "p99_ms", "scale.latency.local.p99"),
    ("scale.latency.local.p99", "publish -> deliver p99, one node, same rate",
     "ms", "latency_local", "p99_ms", None),
)  # fmt: skip


def _round(redis_port: int, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    got: dict[str, Any] = {}
    got["fanout1"] = _fanout(redis_port, sizes, 1)
    got["fanout2"] = _fanout(redis_port, sizes, 2)
    got["rate_local"] = _max_rate(redis_port, sizes, across=False)
    got["rate_across"] = _max_rate(redis_port, sizes, across=True)
    rate = int(min(got["rate_local"]["events_per_s"], got["rate_across"]["events_per_s"]) / 2)
    got["latency_rate"] = rate
    got["latency_local"] = _latency(redis_port, sizes, across=False, rate=rate)
    got["latency_across"] = _latency(redis_port, sizes, across=True, rate=rate)
    for key in ("fanout1", "fanout2"):
        log(f"    {key}: {got[key]['deliveries_per_s']:,.0f} deliveries/s, lost {got[key]['lost']}")
    for key in ("rate_local", "rate_across"):
        log(f"    {key}: {got[key]['events_per_s']:,.0f} events/s")
    for key in ("latency_local", "latency_across"):
        g = got[key]
        log(f"    {key} at {rate}/s: p50 {g['p50_ms']} ms, p99 {g['p99_ms']} ms, lost {g['lost']}")
    return got


def run(settings: Settings, log: Callable[[str], None] = print) -> list[Result]:
    if not redis_engine.available():
        log("  (redis-server or redis-py missing: the scale group is skipped)")
        return []
    import redis

    sizes = Sizes.quick() if settings.smoke else Sizes()
    rounds: list[dict[str, Any]] = []
    with ServerProcess("redis-aof") as server:
        admin = redis.Redis(host="127.0.0.1", port=server.port)
        admin.config_set("appendfsync", "everysec")
        admin.close()
        for n in range(settings.runs):
            log(f"  round {n + 1} of {settings.runs}")
            rounds.append(_round(server.port, sizes, log))
    _extra.clear()
    _extra.update({"sizes": asdict(sizes), "rounds": rounds})
    results = []
    for id_, label, unit, key, figure, peer in _ROWS:
        values = [float(r[key][figure] or 0.0) for r in rounds]
        results.append(
            Result(
                id_,
                "scale",
                label,
                unit,  # type: ignore[arg-type]
                values,
                peer=peer,
                is_peer=peer is None,
                details=[r[key] for r in rounds],
            )
        )
    by_id = {r.id: r for r in results}
    ratio = by_id["scale.fanout.2"].speedup(by_id["scale.fanout.1"])
    two, one = (median(by_id[f"scale.fanout.{n}"].runs) for n in (2, 1))
    log(f"  fan-out, 2 nodes / 1 node: {ratio:.2f}x ({two:,.0f} / {one:,.0f}; ideal ~1.8x)")
    log("  the Redis engine beside raw XADD:")
    return results + redis_engine.run(settings, log)


if __name__ == "__main__":
    from benchmarks.run import main

    main(["scale"])
