"""Consumer groups in process, on every engine: `bus.group(...)`, retries, dead letters, seek.

Time is a `FakeClock` the tests move: the group's timer runs every 10 ms of
real time and reads the fake clock, so a wait of seconds passes in a few
loop turns, and when a redelivery arrives is measured in fake seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.support import FakeClock

import hybridbus
from hybridbus.core.groups import GroupSettings, Redelivery
from hybridbus.errors import (
    DeliveryGone,
    GroupConflict,
    InvalidInput,
    InvalidPattern,
    InvalidSettings,
    UnknownDeadLetter,
    UnknownGroup,
)
from hybridbus.hub.bus import Bus
from hybridbus.hub.groups import settings_from
from hybridbus.hub.member import GroupDelivery, Member, parse_delivery_id

STEP = 0.01  # fake seconds the clock moves while a test waits for a redelivery
TOLERANCE = 0.05  # fake seconds a redelivery may come after it was due (timer slots, steps)


def url(kind: str, path: Path) -> str:
    return "memory://" if kind == "memory" else f"sqlite://{path / 'bus'}"


@pytest.fixture
async def bus(engine_kind: str, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Bus]:
    async with hybridbus.open(url(engine_kind, tmp_path), clock=clock) as opened:
        yield opened


def ev(n: int | str, source: str = "/test", **fields: object) -> dict[str, object]:
    return {"id": str(n), "source": source, "type": "test.event", **fields}


async def publish(bus: Bus, count: int, topic: str = "acme/orders/1", start: int = 0) -> None:
    await bus.publish_many(topic, [ev(f"{topic}-{i}", data=i) for i in range(start, count)])


async def take(member: Member, count: int, timeout: float = 10.0) -> list[GroupDelivery]:
    """The next `count` deliveries (the fake clock does not move)."""
    got: list[GroupDelivery] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got.extend(await member.fetch(count - len(got)))
    return got


async def handle(member: Member, count: int, timeout: float = 10.0) -> list[GroupDelivery]:
    """Ack deliveries as they come until `count` were handled (an ordered group hands
    out a key's next event only once the one before is settled)."""
    got: list[GroupDelivery] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            batch = await member.fetch(count - len(got))
            await member.ack(*batch)
            got.extend(batch)
    return got


async def nothing(member: Member, wait: float = 0.1) -> None:
    assert await member.fetch(10, wait=wait) == []


async def arrival(member: Member, clock: FakeClock, due: float) -> GroupDelivery:
    """The next delivery, due at fake time `due`: checks that nothing comes just before.

    The clock jumps to just before `due`, then moves STEP at a time. The
    group's timer (a 10 ms real sleep) always runs before a fetch's 30 ms wait
    ends, so a delivery due at t arrives at a fake time in [t, t + TOLERANCE].
    """
    if clock.now < due - 2 * STEP:
        clock.advance(due - 2 * STEP - clock.now)
        await nothing(member, 0.03)
    for _ in range(1_000):
        got = await member.fetch(1, wait=0.03)
        if got:
            assert due <= clock.now <= due + TOLERANCE, (clock.now - due, got)
            return got[0]
        clock.advance(STEP)
    raise AssertionError(f"nothing arrived by {clock.now - due} fake seconds after it was due")


# -- hand-out ----------------------------------------------------------------------


@pytest.mark.parametrize("members", [2, 4])
async def test_each_event_goes_to_one_member_of_the_group(bus: Bus, members: int) -> None:
    seen: dict[str, list[str]] = defaultdict(list)

    async def work(name: str, stop: asyncio.Event) -> None:
        async with bus.group("billing", "acme/orders/#", member=name) as g:
            while not stop.is_set():
                for d in await g.fetch(10, wait=0.05):
                    seen[d.event.id].append(name)
                    await d.ack()

    stop = asyncio.Event()
    await bus.groups.ensure("billing", _settings("acme/orders/#"))
    workers = [asyncio.create_task(work(f"w{i}", stop)) for i in range(members)]
    await asyncio.sleep(0.05)
    for n in range(4):
        await publish(bus, 50, topic=f"acme/orders/{n}")
    async with asyncio.timeout(20):
        while sum(len(v) for v in seen.values()) < 200:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*workers)
    assert len(seen) == 200 and all(len(names) == 1 for names in seen.values())
    assert len({names[0] for names in seen.values()}) == members  # everyone got some
    info = await bus.groups.info("acme/billing")
    assert (info.pending, info.acked, info.lag) == (0, 200, 0)


