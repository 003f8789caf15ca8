"""Consumer groups (issue 10): what redelivery scheduling costs with 100,000 pending deliveries.

The pure `core.groups.GroupCore`, in a fresh subprocess per run (so its RSS growth
is its own and no earlier run's garbage is around): 100 members with
`member_in_flight=1000` lease 100,000 entries (unordered, `ack_wait` 30 s). CPU µs
per entry (`time.process_time`, the cyclic collector on as in an application) of
`take` (a log delivery becomes a pending entry), `dispatch` (leased to members),
the `tick`s once every lease has run out (time moved past `ack_wait`: each entry is
failed and waits its redelivery backoff), the `tick`s that make them due again (a
tick ends at most `TICK_LIMIT` of each, so as many passes as that takes, summed), the
redispatch, and the acks. Memory of the 100,000 pending entries: tracemalloc (a
second, untimed pass) and RSS growth — the group's bookkeeping; the deliveries the
entries hold (decoded events, as a log read returns them) are measured apart.

Part of the `groups` benchmark group (`benchmarks/groups.py`); one run by hand:
`python -m benchmarks.group_schedule 100000 --members 100` prints its JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from benchmarks.harness import Case, Settings
from benchmarks.samples import small_event
from hybridbus.core.codecs import decode_msgpack, encode_msgpack
from hybridbus.core.groups import GroupCore, GroupSettings
from hybridbus.core.log import Delivery

__all__ = ["ENTRIES", "MEMBERS", "cases", "schedule_costs"]

ENTRIES: Final = 100_000
MEMBERS: Final = 100  # x member_in_flight 1,000 = every entry leased
KEYS: Final = 16
TOPICS: Final = tuple(f"acme/jobs/k{n:02d}" for n in range(KEYS))
TIMEOUT: Final = 300.0


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _deliveries(entries: int) -> list[Delivery]:
    """What a log read hands the group: deliveries with their decoded events."""
    out = []
    for i in range(entries):
        event = small_event(i % KEYS, i)
        out.append(
            Delivery(
                topic=TOPICS[i % KEYS],
                offset=i // KEYS + 1,
                shard=0,
                position=i + 1,
                time=1.7e9,
                event=decode_msgpack(encode_msgpack(event)),
            )
        )
    return out


def _sched_settings(entries: int, members: int) -> GroupSettings:
    return GroupSettings(
        pattern="acme/jobs/+",
        ordered=False,
        ack_wait=30.0,
        member_in_flight=entries // members,
        max_in_flight=entries,
        max_pending=entries,
    )


def schedule_costs(entries: int = ENTRIES, members: int = MEMBERS) -> dict[str, float]:
    """Run the scheduling scenario once here: CPU µs per entry of each step, bytes per entry."""
    deliveries = _deliveries(entries)
    settings = _sched_settings(entries, members)
    out: dict[str, float] = {}
    clock = time.process_time

    def per_entry(name: str, start: float) -> None:
        out[f"{name}_us"] = (clock() - start) / entries * 1e6

    now = 1.7e9
    rss0 = _rss_bytes()
    core = GroupCore(settings, [0], random.Random(1))
    for m in range(members):
        core.join(f"member-{m:03d}")
    start = clock()
    for d in deliveries:
        core.take(d, now)
    per_entry("take", start)
    start = clock()
    leased = core.dispatch(now)
    per_entry("dispatch", start)
    out["rss_bytes"] = (_rss_bytes() - rss0) / entries
    later = now + settings.ack_wait + 0.02  # every lease has run out
    # A tick ends at most TICK_LIMIT leases and waits: as many passes as that takes.
    start = clock()
    dead = []
    while core.leased:
        dead += core.tick(later)
    per_entry("expire", start)
    due = later + settings.redelivery.max + 1  # past every redelivery wait
    start = clock()
    while core.timers:
        core.tick(due)
    per_entry("due", start)
    start = clock()
    again = core.dispatch(due)
    per_entry("redispatch", start)
    if dead or len(leased) != entries or len(again) != entries or core.redelivered != entries:
        raise RuntimeError(
            f"leased {len(leased)}, then {len(again)} of {entries}; {len(dead)} dead"
        )
    start = clock()
    for _, entry in again:
        core.ack(entry, due)
    per_entry("ack", start)
    if core.entries:
        raise RuntimeError(f"{len(core.entries)} entries left after acking all")
    del core, leased, again, deliveries

    # Memory by tracemalloc (a second pass: tracing slows the timed one down).
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    deliveries = _deliveries(entries)
    out["delivery_bytes"] = (tracemalloc.get_traced_memory()[0] - base) / entries
    base = tracemalloc.get_traced_memory()[0]
    core = GroupCore(settings, [0], random.Random(1))
    for m in range(members):
        core.join(f"member-{m:03d}")
    for d in deliveries:
        core.take(d, now)
    core.dispatch(now)
    out["entry_bytes"] = (tracemalloc.get_traced_memory()[0] - base) / entries
    tracemalloc.stop()
    return out


class _Scheduling:
    """One scheduling subprocess per round, shared by the round's scheduling cases.

    The first case of a round runs it (`fresh`); the others read its figures.
    """

    def __init__(self, entries: int, members: int) -> None:
        self.entries = entries
        self.members = members
        self.figures: dict[str, float] = {}

    def fresh(self, key: str) -> float:
        argv = [sys.executable, "-m", "benchmarks.group_schedule", str(self.entries)]
        argv += ["--members", str(self.members)]
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": str(root)}
        done = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=TIMEOUT, cwd=root, env=env
        )
        if done.returncode != 0:
            raise RuntimeError(f"the scheduling subprocess failed:\n{done.stderr[-3000:]}")
        self.figures = json.loads(done.stdout.splitlines()[-1])
        return self.figures[key]

    def get(self, key: str) -> float:
        return self.figures[key]


def cases(settings: Settings) -> list[Case]:
    entries = 2_000 if settings.smoke else ENTRIES
    members = 10 if settings.smoke else MEMBERS
    shared = _Scheduling(entries, members)
    what = f"{entries:,} pending, {members} members"
    steps = [
        ("take", "take (log -> pending)"),
        ("dispatch", "dispatch (lease to members)"),
        ("expire", "tick: every lease ran out"),
        ("due", "tick: redelivery waits over"),
        ("redispatch", "redispatch"),
        ("ack", "ack each"),
    ]

    def figure(key: str, first: bool) -> Callable[[], float]:
        return (lambda: shared.fresh(key)) if first else (lambda: shared.get(key))

    out = [
        Case(
            f"groups.schedule.{step}",
            f"scheduling CPU, {label} ({what})",
            "µs/delivery",
            figure(f"{step}_us", n == 0),
        )
        for n, (step, label) in enumerate(steps)
    ]
    mib = entries / 2**20  # bytes per entry -> MiB for all entries
    out += [
        Case(
            "groups.schedule.memory",
            f"memory of {what} (tracemalloc)",
            "MiB",
            lambda: shared.get("entry_bytes") * mib,
        ),
        Case(
            "groups.schedule.rss",
            f"memory of {what} (RSS growth)",
            "MiB",
            lambda: shared.get("rss_bytes") * mib,
        ),
        Case(
            "groups.schedule.deliveries",
            f"their deliveries and decoded events (tracemalloc, {entries:,})",
            "MiB",
            lambda: shared.get("delivery_bytes") * mib,
        ),
    ]
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """One run of the scenario: its figures as one JSON line on stdout."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.group_schedule")
    parser.add_argument("entries", type=int, nargs="?", default=ENTRIES)
    parser.add_argument("--members", type=int, default=MEMBERS)
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        figures = schedule_costs(args.entries, args.members)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
