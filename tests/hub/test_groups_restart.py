"""Consumer groups across a restart on sqlite: closed mid-way, a dead letter not appended, kill -9.

A group's cursor, pending entries (leased or waiting) and dead-letter list
are in the engine; reopened on the same file, the group resumes: what was
acked never comes back, what was leased comes back once its lease would have
ended, what was dead is listed (or, if its dead letter was still being
appended, is appended then).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path

import pytest
from tests.support import FakeClock, lines_acked_before_kill_9

import hybridbus
from hybridbus.errors import EngineUnavailable
from hybridbus.hub.member import GroupDelivery, Member

T0 = 1_800_000_000.0
SETTINGS: dict[str, object] = {
    "ordered": False,
    "ack_wait": 10,
    "redelivery": {"schedule": [0]},
    "start": "earliest",
}


def ev(n: int) -> dict[str, object]:
    return {"id": f"e{n}", "source": "/test", "type": "test.event", "data": n}


async def take(member: Member, count: int) -> list[GroupDelivery]:
    got: list[GroupDelivery] = []
    async with asyncio.timeout(10):
        while len(got) < count:
            got.extend(await member.fetch(count - len(got)))
    return got


async def test_a_group_resumes_after_a_restart(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    url = f"sqlite://{tmp_path}"
    async with hybridbus.open(url, clock=clock) as bus:
        async with bus.group("billing", "acme/orders/#", member="a", **SETTINGS) as g:
            await bus.publish_many("acme/orders/1", [ev(n) for n in range(10)])
            got = {d.event.data: d for d in await take(g, 10)}
            await g.ack(got[0], got[1], got[2])
            await got[3].term("poison")
            await got[4].nack(delay=100)
            await got[5].nack(delay=0)
            (five,) = await take(g, 1)
            assert (five.event.data, five.attempt) == (5, 2)
            # 5 (attempt 2) and 6-9 (attempt 1) stay leased to "a", never settled
        await bus.publish_many("acme/orders/1", [ev(n) for n in range(10, 13)])  # no members
        before = await bus.groups.info("acme/billing")
        # lag counts log positions: the 3 new events and the dead letter's copy
        assert (before.pending, before.leased, before.lag, before.dead_letters) == (6, 5, 4, 1)
        dead = bus.groups.dead_letters("acme/billing")

    async with hybridbus.open(url, clock=clock) as bus:
        after = await bus.groups.info("acme/billing")
        assert after.position == before.position and after.settings == before.settings
        assert (after.pending, after.leased, after.lag) == (6, 1, 4)
        assert bus.groups.dead_letters("acme/billing") == dead
        pending = bus.groups.pending("acme/billing")
        # Written on their own: 4 (it failed) and 5 (its second lease, still running);
        # 6-9 never failed: read back from the log, attempts 0, their leases forgotten.
        assert [(p.offset, p.member, p.attempts) for p in pending] == [
            (5, "", 1),
            (6, "a", 2),
            *((n, "", 0) for n in range(7, 11)),
        ]
        async with bus.group("billing", "acme/orders/#", member="b", **SETTINGS) as g:
            fresh = await take(g, 7)  # 6-9 again, and 10-12 past the cursor: at once
            assert sorted(d.event.data for d in fresh) == [6, 7, 8, 9, 10, 11, 12]
            assert all(d.attempt == 1 for d in fresh)
            assert await g.fetch(10, wait=0.1) == []  # 5's lease has not ended
            await g.ack(*fresh)
            clock.advance(10.05)
            (back,) = await take(g, 1)
            assert (back.event.data, back.attempt) == (5, 3)
            await back.ack()
            assert await g.fetch(10, wait=0.1) == []  # 4 waits for its nack's delay
            clock.advance(90)
            (four,) = await take(g, 1)
            assert (four.event.data, four.attempt) == (4, 2)
            await four.ack()
            assert await g.fetch(10, wait=0.1) == []
        info = await bus.groups.info("acme/billing")
        assert (info.pending, info.lag, info.dead_letters) == (0, 0, 1)


async def test_a_dead_letter_whose_append_failed_is_appended_after_a_restart(
    tmp_path: Path,
) -> None:
    clock = FakeClock(T0)
    url = f"sqlite://{tmp_path}"
    async with hybridbus.open(url, clock=clock) as bus:
        async with bus.group("billing", "acme/orders/#", max_deliveries=1, start="earliest") as g:
            await bus.publish_many("acme/orders/1", [ev(0), ev(1)])
            # Every append to the dead letters fails from now on (a real SQLite error).
            with contextlib.closing(sqlite3.connect(tmp_path / "hybridbus.db")) as conn:
                conn.execute(
                    "CREATE TRIGGER boom BEFORE INSERT ON log WHEN NEW.topic LIKE '$dlq/%' "
                    "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
                )
            (d,) = await take(g, 1)
            # Dead: its dead letter cannot be appended. The sqlite engine writes group
            # changes in the transaction of appends queued beside them, so the nack's
            # write may fail with it (the nack stands, and is written later).
            with contextlib.suppress(EngineUnavailable):
                await d.nack(error="down")
            await asyncio.sleep(0.2)
            assert bus.groups.dead_letters("acme/billing") == []
            assert await g.fetch(1, wait=0.1) == []  # its key waits behind the dead one
            entry, behind = bus.groups.pending("acme/billing")
            assert (entry.offset, entry.due, entry.attempts) == (1, None, 1)
            assert (behind.offset, behind.attempts) == (2, 0)
        with contextlib.closing(sqlite3.connect(tmp_path / "hybridbus.db")) as conn:
            conn.execute("DROP TRIGGER boom")

    async with hybridbus.open(url, clock=clock) as bus:
        async with asyncio.timeout(10):
            while not bus.groups.dead_letters("acme/billing"):
                await asyncio.sleep(0.01)
        (dead,) = bus.groups.dead_letters("acme/billing")
        assert (dead.offset, dead.attempts, dead.error, dead.reason) == (
            1,
            1,
            "down",
            "max_deliveries",
        )
        async with bus.group("billing", "acme/orders/#") as g:
            (second,) = await take(g, 1)
            assert second.event.data == 1
            await second.ack()


async def test_a_term_awaiting_its_dead_letter_ends_when_the_bus_closes(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    async with (
        hybridbus.open(f"sqlite://{tmp_path}", clock=clock) as bus,
        bus.group("billing", "acme/orders/#", start="earliest") as g,
    ):
        await bus.publish("acme/orders/1", ev(0))
        with contextlib.closing(sqlite3.connect(tmp_path / "hybridbus.db")) as conn:
            conn.execute(
                "CREATE TRIGGER boom BEFORE INSERT ON log WHEN NEW.topic LIKE '$dlq/%' "
                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
            )
        (d,) = await take(g, 1)
        term = asyncio.create_task(d.term("poison"))
        await asyncio.sleep(0.1)
        assert not term.done()  # retrying the append
        await bus.close()
        with pytest.raises(hybridbus.BusError):
            await asyncio.wait_for(term, 5)


# The child: a bus and a group on a sqlite file; it publishes, then acks every
# delivery and prints its event id once the ack returned (durable).
_CHILD = r"""
import asyncio, sys
import hybridbus

