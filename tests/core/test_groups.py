"""GroupCore, the pure consumer-group state machine: hand-out, limits, settling, timers, changes."""

from __future__ import annotations

import math
import random

import msgspec
import pytest

from hybridbus.core.event import Event
from hybridbus.core.groups import (
    LEASED,
    WAITING,
    Changes,
    GroupCore,
    GroupSettings,
    PendingRecord,
    Redelivery,
)
from hybridbus.core.log import Delivery

T0 = 1_000.0


def delivery(position: int, topic: str = "acme/a", key: str | None = None) -> Delivery:
    event = Event(id=f"e{position}", source="/t", type="t", partitionkey=key)
    return Delivery(topic, position, 0, position, T0, event)


def core(**settings: object) -> GroupCore:
    return GroupCore(GroupSettings(pattern="acme/#", **settings), [0], random.Random(7))  # type: ignore[arg-type]


def fill(group: GroupCore, count: int, topic: str = "acme/a", start: int = 1) -> None:
    for position in range(start, start + count):
        group.take(delivery(position, topic), T0)


def handed(out: list[tuple[object, object]]) -> list[tuple[str, int]]:
    return [(m.name, e.position) for m, e in out]  # type: ignore[attr-defined]


# -- hand-out ------------------------------------------------------------------


def test_take_advances_the_cursor_and_dispatch_is_round_robin() -> None:
    group = core(ordered=False)
    fill(group, 6)
    assert group.cursor == [6]
    assert group.dispatch(T0) == []  # no members: nothing handed out
    for name in ("a", "b", "c"):
        group.join(name)
    out = group.dispatch(T0)
    assert handed(out) == [("a", 1), ("b", 2), ("c", 3), ("a", 4), ("b", 5), ("c", 6)]
    assert all(e.state == LEASED and e.attempts == 1 for _, e in out)
    assert group.leased == 6 and group.room == group.settings.max_pending - 6


@pytest.mark.parametrize("ordered", [True, False])
def test_take_many_is_take_of_each_delivery_past_the_cursor(ordered: bool) -> None:
    page = [
        delivery(p, topic=f"acme/{p % 3}", key="k" if p % 4 == 0 else None) for p in range(1, 30)
    ]
    one, many = core(ordered=ordered), core(ordered=ordered)
    for d in page[:5]:  # taken already (a live delivery before the page): skipped by both
        one.take(d, T0)
    many.take_many(page[:5], T0)
    for d in page:
        if d.position > one.cursor[0]:
            one.take(d, T0)
    assert many.take_many(page, T0) == len(page) - 5
    assert many.cursor == one.cursor == [29]
    for group in (one, many):
        for name in ("a", "b"):
            group.join(name)
    assert handed(many.dispatch(T0)) == handed(one.dispatch(T0))
    assert many.changes() == one.changes()


def test_room_limits_what_is_taken() -> None:
    group = core(max_pending=3)
    fill(group, 3)
    assert group.room == 0
    group.join("a")
    (_, first), *_ = group.dispatch(T0)
    group.ack(first, T0)
    assert group.room == 1


def test_member_in_flight_and_max_in_flight_limit_leases() -> None:
    group = core(ordered=False, member_in_flight=2, max_in_flight=3)
    fill(group, 10)
    group.join("a")
    assert handed(group.dispatch(T0)) == [("a", 1), ("a", 2)]  # a is full
    group.join("b")
    assert handed(group.dispatch(T0)) == [("b", 3)]  # the group is full
    assert group.dispatch(T0) == []
    entry = group.lookup(0, 1)
    assert entry is not None
    group.ack(entry, T0)
    assert handed(group.dispatch(T0)) == [("a", 4)]


def test_ordered_group_hands_out_one_entry_per_key_at_a_time() -> None:
    group = core()
    for position, topic in enumerate(["acme/x", "acme/y", "acme/x", "acme/y", "acme/x"], 1):
        group.take(delivery(position, topic), T0)
    group.join("a")
    group.join("b")
    assert handed(group.dispatch(T0)) == [("a", 1), ("b", 2)]
    assert group.dispatch(T0) == []  # 3 waits for 1, 4 for 2
    one = group.lookup(0, 1)
    assert one is not None
    group.ack(one, T0)
    assert handed(group.dispatch(T0)) == [("a", 3)]


def test_the_partition_key_beats_the_topic() -> None:
    group = core()
    group.take(delivery(1, "acme/x", key="k"), T0)
    group.take(delivery(2, "acme/y", key="k"), T0)  # same key, other topic: waits
    group.take(delivery(3, "acme/x"), T0)  # key "acme/x": free
    group.join("a")
    assert handed(group.dispatch(T0)) == [("a", 1), ("a", 3)]