def _settings(pattern: str, **raw: object) -> GroupSettings:
    return settings_from(pattern, raw)


async def test_two_groups_on_one_pattern_each_get_every_event(bus: Bus) -> None:
    async with (
        bus.group("billing", "acme/orders/#") as billing,
        bus.group("audit", "acme/orders/#") as audit,
    ):
        await publish(bus, 10)
        for member in (billing, audit):
            got = await handle(member, 10)
            assert [d.event.data for d in got] == list(range(10))
            await nothing(member)
    assert {g.id for g in bus.groups.all("acme/")} == {"acme/billing", "acme/audit"}


async def test_a_delivery_carries_an_id_an_attempt_and_a_dedupe_key(bus: Bus) -> None:
    async with bus.group("billing", "acme/orders/#") as g:
        await bus.publish("acme/orders/7", ev("x", source="/shop"))
        (d,) = await take(g, 1)
        assert d.topic == "acme/orders/7" and d.event.id == "x" and d.attempt == 1
        epoch, rest = d.id.split("-")
        assert epoch == bus.engine.epoch and rest.endswith(".1")
        await d.nack(delay=0)
        (again,) = await take(g, 1)
        assert again.attempt == 2 and again.id != d.id and again.dedupe_key == d.dedupe_key
        await again.ack()


# -- settling errors -------------------------------------------------------------------


async def test_ack_is_idempotent_and_nack_of_a_settled_delivery_is_gone(bus: Bus) -> None:
    async with bus.group("billing", "acme/orders/#") as g:
        await publish(bus, 1)
        (d,) = await take(g, 1)
        await d.ack()
        await d.ack()
        await g.group.ack([d.id, d.id])
        for settle in (d.nack(), d.extend(), d.term("x")):
            with pytest.raises(DeliveryGone):
                await settle
        with pytest.raises(InvalidInput):
            await g.group.ack(["not-an-id"])
        with pytest.raises(InvalidInput):
            await g.group.nack("not-an-id", None, "")
    assert (await bus.groups.info("acme/billing")).acked == 1


async def test_a_nack_after_the_lease_ended_is_gone(bus: Bus, clock: FakeClock) -> None:
    async with bus.group("billing", "acme/orders/#", ack_wait=5, redelivery={"schedule": [0]}) as g:
        await publish(bus, 1)
        (d,) = await take(g, 1)
        again = await arrival(g, clock, due=clock.now + 5)
        assert again.attempt == 2
        with pytest.raises(DeliveryGone):
            await d.nack()
        with pytest.raises(InvalidInput, match="delay"):
            await again.nack(delay=-1)
        await again.ack()


async def test_errors_for_bad_groups(bus: Bus) -> None:
    async with bus.group("billing", "acme/orders/#"):
        pass
    with pytest.raises(GroupConflict):
        async with bus.group("billing", "acme/invoices/#"):
            pass
    for bad in (
        {"ack_wait": 0},
        {"max_deliveries": 0},
        {"member_in_flight": "many"},
        {"redelivery": {"base": 10, "max": 1}},
        {"redelivery": {"schedule": [-1]}},
        {"no_such_setting": 1},
        {"start": "yesterday"},
    ):
        with pytest.raises(InvalidSettings):
            async with bus.group("other", "acme/orders/#", **bad):
                pass
    with pytest.raises(InvalidSettings):
        async with bus.group("a name", "acme/orders/#"):
            pass
    for pattern in ("+/orders", "#", "$dlq/acme/#", "acme/or+ders"):
        with pytest.raises(InvalidPattern):
            async with bus.group("other", pattern):
                pass
    with pytest.raises(UnknownGroup):
        await bus.groups.info("acme/nope")
    with pytest.raises(UnknownGroup):
        bus.groups.dead_letters("other/billing")
    with pytest.raises(UnknownGroup):
        await bus.groups.seek("acme/nope", time=0)
    with pytest.raises(UnknownDeadLetter):
        await bus.groups.dead_letter("acme/billing", "0.1")
    assert [g.id for g in bus.groups.all()] == ["acme/billing"]


