"""The timing wheel: never early, at most a slot late, bounded passes, one slot per item."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridbus.core.wheel import Wheel


class Item:
    __slots__ = ("name", "wheel_slot")

    def __init__(self, name: int) -> None:
        self.name = name
        self.wheel_slot = -1

    def __repr__(self) -> str:
        return f"Item({self.name})"


def test_items_come_out_in_the_pass_after_their_deadline_and_not_before() -> None:
    wheel: Wheel[Item] = Wheel(0.5)
    a, b, c = Item(1), Item(2), Item(3)
    wheel.schedule(a, 10.2)
    wheel.schedule(b, 10.5)
    wheel.schedule(c, 11.0)
    assert len(wheel) == 3
    assert wheel.due(10.0) == []
    assert wheel.due(10.49) == []
    assert sorted(wheel.due(10.5), key=lambda i: i.name) == [a, b]
    assert a not in wheel and c in wheel
    assert wheel.due(10.9) == []
    assert wheel.due(11.2) == [c]
    assert len(wheel) == 0


def test_scheduling_again_moves_an_item_and_cancel_forgets_it() -> None:
    wheel: Wheel[Item] = Wheel(1.0)
    a, b = Item(1), Item(2)
    wheel.schedule(a, 5.0)
    wheel.schedule(a, 3.0)  # earlier: moved, not doubled
    wheel.schedule(b, 4.0)
    wheel.schedule(b, 9.0)  # later
    assert len(wheel) == 2
    assert wheel.due(4.0) == [a]
    wheel.cancel(b)
    wheel.cancel(b)
    assert len(wheel) == 0 and b.wheel_slot == -1
    assert wheel.due(100.0) == []


def test_a_deadline_in_a_slot_already_emptied_goes_to_the_next_slot() -> None:
    wheel: Wheel[Item] = Wheel(1.0)
    wheel.due(10.0)
    a = Item(1)
    wheel.schedule(a, 3.0)  # long past: the first slot not emptied, (10, 11]
    assert wheel.due(10.5) == []
    assert wheel.due(11.0) == [a]


def test_a_limit_spreads_a_herd_over_passes_oldest_first() -> None:
    wheel: Wheel[Item] = Wheel(1.0)
    herd = [Item(n) for n in range(10)]
    for item in herd:
        wheel.schedule(item, 5.0)
    later = Item(99)
    wheel.schedule(later, 6.0)
    first = wheel.due(7.0, limit=4)
    second = wheel.due(7.0, limit=4)
    third = wheel.due(7.0, limit=4)
    assert len(first) == len(second) == 4
    assert set(first + second + third[:2]) == set(herd)  # the herd's slot comes out first
    assert third[2:] == [later]
    assert len(wheel) == 0


def test_after_a_long_stall_only_the_slots_that_exist_are_visited() -> None:
    wheel: Wheel[Item] = Wheel(0.001)
    wheel.due(0.0)
    a = Item(1)
    wheel.schedule(a, 1.0)
    assert wheel.due(1e9) == [a]  # no billion empty slots walked


def test_the_resolution_must_be_positive() -> None:
    with pytest.raises(ValueError, match="resolution"):
        Wheel(0.0)


def test_a_heartbeat_pass_touches_n_times_tick_over_interval_items() -> None:
    """N items each due once per interval, phases spread: a pass takes ~N·tick/interval."""
    n, interval, tick = 10_000, 25.0, 0.2
    golden = (math.sqrt(5) - 1) / 2
    wheel: Wheel[Item] = Wheel(tick)
    items = [Item(k) for k in range(n)]
    for k, item in enumerate(items):  # all connected at t=0, first ping at phase * interval
        wheel.schedule(item, interval * (1.0 - (k * golden) % 1.0))
    touched = [0] * n
    per_pass = []
    now = 0.0
    for _ in range(int(3 * interval / tick)):
        now += tick
        due = wheel.due(now)
        per_pass.append(len(due))
        for item in due:
            touched[item.name] += 1
            wheel.schedule(item, now + interval)
    expected = n * tick / interval  # 80
    assert max(per_pass) <= 2 * expected
    assert sum(per_pass) == sum(touched)
    assert min(touched) >= 2 and max(touched) <= 3  # every item, once per interval


@given(
    deadlines=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=50),
    resolution=st.sampled_from([0.01, 0.1, 0.25, 1.0, 3.0]),
    step=st.floats(0.01, 5.0),
)
def test_never_early_at_most_one_slot_late_each_item_once(
    deadlines: list[float], resolution: float, step: float
) -> None:
    wheel: Wheel[Item] = Wheel(resolution)
    items = [Item(n) for n in range(len(deadlines))]
    for item, when in zip(items, deadlines, strict=True):
        wheel.schedule(item, when)
    seen: dict[int, float] = {}
    now = 0.0
    while len(seen) < len(items):
        for item in wheel.due(now):
            assert item.name not in seen
            seen[item.name] = now
        now += step
    for item, when in zip(items, deadlines, strict=True):
        at = seen[item.name]
        assert at >= when - 1e-9 * max(1.0, when)  # float rounding of the slot only
        assert at < when + resolution + step  # the pass after its slot ended
    assert len(wheel) == 0
