"""Run the benchmarks, print a table, write the results as JSON.

    python -m benchmarks.run                 # all but server, groups -> results/latest.json
    python -m benchmarks.run publish fanout  # some groups (writes JSON only with --out)
    python -m benchmarks.run server          # the real server beside its peers (~25 min)
    python -m benchmarks.run groups          # consumer groups beside Redis Streams (~3 min)
    python -m benchmarks.run webhooks        # inbound webhooks beside a bare verifier (~1 min)
    python -m benchmarks.run schemas         # an event's JSON Schema check, per event (~10 s)
    python -m benchmarks.run webhooks_out    # outbound deliveries/s to a local receiver (~20 s)
    python -m benchmarks.run bridges         # MQTT both ways, the PostgreSQL sink, beside peers
    python -m benchmarks.run redis           # the Redis engine beside raw XADD (~1 min)
    python -m benchmarks.run notify          # blocking XREAD beside SPUBLISH wake-ups (~20 s)
    python -m benchmarks.run scale           # 1 node beside 2 on Redis, + redis (~5 min)
    python -m benchmarks.run server --case latency --case catchup
    python -m benchmarks.run server --profile latency   # py-spy flame graph of hybridbus
    python -m benchmarks.run server --soak-minutes 15
    python -m benchmarks.run changes         # edit -> follower's mirror, 1M lines (~2 min)
    python -m benchmarks.run logs            # log lines/s in and to a tail, gRPC/WS/HTTP (~5 min)
    python -m benchmarks.run yjs             # Yjs rooms beside pycrdt-websocket, Node (~9 min)
    python -m benchmarks.run overhead        # the cost of TLS and tracing on fan-out (~6 min)
    python -m benchmarks.run --quick         # one short run of each case, a smoke test

The default groups take about two minutes on a 2-core machine; `server` (see
benchmarks/server.py) about 25 minutes, or 3 with --quick.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import (
    bridges,
    changes,
    codec,
    fanout,
    logs,
    overhead,
    publish,
    redis_engine,
    redis_notify,
    scale,
    schemas,
    server,
    webhooks,
    webhooks_out,
    yjs,
)
from benchmarks import groups as consumer_groups  # `groups` is main's list of group names
from benchmarks.harness import (
    RESULTS_DIR,
    Result,
    Settings,
    format_table,
    load_average,
    machine_info,
    write_json,
)

__all__ = ["DEFAULT_GROUPS", "GROUPS", "main"]

GROUPS: dict[str, Callable[[Settings, Callable[[str], None]], list[Result]]] = {
    "codec": codec.run,
    "publish": publish.run,
    "fanout": fanout.run,
    "server": server.run,
    "groups": consumer_groups.run,
    "webhooks": webhooks.run,  # only when named: hybridbus serve and a peer as subprocesses
    "schemas": schemas.run,  # validation per event with and without a schema (~10 s)
    "webhooks_out": webhooks_out.run,  # outbound deliveries/s; a receiver as a subprocess
    "bridges": bridges.run,  # MQTT in/out, the PostgreSQL sink; mosquitto and postgres run
    "redis": redis_engine.run,  # the Redis engine beside raw XADD; a redis-server subprocess
    "notify": redis_notify.run,  # cross-node wake-up: blocking XREAD beside SPUBLISH (issue 12)
    "scale": scale.run,  # 1 node beside 2 on one Redis (issue 12), with the redis group's cases
    "changes": changes.run,  # a one-line edit in a 1,000,000-line file to a follower
    "logs": logs.run,  # live logs in by gRPC, WebSocket, HTTP NDJSON and to a tail (issue 14)
    "yjs": yjs.run,  # Yjs rooms beside pycrdt-websocket and the Node server (issue 15)
    "overhead": overhead.run,  # TLS and tracing on fan-out, ratios to plain (issue 16)
}
# `server` takes about 2 minutes on its own (servers and 1,000-10,000 client
# connections as subprocesses): it runs only when named, as does `groups` (about 3
# minutes, with `hybridbus serve` and redis-server subprocesses).
DEFAULT_GROUPS = ["codec", "publish", "fanout"]


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "groups",
        nargs="*",
        help=f"some of {', '.join(GROUPS)} (default: {' '.join(DEFAULT_GROUPS)})",
    )
    parser.add_argument("--quick", action="store_true", help="one short run per case")
    parser.add_argument("--tmpdir", help="where sqlite files go (default: the temp dir)")
    parser.add_argument("--out", type=Path, help="JSON results file")
    parser.add_argument(
        "--case",
        action="append",
        default=[],
        help=f"server group: only this case (repeatable): {', '.join(server.CASES)}",
    )
    parser.add_argument(
        "--profile",
        metavar="CASE",
        help="server group: run CASE once with py-spy recording the hybridbus server "
        "(flame graph SVG under benchmarks/results/)",
    )
    parser.add_argument(
        "--soak-minutes", type=float, help="server group: length of the soak (default 1)"
    )
    parser.add_argument("--runs", type=int, help="rounds (default 3; --quick: 1)")
    args = parser.parse_args(argv)
    groups: list[str] = args.groups or list(DEFAULT_GROUPS)
    unknown = set(groups) - GROUPS.keys()
    if unknown:
        parser.error(
            f"unknown group(s) {', '.join(sorted(unknown))}; pick from {', '.join(GROUPS)}"
        )
    if args.profile and args.profile not in server.CASES:
        parser.error(f"--profile: pick a case of {', '.join(server.CASES)}")
    options: dict[str, Any] = {
        "cases": tuple(args.case),
        "profile": args.profile,
        "soak_minutes": args.soak_minutes,
    }
    if args.runs:
        options["runs"] = args.runs
    if args.quick:
        settings = Settings.quick(args.tmpdir, **options)
    else:
        settings = Settings(tmpdir=args.tmpdir, **options)
    out: Path | None = args.out
    if out is None and not args.quick and groups == DEFAULT_GROUPS:
        out = RESULTS_DIR / "latest.json"
    if out is None and not args.quick and groups == ["server"] and not args.profile:
        out = RESULTS_DIR / "server.json"
    if out is None and not args.quick and groups == ["groups"]:
        out = RESULTS_DIR / "groups.json"
    if out is None and not args.quick and groups == ["scale"]:
        out = RESULTS_DIR / "scale.json"
    if out is None and not args.quick and groups == ["logs"]:
        out = RESULTS_DIR / "logs.json"
    if out is None and not args.quick and groups == ["yjs"]:
        out = RESULTS_DIR / "yjs.json"
    if out is None and not args.quick and groups == ["overhead"]:
        out = RESULTS_DIR / "overhead.json"

    started = datetime.now(UTC)
    load_at_start = load_average()
    clock = time.perf_counter()
    results: list[Result] = []
    for group in groups:
        _log(f"{group}:")
        results += GROUPS[group](settings, _log)
    duration = time.perf_counter() - clock
    # After the runs: the fsync probe must not disturb the first case.
    machine = machine_info(settings)
    _log(
        f"{machine['cpu_model']}, {machine['cpus']} CPUs, {machine['ram_gib']} GiB, "
        f"Python {machine['python']}, {machine['event_loop']}, msgspec {machine['msgspec']}, "
        f"SQLite {machine['sqlite']}, fsync {machine['disk']['fsync_us']} µs"
    )

    print(format_table(results))
    print(f"\n{len(results)} cases in {duration:.0f} s; medians of {settings.runs} run(s).")
    if out is not None:
        by_id = {r.id: r for r in results}
        payload: dict[str, Any] = {
            "started": started.isoformat(timespec="seconds"),
            "duration_s": round(duration, 1),
            "revision": _git_revision(),
            "command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
            "settings": asdict(settings),
            "machine": machine,
            "loadavg_at_start": load_at_start,
            "loadavg_at_end": load_average(),
            "results": [r.as_dict(by_id) for r in results],
        }
        if "server" in groups:
            payload["server"] = server.extra()
        if "scale" in groups:
            payload["scale"] = scale.extra()
        if "logs" in groups:
            payload["logs"] = logs.extra()
        if "yjs" in groups:
            payload["yjs"] = yjs.extra()
        if "overhead" in groups:
            payload["overhead"] = overhead.extra()
        write_json(out, payload)
        print(f"results written to {out}")


if __name__ == "__main__":
    main()
