"""Test helpers shared across the suite (imported as `tests.support`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from hybridbus.core.log import Delivery
from hybridbus.engine.base import Engine


class FakeClock:
    """A clock tests move by hand (Unix seconds)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Opened:
    """A started engine and what its listener has seen."""

    def __init__(self, engine: Engine, seen: list[Delivery]) -> None:
        self.engine = engine
        self.seen = seen


MakeEngine = Callable[..., Awaitable[Opened]]
