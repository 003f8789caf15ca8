"""The one place where every way in asks who may do what: scoping, permissions, limits, audit.

Owns: turning an `Identity` into a `Principal` (refused if revoked), scoping
a principal's topics and patterns into its tenant (an admin's are absolute),
asking `core.permissions` once per operation and pattern (cached on the
principal), the publish rate limits (per principal and per tenant, token
buckets from `core.ratelimit`; a `publish_many` batch is taken at once; the
tenant buckets may be shared by every node: `share_tenant_limits`), the
revocations (`hub.revocations`: stored in the engine, bounded — see below —
and heard from other nodes),
what a topic listing may show (`visible`), and the audit trail on
`$audit/<tenant>/<kind>`. Must not know sockets, frames or HTTP: the
server's connections and the HTTP gateways call it with a principal; it
calls the bus.

Caching. A decision depends on the identity, the operation, the pattern and,
for rules limited to time windows, the minute (windows are given in whole
minutes). A principal lives as long as its credentials (a `refresh` makes a
new one), so its cache holds decisions for (operation, pattern) — keyed by
the minute too when the identity's rules have windows. A subscription is
checked when it is made; one made inside a window runs on after it closes.

Revocations are bounded. Each lasts at most `revocation_horizon` seconds
(the longest token lifetime plus the leeway: no accepted token outlives it),
a user revocation exactly that long (`Revocation.bounded`); at start, stored
ones past it are shortened. A tenant's callers (not admins) are held to
`revoke_rate` per tenant (`RateLimited`) and `max_revocations` live ones per
tenant (`TooManyRevocations`; revoking a held key again is always taken).
Admins are held to neither, so that a tenant filling its own count can never
stop an operator from revoking inside it.

Audit events (CloudEvents, source `/hybridbus/<node>`, type
`io.hybridbus.audit.<kind>`) go to `$audit/<tenant>/<kind>`: a `$` first
segment, which no tenant's scoped pattern can reach and `#` does not match;
only admins (absolute topics) can read them. Kinds: `revoke`,
`admin.publish`, `key.use`, `denials` (more than `audit_denials` refusals in a
tenant within ten seconds: one event per window, with the count).

When an audit event cannot be appended (a full disk). `revoke` and
`admin.publish` are mandatory: their event is appended first (write-ahead),
and if that fails the operation is refused with `EngineUnavailable` (1301)
and not done — no revocation or admin publish is ever without its event (an
event whose operation then failed can be). `key.use` and `denials` are best
effort: appended in the background; one that fails is dropped, logged
(warning) and counted (`audits_dropped`, the listeners of
`on_audit_dropped`: the node's `hybridbus_audit_dropped_total` metric), and
the request or refusal it records goes on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import msgspec

from hybridbus.core.event import Event
from hybridbus.core.filters import Filter
from hybridbus.core.identity import Identity, Operation
from hybridbus.core.log import Ack, Position
from hybridbus.core.permissions import Decision, Policy, decide
from hybridbus.core.ratelimit import KeyedBuckets, SharedLimits, TokenBucket
from hybridbus.core.revocation import Revocation
from hybridbus.core.topics import (
    scope_pattern,
    scope_topic,
    tenant_of,
    validate_pattern,
    validate_topic,
)
from hybridbus.errors import (
    BusError,
    EngineError,
    EngineUnavailable,
    Forbidden,
    InvalidInput,
    LimitExceeded,
    RateLimited,
    Revoked,
)
from hybridbus.hub.bus import Bus, EventLike, History, Prepared
from hybridbus.hub.revocations import Revocations
from hybridbus.hub.subscription import Subscription

__all__ = ["AUDIT_ROOT", "Guard", "Limits", "Principal"]

log = logging.getLogger("hybridbus.guard")

AUDIT_ROOT: Final = "$audit"
_DENIAL_WINDOW: Final = 10.0
_KEY_USE_EVERY: Final = 60.0
_TOPICS_CACHED: Final = 64  # topics a principal remembers scoped


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Publish rates (events/s, burst; 0: unlimited), the audit threshold, revocation bounds."""

    connection_rate: float = 0.0
    connection_burst: float = 0.0
    tenant_rate: float = 0.0
    tenant_burst: float = 0.0
    # Refusals in a tenant within ten seconds before one `denials` audit event.
    audit_denials: int = 20
    # Seconds a revocation lasts at most (a user's: exactly): the longest token
    # lifetime plus the leeway.
    revocation_horizon: float = 86400.0
    # Revocations by a tenant's callers: per tenant, per second (0: unlimited) and
    # burst; and how many may be live in one tenant.
    revoke_rate: float = 0.0
    revoke_burst: float = 0.0
    max_revocations: int = 10_000


