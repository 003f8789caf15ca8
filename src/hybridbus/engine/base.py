"""The engine interface: one small Protocol every log backend implements.

Owns: the `Engine` protocol with each method's contract, the `EngineConfig`
every engine takes, and the `Listener` through which an engine tells the hub
what it appended. Must not import a concrete engine or a driver.

Contract shared by every engine (the conformance suite in
`tests/engine/conformance.py` checks each point on each engine):

- Offsets are per topic, start at 1 and have no gaps. Positions increase in
  each shard's log. Within one topic, offset order = position order.
- An append is acknowledged only once it is durable for that engine (sqlite:
  committed to disk). Before the acks of a batch resolve, the engine calls the
  listener once with the batch's deliveries in log order, on the event loop
  (a batch that appended nothing, e.g. only duplicates, makes no call).
- Cancelling the await of an append does not withdraw the event: it may
  still be appended (and delivered).
- `append_many` appends a batch atomically (all of it or nothing) and
  contiguously, in order, with one ack per item.
- Dedupe: an event whose `source` + `id` was appended within
  `dedupe_window` seconds is not appended again, as long as the original is
  retained; the append answers with the original's ack and `duplicate=True`.
- Retention: each topic has limits — those of the first `retention` rule
  whose pattern matches it, else the engine-wide `max_per_topic`, `max_age`
  and `max_bytes` (a rule's unset limit is no limit). At most `max_per_topic`
  events, none older than `max_age` seconds, and the sizes of its events
  (`len(payload)`, the stored MessagePack) summing to at most `max_bytes`,
  oldest removed first but never the topic's newest event (one larger than
  `max_bytes` stays until the next); count and size are enforced by the
  append, age by sweeps. Expired events (`expirytime` passed) are never returned by `read`
  and are removed in sweeps. A read that would have returned an event
  removed by count, age or size retention says `exact=False`.
- Stored bytes: a delivery carries its event's MessagePack as appended
  (`Delivery.payload`, the `payload` of the append) when the engine has it at
  hand (every engine here does). An engine may also offer `read_stored` (the
  arguments and answer of `read`; its deliveries may be
  `core.log.StoredDelivery`s, each event decoded from its bytes only when
  asked for): a consumer group reads the log with it where there is one.
- The epoch changes whenever history is lost: every start of a memory engine,
  every `reset`.
- Revocations (`core.revocation`) are stored apart from the log: `revoke` is
  durable when it returns (for that engine, as an append is), revoking a key
  again keeps the later `until` and `at`, `revocations` lists those whose
  `until` is after the engine's clock, sweeps delete the others, and `reset`
  keeps them (losing history must not un-revoke a token). `shorten_revocations`
  is the one way to lower a stored `until`.
- Consumer groups (`hub.groups`) are stored apart from the log, as opaque
  bytes the hub encodes: per group a `state` and entries under string keys.
  Names starting with `$` are other registries of the hub kept the same way
  (`$schemas/<tenant>`, `$webhooks/<tenant>`), never a group's.
  `write_groups` applies its writes in order, each atomically, and is durable
  when it returns (as an append is); `groups` returns what is stored. `reset`
  keeps groups (the hub notices the new epoch); a memory engine starts
  with none.
- A `GroupWrite` with a `fence` is for an engine with `Leases` only; the
  others ignore it (their one node coordinates every group).
- No method blocks the event loop on disk or network.

Leases (optional, `Leases`): an engine that many nodes share (Redis) lets
one node at a time coordinate each consumer group, as Kafka's group
coordinator does. A lease is a name with a holder, a fence and a time to
live: `claim` takes a free one (or renews the caller's), and every
`write_groups` of a group carries the fence of the lease its writer holds;
the engine refuses, in the same atomic step as the write, a write whose
fence is not the lease's current one (the writer lost it: paused past the
ttl, cut off), raising `NotCoordinator` naming those groups. Fences of a
name only grow, so a stale writer can never match a later holder's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import msgspec

from hybridbus.core.event import Event
from hybridbus.core.log import Ack, Delivery, Page
from hybridbus.core.revocation import Revocation
from hybridbus.core.topics import validate_pattern
from hybridbus.errors import InvalidPattern

__all__ = [
    "Clock",
    "Engine",
    "EngineConfig",
    "GroupWrite",
    "Leases",
    "Listener",
    "RetentionRule",
    "StoredGroup",
    "TopicInfo",
    "system_clock",
]

Listener = Callable[[Sequence[Delivery]], None]
Clock = Callable[[], float]


def system_clock() -> float:
    """Wall-clock Unix seconds (the default `Clock`)."""
    return time.time()


class RetentionRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The retention of the topics `pattern` matches (`+`/`#` as in `core.topics`).

    Patterns match whole topics, tenant included (`+/logs/#`: every tenant's
    logs). Each limit unset (None) is no limit for these topics, whatever the
    engine-wide one. Raises ValueError for a bad pattern or a limit not above 0.
    """

    pattern: str
    max_age: float | None = None
    max_per_topic: int | None = None
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        try:
            validate_pattern(self.pattern)
        except InvalidPattern as exc:
            raise ValueError(f"retention rule: {exc}") from None
        _check_limits(self.max_age, self.max_per_topic, self.max_bytes, f"rule {self.pattern!r}")