async def test_settings_change_but_the_cursor_stays(bus: Bus) -> None:
    async with bus.group("billing", "acme/orders/#", start="earliest") as g:
        await publish(bus, 2)
        await handle(g, 2)
    async with bus.group("billing", "acme/orders/#", ack_wait=7, start="earliest") as g:
        info = await bus.groups.info("acme/billing")
        assert info.settings.ack_wait == 7 and info.settings.start == "earliest"
        await nothing(g)  # not read again from the start


# -- redelivery, backoff, dead letters ----------------------------------------------


async def _always_nack(clock: FakeClock, g: Member, waits: list[float]) -> None:
    """Nack every attempt; each comes back `waits[n]` after nack n, until it is dead."""
    (first,) = await take(g, 1)
    current = first
    for attempt, wait in enumerate([*waits, None], 1):
        assert current.attempt == attempt and current.event.id == first.event.id
        await current.nack(error=f"attempt {attempt} failed")
        if wait is None:
            break
        current = await arrival(g, clock, due=clock.now + wait)
    assert g.group.settings.max_deliveries == len(waits) + 1


async def test_a_handler_that_always_fails_gets_max_deliveries_at_the_scheduled_times(
    bus: Bus, clock: FakeClock
) -> None:
    schedule = [1.0, 2.5, 4.0]
    async with bus.group(
        "billing", "acme/orders/#", max_deliveries=5, redelivery={"schedule": schedule}
    ) as g:
        await publish(bus, 1)
        await _always_nack(clock, g, [1.0, 2.5, 4.0, 4.0])  # the last wait repeats
        await _one_dead_letter(bus, g, clock, attempts=5, reason="maxdeliveries")
        (dead,) = bus.groups.dead_letters("acme/billing")
        assert dead.error == "attempt 5 failed"
        assert dead.last - dead.first == pytest.approx(1.0 + 2.5 + 4.0 + 4.0, abs=4 * TOLERANCE)
        clock.advance(60)
        await nothing(g)


async def test_seeded_backoff_gives_reproducible_waits(bus: Bus, clock: FakeClock) -> None:
    redelivery = {"base": 2.0, "factor": 2.0, "max": 10.0}
    rng = random.Random(1234)
    waits = [Redelivery(**redelivery).wait(n, rng) for n in (1, 2, 3)]  # type: ignore[arg-type]
    async with bus.group("billing", "acme/orders/#", max_deliveries=4, redelivery=redelivery) as g:
        g.group.core.rng.seed(1234)
        await publish(bus, 1)
        await _always_nack(clock, g, waits)


async def _one_dead_letter(
    bus: Bus, g: Member, clock: FakeClock, *, attempts: int, reason: str
) -> None:
    async with asyncio.timeout(10):
        while not bus.groups.dead_letters("acme/billing"):
            await asyncio.sleep(0.01)
    (dead,) = bus.groups.dead_letters("acme/billing")
    assert dead.dlq_topic == "$dlq/acme/billing/orders/1"
    assert (dead.topic, dead.offset, dead.attempts) == ("acme/orders/1", 1, attempts)
    assert dead.reason == ("term" if reason == "term" else "max_deliveries")
    shown, copy = await bus.groups.dead_letter("acme/billing", dead.id)
    assert shown == dead and copy is not None
    assert copy.topic == dead.dlq_topic and copy.event.id == "acme/orders/1-0"
    ext = copy.event.extensions
    assert ext["dlqgroup"] == "billing" and ext["dlqtopic"] == "orders/1"
    assert ext["dlqoffset"] == 1 and ext["dlqreason"] == reason
    assert ext["dlqattempts"] == attempts and ext["dlqerror"] == dead.error
    for name in ("dlqfirst", "dlqlast"):
        datetime.fromisoformat(str(ext[name]).replace("Z", "+00:00")).astimezone(UTC)
    history = await bus.history("$dlq/acme/billing/#")
    assert [d.event.id for d in history.deliveries] == ["acme/orders/1-0"]
    info = await bus.groups.info("acme/billing")
    assert (info.dead_letters, info.dead) == (1, 1)


