"""The Bus: the in-process public API — publish, history, subscribe, topics.

Owns: checking what callers hand in (topic, pattern, event, size, nesting, the
event's `tenantid` against its topic's tenant, resume tokens), appending
through the engine, routing each appended delivery to the matching
subscriptions (local fan-out through the trie; a new epoch ends those of an
older one first: `_epoch_changed`), setting subscriptions up for exact
recovery, and reading history and the topic list. Must not know which engine
it runs on (it is given an `Engine`) nor speak any wire protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import msgspec

from hybridbus.core.codecs import check_depth, encode_msgpack
from hybridbus.core.event import Event, check_event, check_tenantid, event_from_dict
from hybridbus.core.filters import Filter, compile_filter
from hybridbus.core.log import Ack, Delivery, Page, Position, is_exact
from hybridbus.core.topics import tenant_of, validate_pattern, validate_topic
from hybridbus.core.trie import Trie
from hybridbus.engine.base import Clock, Engine, TopicInfo, system_clock
from hybridbus.errors import (
    BusClosed,
    EventTooLarge,
    InvalidEvent,
    InvalidInput,
    SubscriptionEnded,
)
from hybridbus.hub.changes import Changes
from hybridbus.hub.group_store import cursor_at
from hybridbus.hub.groups import Groups, settings_from
from hybridbus.hub.member import Member
from hybridbus.hub.pages import SharedPages
from hybridbus.hub.schemas import Schemas
from hybridbus.hub.subscription import Subscription
from hybridbus.hub.tracing import Tracer

__all__ = ["Bus", "BusConfig", "EventLike", "History", "Prepared"]

# How many topics' routes the bus remembers before it starts over.
_ROUTES_MAX = 65_536


class BusConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the bus itself (the engine has its own `EngineConfig`)."""

    max_event_size: int = 1 << 20  # bytes, as encoded in MessagePack
    queue_size: int = 10_000  # deliveries a subscriber may fall behind before it is ended
    page_size: int = 1_000  # deliveries per history read during recovery
    # bytes (estimated) of recent history kept for recovering subscriptions to
    # share (hub/pages.py); 0: every subscription reads the engine on its own
    recovery_cache_size: int = 64 << 20


class History(msgspec.Struct, frozen=True):
    """A page of history: deliveries oldest first, and where to continue.

    `exact` is False when retention removed events this page would have held,
    or `since` came from another epoch.
    """

    deliveries: list[Delivery]
    position: Position
    more: bool
    exact: bool


EventLike = Event | Mapping[str, Any]

# A checked event ready for the engine: (absolute topic, event, its MessagePack).
Prepared = tuple[str, Event, bytes]


def _checked(event: EventLike) -> tuple[Event, bytes]:
    """The validated event and its MessagePack encoding."""
    if isinstance(event, Event):
        checked = check_event(event)
    elif isinstance(event, Mapping):
        checked = event_from_dict(event, require_specversion=False)
    else:
        raise InvalidEvent(f"expected an Event or a CloudEvents dict, not {type(event).__name__}")
    payload = encode_msgpack(checked)
    return check_depth(checked, payload), payload


def _since(since: Position | str | None) -> Position | None:
    if since is None:
        return None
    if isinstance(since, Position):
        return since.checked()  # built in Python: the engine must not see 2**64
    return Position.parse(since)


