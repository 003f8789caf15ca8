"""The memory engine: the log in this process's memory, lost when it stops.

Owns: an in-memory implementation of the `Engine` contract (engine/base.py),
for tests, development and ephemeral deployments. Every start is a new epoch,
since nothing survives a restart. One shard. Appends never wait: an append is
"durable" as soon as it is in memory, so its ack resolves at once.
Retention (`engine._retention` says which limits a topic has): count and
size are enforced by each append, age and expiry by the sweeps.
Revocations live in a `RevocationSet` and consumer groups in a dict (state
and entries as the hub's bytes); both die with the process, like the log,
and `reset` keeps them.
Must not be imported by the hub (it gets an `Engine`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import secrets
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Sequence

from hybridbus.core.dedupe import DedupeIndex
from hybridbus.core.event import Event
from hybridbus.core.log import Ack, Delivery, Page
from hybridbus.core.revocation import Revocation, RevocationSet
from hybridbus.core.topics import is_pattern, matches, tenant_of
from hybridbus.engine._retention import Limits, Retention
from hybridbus.engine.base import (
    Clock,
    EngineConfig,
    GroupWrite,
    Listener,
    StoredGroup,
    TopicInfo,
    system_clock,
)
from hybridbus.errors import BusClosed, InvalidPosition

__all__ = ["MemoryEngine"]


def _by_position(delivery: Delivery) -> int:
    return delivery.position


class _Topic:
    """One topic's deliveries (oldest first), their sizes, and counters."""

    __slots__ = (
        "bytes",
        "deliveries",
        "last_offset",
        "limits",
        "sizes",
        "tenant",
        "trimmed_position",
    )

    def __init__(self, tenant: str, limits: Limits) -> None:
        self.tenant = tenant  # the first segment of the topic (the dedupe key's)
        self.limits = limits
        self.deliveries: deque[Delivery] = deque()
        self.sizes: deque[int] = deque()  # len(payload) of each delivery, in the same order
        self.bytes = 0  # their sum
        self.last_offset = 0
        self.trimmed_position = 0  # highest position removed by count/age/size retention


class _Group:
    """One stored consumer group: the hub's state and entries, as given."""

    __slots__ = ("entries", "state")

    def __init__(self, state: bytes) -> None:
        self.state = state
        self.entries: dict[str, bytes] = {}