async def test_term_sends_to_the_dead_letters_at_once(bus: Bus, clock: FakeClock) -> None:
    async with bus.group("billing", "acme/orders/#", max_deliveries=5) as g:
        await publish(bus, 2)
        (d,) = await take(g, 1)  # the second waits behind it (one key)
        await d.term("cannot parse")
        await _one_dead_letter(bus, g, clock, attempts=1, reason="term")
        (dead,) = bus.groups.dead_letters("acme/billing")
        assert dead.error == "cannot parse"
        (second,) = await take(g, 1)
        assert second.event.data == 1
        await second.ack()


async def test_dead_letters_replay_to_the_topic_past_dedupe(bus: Bus, clock: FakeClock) -> None:
    async with (
        bus.group("billing", "acme/orders/#", max_deliveries=1) as g,
        bus.subscribe("acme/orders/#") as sub,
    ):
        await bus.publish("acme/orders/1", ev("acme/orders/1-0", source="/shop", data=0))
        (d,) = await take(g, 1)
        await d.nack(error="down")
        await _one_dead_letter(bus, g, clock, attempts=1, reason="maxdeliveries")
        (dead,) = bus.groups.dead_letters("acme/billing")
        assert dead.error == "down"
        assert await bus.groups.replay("acme/billing", to="topic") == 1
        assert bus.groups.dead_letters("acme/billing") == []
        first = await asyncio.wait_for(sub.__anext__(), 10)
        again = await asyncio.wait_for(sub.__anext__(), 10)
        assert (again.event.id, again.event.source) == ("acme/orders/1-0", "/shop")
        assert again.offset == first.offset + 1 and again.topic == "acme/orders/1"
        assert not any(k.startswith("dlq") for k in again.event.extensions)
        (replayed,) = await take(g, 1)  # the group sees the new copy too
        assert replayed.attempt == 1 and replayed.event.id == "acme/orders/1-0"
        assert replayed.dedupe_key == d.dedupe_key
        await replayed.ack()
        await nothing(g)


async def test_dead_letters_replay_into_the_group(bus: Bus, clock: FakeClock) -> None:
    async with bus.group("billing", "acme/orders/#", max_deliveries=1) as g:
        await publish(bus, 1)
        (d,) = await take(g, 1)
        await d.nack()
        await _one_dead_letter(bus, g, clock, attempts=1, reason="maxdeliveries")
        assert await bus.groups.replay("acme/billing", to="group") == 1
        (again,) = await take(g, 1)
        assert (again.topic, again.attempt, again.event.id) == ("acme/orders/1", 1, d.event.id)
        assert "dlqgroup" not in again.event.extensions
        await again.ack()
        await nothing(g)
        assert bus.groups.dead_letters("acme/billing") == []
        assert len((await bus.history("acme/orders/#")).deliveries) == 1  # not republished


async def test_a_dead_letter_replayed_into_the_group_dies_again_under_its_topic(
    bus: Bus, clock: FakeClock
) -> None:
    async with bus.group("billing", "acme/orders/#", max_deliveries=1) as g:
        await publish(bus, 1)
        await (await take(g, 1))[0].nack()
        await _one_dead_letter(bus, g, clock, attempts=1, reason="maxdeliveries")
        await bus.groups.replay("acme/billing", to="group")
        (again,) = await take(g, 1)
        await again.term("still bad")
        (dead,) = bus.groups.dead_letters("acme/billing")
        assert (dead.topic, dead.offset) == ("acme/orders/1", 1)
        assert dead.dlq_topic == "$dlq/acme/billing/orders/1"
        _, copy = await bus.groups.dead_letter("acme/billing", dead.id)
        assert copy is not None and copy.event.extensions["dlqtopic"] == "orders/1"


async def test_purge_and_list_dead_letters_in_order(bus: Bus) -> None:
    async with bus.group("billing", "acme/orders/#", ordered=False) as g:
        await publish(bus, 7)  # their dead letters' copies are at positions 8 to 14
        for d in await take(g, 7):
            await d.term(f"bad {d.event.data}")
        letters = bus.groups.dead_letters("acme/billing")  # all at one (fake) time
        assert [d.offset for d in letters] == list(range(1, 8))  # oldest first
        page = bus.groups.dead_letters("acme/billing", limit=3)
        rest = bus.groups.dead_letters("acme/billing", after=page[-1].id)
        assert page + rest == letters
        with pytest.raises(UnknownDeadLetter):
            await bus.groups.purge("acme/billing", ["9.9"])
        assert await bus.groups.purge("acme/billing", [letters[0].id]) == 1
        assert await bus.groups.replay("acme/billing", [letters[1].id], to="group") == 1
        assert (await take(g, 1))[0].event.data == 1
        assert await bus.groups.purge("acme/billing") == 5
        assert bus.groups.dead_letters("acme/billing") == []
        assert await bus.groups.replay("acme/billing") == 0


