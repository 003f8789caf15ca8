"""State documents: merge patches with versions, compare-and-set, Lamport order, and the fold of
the log equal to the live document (and to its snapshot)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridbus.core import merge_patch
from hybridbus.core.state_doc import StateDoc, fold
from hybridbus.errors import PatchTooOld, StateConflict, StateTooLarge


def test_patches_merge_and_count_versions() -> None:
    doc = StateDoc()
    assert doc.apply({"title": "a", "tags": ["x"]}).version == 1
    applied = doc.apply({"title": None, "n": 2})
    assert applied.version == 2 and applied.change == {"title": None, "n": 2}
    assert doc.value == {"tags": ["x"], "n": 2}


def test_if_version_is_compare_and_set_and_a_refusal_changes_nothing() -> None:
    doc = StateDoc()
    doc.apply({"a": 1})
    with pytest.raises(StateConflict) as refused:
        doc.apply({"a": 2}, if_version=0)
    assert refused.value.version == 1 and doc.version == 1 and doc.value == {"a": 1}
    assert doc.apply({"a": 2}, if_version=1).version == 2


def test_a_late_lamport_patch_takes_its_place_in_order() -> None:
    doc = StateDoc()
    doc.apply({"x": "late wins?"}, lamport=5, origin="a")
    applied = doc.apply({"x": "early", "y": 1}, lamport=3, origin="b")
    assert doc.value == {"x": "late wins?", "y": 1}  # lamport 5 sorts after 3
    assert applied.change == {"y": 1} and applied.version == 2


def test_a_lamport_patch_older_than_the_window_is_refused() -> None:
    doc = StateDoc(window=2)
    for n in range(4):
        doc.apply({"n": n}, lamport=10 + n)
    with pytest.raises(PatchTooOld):
        doc.apply({"n": -1}, lamport=1)
    assert doc.apply({"m": 1}, lamport=12, origin="z").version == 5  # within the window


def test_a_change_no_merge_patch_can_say_is_sent_whole() -> None:
    doc = StateDoc()
    doc.apply({"a": {"b": 1}}, lamport=5)
    applied = doc.apply({"a": 7}, lamport=2)  # before: {"a": 7} then {"a": {"b": 1}}
    assert doc.value == {"a": {"b": 1}} and applied.change == {}
    doc2 = StateDoc()
    doc2.apply({"a": [None]}, lamport=5)
    assert doc2.apply({"b": 1}, lamport=1).change == {"b": 1}


def test_too_large_is_refused() -> None:
    doc = StateDoc(max_bytes=30)
    with pytest.raises(StateTooLarge):
        doc.apply({"text": "x" * 40})
    assert doc.version == 0


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["a", "b"]))
patches = st.recursive(
    json_leaf,
    lambda inner: st.dictionaries(st.sampled_from("abcd"), inner, max_size=3),
    max_leaves=6,
).filter(lambda p: isinstance(p, dict))
entries = st.lists(
    st.fixed_dictionaries(
        {"patch": patches},
        optional={
            "if_version": st.integers(0, 8),
            "lamport": st.integers(0, 30),
            "origin": st.sampled_from(["a", "b"]),
        },
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(log=entries, window=st.integers(0, 6), cut=st.integers(0, 25))
def test_the_fold_of_the_log_is_the_live_document_and_the_snapshot_goes_on_alike(
    log: list[dict[str, Any]], window: int, cut: int
) -> None:
    live = StateDoc(window=window)
    mirror: Any = {}  # what a subscriber holds: the changes applied in order
    for entry in log:
        try:
            applied = live.apply(
                entry["patch"],
                if_version=entry.get("if_version"),
                lamport=entry.get("lamport"),
                origin=entry.get("origin", ""),
            )
        except (StateConflict, PatchTooOld):
            continue
        mirror = live.value if applied.change is None else merge_patch.apply(mirror, applied.change)
        assert mirror == live.value
    folded, _ = fold(log, StateDoc(window=window))
    assert (folded.value, folded.version, folded.clock) == (live.value, live.version, live.clock)
    # A snapshot taken part way, restored and folded on with the rest, ends the same.
    head, _ = fold(log[:cut], StateDoc(window=window))
    resumed, _ = fold(log[cut:], StateDoc.restore(head.snapshot(), window=window))
    assert (resumed.value, resumed.version) == (live.value, live.version)
    # And the document is the merge of the accepted patches in stamp order.
    outcomes = fold(log, StateDoc(window=window))[1]
    accepted = [
        (o.stamp, e["patch"])
        for e, o in zip(log, outcomes, strict=True)
        if not isinstance(o, Exception)
    ]
    ordered: Any = {}
    for _, patch in sorted(accepted, key=lambda pair: pair[0]):
        ordered = merge_patch.apply(ordered, patch)
    assert ordered == live.value


@settings(max_examples=100, deadline=None)
@given(racers=st.integers(2, 8))
def test_concurrent_compare_and_set_exactly_one_wins(racers: int) -> None:
    doc = StateDoc()
    doc.apply({"n": 0})
    outcomes = fold([{"patch": {"n": i}, "if_version": 1} for i in range(racers)], doc)[1]
    assert sum(not isinstance(o, Exception) for o in outcomes) == 1
