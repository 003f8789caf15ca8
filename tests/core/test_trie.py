"""The subscription trie, checked against the naive matcher `core.topics.matches`."""

from __future__ import annotations

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hybridbus.core.topics import matches, validate_pattern, validate_topic
from hybridbus.core.trie import Trie

# A small alphabet so that patterns and topics actually meet, '$' topics included.
SEGMENTS = ["a", "b", "c", "$s"]
TOPICS = [
    "/".join(parts) for depth in range(1, 4) for parts in itertools.product(SEGMENTS, repeat=depth)
]


@st.composite
def patterns(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from([*SEGMENTS, "+"]), max_size=3))
    if not parts or draw(st.booleans()):
        parts.append("#")
    return "/".join(parts)


keys = st.integers(0, 3)


def assert_pruned(trie: Trie[int]) -> None:
    """No node below the root is empty: removal leaves nothing behind."""
    stack = list(trie._root.children.values())
    while stack:
        node = stack.pop()
        assert not node.empty()
        stack.extend(node.children.values())


class TrieMachine(RuleBasedStateMachine):
    """Random adds and removes; after each step the trie agrees with a plain set."""

    def __init__(self) -> None:
        super().__init__()
        self.trie: Trie[int] = Trie()
        self.model: set[tuple[str, int]] = set()

    @rule(pattern=patterns(), key=keys)
    def add(self, pattern: str, key: int) -> None:
        validate_pattern(pattern)
        assert self.trie.add(pattern, key) is ((pattern, key) not in self.model)
        self.model.add((pattern, key))

    @rule(pattern=patterns(), key=keys)
    def remove_any(self, pattern: str, key: int) -> None:
        assert self.trie.remove(pattern, key) is ((pattern, key) in self.model)
        self.model.discard((pattern, key))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove_held(self, data: st.DataObject) -> None:
        pattern, key = data.draw(st.sampled_from(sorted(self.model)))
        assert self.trie.remove(pattern, key) is True
        self.model.remove((pattern, key))

    @precondition(lambda self: self.model)
    @rule()
    def remove_all(self) -> None:
        for pattern, key in sorted(self.model):
            assert self.trie.remove(pattern, key) is True
        self.model.clear()
        assert len(self.trie) == 0
        assert self.trie._root.empty()

    @invariant()
    def same_pairs(self) -> None:
        assert len(self.trie) == len(self.model)
        assert sorted(self.trie.patterns()) == sorted(self.model)

    @invariant()
    def same_matches(self) -> None:
        for topic in TOPICS:
            expected = {key for pattern, key in self.model if matches(pattern, topic)}
            assert self.trie.match(topic) == expected, topic

    @invariant()
    def pruned(self) -> None:
        assert_pruned(self.trie)


TrieMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30)
test_trie_agrees_with_naive_matcher = TrieMachine.TestCase


def test_topics_universe_is_valid() -> None:
    assert len(TOPICS) == 4 + 16 + 64
    for topic in TOPICS:
        validate_topic(topic)


def test_examples() -> None:
    trie: Trie[str] = Trie()
    trie.add("acme/docs/+/edits", "editor")
    trie.add("acme/#", "auditor")
    trie.add("#", "everything")
    trie.add("+/docs/#", "docs")
    trie.add("$sys/#", "system")
    assert trie.match("acme/docs/42/edits") == {"editor", "auditor", "everything", "docs"}
    assert trie.match("acme") == {"auditor", "everything"}
    assert trie.match("acme/docs") == {"auditor", "everything", "docs"}
    assert trie.match("other/x") == {"everything"}
    assert trie.match("$sys/load") == {"system"}
    assert trie.match("$sys") == {"system"}


def test_one_key_many_patterns_and_many_keys_one_pattern() -> None:
    trie: Trie[str] = Trie()
    assert trie.add("a/+", "k")
    assert trie.add("a/#", "k")
    assert trie.add("a/+", "j")
    assert not trie.add("a/+", "k")
    assert len(trie) == 3
    assert trie.match("a/b") == {"k", "j"}
    assert trie.remove("a/+", "k")
    assert trie.match("a/b") == {"k", "j"}  # k still holds a/#
    assert trie.remove("a/#", "k")
    assert trie.match("a/b") == {"j"}


def test_removing_an_absent_pair_changes_nothing() -> None:
    trie: Trie[str] = Trie()
    trie.add("a/b", "k")
    assert not trie.remove("a/b", "j")
    assert not trie.remove("a/c", "k")
    assert not trie.remove("a/b/c", "k")
    assert not trie.remove("a/#", "k")  # '#' pairs live apart from exact ones
    assert not trie.remove("a", "k")
    assert sorted(trie.patterns()) == [("a/b", "k")]


def test_removal_prunes_to_an_empty_root() -> None:
    trie: Trie[int] = Trie()
    pairs = [("a/b/c", 1), ("a/b/#", 2), ("a/+/c", 3), ("#", 4), ("a/b", 5)]
    for pattern, key in pairs:
        trie.add(pattern, key)
    for pattern, key in pairs[:3]:
        trie.remove(pattern, key)
        assert_pruned(trie)
    assert set(trie._root.children) == {"a"}
    for pattern, key in pairs[3:]:
        trie.remove(pattern, key)
    assert trie._root.empty()
    assert len(trie) == 0
    assert trie.match("a/b") == set()
