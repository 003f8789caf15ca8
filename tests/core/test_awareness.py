"""Awareness on a topic: latest wins, limits, and the conflation schedule (never more than N/s,
the newest state always delivered)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridbus.core.awareness import Awareness, AwarenessLimits, Update
from hybridbus.errors import AwarenessStateTooLarge, AwarenessTooManyKeys


def test_the_first_set_goes_out_at_once_and_later_ones_wait_for_their_turn() -> None:
    aw = Awareness(AwarenessLimits(rate=10))
    stamp, update = aw.set("a", {"cursor": 1}, now=100.0)
    assert update == Update("a", {"cursor": 1}, stamp)
    assert aw.set("a", {"cursor": 2}, now=100.01)[1] is None
    assert aw.set("a", {"cursor": 3}, now=100.02)[1] is None
    assert aw.next_deadline() == pytest.approx(100.1)
    assert aw.due(100.09) == []
    [late] = aw.due(100.1)
    assert late.state == {"cursor": 3} and late.lamport == 3
    assert aw.next_deadline() is None


def test_keys_merge_latest_wins_and_none_removes_a_key() -> None:
    aw = Awareness()
    aw.set("a", {"cursor": 1, "status": "typing"}, now=0)
    aw.set("a", {"status": None, "selection": [1, 4]}, now=10)
    assert aw.state("a") == {"cursor": 1, "selection": [1, 4]}
    assert [u.client for u in aw.states()] == ["a"]


def test_stamps_grow_and_observe_the_clients_lamport() -> None:
    aw = Awareness()
    first, _ = aw.set("a", {"k": 1}, now=0)
    second, _ = aw.set("b", {"k": 1}, now=0, lamport=41)
    third, _ = aw.set("a", {"k": 2}, now=0)
    assert first < second < third and second == 42


def test_limits_refuse_and_change_nothing() -> None:
    aw = Awareness(AwarenessLimits(max_keys=2, max_bytes=32))
    aw.set("a", {"x": 1, "y": 2}, now=0)
    with pytest.raises(AwarenessTooManyKeys):
        aw.set("a", {"z": 3}, now=1)
    with pytest.raises(AwarenessStateTooLarge):
        aw.set("a", {"x": "y" * 40}, now=1)
    assert aw.state("a") == {"x": 1, "y": 2}
    assert aw.set("a", {"x": None, "z": 3}, now=2)[1] is not None  # room after a removal


def test_remove_is_at_once_and_drops_what_was_pending() -> None:
    aw = Awareness(AwarenessLimits(rate=1))
    aw.set("a", {"k": 1}, now=0)
    aw.set("a", {"k": 2}, now=0.1)
    removed = aw.remove("a")
    assert removed is not None and removed.removed and removed.client == "a"
    assert aw.due(5) == [] and aw.remove("a") is None and len(aw) == 0


# (client, value, time step) — steps small enough to collide with the schedule.
_steps = st.lists(
    st.tuples(st.sampled_from("abc"), st.integers(0, 1000), st.floats(0, 0.2)),
    min_size=1,
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(rate=st.sampled_from([1.0, 5.0, 20.0, 60.0]), steps=_steps)
def test_never_more_than_rate_per_second_and_the_last_value_always_delivered(
    rate: float, steps: list[tuple[str, int, float]]
) -> None:
    aw = Awareness(AwarenessLimits(rate=rate))
    sent: dict[str, list[tuple[float, Any]]] = {}
    now = 0.0

    def run_due(until: float) -> None:
        # What the server's timer does: call due() at each deadline up to `until`.
        while (deadline := aw.next_deadline()) is not None and deadline <= until:
            for update in aw.due(deadline):
                sent.setdefault(update.client, []).append((deadline, update.state["v"]))

    last: dict[str, int] = {}
    for client, value, step in steps:
        run_due(now + step)
        now += step
        _, update = aw.set(client, {"v": value}, now)
        last[client] = value
        if update is not None:
            sent.setdefault(client, []).append((now, value))
    run_due(float("inf"))
    for client, times in sent.items():
        stamps = [t for t, _ in times]
        # Any half-open second holds at most `rate` updates of one client.
        for i, start in enumerate(stamps):
            within = [t for t in stamps[i:] if t < start + 1.0 - 1e-9]
            assert len(within) <= rate
        assert times[-1][1] == last[client]  # the newest state went out last
    assert set(sent) == set(last)