# -- members coming and going -----------------------------------------------------------


async def test_a_member_that_leaves_holding_leases_hands_them_on_after_ack_wait(
    bus: Bus, clock: FakeClock
) -> None:
    # A lease that runs out is a failure like a nack: the redelivery wait (here 0) follows.
    async with bus.group(
        "billing", "acme/orders/#", ack_wait=10, ordered=False, redelivery={"schedule": [0]}
    ) as second:
        async with bus.group("billing", "acme/orders/#", member="first") as first:
            await publish(bus, 4)
            mine = await take(first, 1)  # the others stay in its queue, never handed out
            await asyncio.sleep(0.05)
        got = await take(second, 3)  # its own, and those `first` never saw: back at once
        assert sorted(d.event.data for d in got + mine) == [0, 1, 2, 3]
        assert all(d.attempt == 1 for d in got)
        await second.ack(*got)
        pending = bus.groups.pending("acme/billing")
        assert [(p.member, p.attempts) for p in pending] == [("first", 1)]
        again = await arrival(second, clock, due=1_800_000_000.0 + 10)
        assert again.event.id == mine[0].event.id and again.attempt == 2
        await again.ack()


async def test_per_key_order_with_8_concurrent_members(bus: Bus) -> None:
    keys = [f"k{k}" for k in range(20)]
    rng = random.Random(5)
    handled: dict[str, list[int]] = defaultdict(list)
    stop = asyncio.Event()
    await bus.groups.ensure("billing", _settings("acme/orders/#"))

    async def work(name: str) -> None:
        async with bus.group("billing", "acme/orders/#", member=name) as g:
            while not stop.is_set():
                for d in await g.fetch(5, wait=0.05):
                    await asyncio.sleep(rng.random() / 500)
                    handled[d.event.partitionkey or ""].append(int(d.event.data))
                    await d.ack()

    workers = [asyncio.create_task(work(f"w{i}")) for i in range(8)]
    await asyncio.sleep(0.05)
    sent: dict[str, list[int]] = defaultdict(list)
    items = []
    for n in range(400):
        key = rng.choice(keys)
        sent[key].append(n)
        items.append((f"acme/orders/{n % 7}", ev(f"o{n}", data=n, partitionkey=key)))
    for start in range(0, 400, 50):
        await bus.publish_many(items[start : start + 50])
    async with asyncio.timeout(30):
        while sum(map(len, handled.values())) < 400:
            await asyncio.sleep(0.02)
    stop.set()
    await asyncio.gather(*workers)
    assert handled == sent


async def test_an_unordered_group_spreads_one_key_over_members(bus: Bus) -> None:
    await publish(bus, 8)  # one topic: one key
    for ordered, most in ((True, 1), (False, 4)):
        name = f"g{int(ordered)}"
        settings = {"ordered": ordered, "member_in_flight": 2, "start": "earliest"}
        members = [bus.group(name, "acme/orders/#", **settings) for _ in range(4)]
        async with members[0] as a, members[1] as b, members[2] as c, members[3] as d:
            await asyncio.sleep(0.1)
            got = {m.name: await m.fetch(10, wait=0.05) for m in (a, b, c, d)}
            busy = [name for name, ds in got.items() if ds]
            assert len(busy) == most, got
            assert sum(map(len, got.values())) == (1 if ordered else 8)


async def test_expired_events_are_not_handed_out(bus: Bus, clock: FakeClock) -> None:
    soon = datetime.fromtimestamp(clock.now + 5, UTC).isoformat()
    await bus.publish("acme/orders/1", ev("old", expirytime=soon))
    await bus.publish("acme/orders/2", ev("keep"))
    clock.advance(10)
    async with bus.group("billing", "acme/orders/#", start="earliest") as g:
        assert [d.event.id for d in await handle(g, 1)] == ["keep"]
        await nothing(g)
        # Taken, failed, and expired while it waited for its redelivery: not handed out again.
        later = datetime.fromtimestamp(clock.now + 5, UTC).isoformat()
        await bus.publish("acme/orders/3", ev("brief", expirytime=later))
        (d,) = await take(g, 1)
        await d.nack(delay=8)
        clock.advance(9)
        await nothing(g, 0.2)
        info = await bus.groups.info("acme/billing")
        assert (info.pending, info.expired) == (0, 1)


