"""A group member killed with `kill -9` while it holds deliveries: real processes end to end.

`hybridbus serve` on sqlite, and two member processes (python scripts on the
Python client) in one consumer group with `ack_wait` = 1 s. Each member logs
`<dedupe_key> <event id> received <attempt>` when its handler takes a
delivery and `<dedupe_key> <event id> acked` only AFTER `ack()` returned.
The "victim" acks ten, then hangs in its handler holding what it was given;
it is killed with SIGKILL. The "survivor" must get the victim's unacked
deliveries once their lease ends, and at the end every published event was
acked exactly once, and none acked by the victim was ever given to the
survivor (at-least-once: received twice is allowed, acked-then-received is not).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from tests.servers import ServerProcess, event

import hybridbus.client

TOTAL = 200

MEMBER = """
import asyncio, sys, time
import hybridbus.client
from hybridbus.client import ClientConfig
from hybridbus.core.backoff import Backoff

async def main(url: str, role: str, path: str) -> None:
    log = open(path, "a", buffering=1)  # a line reaches the kernel at its newline
    config = ClientConfig(backoff=Backoff(base=0.05, cap=0.5), request_timeout=30.0)
    async with hybridbus.client.connect(url, config=config) as c:
        async with c.group(
            "crash", "jobs/#", member=role, ack_wait=1.0, ordered=False, member_in_flight=5
        ) as g:
            log.write("joined\\n")
            acked = 0
            while True:
                batch = await g.fetch(5, wait=1.0)
                for d in batch:
                    log.write(f"{d.dedupe_key} {d.event.id} received {d.attempt} {time.time()}\\n")
                for d in batch:
                    if role == "victim" and acked >= 10:
                        log.write("holding\\n")
                        await asyncio.sleep(3600)  # hangs, holding the rest of its deliveries
                    await asyncio.sleep(0.002)  # the handler's work
                    await d.ack()
                    acked += 1
                    log.write(f"{d.dedupe_key} {d.event.id} acked {time.time()}\\n")

asyncio.run(main(*sys.argv[1:]))
"""


def lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


async def wait_for(check: object, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.05)
    assert check(), what  # type: ignore[operator]


@pytest.mark.slow
async def test_a_killed_members_deliveries_go_to_the_other_and_each_event_is_acked_once(
    tmp_path: Path,
) -> None:
    engine = f"sqlite://{tmp_path / 'data'}"
    server = ServerProcess(
        "--engine", engine, "--anonymous-tenant", "acme", logs=tmp_path / "server.log"
    )
    script = tmp_path / "member.py"
    script.write_text(MEMBER)
    logs = {role: tmp_path / f"{role}.log" for role in ("victim", "survivor")}
    members: dict[str, subprocess.Popen[bytes]] = {}
    try:
        await server.wait_listening()
        for role, path in logs.items():
            with (tmp_path / f"{role}.err").open("wb") as stderr:
                members[role] = subprocess.Popen(
                    [sys.executable, str(script), server.url, role, str(path)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    cwd=Path(__file__).resolve().parent.parent.parent,
                )
        await wait_for(
            lambda: all(["joined"] in lines(p) for p in logs.values()), 30, "both joined"
        )
        async with hybridbus.client.connect(server.url) as publisher:
            for start in range(0, TOTAL, 50):
                await publisher.publish_many(
                    "jobs/1", [event(f"job-{n}") for n in range(start, start + 50)]
                )
        await wait_for(lambda: ["holding"] in lines(logs["victim"]), 30, "the victim holds")
        members["victim"].send_signal(signal.SIGKILL)
        members["victim"].wait(10)

        def acked_ids() -> set[str]:
            return {
                row[1] for path in logs.values() for row in lines(path) if row[2:3] == ["acked"]
            }

        await wait_for(lambda: len(acked_ids()) == TOTAL, 60, "every event acked")
        await asyncio.sleep(1.5)  # more than ack_wait: anything wrongly redelivered shows now
    finally:
        for process in members.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
        await server.kill()

    victim, survivor = lines(logs["victim"]), lines(logs["survivor"])
    acked = Counter(row[1] for row in victim + survivor if row[2:3] == ["acked"])
    assert set(acked) == {f"job-{n}" for n in range(TOTAL)}
    assert max(acked.values()) == 1, "an event was acked twice"
    victim_acked = {row[1] for row in victim if row[2:3] == ["acked"]}
    victim_held = {row[1] for row in victim if row[2:3] == ["received"]} - victim_acked
    survivor_got = {row[1]: int(row[3]) for row in survivor if row[2:3] == ["received"]}
    assert len(victim_acked) == 10
    assert victim_held, "the victim was killed holding nothing"
    # Acked-then-received never happens: nothing the victim acked came to the survivor.
    assert not victim_acked & set(survivor_got)
    # What the victim held came back to the survivor, as a later attempt.
    assert victim_held <= set(survivor_got)
    assert all(survivor_got[job] >= 2 for job in victim_held)
    # One dedupe key per event, the same on every delivery of it.
    keys: dict[str, set[str]] = {}
    for row in victim + survivor:
        if len(row) >= 3 and row[2] in ("received", "acked"):
            keys.setdefault(row[1], set()).add(row[0])
    assert all(len(k) == 1 for k in keys.values())
    assert len({next(iter(k)) for k in keys.values()}) == TOTAL
