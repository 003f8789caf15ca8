"""One run of each server case against one server: what the orchestrator (`server.py`) calls.

Every function starts its own server(s) and client processes, measures one run, stops
everything it started (by PID), and returns a flat dict of figures. Each run also records
`other_pct`: the share of the server's core other processes took meanwhile (from
/proc/stat), the noise figure of that run on a shared machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.net import stats
from benchmarks.net.durable import DURABLE_KINDS
from benchmarks.net.procs import (
    ClientProcess,
    ServerProcess,
    client_cores,
    core_busy_seconds,
    run_client,
)

__all__ = [
    "Plan",
    "catchup_run",
    "durable_run",
    "fanout_run",
    "herd_run",
    "latency_run",
    "memory_run",
    "soak_run",
]


@dataclass(frozen=True)
class Plan:
    """The sizes of every case (the issue's), and `quick()` ones for a smoke run."""

    subscribers: int = 1_000
    fanout_events: int = 2_000
    # (subscribers, events/s), each event published on its own.
    latency_loads: tuple[tuple[int, int], ...] = ((100, 1_000), (1_000, 200))
    latency_seconds: float = 5.0
    idle_connections: int = 10_000
    catchup_events: int = 10_000
    durable_publishers: int = 100
    durable_seconds: float = 3.0
    herd_subscribers: int = 1_000
    herd_events: int = 10_000
    herd_timeout: float = 240.0
    soak_connections: int = 10_000
    soak_subscribed: int = 5_000
    soak_topics: int = 100
    soak_rate: int = 100
    soak_seconds: float = 60.0
    client_procs: int = max(1, min(4, (os.cpu_count() or 2) - 1))

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            subscribers=200,
            fanout_events=200,
            latency_loads=((100, 1_000), (200, 200)),
            latency_seconds=1.0,
            idle_connections=1_000,
            catchup_events=2_000,
            durable_seconds=1.0,
            herd_subscribers=100,
            herd_events=1_000,
            herd_timeout=60.0,
            soak_connections=1_000,
            soak_subscribed=500,
            soak_topics=10,
            soak_seconds=10.0,
            client_procs=1,
        )