class MemoryEngine:
    """The `Engine` contract in memory. See engine/base.py for the contract."""

    def __init__(self, config: EngineConfig | None = None, clock: Clock = system_clock) -> None:
        self._config = config or EngineConfig()
        self._retention = Retention(self._config)
        self._clock = clock
        self._epoch = ""
        self._listener: Listener | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False
        # Outside `_clear`: a reset loses history, never revocations.
        self._revocations = RevocationSet()
        self._groups: dict[str, _Group] = {}
        self._clear()

    def _clear(self) -> None:
        self._epoch = secrets.token_hex(8)
        self._topics: dict[str, _Topic] = {}
        # All deliveries in position order; entries removed by retention stay
        # in `_log` until compaction but are gone from `_present`.
        self._log: list[Delivery] = []
        self._present: set[int] = set()
        self._position = 0
        self._max_trimmed = 0
        self._expiring = 0  # how many present deliveries carry an expiry
        self._dedupe = DedupeIndex(self._config.dedupe_window)

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def shards(self) -> int:
        return 1

    async def start(self, listener: Listener) -> None:
        self._listener = listener
        self._closed = False
        config = self._config
        if self._retention.ages or config.sweep_interval > 0:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="memory-engine-sweep")

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep_forever(self) -> None:
        interval = max(self._config.sweep_interval, 0.01)
        while True:
            await asyncio.sleep(interval)
            self._sweep()

    async def append(self, topic: str, event: Event, payload: bytes) -> Ack:
        if self._closed:
            raise BusClosed("the engine is closed")
        now = self._clock()
        ack, delivery = self._append(topic, event, payload, now)
        if delivery is not None and self._listener is not None:
            self._listener((delivery,))
        return ack

    async def append_many(
        self, items: Sequence[tuple[str, Event, bytes]], *, dedupe: bool = True
    ) -> list[Ack]:
        if self._closed:
            raise BusClosed("the engine is closed")
        now = self._clock()
        acks: list[Ack] = []
        deliveries: list[Delivery] = []
        append = self._append
        for topic, event, payload in items:
            ack, delivery = append(topic, event, payload, now, dedupe)
            acks.append(ack)
            if delivery is not None:
                deliveries.append(delivery)
        if deliveries and self._listener is not None:
            self._listener(deliveries)
        return acks

    def _append(
        self, topic: str, event: Event, payload: bytes, now: float, dedupe: bool = True
    ) -> tuple[Ack, Delivery | None]:
        """Append one event (`payload`: its MessagePack) at `now`: its ack, and its delivery.

        The delivery is None for a duplicate. It keeps `payload` (`Delivery.payload`).

        `dedupe=False` (a replay) appends it even if its key is in the window,
        and remembers it as the key's newest event.
        """
        window = self._config.dedupe_window
        state = self._topics.get(topic)
        tenant = state.tenant if state is not None else tenant_of(topic)
        if window > 0 and dedupe:
            found = self._dedupe.lookup(tenant, event.source, event.id)
            if found is not None:
                original = self._original(found, topic, event, now - window)
                if original is not None:
                    return original, None
        if state is None:
            state = self._topics[topic] = _Topic(tenant, self._retention.of(topic))
        offset = state.last_offset = state.last_offset + 1
        position = self._position = self._position + 1
        expirytime = event.expirytime
        expires = None
        if expirytime is not None:
            expires = expirytime.timestamp()
            self._expiring += 1
        delivery = Delivery(topic, offset, 0, position, now, event, expires, payload)
        size = len(payload)
        state.deliveries.append(delivery)
        state.sizes.append(size)
        state.bytes += size
        self._log.append(delivery)
        self._present.add(position)
        _, limit, max_bytes = state.limits
        if limit is not None:
            while len(state.deliveries) > limit:
                self._remove(state.deliveries[0], trimmed=True)
        if max_bytes is not None:
            while state.bytes > max_bytes and len(state.deliveries) > 1:  # never the newest
                self._remove(state.deliveries[0], trimmed=True)
        if window > 0:
            self._dedupe.remember(tenant, event.source, event.id, position, now)
        return Ack(topic, offset, 0, position, self._epoch), delivery

    def _original(self, position: int, topic: str, event: Event, fresh_after: float) -> Ack | None:
        """The duplicate's ack if `position` holds `event`'s original, still retained."""
        if position not in self._present:
            return None
        log = self._log
        index = bisect_left(log, position, key=_by_position)
        original = log[index]
        if (
            original.time <= fresh_after
            or (original.event.source, original.event.id) != (event.source, event.id)
            or tenant_of(original.topic) != tenant_of(topic)
        ):
            return None
        return Ack(original.topic, original.offset, 0, position, self._epoch, duplicate=True)

    def _remove(self, delivery: Delivery, *, trimmed: bool) -> None:
        """Forget `delivery`; `trimmed` marks a loss readers must hear about."""
        state = self._topics[delivery.topic]
        deliveries = state.deliveries
        if deliveries and deliveries[0] is delivery:
            deliveries.popleft()
            state.bytes -= state.sizes.popleft()
        else:
            index = deliveries.index(delivery)
            del deliveries[index]
            state.bytes -= state.sizes[index]
            del state.sizes[index]
        self._present.discard(delivery.position)
        if delivery.expires is not None:
            self._expiring -= 1
        if trimmed:
            state.trimmed_position = max(state.trimmed_position, delivery.position)
            self._max_trimmed = max(self._max_trimmed, delivery.position)
        if len(self._log) > 1024 and len(self._present) * 2 < len(self._log):
            self._log = [d for d in self._log if d.position in self._present]

    def _sweep(self) -> int:
        now = self._clock()
        removed = 0
        # Expiry first: an expired event is no loss, even if it is also too old.
        if self._expiring:
            for delivery in [d for d in self._log if d.position in self._present]:
                if delivery.expired(now):
                    self._remove(delivery, trimmed=False)
                    removed += 1
        if self._retention.ages:
            # Append times grow with positions: a topic's old events are its oldest.
            for state in self._topics.values():
                max_age = state.limits.max_age
                if max_age is None:
                    continue
                cutoff = now - max_age
                deliveries = state.deliveries
                while deliveries and deliveries[0].time < cutoff:
                    self._remove(deliveries[0], trimmed=True)
                    removed += 1
        self._dedupe.prune(now)
        self._revocations.prune(now)
        return removed

    async def sweep(self) -> int:
        return self._sweep()

    async def read(self, pattern: str, after: Sequence[int] | None, limit: int) -> Page:
        if after is not None and len(after) != 1:
            raise InvalidPosition(f"the memory engine has one shard, not {len(after)}")
        start = after[0] if after is not None else 0
        now = self._clock()
        if is_pattern(pattern):
            source: Sequence[Delivery] = self._log
            exact = start >= self._max_trimmed or not any(
                state.trimmed_position > start and matches(pattern, topic)
                for topic, state in self._topics.items()
            )
        else:
            state = self._topics.get(pattern)
            source = list(state.deliveries) if state is not None else []
            exact = state is None or state.trimmed_position <= start
        found: list[Delivery] = []
        more = False
        wildcard = source is self._log
        present = self._present
        for index in range(bisect_right(source, start, key=_by_position), len(source)):
            delivery = source[index]
            if wildcard and (
                delivery.position not in present or not matches(pattern, delivery.topic)
            ):
                continue
            if delivery.expires is not None and delivery.expired(now):
                continue
            if len(found) == limit:
                more = True
                break
            found.append(delivery)
        if more:
            positions = (found[-1].position,) if found else (start,)  # limit 0: stay put
        else:
            positions = (max(self._position, start),)
        return Page(self._epoch, found, positions, more, exact)

    async def topics(self, prefix: str, after: str, limit: int) -> list[TopicInfo]:
        topics = self._topics
        names = heapq.nsmallest(limit, (t for t in topics if t > after and t.startswith(prefix)))
        return [TopicInfo(name, topics[name].last_offset) for name in names]

    async def head(self) -> tuple[int, ...]:
        return (self._position,)

    async def reset(self) -> str:
        self._clear()
        return self._epoch

    async def revoke(self, revocation: Revocation) -> None:
        if self._closed:
            raise BusClosed("the engine is closed")
        self._revocations.add(revocation)

    async def revocations(self) -> list[Revocation]:
        now = self._clock()
        return [r for r in self._revocations if r.until > now]

    async def groups(self) -> list[StoredGroup]:
        return [StoredGroup(name, g.state, dict(g.entries)) for name, g in self._groups.items()]

    async def write_groups(self, writes: Sequence[GroupWrite]) -> None:
        if self._closed:
            raise BusClosed("the engine is closed")
        groups = self._groups
        for write in writes:
            name = write.group
            if write.drop:
                groups.pop(name, None)
            group = groups.get(name)
            if write.state is not None:
                if group is None:
                    group = groups[name] = _Group(write.state)
                else:
                    group.state = write.state
            if group is None:
                continue  # no state: nothing is stored
            entries = group.entries
            entries.update(write.put)
            for key in write.delete:
                entries.pop(key, None)

    async def shorten_revocations(self, latest: float) -> int:
        if self._closed:
            raise BusClosed("the engine is closed")
        return len(self._revocations.shorten(latest))