class Principal:
    """An identity the guard admitted: its scope, its cached decisions, its own bucket."""

    __slots__ = ("bucket", "decisions", "identity", "minutely", "prefix", "topics")

    def __init__(self, identity: Identity, bucket: TokenBucket | None, minutely: bool) -> None:
        self.identity = identity
        # What a topic the principal writes gets in front ("" for an admin: absolute).
        self.prefix = "" if identity.admin else identity.tenant + "/"
        self.bucket = bucket  # the principal's own publish rate (None: unlimited)
        self.minutely = minutely  # its rules have time windows: decide per minute
        self.decisions: dict[tuple[str, str, int], Decision] = {}
        # relative -> absolute for the topics it published to lately (made at its first).
        self.topics: dict[str, str] | None = None

    @property
    def tenant(self) -> str:
        return self.identity.tenant

    def topic(self, relative: str) -> str:
        """The absolute topic of `relative` (validated; remembered for the next publish)."""
        topics = self.topics
        if topics is None:
            topics = self.topics = {}
        else:
            found = topics.get(relative)
            if found is not None:
                return found
        if self.identity.admin:
            absolute = validate_topic(relative)
        else:
            absolute = scope_topic(self.identity.tenant, relative)
        if len(topics) >= _TOPICS_CACHED:
            topics.clear()
        topics[relative] = absolute
        return absolute

    def pattern(self, relative: str) -> str:
        """The absolute pattern of `relative` (validated)."""
        if self.identity.admin:
            return validate_pattern(relative)
        return scope_pattern(self.identity.tenant, relative)

    def relative(self, absolute: str) -> str:
        """What the principal calls the absolute `absolute` (inverse of `topic`)."""
        return absolute[len(self.prefix) :]


