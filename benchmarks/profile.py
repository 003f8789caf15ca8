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
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from benchmarks import codec, fanout, publish
from benchmarks.harness import Case, Settings

__all__ = ["all_cases", "main"]


def all_cases(settings: Settings) -> dict[str, Case]:
    quiet: Callable[[str], None] = lambda _: None  # noqa: E731
    found = codec.cases(settings) + publish.cases(settings, quiet) + fanout.cases(settings, quiet)
    return {case.id: case for case in found}


@contextmanager
def profiled_threads(profiles: dict[str, cProfile.Profile]) -> Iterator[None]:
    """Profile the body of every `threading.Thread` started meanwhile, one profile per name."""
    original = threading.Thread.run
    lock = threading.Lock()

    def run(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        try:
            profile.runcall(original, self)
        finally:
            name = self.name.rsplit("_", 1)[0]  # pool workers: one entry per pool
            with lock:
                if name in profiles:
                    profiles[name].create_stats()
                    merged = pstats.Stats(profiles[name])
                    merged.add(pstats.Stats(profile))
                    profiles[name] = _Merged(merged)  # type: ignore[assignment]
                else:
                    profiles[name] = profile

    threading.Thread.run = run  # type: ignore[method-assign]
    try:
        yield
    finally:
        threading.Thread.run = original  # type: ignore[method-assign]


class _Merged:
    """Already-merged stats standing in for a Profile in `profiles`."""

    def __init__(self, stats: pstats.Stats) -> None:
        self.stats: Any = stats

    def create_stats(self) -> None:
        return None


def _report(source: cProfile.Profile | _Merged, sort: str, top: int) -> str:
    out = io.StringIO()
    stats = source.stats if isinstance(source, _Merged) else pstats.Stats(source)
    stats.stream = out
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
    threads: dict[str, cProfile.Profile] = {}
    if args.threads:
        with profiled_threads(threads):
            value = main_profile.runcall(case.measure)
    else:
        value = main_profile.runcall(case.measure)
    print(f"{case.id}: {value:,.2f} {case.unit} (under the profiler)\n")
    print("== event-loop thread ==")
    print(_report(main_profile, args.sort, args.top))
    for name, profile in threads.items():
        print(f"== thread {name} ==")
        print(_report(profile, args.sort, args.top))


if __name__ == "__main__":
    main()
