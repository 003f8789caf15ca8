"""Backoff: exponential ceilings, full jitter, reproducible schedules."""

from __future__ import annotations

import itertools
import math
import random

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridbus.core.backoff import Backoff

configs = st.builds(
    lambda base, factor, extra, max_attempts: Backoff(
        base=base, factor=factor, cap=base + extra, max_attempts=max_attempts
    ),
    base=st.floats(1e-6, 100.0),
    factor=st.floats(1.0, 10.0),
    extra=st.floats(0.0, 1000.0),
    max_attempts=st.none() | st.integers(0, 30),
)
attempts = st.integers(0, 10_000)


def test_defaults() -> None:
    backoff = Backoff()
    assert (backoff.base, backoff.factor, backoff.cap, backoff.max_attempts) == (
        0.1,
        2.0,
        30.0,
        None,
    )
    assert [backoff.ceiling(n) for n in range(5)] == [0.1, 0.2, 0.4, 0.8, 1.6]
    assert backoff.ceiling(8) == 25.6
    assert backoff.ceiling(9) == 30.0


def test_is_frozen() -> None:
    backoff = Backoff()
    with pytest.raises(AttributeError):
        backoff.base = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("attempt", [1_000, 10**6, 10**18, 2**200])
def test_huge_attempt_is_the_cap_not_an_overflow(attempt: int) -> None:
    assert Backoff().ceiling(attempt) == 30.0
    assert Backoff(base=1, factor=3, cap=60).ceiling(attempt) == 60.0  # int settings too
    assert 0.0 <= Backoff().delay(attempt, random.Random(1)) <= 30.0


def test_factor_one_is_constant() -> None:
    backoff = Backoff(base=0.5, factor=1.0, cap=10.0)
    assert {backoff.ceiling(n) for n in (0, 1, 7, 10**9)} == {0.5}


@given(configs, attempts)
def test_ceilings_are_monotonic_and_capped(backoff: Backoff, attempt: int) -> None:
    here, there = backoff.ceiling(attempt), backoff.ceiling(attempt + 1)
    assert backoff.base <= here <= there <= backoff.cap
    assert backoff.ceiling(0) == backoff.base


@given(configs, st.integers(0, 60))
def test_ceiling_is_the_formula(backoff: Backoff, attempt: int) -> None:
    expected = min(backoff.cap, backoff.base * backoff.factor**attempt)
    assert math.isclose(backoff.ceiling(attempt), expected, rel_tol=1e-12)


@given(configs, attempts, st.integers())
def test_delay_is_within_the_ceiling(backoff: Backoff, attempt: int, seed: int) -> None:
    delay = backoff.delay(attempt, random.Random(seed))
    assert 0.0 <= delay <= backoff.ceiling(attempt)


def test_delay_spreads_over_the_whole_interval() -> None:
    # Full jitter: uniform on [0, ceiling], not clustered near the ceiling.
    backoff = Backoff(base=1.0, cap=1.0)
    rng = random.Random(7)
    delays = [backoff.delay(0, rng) for _ in range(2000)]
    assert min(delays) < 0.05
    assert max(delays) > 0.95
    assert 0.45 < sum(delays) / len(delays) < 0.55


@given(configs, st.integers())
def test_same_seed_same_schedule(backoff: Backoff, seed: int) -> None:
    first = list(itertools.islice(backoff.delays(random.Random(seed)), 40))
    second = list(itertools.islice(backoff.delays(random.Random(seed)), 40))
    assert first == second


def test_different_seeds_differ() -> None:
    backoff = Backoff()
    first = list(itertools.islice(backoff.delays(random.Random(1)), 10))
    second = list(itertools.islice(backoff.delays(random.Random(2)), 10))
    assert first != second


def test_no_global_randomness() -> None:
    random.seed(0)
    before = random.random()
    random.seed(0)
    list(itertools.islice(Backoff().delays(random.Random(3)), 10))
    assert random.random() == before


@given(configs, st.integers())
def test_schedule_follows_the_ceilings(backoff: Backoff, seed: int) -> None:
    schedule = itertools.islice(backoff.delays(random.Random(seed)), 40)
    for attempt, delay in enumerate(schedule):
        assert 0.0 <= delay <= backoff.ceiling(attempt)


@given(st.integers(0, 50))
def test_finite_schedule_has_max_attempts_delays(max_attempts: int) -> None:
    backoff = Backoff(max_attempts=max_attempts)
    assert len(list(backoff.delays(random.Random(0)))) == max_attempts


def test_unlimited_schedule_goes_on() -> None:
    schedule = Backoff().delays(random.Random(0))
    assert len(list(itertools.islice(schedule, 5000))) == 5000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": 0.0},
        {"base": -1.0},
        {"base": math.nan},
        {"base": math.inf},
        {"factor": 0.5},
        {"factor": -2.0},
        {"factor": math.nan},
        {"factor": math.inf},
        {"cap": 0.05},  # below base
        {"cap": -1.0},
        {"cap": math.inf},
        {"max_attempts": -1},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_negative_attempt_is_refused() -> None:
    with pytest.raises(ValueError, match="attempt"):
        Backoff().ceiling(-1)
    with pytest.raises(ValueError, match="attempt"):
        Backoff().delay(-1, random.Random(0))


def test_config_decodes_and_validates() -> None:
    decoded = msgspec.json.decode(b'{"base":0.5,"max_attempts":3}', type=Backoff)
    assert decoded == Backoff(base=0.5, max_attempts=3)
    with pytest.raises(msgspec.ValidationError, match="factor"):
        msgspec.json.decode(b'{"factor":0.5}', type=Backoff)