def test_unordered_group_spreads_one_key_over_members() -> None:
    group = core(ordered=False)
    fill(group, 4, topic="acme/one")
    for name in ("a", "b", "c", "d"):
        group.join(name)
    assert {name for name, _ in handed(group.dispatch(T0))} == {"a", "b", "c", "d"}


# -- settling --------------------------------------------------------------------


def test_ack_removes_and_a_second_ack_is_a_no_op() -> None:
    group = core()
    fill(group, 1)
    group.join("a")
    ((_, entry),) = group.dispatch(T0)
    group.ack(entry, T0)
    group.ack(entry, T0)
    assert group.lookup(0, 1) is None and group.leased == 0 and not group.members["a"].held


def test_nack_with_delay_brings_the_entry_back_after_it() -> None:
    group = core()
    fill(group, 1)
    group.join("a")
    ((_, entry),) = group.dispatch(T0)
    assert group.nack(entry, T0, 5.0, "boom") is False
    assert entry.state == WAITING and entry.due == T0 + 5 and entry.error == "boom"
    assert group.tick(T0 + 4.9) == [] and group.dispatch(T0 + 4.9) == []
    group.tick(T0 + 5.01)
    ((_, again),) = group.dispatch(T0 + 5.01)
    assert again is entry and entry.attempts == 2 and group.redelivered == 1


def test_nack_without_delay_follows_the_schedule_then_the_last_wait_repeats() -> None:
    group = core(redelivery=Redelivery(schedule=(1.0, 3.0)), max_deliveries=10)
    fill(group, 1)
    group.join("a")
    now = T0
    waits = []
    for _ in range(4):
        group.tick(now)
        ((_, entry),) = group.dispatch(now)
        group.nack(entry, now, None, "")
        waits.append(entry.due - now)
        now = entry.due + 0.01
    assert waits == [1.0, 3.0, 3.0, 3.0]


def test_nack_without_delay_uses_full_jitter_backoff_reproducibly() -> None:
    settings = GroupSettings(
        pattern="acme/#", redelivery=Redelivery(base=1.0, factor=2.0, max=5.0), max_deliveries=9
    )

    def waits(seed: int) -> list[float]:
        group = GroupCore(settings, [0], random.Random(seed))
        fill(group, 1)
        group.join("a")
        now, out = T0, []
        for _ in range(6):
            group.tick(now)
            ((_, entry),) = group.dispatch(now)
            group.nack(entry, now, None, "")
            out.append(entry.due - now)
            now = entry.due + 0.02
        return out

    first = waits(1)
    assert first == waits(1) and first != waits(2)
    for n, wait in enumerate(first, 1):
        assert 0 <= wait <= min(5.0, 2.0 ** (n - 1)) + 1e-9


def test_redelivery_wait_schedule_vs_backoff() -> None:
    rng = random.Random(3)
    assert [Redelivery(schedule=(2.0, 4.0)).wait(n, rng) for n in (1, 2, 3)] == [2.0, 4.0, 4.0]
    backoff = Redelivery(base=0.5, factor=3.0, max=10.0)
    expected = [random.Random(3).uniform(0, c) for c in (0.5,)]
    assert [backoff.wait(1, random.Random(3))] == expected
    assert all(0 <= backoff.wait(9, rng) <= 10.0 for _ in range(100))


def test_lease_expiry_counts_as_a_failure() -> None:
    group = core(ack_wait=10.0, redelivery=Redelivery(schedule=(0.0,)))
    fill(group, 1)
    group.join("a")
    ((_, entry),) = group.dispatch(T0)
    assert group.tick(T0 + 9.99) == [] and entry.state == LEASED
    assert group.tick(T0 + 10.01) == []
    assert entry.state == WAITING and entry.error == "ack_wait passed"
    assert not group.members["a"].held
    group.join("b")
    assert [e for _, e in group.dispatch(T0 + 10.01)] == [entry]


def test_extend_starts_the_lease_over() -> None:
    group = core(ack_wait=10.0)
    fill(group, 1)
    group.join("a")
    ((_, entry),) = group.dispatch(T0)
    group.extend(entry, T0 + 8)
    group.tick(T0 + 12)
    assert entry.state == LEASED and entry.due == T0 + 18
    group.tick(T0 + 18.01)
    assert entry.state == WAITING
    with pytest.raises(ValueError, match="leased"):
        group.extend(entry, T0 + 20)