async def main(path):
    async with hybridbus.open(f"sqlite://{path}") as bus:
        async with bus.group(
            "billing", "acme/orders/#", start="earliest", ordered=False, ack_wait=1,
            redelivery={"schedule": [0]}, member_in_flight=20,
        ) as g:
            for start in range(0, 400, 100):
                await bus.publish_many(
                    f"acme/orders/{start}",
                    [{"id": f"e{n}", "source": "/child", "type": "t", "data": n}
                     for n in range(start, start + 100)],
                )
            out = sys.stdout
            async for d in g:
                await d.ack()
                out.write(f"{d.event.data}\n")
                out.flush()

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.slow
async def test_after_kill_9_nothing_acked_comes_back_and_nothing_unacked_is_lost(
    tmp_path: Path,
) -> None:
    lines = await lines_acked_before_kill_9(_CHILD, tmp_path, 150)
    acked = {int(line) for line in lines}
    assert len(acked) == len(lines) >= 150  # nothing handled twice before the kill

    # The child acks one delivery at a time and prints it once its ack returned: the
    # kill may fall between the two, so one event may be acked (durably: it never comes
    # back) without its line. Every other event comes back or was printed.
    seen: set[int] = set()
    async with hybridbus.open(f"sqlite://{tmp_path}") as bus:
        async with bus.group("billing", "acme/orders/#") as g:

            async def take(wait: float) -> None:
                batch = await g.fetch(100, wait=wait)
                for d in batch:
                    assert d.event.data not in acked, f"acked {d.event.data} came back"
                    seen.add(d.event.data)
                await g.ack(*batch)

            async with asyncio.timeout(30):
                while len(acked | seen) < 399:
                    await take(0.5)
                await take(1.0)  # the last one, unless it is the one acked without its line
            assert await g.fetch(10, wait=0.2) == []
        info = await bus.groups.info("acme/billing")
    missing = set(range(400)) - acked - seen
    assert len(missing) <= 1, json.dumps(sorted(missing))
    assert (info.pending, info.lag, info.dead_letters) == (0, 0, 0)
