"""Which retention limits apply to a topic: the first matching rule, else the engine-wide ones.

Owns: resolving `EngineConfig.retention` (rules by pattern, first match wins)
and the engine-wide `max_age`, `max_per_topic`, `max_bytes` into one `Limits`
per topic, cached, and what the engines ask of the whole configuration
(does any topic have a count limit? are all topics' ages the same?).
Must not do I/O or touch asyncio: every engine calls it from its own thread.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from hybridbus.core.topics import matches
from hybridbus.engine.base import EngineConfig

__all__ = ["Limits", "Retention"]

# Topics whose limits are remembered; past it the cache starts again (rules are
# few and matching is cheap, the cache only spares the hot path).
_CACHE_SIZE: Final = 65536


class Limits(NamedTuple):
    """One topic's retention; None: no limit."""

    max_age: float | None
    max_per_topic: int | None
    max_bytes: int | None


class Retention:
    """The limits of each topic under one `EngineConfig`."""

    __slots__ = ("_cache", "_rules", "ages", "counts", "default", "sizes", "uniform")

    def __init__(self, config: EngineConfig) -> None:
        self.default = Limits(config.max_age, config.max_per_topic, config.max_bytes)
        self._rules = [
            (rule.pattern, Limits(rule.max_age, rule.max_per_topic, rule.max_bytes))
            for rule in config.retention
        ]
        every = [self.default, *(limits for _, limits in self._rules)]
        # True when every topic has the engine-wide limits (no rules): age
        # retention can then remove the log's oldest events first, whatever their topic.
        self.uniform = not self._rules
        self.ages = any(limits.max_age is not None for limits in every)
        self.counts = any(limits.max_per_topic is not None for limits in every)
        self.sizes = any(limits.max_bytes is not None for limits in every)
        self._cache: dict[str, Limits] = {}

    def of(self, topic: str) -> Limits:
        """The limits of `topic`."""
        found = self._cache.get(topic)
        if found is None:
            found = self.default
            for pattern, limits in self._rules:
                if matches(pattern, topic):
                    found = limits
                    break
            cache = self._cache
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            cache[topic] = found
        return found