class _Meter:
    """Server CPU, wall time and the other processes' share of its core over a phase."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.cpu = server.cpu_s()
        self.core = core_busy_seconds(0) if client_cores() else None
        self.wall = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.wall
        cpu = self.server.cpu_s() - self.cpu
        out: dict[str, Any] = {"server_cpu_s": cpu, "server_cpu_pct": 100.0 * cpu / wall}
        if self.core is not None and (busy := core_busy_seconds(0)) is not None:
            out["other_pct"] = max(0.0, 100.0 * ((busy - self.core) - cpu) / wall)
        return out


@contextmanager
def profiled(server: ServerProcess, svg: Path | None) -> Iterator[None]:
    """Record the server with py-spy into the flame graph `svg` (when given)."""
    if svg is None:
        yield
        return
    svg.parent.mkdir(parents=True, exist_ok=True)
    beside = Path(sys.executable).parent / "py-spy"  # the virtualenv's, else the PATH's
    spy = subprocess.Popen(
        [
            str(beside) if beside.exists() else "py-spy",
            "record",
            "-o",
            str(svg),
            "--pid",
            str(server.pid),
            "--rate",
            "250",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)  # py-spy attached
        yield
    finally:
        os.kill(spy.pid, signal.SIGINT)  # py-spy writes the SVG on SIGINT
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            os.kill(spy.pid, signal.SIGKILL)
            spy.wait()


# -- fan-out --------------------------------------------------------------------------

# case kind -> (server kind, client mode)
FANOUT_KINDS = {
    "hybridbus": ("hybridbus", "t"),
    "hybridbus-auth": ("hybridbus-auth", "t"),
    "hybridbus-traced": ("hybridbus-traced", "t"),
    "hybridbus-sampled": ("hybridbus-sampled", "t"),
    "centrifugo": ("centrifugo", "t"),
    "nats": ("nats", "t"),
    "bare-coalesced": ("bare", "t"),
    "bare-per-message": ("bare", "per-message"),
    "socketio": ("socketio", "t"),
}


def fanout_run(kind: str, plan: Plan, svg: Path | None = None) -> dict[str, Any]:
    server_kind, mode = FANOUT_KINDS[kind]
    # Per-frame servers deliver ~10x fewer events/s: fewer events keep a run ~2 s.
    events = plan.fanout_events
    if kind == "bare-per-message":
        events = max(20, events // 8)
    elif kind == "socketio":
        events = max(20, events // 40)
    elif kind == "hybridbus-traced":  # a span per delivery: ~10x fewer deliveries/s
        events = max(20, events // 8)
    with ServerProcess(server_kind) as server, profiled(server, svg):
        meter = _Meter(server)
        got = run_client(
            "fanout",
            server_kind,
            server.port,
            subscribers=plan.subscribers,
            events=events,
            mode=mode,
            server_pid=server.pid,
        )
        noise = meter.stop()
    deliveries = events * plan.subscribers
    return {
        "deliveries_per_s": got["deliveries_per_s"],
        "cpu_us_per_delivery": got["server_cpu_s"] / deliveries * 1e6,
        "seconds": got["seconds"],
        "client_cpu_pct": got["client_cpu_pct"],
        "other_pct": noise.get("other_pct"),
    }


# -- open-loop latency ------------------------------------------------------------------


def _subscribers(kind: str, port: int, n: int, procs: int, **options: Any) -> list[ClientProcess]:
    out = []
    first = 0
    for p in range(procs):
        count = n // procs + (1 if p < n % procs else 0)
        if count:
            out.append(
                ClientProcess("subscribe", kind, port, subscribers=count, offset=first, **options)
            )
        first += count
    return out


def _open_loop(
    server: ServerProcess,
    kind: str,
    subscribers: int,
    rate: int,
    seconds: float,
    procs: int,
    idle: int = 0,
    topics: int = 1,
    prefix: str = "t",
) -> dict[str, Any]:
    """Subscribers in `procs` processes, then the open-loop publisher; the merged figures."""
    subs = _subscribers(
        kind,
        server.port,
        subscribers,
        procs,
        topics=topics,
        prefix=prefix,
        idle=idle // procs,
        grace=15.0,
    )
    try:
        for sub in subs:
            sub.ready(timeout=300)
        meter = _Meter(server)
        rss0 = server.rss_kib()
        publisher = ClientProcess(
            "publish",
            kind,
            server.port,
            rate=rate,
            seconds=seconds,
            topics=topics,
            prefix=prefix,
            server_pid=server.pid,
        )
        subs.append(publisher)
        pub = publisher.ready(timeout=seconds + 120)
        for sub in subs[:-1]:
            sub.go(f"stop {pub['sent']}")
        results = [sub.result() for sub in subs[:-1]]
        usage = meter.stop()
        rss1 = server.rss_kib()
        publisher.go()
        publisher.result()
    finally:
        for sub in subs:
            sub.close()
    summary = stats.summary(stats.merge(r["hist"] for r in results))
    received = sum(r["received"] for r in results)
    n_windows = max((len(r["windows"]) for r in results), default=0)
    windows = [
        stats.summary(stats.merge(r["windows"][w] for r in results if w < len(r["windows"])))
        for w in range(n_windows)
    ]
    return {
        **{k: summary.get(k) for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms", "samples")},
        "cpu_us_per_delivery": usage["server_cpu_s"] / received * 1e6 if received else None,
        # While the publisher ran its schedule (the figure above counts until all arrived).
        "server_cpu_pct": pub["server_cpu_pct"],
        "other_pct": usage.get("other_pct"),
        "lost": sum(r["lost"] for r in results),
        "delivered": received,
        "publisher_max_lag_ms": pub["max_lag_ms"],
        "client_cpu_pct": [round(r["client_cpu_pct"], 1) for r in results],
        "rss_mib": [rss0 / 1024, rss1 / 1024],
        "windows_p99_ms": [w.get("p99_ms") for w in windows],
        "windows_max_ms": [w.get("max_ms") for w in windows],
    }


def latency_run(
    kind: str, subscribers: int, rate: int, plan: Plan, svg: Path | None = None
) -> dict[str, Any]:
    with ServerProcess(kind) as server, profiled(server, svg):
        return _open_loop(server, kind, subscribers, rate, plan.latency_seconds, plan.client_procs)


# -- memory per connection ----------------------------------------------------------------


def memory_run(kind: str, plan: Plan, svg: Path | None = None) -> dict[str, Any]:
    """KiB of server RSS per idle connection, then with one subscription (a topic each)."""
    n = plan.idle_connections
    with ServerProcess(kind) as server:
        # Warm up with a few connections so first-use allocations don't count.
        run_client("fanout", kind, server.port, subscribers=10, events=100)
        time.sleep(0.3)
        before = server.rss_kib()
        with ClientProcess("idle", kind, server.port, connections=n) as client:
            ready = client.ready(timeout=300)
            time.sleep(1.0)
            idle = server.rss_kib()
            client.go()
            client.ready(timeout=300)
            time.sleep(1.0)
            subscribed = server.rss_kib()
    return {
        "idle_kib": (idle - before) / ready["ready"],
        "subscribed_kib": (subscribed - before) / ready["ready"],
        "connections": ready["ready"],
        "connect_s": ready["connect_s"],
    }


# -- catch-up ------------------------------------------------------------------------------

CATCHUP_KINDS = {
    "hybridbus-sqlite": "hybridbus-sqlite",
    "hybridbus": "hybridbus",
    "centrifugo": "centrifugo",
}


def catchup_run(kind: str, plan: Plan, svg: Path | None = None) -> dict[str, Any]:
    with ServerProcess(kind) as server, profiled(server, svg):
        return run_client(
            "catchup", kind, server.port, events=plan.catchup_events, server_pid=server.pid
        )


# -- durable acked publish -------------------------------------------------------------------


def durable_run(load_kind: str, plan: Plan, svg: Path | None = None) -> dict[str, Any]:
    server_kind = DURABLE_KINDS[load_kind]
    with ServerProcess(server_kind) as server, profiled(server, svg):
        meter = _Meter(server)
        got = run_client(
            "durable",
            load_kind,
            server.port,
            publishers=plan.durable_publishers,
            seconds=plan.durable_seconds,
            server_pid=server.pid,
        )
        got["other_pct"] = meter.stop().get("other_pct")
    return got


# -- the reconnect herd ------------------------------------------------------------------------


def herd_run(kind: str, plan: Plan, svg: Path | None = None) -> dict[str, Any]:
    with ServerProcess(kind) as server, profiled(server, svg):
        got = run_client(
            "herd",
            kind,
            server.port,
            subscribers=plan.herd_subscribers,
            events=plan.herd_events,
            timeout=plan.herd_timeout,
            server_pid=server.pid,
        )
    got["rss_ratio"] = got["peak_rss_mib"] / got["steady_rss_mib"]
    return got


# -- the heartbeat soak ------------------------------------------------------------------------


def soak_run(kind: str, plan: Plan, svg: Path | None = None) -> dict[str, Any]:
    """`soak_connections` connections, `soak_subscribed` of them subscribed over
    `soak_topics` topics, `soak_rate` events/s for `soak_seconds`; the server's default
    heartbeat (25 s) runs meanwhile. Latency overall and per 10-s window, loss, RSS."""
    procs = max(2, plan.client_procs)
    with ServerProcess(kind) as server, profiled(server, svg):
        out = _open_loop(
            server,
            kind,
            plan.soak_subscribed,
            plan.soak_rate,
            plan.soak_seconds,
            procs,
            idle=plan.soak_connections - plan.soak_subscribed,
            topics=plan.soak_topics,
            prefix="soak",
        )
    out["connections"] = plan.soak_connections
    return out