class Bus:
    """The in-process event bus over one engine. Open it with `hybridbus.open`."""

    def __init__(
        self, engine: Engine, config: BusConfig | None = None, clock: Clock = system_clock
    ) -> None:
        self.engine = engine
        self.config = config or BusConfig()
        self._clock = clock
        self._trie: Trie[Subscription] = Trie()
        # topic -> the subscriptions it reaches; dropped whenever the trie changes.
        self._routes: dict[str, tuple[Subscription, ...]] = {}
        self._subscriptions: set[Subscription] = set()
        self._epoch = ""  # the engine's epoch as routing last saw it
        self._closed = True
        # Set by `_route` when a subscriber's queue is past half full: the next
        # publish then yields to the loop once, so that consumers in this
        # process run even if the publisher never awaits anything that suspends.
        self._lagging = False
        # Recovering subscriptions read through it: one engine read for many.
        self._pages = SharedPages(
            engine, block=self.config.page_size, max_size=self.config.recovery_cache_size
        )
        # The consumer groups (hub/groups.py): `bus.groups` for operators.
        self.groups = Groups(self, clock)
        # The event types' JSON Schemas (hub/schemas.py), checked by `prepare`.
        self.changes = Changes(self)  # registries changed on other nodes (a shared engine)
        self.schemas = Schemas(engine, clock, self.changes)
        # Spans of each event's way through the node (hub/tracing.py, docs/tracing.md):
        # set by the server when `[tracing]` is on; None costs one check per call.
        self.tracer: Tracer | None = None

    async def start(self) -> None:
        """Open the engine, load the schemas and consumer groups, start routing appends."""
        await self.engine.start(self._route)
        self._closed = False
        try:
            await self.schemas.start()
            await self.groups.start()
            await self.changes.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """End every subscription (they raise `BusClosed`), then close the engine."""
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subscriptions):
            sub.end(BusClosed("the bus is closed"))
        await self.changes.close()
        await self.groups.close()
        await self.engine.close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- publish -------------------------------------------------------------

    async def publish(self, topic: str, event: EventLike) -> Ack:
        """Append `event` to `topic`; the ack says where it went (and if it was a duplicate).

        Resolves once the engine holds it durably. Raises `InvalidTopic`,
        `InvalidEvent`, `EventTooLarge`, `BusClosed`, `EngineUnavailable`.
        An event's `tenantid`, when it has one, must be the tenant of `topic`
        (its first segment), else `InvalidEvent` names `tenantid`; without
        one it is stored without one.
        """
        if self._closed:
            raise BusClosed("the bus is closed")
        if self.tracer is not None:
            return (await self.append([self.prepare(topic, event)]))[0]
        ack = await self.engine.append(*self.prepare(topic, event))
        if self._lagging:
            self._lagging = False
            await asyncio.sleep(0)
        return ack

    async def publish_many(
        self,
        topic_or_items: str | Iterable[tuple[str, EventLike]],
        events: Iterable[EventLike] | None = None,
    ) -> list[Ack]:
        """Append many events at once: `publish_many(topic, events)` or `publish_many(items)`.

        `items` are `(topic, event)` pairs. Returns one ack per event, in
        order. All or nothing: every event is checked as `publish` checks it
        before any is appended — the first that fails raises its error (a note
        names its index) and nothing is published — then the batch goes to the
        engine as one `append_many`, which appends all of it or, raising
        `EngineUnavailable`, none. Dedupe applies per event (within the batch
        too). The cheap way to publish a burst: one engine call, one commit.
        """
        if self._closed:
            raise BusClosed("the bus is closed")
        if isinstance(topic_or_items, str):
            if events is None:
                raise TypeError("publish_many(topic, events) needs the events")
            pairs: Iterable[tuple[str, EventLike]] = ((topic_or_items, e) for e in events)
        else:
            if events is not None:
                raise TypeError("publish_many(items) takes (topic, event) pairs and no events")
            pairs = topic_or_items
        prepare = self.prepare
        batch: list[Prepared] = []
        for index, (topic, event) in enumerate(pairs):
            try:
                batch.append(prepare(topic, event))
            except InvalidInput as exc:
                exc.add_note(f"event {index} of the batch; nothing of the batch was published")
                raise
        return await self.append(batch)

    def prepare(self, topic: str, event: EventLike) -> Prepared:
        """Check `event` for `topic` as `publish` does (same errors); what `append` takes.

        An event whose type has a schema in the topic's tenant must match it
        (`SchemaViolation`, an `InvalidEvent`, names the path) and gets its
        `dataschema` (hub/schemas.py).
        """
        validate_topic(topic)
        checked, payload = _checked(event)
        if checked.tenantid is not None:
            check_tenantid(checked, tenant_of(topic))
        if self.schemas.active:
            schemed = self.schemas.check(tenant_of(topic), checked)
            if schemed is not checked:
                checked, payload = schemed, encode_msgpack(schemed)
        tracer = self.tracer
        if tracer is not None:  # its `publish` span; a sampled one may stamp `traceparent`
            traced = tracer.publishing(topic, checked)
            if traced is not checked:
                checked, payload = traced, encode_msgpack(traced)
        if len(payload) > self.config.max_event_size:
            raise EventTooLarge(len(payload), self.config.max_event_size)
        return topic, checked, payload

    async def append(self, batch: Sequence[Prepared], *, dedupe: bool = True) -> list[Ack]:
        """Append events `prepare` made, in order, in one engine call (all or none).

        One ack per event. Raises `BusClosed`, `EngineUnavailable`.
        `dedupe=False` appends even events whose `source` + `id` is in the
        dedupe window (replaying a dead letter).
        """
        if self._closed:
            raise BusClosed("the bus is closed")
        if not batch:
            return []
        tracer = self.tracer
        if tracer is not None:
            handle = tracer.appending([event for _, event, _ in batch])
            try:
                acks = await self.engine.append_many(batch, dedupe=dedupe)
            except BaseException as exc:
                tracer.appended(handle, None, exc)
                raise
            tracer.appended(handle, acks, None)
        else:
            acks = await self.engine.append_many(batch, dedupe=dedupe)
        if self._lagging:
            self._lagging = False
            await asyncio.sleep(0)
        return acks

    def _route(self, deliveries: Sequence[Delivery]) -> None:
        """The engine's listener: hand each delivery to the subscriptions it matches."""
        if self.engine.epoch != self._epoch:
            self._epoch_changed()
        tracer = self.tracer
        started = tracer.now() if tracer is not None else 0
        routes = self._routes
        now = 0.0
        for delivery in deliveries:
            if delivery.expires is not None:
                now = now or self._clock()
                if delivery.expired(now):
                    continue
            topic = delivery.topic
            subs = routes.get(topic)
            if subs is None:
                if len(routes) >= _ROUTES_MAX:
                    routes.clear()
                subs = routes[topic] = tuple(self._trie.match(topic))
            for sub in subs:
                if sub.push(delivery):
                    self._lagging = True
        if tracer is not None:  # a `fan-out` span per sampled delivery
            tracer.routed(deliveries, routes, started)
        pages = self._pages
        if pages.active:
            pages.routed(deliveries)
        groups = self.groups
        if groups.active:
            groups.route(deliveries)

    def _epoch_changed(self) -> None:
        """The engine began a new epoch: end every subscription of an older one.

        History was lost, and with it perhaps deliveries this node never routed
        (another node acked them, then Redis lost them before this node read
        them). A live subscription going on into the new epoch would hide that
        gap; ended (1200), it is resubscribed from its position and told
        `recovered=false`.
        """
        epoch = self._epoch = self.engine.epoch
        for sub in list(self._subscriptions):
            if sub.epoch and sub.epoch != epoch:
                sub.end(
                    SubscriptionEnded(
                        "the log began a new epoch (history was lost): "
                        "subscribe again from the subscription's position"
                    )
                )

    # -- consumer groups -----------------------------------------------------

    def group(
        self, name: str, pattern: str, *, member: str | None = None, **settings: Any
    ) -> _Joining:
        """Join consumer group `name` over `pattern`: `async with bus.group(...) as g`.

        The group lives in the pattern's tenant (its first segment) and is
        created with `settings` (see `core.groups.GroupSettings`: `start`,
        `ack_wait`, `redelivery`, `max_deliveries`, `ordered`,
        `max_in_flight`, `member_in_flight`, `max_pending`) if it does not
        exist; an existing group takes the settings given (none: it keeps
        its own). `async for d in g: ...; await d.ack()`. See docs/groups.md.
        """
        return _Joining(self, name, pattern, member, settings)

    # -- history -------------------------------------------------------------

    async def history(
        self,
        pattern: str,
        since: Position | str | None = None,
        limit: int = 1000,
        *,
        filter: Filter | None = None,
        at: float | None = None,
    ) -> History:
        """Up to `limit` retained deliveries of a topic or pattern after `since`, oldest first.

        With `filter` (`core.filters`), only the deliveries it lets through:
        `limit` counts what was read, so a page may hold fewer (even none)
        with `more` true; its `position` is past what was read either way.
        `at` (instead of `since`): from the first delivery appended at or
        after that Unix time — found by reading the pattern's retained
        history from its start (`limit=0` gives just its position).
        """
        if self._closed:
            raise BusClosed("the bus is closed")
        validate_pattern(pattern)
        if limit < 0:
            raise ValueError("limit must be >= 0")
        match = compile_filter(filter)
        token = _since(since)
        engine = self.engine
        exact = True
        after: tuple[int, ...] | None = None
        if at is not None:
            if token is not None:
                raise InvalidInput("history takes a position or a time, not both")
            after = await cursor_at(engine, pattern, at)
        elif token is not None:
            if is_exact(token, engine.epoch, engine.shards):
                after = token.positions
            else:
                exact = False
        page: Page = await engine.read(pattern, after, limit)
        deliveries = page.deliveries
        if match is not None:
            deliveries = [d for d in deliveries if match(d.event)]
        return History(
            deliveries,
            Position(page.epoch, page.positions),
            page.more,
            exact and page.exact,
        )

    async def topics(
        self, prefix: str = "", limit: int = 1000, *, after: str = ""
    ) -> list[TopicInfo]:
        """Up to `limit` topics whose name starts with `prefix`, by name, after `after`.

        `prefix` is plain text: `acme/` lists tenant acme's topics, `acme` also
        `acmeco/...`. Page with `after` set to the last topic of a page.
        """
        if self._closed:
            raise BusClosed("the bus is closed")
        if limit < 0:
            raise ValueError("limit must be >= 0")
        return await self.engine.topics(prefix, after, limit)

    # -- subscribe -----------------------------------------------------------

    def subscribe(
        self,
        pattern: str,
        since: Position | str | None = None,
        *,
        filter: Filter | None = None,
    ) -> Subscription:
        """A subscription to a topic or pattern; use it as `async with ... as sub`.

        With `since`, every retained event after that token comes first, then
        live ones — each exactly once, in per-topic order. Without it, only
        events appended after the subscription started. With `filter`
        (`core.filters`; a bad one raises `InvalidInput`), only the
        deliveries it lets through; the position passes the others.
        """
        if self._closed:
            raise BusClosed("the bus is closed")
        validate_pattern(pattern)
        match = compile_filter(filter)
        token = _since(since)
        config = self.config

        async def opener(sub: Subscription) -> None:
            await self._open(sub, token)

        return Subscription(
            pattern,
            reader=self._pages.read,
            opener=opener,
            closer=self._forget,
            clock=self._clock,
            maxsize=config.queue_size,
            page_size=config.page_size,
            match=match,
        )

    async def _open(self, sub: Subscription, since: Position | None) -> None:
        if self._closed:
            raise BusClosed("the bus is closed")
        # Register first, so that no append can fall between history and live.
        self._trie.add(sub.pattern, sub)
        self._subscriptions.add(sub)
        self._routes.clear()
        engine = self.engine
        try:
            if since is not None and is_exact(since, engine.epoch, engine.shards):
                sub.begin(engine.epoch, since.positions, recovering=True)
                await sub.catch_up()
            else:
                if since is not None:
                    sub.recovered = False
                sub.begin(engine.epoch, await engine.head(), recovering=False)
        except BaseException:
            self._forget(sub)
            raise

    def _forget(self, sub: Subscription) -> None:
        if sub in self._subscriptions:
            self._subscriptions.discard(sub)
            self._trie.remove(sub.pattern, sub)
            self._routes.clear()


class _Joining:
    """What `Bus.group` returns: an async context manager giving a `Member`."""

    def __init__(
        self, bus: Bus, name: str, pattern: str, member: str | None, settings: dict[str, Any]
    ) -> None:
        self._bus = bus
        self._args = (name, pattern, member, settings)
        self._member: Member | None = None

    async def __aenter__(self) -> Member:
        name, pattern, member, settings = self._args
        if self._bus._closed:
            raise BusClosed("the bus is closed")
        groups = self._bus.groups
        group = await groups.ensure(name, settings_from(pattern, settings), update=bool(settings))
        self._member = group.join(member)
        return self._member

    async def __aexit__(self, *exc: object) -> None:
        if self._member is not None:
            self._member.close()
