"""The consumer-group benchmark (benchmarks/groups.py) runs, at a tiny size, and checks itself.

Nothing here is timed: the figures of a tiny run mean nothing. What is checked is
that every case of the group runs to its end on this machine and that its own
checks hold (every event acked exactly once, no redelivery; the scheduling
scenario leases, expires, redispatches and acks every entry).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from benchmarks import group_schedule, groups
from benchmarks.harness import Settings
from benchmarks.run import DEFAULT_GROUPS, GROUPS

EVENTS = 300


def test_bench_groups_is_a_group_of_the_runner_run_only_when_named() -> None:
    assert GROUPS["groups"] is groups.run
    assert "groups" not in DEFAULT_GROUPS


@pytest.mark.parametrize("live", [False, True], ids=["backlog", "live"])
@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
async def test_bench_groups_drains_every_event_once_memory(live: bool, ordered: bool) -> None:
    settings = groups.ORDERED if ordered else groups.TUNED
    stats: dict[str, float] = {}
    rate = await groups.bus_consume("memory://", EVENTS, settings, live, stats=stats)
    assert rate > 0
    assert stats["seconds"] > 0


@pytest.mark.parametrize("live", [False, True], ids=["backlog", "live"])
async def test_bench_groups_drains_every_event_once_sqlite(tmp_path: Path, live: bool) -> None:
    assert await groups.bus_consume(f"sqlite://{tmp_path}", EVENTS, live=live) > 0


def test_bench_groups_scheduling_scenario_runs_every_step() -> None:
    figures = group_schedule.schedule_costs(entries=200, members=10)
    steps = ("take", "dispatch", "expire", "due", "redispatch", "ack")
    assert {f"{step}_us" for step in steps} <= figures.keys()
    assert all(figures[f"{step}_us"] >= 0 for step in steps)
    # An entry is a few hundred bytes of bookkeeping; its delivery (with the event) more.
    assert 100 < figures["entry_bytes"] < 10_000
    assert 100 < figures["delivery_bytes"] < 10_000


async def test_bench_groups_over_websocket_drains_every_event_once() -> None:
    from benchmarks.net.procs import ServerProcess

    stats: dict[str, float] = {}
    with ServerProcess("hybridbus") as server:
        rate = await groups.ws_consume(server.port, EVENTS, stats=stats, server_cpu=server.cpu_s)
    assert rate > 0
    assert stats["server_cpu_s"] > 0


async def test_bench_groups_redis_peer_drains_every_event_once() -> None:
    from benchmarks.net.procs import ServerProcess

    if not groups.redis_available():
        if os.environ.get("HYBRIDBUS_REQUIRE_SERVICES") == "1":
            pytest.fail("HYBRIDBUS_REQUIRE_SERVICES=1 but redis-server or redis-py is missing")
        pytest.skip("redis-server or redis-py missing (HYBRIDBUS_REQUIRE_SERVICES=1: a failure)")

    stats: dict[str, float] = {}
    with ServerProcess("redis-aof") as server:
        rate = await groups.redis_consume(server.port, EVENTS, stats=stats, server_cpu=server.cpu_s)
    assert rate > 0
    assert stats["server_cpu_s"] >= 0


def test_bench_groups_every_case_runs_in_a_smoke_run(tmp_path: Path) -> None:
    """`python -m benchmarks.run groups --quick`: one run of every case, small sizes."""
    lines: list[str] = []
    results = groups.run(Settings.quick(str(tmp_path)), lines.append)
    ids = {r.id for r in results}
    assert {"groups.memory", "groups.sqlite", "groups.ws.memory", "groups.ws.sqlite"} <= ids
    assert {"groups.schedule.dispatch", "groups.schedule.memory"} <= ids
    assert all(len(r.runs) == 1 and r.runs[0] > 0 for r in results)
    if groups.redis_available():
        assert {"groups.redis.everysec", "groups.redis.always"} <= ids
