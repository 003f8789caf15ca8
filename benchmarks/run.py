"""Run the benchmarks, print a table, write the results as JSON.

    python -m benchmarks.run                 # all but server -> benchmarks/results/latest.json
    python -m benchmarks.run publish fanout  # some groups (writes JSON only with --out)
    python -m benchmarks.run server          # the real server, WebSockets (~2 min; not default)
    python -m benchmarks.run --quick         # one short run of each case, a smoke test

A full run takes about two minutes on a 2-core machine.
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

from benchmarks import codec, fanout, publish, server
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
}
# `server` takes about 2 minutes on its own (servers and 1,000-10,000 client
# connections as subprocesses): it runs only when named.
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
    args = parser.parse_args(argv)
    groups: list[str] = args.groups or list(DEFAULT_GROUPS)
    unknown = set(groups) - GROUPS.keys()
    if unknown:
        parser.error(
            f"unknown group(s) {', '.join(sorted(unknown))}; pick from {', '.join(GROUPS)}"
        )
    settings = Settings.quick(args.tmpdir) if args.quick else Settings(tmpdir=args.tmpdir)
    out: Path | None = args.out
    if out is None and not args.quick and groups == DEFAULT_GROUPS:
        out = RESULTS_DIR / "latest.json"

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
        write_json(out, payload)
        print(f"results written to {out}")


if __name__ == "__main__":
    main()