# -- where a group starts, and seeking ---------------------------------------------


async def test_start_earliest_latest_and_a_token(bus: Bus) -> None:
    acks = [await bus.publish("acme/orders/1", ev(i, data=i)) for i in range(3)]
    async with (
        bus.group("early", "acme/orders/#", start="earliest") as early,
        bus.group("late", "acme/orders/#") as late,
        bus.group("token", "acme/orders/#", start=str(acks[0].token)) as token,
    ):
        await bus.publish("acme/orders/1", ev(3, data=3))
        assert [d.event.data for d in await handle(early, 4)] == [0, 1, 2, 3]
        assert [d.event.data for d in await handle(late, 1)] == [3]
        assert [d.event.data for d in await handle(token, 3)] == [1, 2, 3]
        for member in (early, late, token):
            await nothing(member, 0.05)


async def test_seek_to_a_position_or_a_time_replays(bus: Bus, clock: FakeClock) -> None:
    acks = []
    for i in range(4):
        acks.append(await bus.publish("acme/orders/1", ev(i, data=i)))
        clock.advance(60)
    async with bus.group("billing", "acme/orders/#", start="earliest") as g:
        await handle(g, 4)
        position = await bus.groups.seek("acme/billing", position=str(acks[1].token))
        assert position == str(acks[1].token)
        assert [d.event.data for d in await handle(g, 2)] == [2, 3]
        # The third event was appended at T0 + 120 s.
        await bus.groups.seek("acme/billing", time=1_800_000_000.0 + 100)
        assert [d.event.data for d in await handle(g, 2)] == [2, 3]
        await bus.groups.seek("acme/billing", time=1_800_000_000.0 + 1e6)
        await nothing(g)
        with pytest.raises(InvalidSettings):
            await bus.groups.seek("acme/billing")
    info = await bus.groups.info("acme/billing")
    assert info.pending == 0 and info.position == str(acks[-1].token)


async def test_delete_removes_the_group(bus: Bus) -> None:
    async with bus.group("billing", "acme/orders/#") as g:
        await bus.groups.delete("acme/billing")
        with pytest.raises(UnknownGroup):
            await g.fetch(1, wait=1)
    assert bus.groups.all() == []
    assert await bus.engine.groups() == []


async def test_concurrent_joins_of_a_new_group_make_one_group(bus: Bus) -> None:
    # Creating a group awaits the log's head: joins racing into that await must not
    # each create their own group (every event would then go to every member).
    async with contextlib.AsyncExitStack() as stack:
        members = await asyncio.gather(
            *(
                stack.enter_async_context(
                    bus.group("race", "acme/#", member=f"m{i}", ordered=False)
                )
                for i in range(4)
            )
        )
        assert len({id(m.group) for m in members}) == 1
        assert len(bus.groups.all()) == 1
        await publish(bus, 8)
        got = [d for m in members for d in await m.fetch(8, wait=0.5)]
        assert sorted(d.event.data for d in got) == list(range(8))


# -- delivery ids --------------------------------------------------------------------


async def test_an_ack_with_a_malformed_id_acks_none_of_its_ids(bus: Bus) -> None:
    async with bus.group("billing", "acme/orders/#") as g:
        await publish(bus, 1)
        (d,) = await take(g, 1)
        group = g.group
        first, rest = d.id.split("-")
        for bad in (
            d.id + "x",
            f"{first}-{rest.replace('.', '..', 1)}",
            f"{first}-{rest[:-1]}\u0661",  # a digit, but not an ASCII one
            f"{first}-1.{2**63}.1",  # past MAX_POSITION
            f"{first}!-{rest}",
            7,
        ):
            with pytest.raises(InvalidInput):
                await group.ack([d.id, bad])  # type: ignore[list-item]
            info = await bus.groups.info("acme/billing")
            assert info.pending == 1 and info.acked == 0, bad
        await group.ack([d.id, "other_epoch-0.1.1"])  # another epoch's id: no error, no ack
        info = await bus.groups.info("acme/billing")
        assert info.pending == 0 and info.acked == 1