def test_max_deliveries_makes_an_entry_dead_and_bury_removes_it() -> None:
    group = core(max_deliveries=3, redelivery=Redelivery(schedule=(0.0,)))
    fill(group, 2)  # 2 waits behind 1 (same key)
    group.join("a")
    now = T0
    for attempt in (1, 2, 3):
        group.tick(now)
        out = group.dispatch(now)
        assert handed(out) == [("a", 1)]
        entry = out[0][1]
        assert entry.attempts == attempt
        dead = group.nack(entry, now, None, f"fail {attempt}")
        now += 0.02
    assert dead is True and math.isinf(entry.due) and entry.error == "fail 3"
    assert group.dispatch(now) == []  # dead, not yet buried: its key still waits
    group.bury(entry, now)
    assert group.lookup(0, 1) is None
    assert handed(group.dispatch(now)) == [("a", 2)]


def test_lease_expiry_past_max_deliveries_is_returned_by_tick() -> None:
    group = core(max_deliveries=1, ack_wait=1.0)
    fill(group, 1)
    group.join("a")
    ((_, entry),) = group.dispatch(T0)
    assert group.tick(T0 + 1.01) == [entry]
    assert entry.attempts == 1 and entry.error == "ack_wait passed"


def test_term_makes_the_entry_dead_at_once() -> None:
    group = core(max_deliveries=5)
    fill(group, 1)
    group.join("a")
    ((_, entry),) = group.dispatch(T0)
    group.term(entry, "poison")
    assert entry.state == WAITING and math.isinf(entry.due) and entry.error == "poison"
    assert group.leased == 0 and group.tick(T0 + 100) == [] and group.dispatch(T0 + 100) == []


def test_release_undoes_a_lease() -> None:
    group = core()
    fill(group, 2, topic="acme/x")
    group.join("a")
    ((_, entry),) = group.dispatch(T0)
    group.release(entry, T0)
    assert entry.state == WAITING and entry.attempts == 0 and entry.first == 0
    group.leave("a")
    group.join("b")
    ((member, again),) = group.dispatch(T0)
    assert member.name == "b" and again is entry and again.attempts == 1
    behind = group.lookup(0, 2)
    assert behind is not None and behind.state == WAITING
    with pytest.raises(ValueError, match="leased"):
        group.release(behind, T0)


def test_a_member_that_leaves_keeps_its_leases_until_they_end() -> None:
    group = core(ack_wait=5.0, redelivery=Redelivery(schedule=(0.0,)))
    fill(group, 1)
    group.join("a")
    ((_, entry),) = group.dispatch(T0)
    group.leave("a")
    group.join("b")
    assert group.dispatch(T0 + 1) == [] and "a" in group.members
    group.tick(T0 + 5.01)
    ((member, again),) = group.dispatch(T0 + 5.01)
    assert member.name == "b" and again is entry and "a" not in group.members


def test_a_stale_entry_never_settles_a_newer_one_at_the_same_place() -> None:
    group = core()
    first = group.take(delivery(1), T0)
    group.ack(first, T0)
    second = group.inject(delivery(1), "acme/a", T0)  # the same log position again
    group.ack(first, T0)  # late: must not touch `second`
    assert group.lookup(0, 1) is second
    group.bury(first, T0)
    assert group.lookup(0, 1) is second


# -- restore ---------------------------------------------------------------------


def record(position: int, **fields: object) -> PendingRecord:
    base: dict[str, object] = {
        "shard": 0,
        "position": position,
        "topic": "acme/a",
        "offset": position,
        "key": "acme/a",
        "attempts": 0,
        "due": T0,
    }
    return PendingRecord(**{**base, **fields})  # type: ignore[arg-type]


def test_restore_keeps_leases_until_they_end_and_waits_until_due() -> None:
    group = core(ordered=False)
    leased = group.restore(record(1, attempts=1, due=T0 + 5, member="gone"), T0)
    waiting = group.restore(record(2, attempts=2, due=T0 + 3), T0)
    assert leased.state == LEASED and group.leased == 1 and "gone" in group.members
    assert not group.dirty  # restored entries are already stored
    group.join("b")
    assert group.dispatch(T0) == []
    group.tick(T0 + 3.01)
    assert [e for _, e in group.dispatch(T0 + 3.01)] == [waiting]
    group.tick(T0 + 5.01)
    assert "gone" not in group.members
    assert leased.state == WAITING and leased.attempts == 1


def test_restore_of_a_dead_entry_keeps_it_dead() -> None:
    # Stored while its dead letter was being appended: due is infinite.
    group = core()
    dead = group.restore(record(1, attempts=5, due=math.inf, error="x"), T0)
    group.restore(record(2), T0)
    group.join("a")
    assert dead.state == WAITING and math.isinf(dead.due)
    assert group.tick(T0 + 1e6) == [] and group.dispatch(T0 + 1e6) == []
    group.bury(dead, T0)
    assert handed(group.dispatch(T0)) == [("a", 2)]


