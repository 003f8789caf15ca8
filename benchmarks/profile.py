"""Run one benchmark case once under cProfile, threads included, and print the hot spots.

    python -m benchmarks.profile publish.memory
    python -m benchmarks.profile publish.sqlite.full --threads --top 30
    python -m benchmarks.profile fanout.memory --sort cumulative

The figure printed is the profiled run's, so slower than an unprofiled one.
With `--threads`, every thread the case starts (the sqlite writer, the
`to_thread` workers) is profiled too and reported separately.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from benchmarks import codec, fanout, publish
from benchmarks.harness import Case, Settings

__all__ = ["all_cases", "main"]


def _quiet(_: str) -> None:
    return None


def all_cases(settings: Settings) -> dict[str, Case]:
    found = codec.cases(settings) + publish.cases(settings, _quiet) + fanout.cases(settings, _quiet)
    return {case.id: case for case in found}


@contextmanager
def profiled_threads(profiles: dict[str, list[cProfile.Profile]]) -> Iterator[None]:
    """Profile the body of every `threading.Thread` started meanwhile, grouped by name."""
    original = threading.Thread.run
    lock = threading.Lock()

    def run(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        try:
            profile.runcall(original, self)
        finally:
            name = re.sub(r"_\d+$", "", self.name)  # pool workers: one entry per pool
            with lock:
                profiles.setdefault(name, []).append(profile)

    threading.Thread.run = run  # type: ignore[method-assign]
    try:
        yield
    finally:
        threading.Thread.run = original  # type: ignore[method-assign]


def _report(profiles: Sequence[cProfile.Profile], sort: str, top: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(*profiles, stream=out)
    stats.strip_dirs().sort_stats(sort).print_stats(top)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("case", help="a case id, e.g. publish.memory (see --list)")
    parser.add_argument("--list", action="store_true", help="list the case ids")
    parser.add_argument("--seconds", type=float, default=2.0, help="publish run length")
    parser.add_argument("--threads", action="store_true", help="profile threads too")
    parser.add_argument("--sort", default="tottime", help="pstats sort key (default tottime)")
    parser.add_argument("--top", type=int, default=25, help="rows to print")
    args = parser.parse_args(argv)
    settings = Settings(runs=1, publish_seconds=args.seconds)
    cases = all_cases(settings)
    if args.list or args.case not in cases:
        print("\n".join(cases))
        return
    case = cases[args.case]
    main_profile = cProfile.Profile()
    threads: dict[str, list[cProfile.Profile]] = {}
    if args.threads:
        with profiled_threads(threads):
            value = main_profile.runcall(case.measure)
    else:
        value = main_profile.runcall(case.measure)
    print(f"{case.id}: {value:,.2f} {case.unit} (under the profiler)\n")
    print("== event-loop thread ==")
    print(_report([main_profile], args.sort, args.top))
    for name, profiles in threads.items():
        if sum(pstats.Stats(p).total_tt for p in profiles) < 0.01:  # type: ignore[attr-defined]
            continue  # idle helper threads
        print(f"== thread {name} ({len(profiles)}) ==")
        print(_report(profiles, args.sort, args.top))


if __name__ == "__main__":
    main()