def _check_limits(
    max_age: float | None, max_per_topic: int | None, max_bytes: int | None, where: str
) -> None:
    # A topic keeps at least its newest event (the Redis engine's tailers read it).
    for name, value in (
        ("max_age", max_age),
        ("max_per_topic", max_per_topic),
        ("max_bytes", max_bytes),
    ):
        if value is not None and value <= 0:
            raise ValueError(f"retention {where}: {name} must be positive, not {value}")


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings shared by every engine. Durations are seconds; None: unlimited."""

    dedupe_window: float = 300.0
    # Engine-wide retention: of the topics that no `retention` rule matches.
    max_per_topic: int | None = None
    max_age: float | None = None
    max_bytes: int | None = None  # the sum of a topic's `len(payload)`
    # Per-pattern retention, first match wins (docs/configuration.md, "Retention").
    retention: tuple[RetentionRule, ...] = ()
    sweep_interval: float = 1.0
    # sqlite only: "full" fsyncs every commit (survives power loss); "normal"
    # survives a crash of the process but not of the machine.
    synchronous: str = "full"
    # sqlite: the most appends committed in one transaction; redis: the most
    # appends one script call of a shard's writer takes.
    batch_max: int = 4096
    # redis only: how many shards (streams) the log has; fixed for the life of
    # the data (an engine refuses to open a log written with another count).
    shards: int = 1

    def __post_init__(self) -> None:
        _check_limits(self.max_age, self.max_per_topic, self.max_bytes, "engine-wide")


class TopicInfo(msgspec.Struct, frozen=True):
    """A topic of the log: its name and `offset`, the offset of its newest event.

    `offset` is also how many events the topic was ever given in this epoch;
    retention does not lower it.
    """

    topic: str
    offset: int


class GroupWrite(msgspec.Struct, frozen=True, kw_only=True):
    """One atomic change to a stored consumer group (the engine does not read the bytes).

    Applied in this order: `drop` (delete the group and all its entries),
    `state` (create the group or replace its state; None: unchanged), `put`
    (insert or replace entries), `delete` (remove entries; absent keys are
    ignored). A write to a group that has no state and sets none stores
    nothing. `fence` (engines with `Leases`): the fence of the writer's lease
    on the group; the write is refused unless it is the lease's current one.
    """

    group: str
    state: bytes | None = None
    put: Sequence[tuple[str, bytes]] = ()
    delete: Sequence[str] = ()
    drop: bool = False
    fence: int | None = None


class StoredGroup(msgspec.Struct, frozen=True):
    """A consumer group as stored: its state and its entries by key."""

    group: str
    state: bytes
    entries: dict[str, bytes]


@runtime_checkable
class Engine(Protocol):
    """A durable (or not) ordered log of events, split into shards."""

    @property
    def epoch(self) -> str:
        """The current epoch; valid after `start`."""
        ...

    @property
    def shards(self) -> int:
        """How many shards the log has; fixed for the life of the data."""
        ...

    async def start(self, listener: Listener) -> None:
        """Open the log. `listener` gets every later append's deliveries, in log order."""
        ...

    async def close(self) -> None:
        """Finish in-flight appends (their acks resolve), then release everything.

        Appends after close raise `BusClosed`.
        """
        ...

    async def append(self, topic: str, event: Event, payload: bytes) -> Ack:
        """Append `event` (already validated; `payload` is its MessagePack) to `topic`.

        Resolves once durable, after the listener saw the delivery. Raises
        `EngineUnavailable` when the write failed (nothing was appended). An
        engine with more than one shard fills the ack's `heads` (`Ack.token`).
        """
        ...

    async def append_many(
        self, items: Sequence[tuple[str, Event, bytes]], *, dedupe: bool = True
    ) -> list[Ack]:
        """Append every `(topic, event, payload)` of `items`, in order, as one batch.

        One ack per item, in the items' order (a duplicate, within the batch
        too, answers with its original's ack). Atomic: every item is appended,
        or — `EngineUnavailable` — none is; the listener sees the batch's
        deliveries in one call, before the acks resolve. Nothing else is
        appended between two of its items. `dedupe=False` appends every item
        even if its `source` + `id` was appended within the window (a replay);
        the items are remembered for later dedupe as usual.
        """
        ...

    async def read(self, pattern: str, after: Sequence[int] | None, limit: int) -> Page:
        """Up to `limit` deliveries matching `pattern` past `after` (None: from the start).

        `pattern` may be a plain topic. Oldest first per shard; expired ones
        are left out. See `Page` for what comes back. Raises `InvalidPosition`
        if `after` does not hold one position per shard.
        """
        ...

    async def topics(self, prefix: str, after: str, limit: int) -> list[TopicInfo]:
        """Up to `limit` topics whose name starts with `prefix` and sorts after `after`, by name.

        `prefix` is plain text (not segment-aware); names sort by code point.
        Every topic appended to in this epoch is listed, even once retention
        has removed all of its events.
        """
        ...

    async def head(self) -> tuple[int, ...]:
        """The highest position assigned in each shard in this epoch (0 if none).

        Positions are never reused within an epoch, so the head never moves
        back, even when the newest events expire or are trimmed.
        """
        ...

    async def sweep(self) -> int:
        """Apply retention and expiry now; return how many events were removed.

        Also deletes the revocations whose `until` has passed (not counted).
        Engines also sweep on their own every `sweep_interval` seconds.
        """
        ...

    async def reset(self) -> str:
        """Drop all history and offsets and begin a new epoch; return it.

        Revocations are kept.
        """
        ...

    async def revoke(self, revocation: Revocation) -> None:
        """Store `revocation`; it is durable for this engine when this returns.

        Revoking a stored key (kind, tenant, value) again keeps the later
        `until` and the later `at` (and the reason of the later `at`). Raises
        `EngineUnavailable` when the write failed (nothing was stored),
        `BusClosed` after `close`.
        """
        ...

    async def revocations(self) -> list[Revocation]:
        """Every stored revocation whose `until` is after the engine's clock, in no set order.

        What a node loads into its `RevocationSet` when it starts.
        """
        ...

    async def groups(self) -> list[StoredGroup]:
        """Every stored consumer group with its entries, in no set order."""
        ...

    async def write_groups(self, writes: Sequence[GroupWrite]) -> None:
        """Apply `writes` in order, each atomically; durable for this engine when this returns.

        Raises `EngineUnavailable` when the write failed (none of `writes`
        was applied), `BusClosed` after `close`.
        """
        ...

    async def shorten_revocations(self, latest: float) -> int:
        """Lower the `until` of every stored revocation past `latest` to `latest`; return how many.

        Durable when it returns, as `revoke` is. What a node calls when it starts,
        so that no revocation outlives the longest token lifetime it accepts.
        """
        ...


@runtime_checkable
class Leases(Protocol):
    """An engine's coordination leases (see the module docstring); Redis has them.

    Names are group ids (`<tenant>/<name>`); holders are node ids. Every
    method raises `EngineUnavailable` when the engine cannot be reached.
    """

    async def claim(
        self, name: str, holder: str, ttl: float, fence: int = 0
    ) -> tuple[bool, str, int]:
        """Take the lease `name` for `holder` for `ttl` seconds, or renew it; atomic.

        `fence` 0: take it if nobody holds it, or if `holder` does (a node of
        that id that restarted) — with a new fence. `fence` > 0: renew it if
        `holder` holds it with that fence; a lapsed lease is not taken again
        (its holder must load the group afresh). Returns (held, holder, fence):
        whether the caller holds it now, and who does (holder "" if nobody).
        """
        ...

    async def release(self, name: str, holder: str, fence: int) -> None:
        """Give the lease up at once, if `holder` still holds it with `fence`."""
        ...

    async def holder(self, name: str) -> str | None:
        """Who holds the lease `name` now (None: nobody)."""
        ...

    async def group(self, name: str) -> StoredGroup | None:
        """The stored group `name` as it is now (what a node that just claimed it loads)."""
        ...