class Guard:
    """Access to a bus: see the module docstring."""

    def __init__(
        self,
        bus: Bus,
        policy: Policy,
        limits: Limits | None = None,
        *,
        clock: Callable[[], float] = time.time,
        node: str = "hybridbus",
    ) -> None:
        self.bus = bus
        self.policy = policy
        self.limits = limits or Limits()
        self._clock = clock
        self._source = f"/hybridbus/{node}"
        self.revocations = Revocations(
            bus, self.limits, clock, self._audit_first, f"{AUDIT_ROOT}/+/revoke"
        )
        limits = self.limits
        # The tenant buckets: this node's own, unless the server shares them.
        self._tenants: SharedLimits | None = (
            KeyedBuckets(limits.tenant_rate, limits.tenant_burst or limits.tenant_rate)
            if limits.tenant_rate > 0
            else None
        )
        self._denials: dict[str, _Denials] = {}
        self._key_uses: dict[str, float] = {}
        # Best-effort audit appends in flight (held until done), and those dropped, by kind.
        self._pending: set[asyncio.Task[None]] = set()
        self.audits_dropped: dict[str, int] = {}
        self._drop_listeners: list[Callable[[str], None]] = []
        self._minutely_roles = policy.windowed_roles()

    async def start(self) -> None:
        """Load the revocations and follow other nodes' (the bus is started)."""
        await self.revocations.start()

    async def close(self) -> None:
        """Stop following other nodes' revocations (before the bus closes)."""
        await self.revocations.close()

    def share_tenant_limits(self, limits: SharedLimits) -> None:
        """Take the tenant publish rate from `limits` (every node's, not this one's alone)."""
        if self.limits.tenant_rate > 0:
            self._tenants = limits

    @property
    def tenant_limits(self) -> SharedLimits | None:
        """What the tenant publish rate is taken from (None: unlimited)."""
        return self._tenants

    # -- principals ----------------------------------------------------------------

    def admit(self, identity: Identity) -> Principal:
        """A principal for `identity`; raises `Revoked` if its token, session or user is."""
        found = self.revocations.revoked(identity)
        if found is not None:
            raise Revoked(
                f"the {found.kind} was revoked" + (f": {found.reason}" if found.reason else "")
            )
        limits = self.limits
        bucket = None
        if limits.connection_rate > 0:
            bucket = TokenBucket(
                limits.connection_rate, limits.connection_burst or limits.connection_rate
            )
        minutely = (identity.anonymous and "" in self._minutely_roles) or any(
            role in self._minutely_roles for role in identity.roles
        )
        return Principal(identity, bucket, minutely)

    def revoked(self, identity: Identity) -> Revocation | None:
        """The live revocation naming `identity`, if any."""
        return self.revocations.revoked(identity)

    def on_revoke(self, listener: Callable[[Revocation], None]) -> None:
        """Call `listener(revocation)` after every revocation (the node closes connections)."""
        self.revocations.on_revoke(listener)

    async def revoke(self, by: Principal, revocation: Revocation) -> Revocation:
        """Audit `revocation`, store it durably, apply it, tell the listeners; return it as stored.

        A tenant's principal may only revoke inside its tenant, within the
        tenant's revocation rate (`RateLimited`) and count (`TooManyRevocations`);
        an admin anywhere. `until` is held to the horizon (module docstring).
        """
        admin = by.identity.admin
        if not admin and revocation.tenant != by.tenant:
            self._denied(by, "revoke", revocation.tenant)
            raise Forbidden("a revocation must name the caller's own tenant")
        return await self.revocations.revoke(revocation, _who(by.identity), limited=not admin)

    # -- operations ------------------------------------------------------------------

    def now(self) -> float:
        """The guard's clock (decisions on time windows use it)."""
        return self._clock()

    def visible(self, principal: Principal, relative: str) -> bool:
        """Whether a topic listing may show `principal` the topic (or pattern) `relative`.

        It may if it may `subscribe` to it or read its `history`. A hidden topic
        is filtered out, not refused: no denial is counted, nothing is cached.
        """
        return self.may(principal, "subscribe", relative) or self.may(
            principal, "history", relative
        )

    def may(self, principal: Principal, operation: Operation, relative: str) -> bool:
        """Whether `principal` may do `operation` on `relative`, as `check` decides.

        For listings and lookups that hide what is refused: a refusal here is
        no denial (nothing is counted, audited or cached).
        """
        identity = principal.identity
        return (
            identity.admin
            or decide(self.policy, identity, operation, relative, self._clock()).allowed
        )

    def check(self, principal: Principal, operation: Operation, relative: str) -> None:
        """Raise `Forbidden` unless `principal` may do `operation` on `relative`."""
        identity = principal.identity
        if identity.admin:
            return
        now = self._clock()
        minute = int(now // 60) if principal.minutely else 0
        key = (operation, relative, minute)
        cache = principal.decisions
        decision = cache.get(key)
        if decision is None:
            decision = decide(self.policy, identity, operation, relative, now)
            if len(cache) >= 1024:
                cache.clear()
            cache[key] = decision
        if not decision.allowed:
            self._denied(principal, operation, relative)
            raise Forbidden(f"{operation} on {relative!r} is not allowed: {decision.reason}")

    async def publish(self, principal: Principal, relative: str, event: EventLike) -> Ack:
        """Check, rate-limit and publish `event` to the principal's `relative` topic."""
        topic = principal.topic(relative)
        self.check(principal, "publish", relative)
        self.take(principal)
        if principal.identity.admin:
            await self.admin_publishing(principal, topic)
        return await self.bus.publish(topic, event)

    async def publish_many(
        self,
        principal: Principal,
        relative_or_items: str | Iterable[tuple[str, EventLike]],
        events: Iterable[EventLike] | None = None,
    ) -> list[Ack]:
        """Check, rate-limit and publish many events at once: all of them or none.

        `publish_many(p, relative, events)` or `publish_many(p, items)` with
        `(relative topic, event)` pairs; one ack per event, in order. Every
        topic is checked against the rules first, then the whole batch is
        taken from the rate buckets at once (`LimitExceeded` if it is more
        than a burst holds), then every event is checked as `Bus.publish`
        checks it; the first refusal raises (for an event, a note names its
        index) and nothing is published. An admin's batch appends one
        `admin.publish` audit event per topic first. Then `Bus.append`: one
        engine call, all appended or none.
        """
        if isinstance(relative_or_items, str):
            if events is None:
                raise TypeError("publish_many(principal, topic, events) needs the events")
            pairs = [(relative_or_items, event) for event in events]
        else:
            if events is not None:
                raise TypeError("publish_many(principal, items) takes pairs and no events")
            pairs = list(relative_or_items)
        topics: dict[str, str] = {}  # relative -> absolute, each checked once
        for relative, _ in pairs:
            if relative not in topics:
                topics[relative] = principal.topic(relative)
                self.check(principal, "publish", relative)
        if pairs:
            self.take(principal, len(pairs))
        prepare = self.bus.prepare
        batch: list[Prepared] = []
        for index, (relative, event) in enumerate(pairs):
            try:
                batch.append(prepare(topics[relative], event))
            except InvalidInput as exc:
                exc.add_note(f"event {index} of the batch; nothing of the batch was published")
                raise
        return await self.append(principal, batch)

    def prepare(self, principal: Principal, relative: str, event: EventLike) -> Prepared:
        """One event checked, rate-limited and validated as `publish` does it, not yet appended.

        For callers that answer each event on its own (the server's connection
        batches the `publish` commands of a frame): `append` then appends the
        ones that passed in one engine call.
        """
        topic = principal.topic(relative)
        self.check(principal, "publish", relative)
        self.take(principal)
        return self.bus.prepare(topic, event)

    async def append(self, principal: Principal, batch: Sequence[Prepared]) -> list[Ack]:
        """Append what `prepare` passed for `principal`, in order, all or none; one ack each.

        An admin's batch appends one `admin.publish` audit event per topic first.
        """
        if principal.identity.admin:
            for topic in dict.fromkeys(topic for topic, _, _ in batch):
                await self.admin_publishing(principal, topic)
        return await self.bus.append(batch)

    async def admin_publishing(self, principal: Principal, topic: str) -> None:
        """An admin is about to publish to the absolute `topic`: append its audit event.

        Raises `EngineUnavailable` when it cannot be appended: the publish must not happen.
        """
        data = {"topic": topic, "by": _who(principal.identity)}
        await self._audit_first(_audited_tenant(topic), "admin.publish", data)

    def take(self, principal: Principal, cost: float = 1.0) -> None:
        """Take `cost` publishes from the principal's and its tenant's buckets, or raise."""
        now = self._clock()
        bucket = principal.bucket
        if bucket is not None:
            wait = bucket.take(now, cost)
            if wait:
                raise _limited("connection", wait, cost)
        tenants = self._tenants
        if tenants is not None:
            wait = tenants.take(principal.tenant, now, cost)
            if wait:
                if bucket is not None:
                    bucket.refund(cost)  # the publish is refused: it costs the connection nothing
                raise _limited("tenant", wait, cost)

    def subscribe(
        self,
        principal: Principal,
        relative: str,
        since: Position | str | None = None,
        *,
        filter: Filter | None = None,
    ) -> Subscription:
        """A bus subscription to the principal's `relative` pattern, once allowed."""
        absolute = principal.pattern(relative)
        self.check(principal, "subscribe", relative)
        return self.bus.subscribe(absolute, since, filter=filter)

    async def history(
        self,
        principal: Principal,
        relative: str,
        since: Position | str | None = None,
        limit: int = 1000,
        *,
        filter: Filter | None = None,
        at: float | None = None,
    ) -> History:
        """The principal's view of the bus's history of `relative`, once allowed."""
        absolute = principal.pattern(relative)
        self.check(principal, "history", relative)
        return await self.bus.history(absolute, since, limit, filter=filter, at=at)

    def presence(self, principal: Principal, relative: str) -> str:
        """The absolute topic whose presence the principal may see (or raise)."""
        topic = principal.topic(relative)
        self.check(principal, "presence", relative)
        return topic

    # -- audit -------------------------------------------------------------------------

    def key_used(self, principal: Principal, name: str) -> None:
        """An API key was used: audit it at most once a minute per key (no await)."""
        now = self._clock()
        if now - self._key_uses.get(name, 0.0) < _KEY_USE_EVERY:
            return
        if len(self._key_uses) > 10_000:
            self._key_uses.clear()
        self._key_uses[name] = now
        self._spawn_audit(
            principal.tenant, "key.use", {"key": name, "by": _who(principal.identity)}
        )

    async def audit(
        self, tenant: str, kind: str, data: dict[str, Any], *, id: str | None = None
    ) -> None:
        """Append an audit event on `$audit/<tenant>/<kind>`, or raise the bus's error."""
        topic = validate_topic(f"{AUDIT_ROOT}/{tenant}/{kind}")
        event = Event(
            id=id or secrets.token_hex(12),
            source=self._source,
            type=f"io.hybridbus.audit.{kind}",
            data=data,
        )
        await self.bus.publish(topic, event)

    async def _audit_first(
        self, tenant: str, kind: str, data: dict[str, Any], *, id: str | None = None
    ) -> None:
        """A mandatory audit event, before its operation: the operation is refused if it fails.

        An engine failure (a full disk) raises `EngineUnavailable` naming the audit.
        """
        try:
            await self.audit(tenant, kind, data, id=id)
        except EngineError as exc:
            refused = f"the {kind} audit event could not be appended, so the operation was refused"
            raise EngineUnavailable(f"{refused}: {exc}") from exc

    def on_audit_dropped(self, listener: Callable[[str], None]) -> None:
        """Call `listener(kind)` for every best-effort audit event dropped (the node's metric)."""
        self._drop_listeners.append(listener)

    async def drain_audits(self) -> None:
        """Wait for the best-effort audit appends started so far (at shutdown, in tests)."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def _spawn_audit(self, tenant: str, kind: str, data: dict[str, Any]) -> None:
        """A best-effort audit event: appended in the background, dropped if it cannot be."""
        task = asyncio.get_running_loop().create_task(self._audit_or_drop(tenant, kind, data))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _audit_or_drop(self, tenant: str, kind: str, data: dict[str, Any]) -> None:
        try:
            await self.audit(tenant, kind, data)
        except Exception as exc:  # the task's boundary: nobody awaits it
            self.audits_dropped[kind] = self.audits_dropped.get(kind, 0) + 1
            if isinstance(exc, BusError):
                log.warning("dropped the %s audit event of tenant %r: %s", kind, tenant, exc)
            else:
                log.exception("dropped the %s audit event of tenant %r", kind, tenant)
            for listener in self._drop_listeners:
                try:
                    listener(kind)
                except Exception:
                    log.exception("an audit-dropped listener failed")

    def _denied(self, principal: Principal, operation: str, what: str) -> None:
        tenant = principal.tenant
        now = self._clock()
        window = self._denials.get(tenant)
        if window is None or now - window.start >= _DENIAL_WINDOW:
            if len(self._denials) > 10_000:
                self._denials.clear()
            window = self._denials[tenant] = _Denials(now)
        window.count += 1
        if window.count > self.limits.audit_denials and not window.reported:
            window.reported = True
            last = {"operation": operation, "topic": what, "by": _who(principal.identity)}
            self._spawn_audit(
                tenant, "denials", {"count": window.count, "seconds": _DENIAL_WINDOW, "last": last}
            )


class _Denials:
    """Refusals in one tenant since `start`, and whether they were audited."""

    __slots__ = ("count", "reported", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.reported = False


def _limited(whose: str, wait: float, cost: float) -> LimitExceeded:
    """The error for a take that must `wait` seconds (forever: more than the burst holds)."""
    if math.isinf(wait):
        return LimitExceeded(f"{cost:g} publishes at once are more than the {whose}'s burst allows")
    return RateLimited(f"over the {whose}'s publish rate; retry in {wait:.3f} s", wait)


def _who(identity: Identity) -> dict[str, Any]:
    return {
        "tenant": identity.tenant,
        "user": identity.user,
        "session": identity.session,
        "admin": identity.admin,
    }


def _audited_tenant(topic: str) -> str:
    """The tenant an admin's publish to `topic` is audited under (a `$` root without its `$`)."""
    return tenant_of(topic).lstrip("$") or "_"
