"""The Lamport clock: tick and observe."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridbus.core.clock import LamportClock

values = st.integers(0, 2**70)


def test_starts_at_zero_and_ticks_by_one() -> None:
    clock = LamportClock()
    assert clock.value == 0
    assert clock.tick() == 1
    assert clock.tick() == 2
    assert clock.value == 2


def test_observe_jumps_past_a_later_remote() -> None:
    clock = LamportClock(3)
    assert clock.observe(10) == 11
    assert clock.value == 11


def test_observe_of_an_earlier_remote_still_moves() -> None:
    clock = LamportClock(10)
    assert clock.observe(2) == 11
    assert clock.observe(11) == 12


@given(values, values)
def test_observe_is_strictly_greater_than_both(start: int, remote: int) -> None:
    clock = LamportClock(start)
    result = clock.observe(remote)
    assert result > start
    assert result > remote
    assert result == max(start, remote) + 1
    assert clock.value == result


@given(values, st.lists(st.one_of(st.none(), values), max_size=30))
def test_values_strictly_increase(start: int, steps: list[int | None]) -> None:
    # None: a local tick; an int: a remote value observed.
    clock = LamportClock(start)
    last = clock.value
    for step in steps:
        now = clock.tick() if step is None else clock.observe(step)
        assert now > last
        assert now == clock.value
        last = now


@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=40))
def test_happened_before_implies_smaller_value(senders: list[str]) -> None:
    # Three nodes pass a message around in the drawn order: each receipt follows
    # the previous send, so each value is above every value before it.
    clocks = {name: LamportClock() for name in "abc"}
    carried = clocks[senders[0]].tick()
    for sender in senders[1:]:
        received = clocks[sender].observe(carried)
        assert received > carried
        carried = clocks[sender].tick()
        assert carried > received


@pytest.mark.parametrize("value", [-1, -(2**40)])
def test_negative_values_are_refused(value: int) -> None:
    with pytest.raises(ValueError, match="0 or more"):
        LamportClock(value)
    clock = LamportClock(5)
    with pytest.raises(ValueError, match="0 or more"):
        clock.observe(value)
    assert clock.value == 5


def test_repr_shows_the_value() -> None:
    clock = LamportClock(4)
    assert repr(clock) == "LamportClock(4)"