async def test_an_ack_of_an_earlier_deliverys_id_settles_the_event(bus: Bus) -> None:
    # The group remembers the id of each entry's latest delivery (an ack finds it at
    # once); an earlier delivery's id is read as before and settles the event all the same.
    async with bus.group("billing", "acme/orders/#") as g:
        await publish(bus, 1)
        (d,) = await take(g, 1)
        first = d.id
        await d.nack(delay=0)
        (again,) = await take(g, 1)
        assert again.id != first and again.attempt == 2
        await g.group.ack([first])
        info = await bus.groups.info("acme/billing")
        assert info.pending == 0 and info.acked == 1


async def test_an_id_made_late_for_a_delivery_from_before_a_seek_does_not_take_an_ack(
    bus: Bus,
) -> None:
    # A seek keeps the epoch: the event handed out again gets the very id its first
    # delivery had. That id, made only now for the delivery from before the seek,
    # must not make an ack of the new delivery settle nothing.
    async with bus.group("billing", "acme/orders/#") as g:
        await publish(bus, 1)
        (old,) = await take(g, 1)  # its id is not made yet
        await bus.groups.seek("acme/billing", time=0)
        (new,) = await take(g, 1)
        new_id = new.id
        assert old.id == new_id
        await g.group.ack([new_id])
        info = await bus.groups.info("acme/billing")
        assert info.pending == 0 and info.acked == 1


async def test_the_ids_remembered_for_acks_stay_bounded(bus: Bus) -> None:
    # Ids whose entries are settled otherwise than by an ack of the id (here: acked in
    # process) are forgotten once there are more than twice `max_pending` + 1024.
    async with bus.group("billing", "acme/orders/#", max_pending=100, ordered=False) as g:
        await publish(bus, 2_000)
        handled = 0
        while handled < 2_000:
            batch = await take(g, min(100, 2_000 - handled))
            assert all(d.id for d in batch)
            await g.ack(*batch)
            handled += len(batch)
        assert len(g.group._issued) <= 2 * 100 + 1024


_ID_RULE = re.compile(r"([A-Za-z0-9_]{1,64})-([0-9]{1,6})\.([0-9]{1,19})\.([0-9]{1,9})")


def _by_the_rule(text: str) -> tuple[str, int, int, int] | None:
    """The documented form of a delivery id, as a regular expression."""
    match = _ID_RULE.fullmatch(text)
    if match is None or int(match.group(3)) > 2**63 - 1:
        return None
    return match.group(1), int(match.group(2)), int(match.group(3)), int(match.group(4))


@pytest.mark.parametrize(
    "text",
    [
        "Hk2x-0.44.1",
        "a_b_9-123456.9223372036854775807.999999999",
        "___-0.0.0",
        "e" * 64 + "-1.2.3",
        "e" * 65 + "-1.2.3",
        "-1.2.3",
        "e-1234567.2.3",
        "e-1.9223372036854775808.3",
        "e-1.2.1234567890",
        "e-1.2",
        "e-1.2.3.4",
        "e-1..3",
        "e-.1.3",
        "e-1.2.",
        "e-1-2.3.4",
        "e-f-1.2.3",
        "e.1-2.3",
        "é-1.2.3",
        "e-\u0661.2.3",  # an Arabic-Indic digit: a digit, not an ASCII one
        "e-1.².3",
        "e-1.2.3 ",
        " e-1.2.3",
        "e-+1.2.3",
        "e-1_0.2.3",
        "e!-1.2.3",
        "x",
        "",
    ],
)
def test_delivery_ids_are_read_as_documented(text: str) -> None:
    expected = _by_the_rule(text)
    if expected is None:
        with pytest.raises(InvalidInput):
            parse_delivery_id(text)
    else:
        assert parse_delivery_id(text) == expected


@given(st.text(alphabet="ab_9-.0\u0661 é", max_size=30))
def test_any_text_is_read_as_the_rule_reads_it(text: str) -> None:
    expected = _by_the_rule(text)
    try:
        got = parse_delivery_id(text)
    except InvalidInput:
        assert expected is None
    else:
        assert got == expected


def test_a_delivery_id_that_is_no_text_is_refused() -> None:
    with pytest.raises(InvalidInput):
        parse_delivery_id(7)  # type: ignore[arg-type]
