"""Token buckets: exact waits with injected times, and a bounded number of keyed buckets."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridbus.core.ratelimit import KeyedBuckets, TokenBucket

# TokenBucket ---------------------------------------------------------------------------


def test_starts_full_then_waits_exactly() -> None:
    bucket = TokenBucket(rate=1.0, burst=3.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == 1.0
    assert bucket.take(0.5) == 0.5  # half a token came back; nothing taken
    assert bucket.take(1.0) == 0.0
    assert bucket.take(1.0) == 1.0


def test_waits_are_cost_over_rate() -> None:
    bucket = TokenBucket(rate=4.0, burst=4.0)
    assert bucket.take(10.0, cost=4.0) == 0.0
    assert bucket.take(10.0) == 0.25
    assert bucket.take(10.0, cost=3.0) == 0.75
    assert bucket.take(10.5, cost=3.0) == 0.25  # 2 tokens there, 1 to go
    assert bucket.take(10.75, cost=3.0) == 0.0
    assert bucket.level(10.75) == 0.0


def test_a_refused_take_takes_nothing() -> None:
    bucket = TokenBucket(rate=2.0, burst=2.0)
    assert bucket.take(0.0, cost=2.0) == 0.0
    for _ in range(5):
        assert bucket.take(0.0) == 0.5
    assert bucket.take(0.5) == 0.0  # exactly when it said


def test_refill_stops_at_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=5.0)
    assert bucket.take(0.0, cost=5.0) == 0.0
    assert bucket.level(1000.0) == 5.0
    assert bucket.full(1000.0)
    assert bucket.take(1000.0, cost=5.0) == 0.0
    assert bucket.take(1000.0) == 0.1


def test_fractional_costs_and_rates() -> None:
    bucket = TokenBucket(rate=0.5, burst=1.5)
    assert bucket.take(0.0, cost=0.5) == 0.0
    assert bucket.level(0.0) == 1.0
    assert bucket.take(0.0, cost=1.5) == 1.0
    assert bucket.take(1.0, cost=1.5) == 0.0


def test_a_cost_over_burst_never_fits() -> None:
    bucket = TokenBucket(rate=100.0, burst=2.0)
    assert bucket.take(0.0, cost=3.0) == math.inf
    assert bucket.level(0.0) == 2.0  # nothing taken


def test_zero_cost_always_fits() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0, cost=0.0) == 0.0


@pytest.mark.parametrize("cost", [-1.0, math.nan])
def test_bad_cost(cost: float) -> None:
    with pytest.raises(ValueError, match="cost"):
        TokenBucket(1.0, 1.0).take(0.0, cost)


def test_a_clock_going_back_refills_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=2.0)
    assert bucket.take(100.0, cost=2.0) == 0.0
    assert bucket.take(50.0) == 1.0  # no refill, and no negative refill either
    assert bucket.level(50.0) == 0.0
    assert bucket.take(100.5) == 0.5  # counted from 100, not from 50
    assert bucket.take(101.0) == 0.0


def test_rounding_does_not_refuse_a_due_take() -> None:
    # At 10/s a token is due every 0.1 s; the differences of Unix times this
    # large are up to ~2.4e-7 s short of that.
    bucket = TokenBucket(rate=10.0, burst=1.0)
    start = 1_700_000_000.3
    short = 0
    for step in range(1000):
        now = start + step * 0.1
        short += step > 0 and now - (start + (step - 1) * 0.1) < 0.1
        assert bucket.take(now) == 0.0
    assert short > 100  # the case is real
    assert bucket.take(now) > 0.0  # and the rate still holds


def test_the_slack_is_owed_not_given() -> None:
    # Each take comes 0.5 µs early: within the slack, so granted, but the bucket
    # owes it; once early by over a microsecond in all, the take waits.
    bucket = TokenBucket(rate=1.0, burst=1.0)
    early = 5e-7
    assert bucket.take(0.0) == 0.0
    assert bucket.take(1 - early) == 0.0
    assert bucket.take(2 - 2 * early) == 0.0
    assert bucket.take(3 - 3 * early) == pytest.approx(3 * early)


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [
        (0.0, 1.0, "rate"),
        (-1.0, 1.0, "rate"),
        (math.nan, 1.0, "rate"),
        (math.inf, 1.0, "rate"),
        (1.0, 0.0, "burst"),
        (1.0, -2.0, "burst"),
        (1.0, math.inf, "burst"),
    ],
)
def test_bad_config(rate: float, burst: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenBucket(rate, burst)
    with pytest.raises(ValueError, match=message):
        KeyedBuckets(rate, burst)


takes = st.lists(
    st.tuples(st.floats(0.0, 5.0), st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0])),
    max_size=60,
)


@given(st.floats(0.1, 50.0), st.floats(1.0, 20.0), takes)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: float, steps: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket(rate, burst)
    now = start = 1000.0
    taken = 0.0
    for gap, cost in steps:
        now += gap
        wait = bucket.take(now, cost)
        assert wait >= 0.0
        if wait == 0.0:
            taken += cost
        elif wait != math.inf:
            # Taking exactly then succeeds (a fresh copy, to leave the schedule alone).
            probe = TokenBucket(rate, burst)
            probe._tokens, probe._last = bucket._tokens, bucket._last
            assert probe.take(now + wait, cost) == 0.0
        else:
            assert cost > burst
        assert taken <= burst + rate * (now - start + 1e-6)


# KeyedBuckets --------------------------------------------------------------------------


def test_keys_have_their_own_buckets() -> None:
    buckets = KeyedBuckets(rate=1.0, burst=2.0)
    assert buckets.take("acme", 0.0, cost=2.0) == 0.0
    assert buckets.take("acme", 0.0) == 1.0
    assert buckets.take("other", 0.0) == 0.0
    assert buckets.take("acme", 0.5) == 0.5
    assert len(buckets) == 2
    assert "acme" in buckets
    assert "ghost" not in buckets


def test_the_least_recently_used_key_goes_at_max_keys() -> None:
    buckets = KeyedBuckets(rate=1.0, burst=1.0, max_keys=3)
    for key in "abc":
        assert buckets.take(key, 0.0) == 0.0  # all empty now
    assert buckets.take("a", 0.0) == 1.0  # a is the most recently used
    assert buckets.take("d", 0.0) == 0.0
    assert len(buckets) == 3
    assert "b" not in buckets
    assert {"a", "c", "d"} == {key for key in "abcd" if key in buckets}
    assert buckets.take("a", 0.0) == 1.0  # a kept its state
    assert buckets.take("b", 0.0) == 0.0  # b came back full
    assert "c" not in buckets


def test_full_buckets_are_forgotten_first() -> None:
    buckets = KeyedBuckets(rate=1.0, burst=1.0, max_keys=10)
    assert buckets.take("a", 0.0) == 0.0
    assert buckets.take("b", 5.0) == 0.0
    assert buckets.take("c", 5.5) == 0.0
    # At 6.2: a and b are full again, c is not; only the full ones at the
    # least recently used end go (the walk stops at c).
    assert buckets.take("d", 6.2) == 0.0
    assert "a" not in buckets
    assert "b" not in buckets
    assert "c" in buckets
    assert len(buckets) == 2


def test_prune_forgets_every_full_bucket() -> None:
    buckets = KeyedBuckets(rate=1.0, burst=2.0)
    buckets.take("a", 0.0, cost=2.0)
    buckets.take("b", 1.0)
    buckets.take("c", 1.5, cost=2.0)
    assert buckets.prune(2.0) == 2  # a refilled at 2.0; b at 2.0; c not before 3.5
    assert len(buckets) == 1
    assert buckets.take("c", 2.0) == 0.5
    assert buckets.prune(100.0) == 1
    assert len(buckets) == 0


def test_bad_max_keys() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        KeyedBuckets(1.0, 1.0, max_keys=0)


@given(
    st.integers(1, 8),
    st.lists(st.tuples(st.integers(0, 20), st.floats(0.0, 1.0)), max_size=100),
)
def test_never_more_keys_than_max_keys(max_keys: int, steps: list[tuple[int, float]]) -> None:
    buckets = KeyedBuckets(rate=1.0, burst=3.0, max_keys=max_keys)
    now = 0.0
    for key, gap in steps:
        now += gap
        buckets.take(key, now)
        assert len(buckets) <= max_keys
        assert key in buckets


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0.0, 2.0)), max_size=60))
def test_keyed_buckets_act_as_one_bucket_per_key(steps: list[tuple[str, float]]) -> None:
    # With room for every key, forgetting only full buckets changes no answer.
    keyed = KeyedBuckets(rate=2.0, burst=3.0, max_keys=3)
    single = {key: TokenBucket(2.0, 3.0) for key in "abc"}
    now = 0.0
    for key, gap in steps:
        now += gap
        assert keyed.take(key, now) == single[key].take(now)


def test_refund_gives_back_what_was_taken_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=1.0, burst=3.0)
    assert bucket.take(0.0, 3.0) == 0.0
    assert bucket.take(0.0) == 1.0  # empty: one second to wait
    bucket.refund(2.0)
    assert bucket.take(0.0, 2.0) == 0.0
    bucket.refund(10.0)
    assert bucket.level(0.0) == 3.0  # never above the burst
    with pytest.raises(ValueError, match="cost"):
        bucket.refund(-1.0)
