"""The Lamport clock: a logical clock that orders events across nodes and clients.

Owns: the counter behind an event's `lamport` extension attribute and the two
rules that move it. Must not read wall-clock time, sleep, or lock: it is a
plain value, and whoever shares one between threads or tasks serialises access.

Rules (Lamport, 1978). `tick` before every local event (a publish): the clock
moves one step and the event carries the new value. `observe` on every event
received from elsewhere: the clock jumps past both its own value and the
remote one. So if event A could have caused event B, A's value is smaller than
B's. The converse does not hold; ties between unrelated events are broken by
something else (e.g. `source` + `id`).
"""

from __future__ import annotations

__all__ = ["LamportClock"]


class LamportClock:
    """A Lamport clock; values start at `start` (default 0) and only grow."""

    __slots__ = ("_value",)

    def __init__(self, start: int = 0) -> None:
        if start < 0:
            raise ValueError(f"a Lamport clock starts at 0 or more, not {start}")
        self._value = start

    @property
    def value(self) -> int:
        """The last value handed out or observed (the clock's current time)."""
        return self._value

    def tick(self) -> int:
        """Move one step for a local event; return the event's value."""
        self._value += 1
        return self._value

    def observe(self, remote: int) -> int:
        """Take in a remote event's value; return the new value, above both."""
        if remote < 0:
            raise ValueError(f"a Lamport value is 0 or more, not {remote}")
        self._value = max(self._value, remote) + 1
        return self._value

    def __repr__(self) -> str:
        return f"LamportClock({self._value})"
