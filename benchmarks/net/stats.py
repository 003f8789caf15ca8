"""Latency histograms, cheap to fill, merged across client processes.

A histogram is a dict {bucket: count}; a bucket is a latency in µs rounded to 10 µs
below 10 ms, to 100 µs below 100 ms and to 1 ms above (< 1% error everywhere past
1 ms), serialised as JSON with string keys; percentiles are read from the merged counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["Histogram", "merge", "summary"]


def _bucket(seconds: float) -> int:
    us = int(seconds * 1e6)
    if us < 10_000:
        return us // 10 * 10
    if us < 100_000:
        return us // 100 * 100
    return us // 1000 * 1000


class Histogram:
    """Counts of latencies in 10 µs buckets."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()

    def add(self, seconds: float) -> None:
        self.counts[_bucket(seconds)] += 1

    def as_json(self) -> dict[str, int]:
        return {str(k): v for k, v in self.counts.items()}


def merge(parts: Iterable[Mapping[str, int]]) -> Counter[int]:
    out: Counter[int] = Counter()
    for part in parts:
        for key, count in part.items():
            out[int(key)] += count
    return out


def summary(counts: Mapping[int, int]) -> dict[str, Any]:
    """p50, p99, p99.9 and max in ms, and the number of samples."""
    total = sum(counts.values())
    out: dict[str, Any] = {"samples": total}
    if not total:
        return out
    keys = sorted(counts)
    wanted = [("p50_ms", 0.50), ("p99_ms", 0.99), ("p999_ms", 0.999)]
    seen = 0
    i = 0
    for key in keys:
        seen += counts[key]
        while i < len(wanted) and seen >= wanted[i][1] * total:
            out[wanted[i][0]] = key / 1e3
            i += 1
    out["max_ms"] = keys[-1] / 1e3
    # Negative latencies mean the clocks of two processes disagree: never expected on one machine.
    out["min_ms"] = keys[0] / 1e3
    return out
