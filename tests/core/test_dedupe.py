"""DedupeIndex: remembered keys are found within the window and forgotten after it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hybridbus.core.dedupe import DedupeIndex


def test_remember_lookup_and_prune() -> None:
    index = DedupeIndex(window=10)
    index.remember("acme", "/s", "a", 1, 100.0)
    index.remember("acme", "/s", "b", 2, 100.0)
    index.remember("acme", "/s", "c", 3, 105.0)
    assert index.lookup("acme", "/s", "a") == 1
    assert index.lookup("acme", "/other", "a") is None
    assert index.prune(109.9) == 0
    assert index.prune(110.0) == 2  # a and b were appended 10 s ago
    assert index.lookup("acme", "/s", "a") is None
    assert index.lookup("acme", "/s", "c") == 3
    assert len(index) == 1
    index.clear()
    assert len(index) == 0
    assert index.lookup("acme", "/s", "c") is None


def test_a_key_appended_again_keeps_its_newest_position() -> None:
    index = DedupeIndex(window=10)
    index.remember("acme", "/s", "a", 1, 100.0)
    index.remember("acme", "/s", "b", 2, 101.0)
    index.remember("acme", "/s", "a", 3, 111.0)  # the window passed: appended anew
    assert index.prune(111.0) == 1  # only b; a's entry moved to the end
    assert index.lookup("acme", "/s", "a") == 3


@given(
    st.lists(
        st.tuples(st.sampled_from("abcdef"), st.floats(min_value=0, max_value=5)),
        max_size=60,
    ),
    st.floats(min_value=0.5, max_value=20),
)
def test_matches_a_naive_model(appends: list[tuple[str, float]], window: float) -> None:
    index = DedupeIndex(window=window)
    model: dict[str, tuple[int, float]] = {}
    now = 0.0
    for position, (key, step) in enumerate(appends, start=1):
        now += step
        index.prune(now)
        model = {k: v for k, v in model.items() if v[1] > now - window}
        found = index.lookup("acme", "/s", key)
        assert found == (model[key][0] if key in model else None)
        index.remember("acme", "/s", key, position, now)
        model[key] = (position, now)
