"""The real server over real sockets, beside the servers a user would pick instead.

`python -m benchmarks.run server` runs every case below against hybridbus and its peers —
Centrifugo v6 (built by `benchmarks/peers/install.sh`), nats-server, bare aiohttp,
python-socketio, Redis and NATS JetStream — each server a subprocess pinned to core 0,
the load clients subprocesses pinned to the other cores (`benchmarks/net/`). Rounds are
interleaved: round 1 of every case and server, then round 2, ...; each round records the
machine's load average, each run the share of the server's core other processes took.

Cases (sizes of `Plan`; `--quick` shrinks them to a smoke test):
- `fanout`: 1,000 subscribers of one topic, bursts of 100 events (Centrifugo: /api/batch);
  deliveries/s and server CPU µs per delivery.
- `latency`: open-loop publisher, one event per frame at a fixed rate, never waiting for
  answers; 100 subscribers x 1,000 events/s and 1,000 x 200 events/s; p50 / p99 / p99.9 of
  receive time - send time, server CPU % and µs per delivery.
- `memory`: 10,000 idle connections, then one subscription each: server RSS KiB/connection.
- `catchup`: 10,000 events missed on one topic, subscribe with `since` (Centrifugo:
  history + recovery): ms until all arrived (hybridbus on sqlite and memory).
- `durable`: 100 concurrent publishers of 160-byte events, durable acks: hybridbus (sqlite)
  over WebSocket and HTTP batches of 10; Redis appendfsync always, plain and pipelined;
  NATS JetStream (file).
- `herd`: 1,000 wildcard subscribers each 10,000 events behind reconnect at once: time to
  catch up, deliveries/s, peak server RSS during recovery / steady state.
- `soak`: 10,000 connections, 5,000 subscribed over 100 topics, 100 events/s for 60 s (or
  `--soak-minutes`): latency per 10-second window across heartbeat rounds, loss, RSS. Once,
  after the rounds.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from benchmarks.harness import RESULTS_DIR, Result, Settings, Unit, load_average, median
from benchmarks.net import cases as c
from benchmarks.net.durable import DURABLE_KINDS
from benchmarks.net.procs import available

__all__ = ["CASES", "extra", "run"]

CASES: Final = ("fanout", "latency", "memory", "catchup", "durable", "herd", "soak")

# The servers of each case ("kind" as `benchmarks.net.cases` names them), hybridbus first.
_KINDS: Final[dict[str, tuple[str, ...]]] = {
    "fanout": tuple(c.FANOUT_KINDS),
    "latency": ("hybridbus", "centrifugo", "bare", "nats"),
    "memory": ("hybridbus", "centrifugo", "bare", "nats"),
    "catchup": ("hybridbus-sqlite", "hybridbus", "centrifugo"),
    "durable": tuple(DURABLE_KINDS),
    "herd": ("hybridbus-sqlite", "hybridbus", "centrifugo"),
    "soak": ("hybridbus", "centrifugo"),
}
_SERVER_OF: Final = {
    **{k: v[0] for k, v in c.FANOUT_KINDS.items()},
    **DURABLE_KINDS,
}
_LABEL: Final = {
    "hybridbus": "hybridbus",
    "hybridbus-auth": "hybridbus with JWTs and rules",
    "hybridbus-traced": "hybridbus, tracing on, every event sampled",
    "hybridbus-sampled": "hybridbus, tracing on, 1% sampled",
    "hybridbus-sqlite": "hybridbus (sqlite)",
    "centrifugo": "Centrifugo",
    "nats": "nats-server",
    "bare": "bare aiohttp",
    "bare-coalesced": "bare aiohttp, coalesced frames",
    "bare-per-message": "bare aiohttp, one frame per message",
    "socketio": "python-socketio",
    "hybridbus-ws": "hybridbus (sqlite) over WebSocket",
    "hybridbus-http": "hybridbus (sqlite) over HTTP, batches of 10",
    "redis": "Redis appendfsync always",
    "redis-pipelined": "Redis appendfsync always, pipelined x10",
    "jetstream": "NATS JetStream (file)",
}

_extra: dict[str, Any] = {}


def extra() -> dict[str, Any]:
    """What the last `run` recorded besides results: rounds, their load, the plan."""
    return dict(_extra)


def _available(kind: str) -> bool:
    return available(_SERVER_OF.get(kind, kind))


def _units(case: str, plan: c.Plan) -> list[tuple[str, ...]]:
    """The runs of one case in one round: (kind,) or (kind, subscribers, rate)."""
    kinds = [k for k in _KINDS[case] if _available(k)]
    if case == "latency":
        return [(k, str(s), str(r)) for s, r in plan.latency_loads for k in kinds]
    return [(k,) for k in kinds]


def _once(case: str, unit: tuple[str, ...], plan: c.Plan, svg: Path | None) -> dict[str, Any]:
    kind = unit[0]
    if case == "latency":
        return c.latency_run(kind, int(unit[1]), int(unit[2]), plan, svg)
    runner: dict[str, Callable[..., dict[str, Any]]] = {
        "fanout": c.fanout_run,
        "memory": c.memory_run,
        "catchup": c.catchup_run,
        "durable": c.durable_run,
        "herd": c.herd_run,
        "soak": c.soak_run,
    }
    return runner[case](kind, plan, svg)


def _summary(case: str, unit: tuple[str, ...], got: dict[str, Any]) -> str:
    def f(key: str, fmt: str = "{:.2f}") -> str:
        value = got.get(key)
        return "-" if value is None else fmt.format(value)

    noise = f" (others on its core {f('other_pct', '{:.0f}')}%)" if "other_pct" in got else ""
    if case == "fanout":
        return (
            f"{got['deliveries_per_s'] / 1e6:.2f} M/s, "
            f"{f('cpu_us_per_delivery')} µs/delivery{noise}"
        )
    if case in ("latency", "soak"):
        return (
            f"p50 {f('p50_ms')} / p99 {f('p99_ms')} / p99.9 {f('p999_ms')} / max "
            f"{f('max_ms')} ms, server CPU {f('server_cpu_pct', '{:.0f}')}%, "
            f"{f('cpu_us_per_delivery')} µs/delivery, lost {got['lost']}, "
            f"client CPU {got['client_cpu_pct']}%{noise}"
        )
    if case == "memory":
        return (
            f"{got['idle_kib']:.1f} KiB idle, {got['subscribed_kib']:.1f} KiB subscribed "
            f"({got['connections']:,} connections)"
        )
    if case == "catchup":
        return (
            f"{got['ms']:.1f} ms for {got['events']:,} events "
            f"(recovered {got['recovered']}, server CPU {f('server_cpu_ms', '{:.1f}')} ms)"
        )
    if case == "durable":
        return (
            f"{got['events_per_s'] / 1e3:.1f} k/s, {f('server_cpu_us_per_event', '{:.1f}')} "
            f"µs/event server CPU, client CPU {f('client_cpu_pct', '{:.0f}')}%{noise}"
        )
    return (  # herd
        f"{got['seconds']:.2f} s, {got['deliveries_per_s'] / 1e6:.2f} M deliveries/s "
        f"(complete {got['complete']}), RSS steady {got['steady_rss_mib']:.0f} MiB, "
        f"peak {got['peak_rss_mib']:.0f} MiB ({got['rss_ratio']:.2f}x)"
    )


def run(settings: Settings, log: Callable[[str], None] = print) -> list[Result]:
    plan = c.Plan.quick() if settings.smoke else c.Plan()
    if settings.soak_minutes is not None:
        plan = replace(plan, soak_seconds=settings.soak_minutes * 60)
    wanted = settings.cases or CASES
    unknown = set(wanted) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown server case(s) {sorted(unknown)}; pick from {CASES}")
    runs = settings.runs
    if settings.profile:
        wanted = (settings.profile,)
        runs = 1
    for case in wanted:
        missing = [k for k in _KINDS[case] if not _available(k)]
        if missing:
            log(
                f"  {case}: not installed here, skipped: {', '.join(missing)} "
                "(benchmarks/peers/install.sh)"
            )
    data: dict[tuple[str, tuple[str, ...]], list[dict[str, Any] | None]] = {}
    rounds: list[dict[str, Any]] = []
    failures: list[str] = []

    def measure(case: str, unit: tuple[str, ...]) -> None:
        svg = None
        if settings.profile:
            if not unit[0].startswith("hybridbus"):
                return
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
            svg = RESULTS_DIR / f"flame-{case}-{'-'.join(unit)}-{stamp}.svg"
        try:
            got: dict[str, Any] | None = _once(case, unit, plan, svg)
            assert got is not None
            log(f"    {case} {' '.join(unit)}: {_summary(case, unit, got)}")
            if svg is not None:
                log(f"    flame graph: {svg}")
        except Exception as exc:
            got = None
            failures.append(f"{case} {' '.join(unit)}: {exc}")
            log(f"    {case} {' '.join(unit)}: FAILED: {exc}")
            traceback.print_exc(file=sys.stderr)
        data.setdefault((case, unit), []).append(got)

    for round_ in range(runs):
        meta: dict[str, Any] = {
            "round": round_ + 1,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "loadavg_before": load_average(),
        }
        log(f"  round {round_ + 1} of {runs} (load average {meta['loadavg_before']})")
        clock = time.perf_counter()
        for case in wanted:
            if case == "soak":
                continue
            for unit in _units(case, plan):
                measure(case, unit)
        meta["seconds"] = round(time.perf_counter() - clock, 1)
        meta["loadavg_after"] = load_average()
        rounds.append(meta)
    if "soak" in wanted:
        log(f"  soak ({plan.soak_seconds:.0f} s per server, once; load average {load_average()})")
        for unit in _units("soak", plan):
            measure("soak", unit)
    _extra.clear()
    _extra.update(rounds=rounds, plan=asdict(plan), failures=failures)
    results = _results(data, plan)
    if failures:
        log(f"  {len(failures)} run(s) FAILED: " + "; ".join(failures))
    return results


# -- results ---------------------------------------------------------------------------------


def _results(
    data: dict[tuple[str, tuple[str, ...]], list[dict[str, Any] | None]], plan: c.Plan
) -> list[Result]:
    out: list[Result] = []

    def add(
        id: str,
        label: str,
        unit: Unit,
        key: tuple[str, tuple[str, ...]],
        field: str,
        peer: str | None = None,
        target: float | None = None,
        scale: float = 1.0,
    ) -> None:
        runs = data.get(key) or []
        figures = [r[field] * scale for r in runs if r and r.get(field) is not None]
        if not figures:
            return
        out.append(
            Result(
                id,
                "server",
                label,
                unit,
                figures,
                peer=peer,
                target=target,
                is_peer=not key[1][0].startswith("hybridbus"),
                details=[r for r in runs if r],
            )
        )

    n = f"{plan.subscribers:,}"
    for kind in _KINDS["fanout"]:
        key = ("fanout", (kind,))
        hb = kind.startswith("hybridbus")
        # The access check and tracing are measured against hybridbus without them.
        same = kind in ("hybridbus-auth", "hybridbus-traced", "hybridbus-sampled")
        peer = "server.fanout.hybridbus" if same else "server.fanout.nats"
        add(
            f"server.fanout.{kind}",
            f"fan-out to {n}: {_LABEL[kind]}",
            "deliveries/s",
            key,
            "deliveries_per_s",
            peer=peer if hb else None,
            target=1_000_000 if kind == "hybridbus" else None,
        )
        add(
            f"server.fanout.{kind}.cpu",
            f"fan-out CPU per delivery: {_LABEL[kind]}",
            "µs/delivery",
            key,
            "cpu_us_per_delivery",
            peer="server.fanout.centrifugo.cpu" if kind == "hybridbus" else None,
        )
    for subs, rate in plan.latency_loads:
        load = f"{subs}x{rate}"
        for metric, name in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
            for kind in _KINDS["latency"]:
                key = ("latency", (kind, str(subs), str(rate)))
                add(
                    f"server.latency.{load}.{name}.{kind}",
                    f"latency {name}, {subs:,} subscribers x {rate:,} events/s: {_LABEL[kind]}",
                    "ms",
                    key,
                    metric,
                    peer=f"server.latency.{load}.{name}.centrifugo"
                    if kind == "hybridbus"
                    else None,
                )
        for kind in _KINDS["latency"]:
            key = ("latency", (kind, str(subs), str(rate)))
            add(
                f"server.latency.{load}.cpu.{kind}",
                f"latency case {load}, server CPU per delivery: {_LABEL[kind]}",
                "µs/delivery",
                key,
                "cpu_us_per_delivery",
                peer=f"server.latency.{load}.cpu.centrifugo" if kind == "hybridbus" else None,
                target=1.5 if kind == "hybridbus" else None,
            )
            add(
                f"server.latency.{load}.cpu_pct.{kind}",
                f"latency case {load}, server CPU: {_LABEL[kind]}",
                "%",
                key,
                "server_cpu_pct",
            )
    conns = f"{plan.idle_connections:,}"
    for field, what, target in (
        ("idle_kib", "idle", 14.5),
        ("subscribed_kib", "one subscription", 16.0),
    ):
        for kind in _KINDS["memory"]:
            add(
                f"server.memory.{field[:-4]}.{kind}",
                f"RSS per connection ({conns}), {what}: {_LABEL[kind]}",
                "KiB/conn",
                ("memory", (kind,)),
                field,
                peer=f"server.memory.{field[:-4]}.bare" if kind == "hybridbus" else None,
                target=target if kind == "hybridbus" else None,
            )
    for kind in _KINDS["catchup"]:
        add(
            f"server.catchup.{kind}",
            f"catch-up of {plan.catchup_events:,} events: {_LABEL[kind]}",
            "ms",
            ("catchup", (kind,)),
            "ms",
            peer="server.catchup.centrifugo" if kind.startswith("hybridbus") else None,
        )
    for kind in _KINDS["durable"]:
        key = ("durable", (kind,))
        hb = kind.startswith("hybridbus")
        peer = (
            "server.durable.jetstream"
            if kind == "hybridbus-ws"
            else "server.durable.redis-pipelined"
        )
        label = f"durable acked publish, {plan.durable_publishers} publishers: {_LABEL[kind]}"
        add(
            f"server.durable.{kind}",
            label,
            "events/s",
            key,
            "events_per_s",
            peer=peer if hb else None,
        )
        add(
            f"server.durable.{kind}.cpu",
            f"durable publish, server CPU per event: {_LABEL[kind]}",
            "µs/event",
            key,
            "server_cpu_us_per_event",
            target=15.0 if hb else None,
        )
    herd = f"{plan.herd_subscribers:,} x {plan.herd_events:,}"
    for kind in _KINDS["herd"]:
        key = ("herd", (kind,))
        hb = kind.startswith("hybridbus")
        add(
            f"server.herd.{kind}",
            f"reconnect herd {herd}, time to catch up: {_LABEL[kind]}",
            "s",
            key,
            "seconds",
            peer="server.herd.centrifugo" if hb else None,
        )
        add(
            f"server.herd.{kind}.rate",
            f"reconnect herd, deliveries/s: {_LABEL[kind]}",
            "deliveries/s",
            key,
            "deliveries_per_s",
            peer="server.fanout.hybridbus" if hb else None,
        )
        add(
            f"server.herd.{kind}.rss",
            f"reconnect herd, peak RSS / steady: {_LABEL[kind]}",
            "x",
            key,
            "rss_ratio",
            target=2.0 if hb else None,
        )
    for kind in _KINDS["soak"]:
        key = ("soak", (kind,))
        for metric, name in (
            ("p50_ms", "p50"),
            ("p99_ms", "p99"),
            ("p999_ms", "p99.9"),
            ("max_ms", "max"),
        ):
            add(
                f"server.soak.{name}.{kind}",
                f"soak {plan.soak_connections:,} connections, {plan.soak_rate}/s, "
                f"{plan.soak_seconds:.0f} s, latency {name}: {_LABEL[kind]}",
                "ms",
                key,
                metric,
                peer=f"server.soak.{name}.centrifugo" if kind == "hybridbus" else None,
            )
    return out


def log_medians(results: list[Result], log: Callable[[str], None]) -> None:
    log("  " + ", ".join(f"{r.id} {median(r.runs):.4g}" for r in results))


if __name__ == "__main__":
    from benchmarks.run import main

    main(["server", *sys.argv[1:]])
