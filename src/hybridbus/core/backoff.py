"""Retry delays: exponential backoff with full jitter, as a pure schedule.

Owns: how long to wait before retry number `attempt` (redelivery to a consumer
group, an outbound webhook, a reconnect). Must not sleep or read a clock, and
must not use global randomness: the caller passes a `random.Random`, so a
schedule is reproducible from its seed in tests.

Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"): the
delay before attempt n is uniform in [0, ceiling(n)] with
ceiling(n) = min(cap, base * factor**n). Spreading retries over the whole
interval keeps many clients that failed together from retrying together.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator

import msgspec

__all__ = ["Backoff"]


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """A backoff schedule. Durations are seconds; attempts count from 0.

    `base` is the first ceiling, `factor` how much each ceiling grows, `cap`
    the largest ceiling, `max_attempts` how many delays the schedule has
    (None: unlimited).
    """

    base: float = 0.1
    factor: float = 2.0
    cap: float = 30.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        # Caller misuse, hence ValueError (msgspec turns it into a
        # ValidationError when a config is decoded).
        if not (math.isfinite(self.base) and self.base > 0):
            raise ValueError(f"backoff base must be a positive number, not {self.base}")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError(f"backoff factor must be a number >= 1, not {self.factor}")
        if not (math.isfinite(self.cap) and self.cap >= self.base):
            raise ValueError(f"backoff cap must be a number >= base ({self.base}), not {self.cap}")
        if self.max_attempts is not None and self.max_attempts < 0:
            raise ValueError(f"max_attempts must be None or >= 0, not {self.max_attempts}")

    def ceiling(self, attempt: int) -> float:
        """The largest delay before retry `attempt`: min(cap, base * factor**attempt)."""
        if attempt < 0:
            raise ValueError(f"attempt counts from 0, not {attempt}")
        try:
            # float(): an int factor would make factor**attempt an exact
            # (and, for a large attempt, enormous) integer.
            grown = self.base * float(self.factor) ** attempt
        except OverflowError:
            return float(self.cap)
        return min(float(self.cap), grown)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """A delay before retry `attempt`, uniform in [0, ceiling(attempt)]."""
        return rng.uniform(0.0, self.ceiling(attempt))

    def delays(self, rng: random.Random) -> Iterator[float]:
        """The delays before retry 0, 1, 2...; `max_attempts` of them, or endless."""
        attempts = itertools.count() if self.max_attempts is None else range(self.max_attempts)
        for attempt in attempts:
            yield self.delay(attempt, rng)
