"""The subscription trie: which subscribers' patterns match a topic.

Owns: a map from patterns to sets of subscriber keys, answering `match(topic)`
in time proportional to the topic's depth, not to the number of patterns.
Must not do I/O. Patterns are assumed valid (`core.topics.validate_pattern`).
Its answers are checked against `core.topics.matches` by a hypothesis test.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["Trie"]

K = TypeVar("K", bound=Hashable)


class _Node(Generic[K]):
    __slots__ = ("children", "hash_keys", "keys")

    def __init__(self) -> None:
        self.children: dict[str, _Node[K]] = {}
        self.keys: set[K] = set()  # patterns ending exactly here
        self.hash_keys: set[K] = set()  # patterns ending here with '/#'

    def empty(self) -> bool:
        return not (self.children or self.keys or self.hash_keys)


class Trie(Generic[K]):
    """Patterns → subscriber keys. A key may hold many patterns."""

    __slots__ = ("_count", "_root")

    def __init__(self) -> None:
        self._root: _Node[K] = _Node()
        self._count = 0

    def __len__(self) -> int:
        """The number of (pattern, key) pairs held."""
        return self._count

    def add(self, pattern: str, key: K) -> bool:
        """Add `key` under `pattern`; False if it was already there."""
        node = self._root
        segments = pattern.split("/")
        hashed = segments[-1] == "#"
        if hashed:
            segments.pop()
        for segment in segments:
            child = node.children.get(segment)
            if child is None:
                child = node.children[segment] = _Node()
            node = child
        bucket = node.hash_keys if hashed else node.keys
        if key in bucket:
            return False
        bucket.add(key)
        self._count += 1
        return True

    def remove(self, pattern: str, key: K) -> bool:
        """Remove `key` from `pattern`; False if it was not there. Prunes empty nodes."""
        segments = pattern.split("/")
        hashed = segments[-1] == "#"
        if hashed:
            segments.pop()
        path: list[tuple[_Node[K], str]] = []
        node = self._root
        for segment in segments:
            child = node.children.get(segment)
            if child is None:
                return False
            path.append((node, segment))
            node = child
        bucket = node.hash_keys if hashed else node.keys
        if key not in bucket:
            return False
        bucket.remove(key)
        self._count -= 1
        for parent, segment in reversed(path):
            if not parent.children[segment].empty():
                break
            del parent.children[segment]
        return True

    def match(self, topic: str) -> set[K]:
        """Every key with a pattern matching `topic`."""
        found: set[K] = set()
        segments = topic.split("/")
        system = segments[0].startswith("$")
        self._collect(self._root, segments, 0, found, system)
        return found

    def _collect(
        self, node: _Node[K], segments: list[str], depth: int, found: set[K], system: bool
    ) -> None:
        # '#' matches the parent level too ('a/#' matches 'a').
        if node.hash_keys and not (system and depth == 0):
            found.update(node.hash_keys)
        if depth == len(segments):
            found.update(node.keys)
            return
        children = node.children
        if not children:
            return
        exact = children.get(segments[depth])
        if exact is not None:
            self._collect(exact, segments, depth + 1, found, system)
        if system and depth == 0:
            return  # wildcards at the first level never match '$' topics
        plus = children.get("+")
        if plus is not None:
            self._collect(plus, segments, depth + 1, found, system)

    def patterns(self) -> Iterator[tuple[str, K]]:
        """Every (pattern, key) pair held, in no particular order."""
        stack: list[tuple[_Node[K], list[str]]] = [(self._root, [])]
        while stack:
            node, path = stack.pop()
            for key in node.keys:
                yield "/".join(path), key
            for key in node.hash_keys:
                yield "/".join([*path, "#"]), key
            for segment, child in node.children.items():
                stack.append((child, [*path, segment]))