# -- changes ---------------------------------------------------------------------


def test_changes_coalesce_take_and_ack_into_the_cursor_alone() -> None:
    group = core(ordered=False)
    group.changes()
    fill(group, 3)
    group.join("a")
    for _, entry in group.dispatch(T0):
        group.ack(entry, T0)
    assert group.dirty
    changes = group.changes()
    assert (changes.cursor, changes.put, changes.delete) == ((3,), [], [])
    assert changes.floor == (3,) and changes.settled == ((),)  # nothing pending below 3
    assert not group.dirty


def test_changes_write_an_entry_only_once_it_failed() -> None:
    group = core(ordered=False)
    group.changes()
    fill(group, 2)
    taken = group.changes()
    assert (taken.cursor, taken.put, taken.floor) == ((2,), [], (0,))  # read back from the log
    group.join("a")
    (_, one), (_, two) = group.dispatch(T0 + 1)
    assert group.changes().put == []  # a first lease is not written
    group.ack(one, T0 + 2)
    group.nack(two, T0 + 2, 1.0, "bad")
    settled = group.changes()
    assert [(k, r.attempts, r.member, r.due, r.error) for k, r in settled.put] == [
        ("0.2", 1, "", T0 + 3, "bad")
    ]
    assert settled.delete == [] and settled.floor == (2,)  # 2 is written on its own
    group.tick(T0 + 3.01)
    ((_, again),) = group.dispatch(T0 + 3.01)
    group.ack(again, T0 + 4)
    assert group.changes().delete == ["0.2"]
    assert not group.dirty
    assert group.changes() == Changes(None, [], [])


def test_a_record_round_trips_through_msgpack() -> None:
    value = record(3, attempts=2, member="m", first=T0, last=T0 + 1, error="e")
    raw = msgspec.msgpack.encode(value)
    assert msgspec.msgpack.decode(raw, type=PendingRecord) == value
    dead = record(4, due=math.inf)
    assert math.isinf(msgspec.msgpack.decode(msgspec.msgpack.encode(dead), type=PendingRecord).due)


# -- settings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ack_wait": 0}, "ack_wait"),
        ({"ack_wait": math.inf}, "ack_wait"),
        ({"ack_wait": math.nan}, "ack_wait"),
        ({"max_deliveries": 0}, "max_deliveries"),
        ({"max_in_flight": -1}, "max_in_flight"),
        ({"member_in_flight": 0}, "member_in_flight"),
        ({"max_pending": 0}, "max_pending"),
        ({"max_deliveries": True}, "max_deliveries"),
    ],
)
def test_settings_refuse_bad_values(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GroupSettings(pattern="acme/#", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        {"base": 0},
        {"base": -1},
        {"factor": 0.5},
        {"base": 10, "max": 5},
        {"schedule": (1.0, -1.0)},
        {"schedule": (math.nan,)},
        {"schedule": (math.inf,)},
    ],
)
def test_redelivery_refuses_bad_values(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each names its own field
        Redelivery(**fields)  # type: ignore[arg-type]


def test_settings_decode_from_a_dict_with_defaults() -> None:
    settings = msgspec.convert(
        {"pattern": "acme/#", "redelivery": {"schedule": [1, 2]}}, GroupSettings
    )
    assert settings.redelivery.schedule == (1.0, 2.0)
    assert (settings.ack_wait, settings.max_deliveries, settings.ordered) == (30.0, 5, True)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"pattern": "acme/#", "ack_wiat": 1}, GroupSettings)
    with pytest.raises(msgspec.ValidationError, match="max_deliveries"):
        msgspec.convert({"pattern": "acme/#", "max_deliveries": 0}, GroupSettings)


def test_a_herd_of_ended_leases_is_spread_over_ticks() -> None:
    from hybridbus.core.groups import TICK_LIMIT

    count = 2 * TICK_LIMIT + 100
    group = core(
        ordered=False,
        ack_wait=5.0,
        max_pending=count,
        max_in_flight=count,
        member_in_flight=count,
        redelivery=Redelivery(schedule=(0.0,)),
    )
    fill(group, count)
    group.join("m")
    assert len(group.dispatch(now=T0)) == count
    # Every lease ends at 5 s: each tick takes at most TICK_LIMIT of them, oldest first.
    sizes = []
    for _ in range(4):
        before = group.leased
        group.tick(now=T0 + 10.0)
        sizes.append(before - group.leased)
    assert sizes == [TICK_LIMIT, TICK_LIMIT, 100, 0]
