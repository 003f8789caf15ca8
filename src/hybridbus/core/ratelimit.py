"""Rate limits as token buckets, with the time passed in.

Owns: `TokenBucket` (one limit: `rate` tokens a second, at most `burst` held),
`KeyedBuckets` (one bucket per key, e.g. per tenant, bounded in number) and
`SharedLimits`, the shape of anything that limits per key as `KeyedBuckets`
does (the server's buckets shared by every node, `server.limits_redis`).
Must not read a clock or sleep: every call takes `now` (seconds, from any
monotonic-enough clock), so a schedule is exact and reproducible in tests.

A bucket starts full. Taking `cost` tokens either succeeds at once (0.0) or
takes nothing and says how many seconds until `cost` tokens will be there; a
`cost` over `burst` can never be taken (`math.inf`). If `now` goes back (a
clock stepped), nothing is refilled until it passes the last time seen again.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from typing import Final, Protocol

__all__ = ["KeyedBuckets", "SharedLimits", "TokenBucket"]

# Float rounding must not refuse a take that is due: a difference of two Unix
# times is off by up to ~2.4e-7 s. A take due within a microsecond is due now;
# the bucket then owes the fraction (its level dips a hair below zero), so the
# long-run rate is still never exceeded.
_SLACK: Final = 1e-6


def _check(rate: float, burst: float) -> None:
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"a rate must be a positive number of tokens a second, not {rate}")
    if not (math.isfinite(burst) and burst > 0):
        raise ValueError(f"a burst must be a positive number of tokens, not {burst}")


class TokenBucket:
    """`rate` tokens a second, up to `burst`; starts full."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        _check(rate, burst)
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._last: float | None = None  # when `_tokens` was counted (None: never used)

    def level(self, now: float) -> float:
        """How many tokens there are at `now` (nothing is taken)."""
        last = self._last
        if last is None or now <= last:
            return self._tokens
        return min(self.burst, self._tokens + (now - last) * self.rate)

    def full(self, now: float) -> bool:
        """Is the bucket full at `now` (as good as a new one)?"""
        return self.level(now) >= self.burst

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take `cost` tokens at `now`: 0.0 if taken, else the seconds to wait (none taken)."""
        if not cost >= 0:  # also NaN
            raise ValueError(f"a cost must be a number >= 0, not {cost}")
        tokens = self.level(now)
        if self._last is None or now > self._last:
            self._last = now
        self._tokens = tokens
        if tokens + self.rate * _SLACK >= cost:
            self._tokens = tokens - cost
            return 0.0
        if cost > self.burst:
            return math.inf
        return (cost - tokens) / self.rate

    def refund(self, cost: float = 1.0) -> None:
        """Give back `cost` tokens taken for something that did not happen (up to `burst`)."""
        if not cost >= 0:  # also NaN
            raise ValueError(f"a cost must be a number >= 0, not {cost}")
        self._tokens = min(self.burst, self._tokens + cost)

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate}, burst={self.burst})"


class SharedLimits(Protocol):
    """Per-key limits taken synchronously, as `KeyedBuckets.take` (which is one).

    `take` answers at once, from what it holds: 0.0 (taken) or the seconds to
    wait (nothing taken; `math.inf`: `cost` can never be taken at once).
    """

    def take(self, key: Hashable, now: float, cost: float = 1.0) -> float:
        """Take `cost` tokens from `key`'s limit at `now`, or say how long to wait."""
        ...


class KeyedBuckets:
    """One `TokenBucket(rate, burst)` per key, at most `max_keys` of them.

    A key seen for the first time gets a full bucket. To make room for one,
    the least recently used buckets that are full are forgotten first (which
    loses nothing: a new bucket starts full), then, at `max_keys`, the least
    recently used one whatever its level. Memory is O(max_keys) and each
    `take` is amortized O(1).
    """

    __slots__ = ("_buckets", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        _check(rate, burst)
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        # Least recently used first: OrderedDict pops from the front in O(1).
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def take(self, key: Hashable, now: float, cost: float = 1.0) -> float:
        """Take `cost` tokens from `key`'s bucket: as `TokenBucket.take`."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            # Each bucket is dropped at most once per insertion: amortized O(1).
            while buckets and next(iter(buckets.values())).full(now):
                buckets.popitem(last=False)
            if len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
            bucket = buckets[key] = TokenBucket(self.rate, self.burst)
        else:
            buckets.move_to_end(key)
        return bucket.take(now, cost)

    def prune(self, now: float) -> int:
        """Forget every bucket that is full at `now`; return how many."""
        buckets = self._buckets
        idle = [key for key, bucket in buckets.items() if bucket.full(now)]
        for key in idle:
            del buckets[key]
        return len(idle)
