"""The one place where every way in asks who may do what: scoping, permissions, limits, audit.

Owns: turning an `Identity` into a `Principal` (refused if revoked), scoping
a principal's topics and patterns into its tenant (an admin's are absolute),
asking `core.permissions` once per operation and pattern (cached on the
principal), the publish rate limits (per principal and per tenant, token
buckets from `core.ratelimit`), the revocation set (loaded from and stored in
the engine), and the audit trail on `$audit/<tenant>/<kind>`. Must not know
sockets, frames or HTTP: the server's connections and the HTTP gateways call
it with a principal; it calls the bus.

Caching. A decision depends on the identity, the operation, the pattern and,
for rules limited to time windows, the minute (windows are given in whole
minutes). A principal lives as long as its credentials (a `refresh` makes a
new one), so its cache holds decisions for (operation, pattern) — keyed by
the minute too when the identity's rules have windows. A subscription is
checked when it is made; one made inside a window runs on after it closes.

Audit events (CloudEvents, source `/hybridbus/<node>`, type
`io.hybridbus.audit.<kind>`) go to `$audit/<tenant>/<kind>`: a `$` first
segment, which no tenant's scoped pattern can reach and `#` does not match;
only admins (absolute topics) can read them. Kinds: `revoke`,
`admin.publish`, `key.use`, `denials` (more than `audit_denials` refusals in a
tenant within ten seconds: one event per window, with the count).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec

from hybridbus.core.event import Event
from hybridbus.core.identity import Identity, Operation
from hybridbus.core.log import Ack, Position
from hybridbus.core.permissions import Decision, Policy, decide
from hybridbus.core.ratelimit import KeyedBuckets, TokenBucket
from hybridbus.core.revocation import Revocation, RevocationSet
from hybridbus.core.topics import (
    scope_pattern,
    scope_topic,
    tenant_of,
    validate_pattern,
    validate_topic,
)
from hybridbus.errors import Forbidden, LimitExceeded, RateLimited, Revoked
from hybridbus.hub.bus import Bus, EventLike, History
from hybridbus.hub.subscription import Subscription

__all__ = ["AUDIT_ROOT", "Guard", "Limits", "Principal"]

log = logging.getLogger("hybridbus.guard")

AUDIT_ROOT: Final = "$audit"
_DENIAL_WINDOW: Final = 10.0
_KEY_USE_EVERY: Final = 60.0


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Publish rates (events/s, burst; 0: unlimited) and the audit threshold."""

    connection_rate: float = 0.0
    connection_burst: float = 0.0
    tenant_rate: float = 0.0
    tenant_burst: float = 0.0
    # Refusals in a tenant within ten seconds before one `denials` audit event.
    audit_denials: int = 20


class Principal:
    """An identity the guard admitted: its scope, its cached decisions, its own bucket."""

    __slots__ = ("bucket", "decisions", "identity", "minutely", "prefix")

    def __init__(self, identity: Identity, bucket: TokenBucket | None, minutely: bool) -> None:
        self.identity = identity
        # What a topic the principal writes gets in front ("" for an admin: absolute).
        self.prefix = "" if identity.admin else identity.tenant + "/"
        self.bucket = bucket  # the principal's own publish rate (None: unlimited)
        self.minutely = minutely  # its rules have time windows: decide per minute
        self.decisions: dict[tuple[str, str, int], Decision] = {}

    @property
    def tenant(self) -> str:
        return self.identity.tenant

    def topic(self, relative: str) -> str:
        """The absolute topic of `relative` (validated)."""
        if self.identity.admin:
            return validate_topic(relative)
        return scope_topic(self.identity.tenant, relative)

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
        self._revocations = RevocationSet()
        self._listeners: list[Callable[[Revocation], None]] = []
        limits = self.limits
        self._tenants = (
            KeyedBuckets(limits.tenant_rate, limits.tenant_burst or limits.tenant_rate)
            if limits.tenant_rate > 0
            else None
        )
        self._denials: dict[str, _Denials] = {}
        self._key_uses: dict[str, float] = {}
        self._minutely_roles = policy.windowed_roles()

    async def start(self) -> None:
        """Load the stored revocations (the bus is started)."""
        self._revocations.extend(await self.bus.engine.revocations())

    # -- principals ----------------------------------------------------------------

    def admit(self, identity: Identity) -> Principal:
        """A principal for `identity`; raises `Revoked` if its token, session or user is."""
        found = self._revocations.revoked(identity, self._clock())
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
        return self._revocations.revoked(identity, self._clock())

    def on_revoke(self, listener: Callable[[Revocation], None]) -> None:
        """Call `listener(revocation)` after every revocation (the node closes connections)."""
        self._listeners.append(listener)

    async def revoke(self, by: Principal, revocation: Revocation) -> None:
        """Store `revocation` durably, apply it, tell the listeners, audit it.

        A tenant's principal may only revoke inside its tenant; an admin anywhere.
        """
        if not by.identity.admin and revocation.tenant != by.tenant:
            self._denied(by, "revoke", revocation.tenant)
            raise Forbidden("a revocation must name the caller's own tenant")
        await self.bus.engine.revoke(revocation)
        self._revocations.add(revocation)
        self._revocations.prune(self._clock())
        for listener in self._listeners:
            try:
                listener(revocation)
            except Exception:
                log.exception("a revocation listener failed")
        await self.audit(
            revocation.tenant,
            "revoke",
            {**msgspec.to_builtins(revocation), "by": _who(by.identity)},
        )

    # -- operations ------------------------------------------------------------------

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
            self.admin_publishing(principal, topic)
        return await self.bus.publish(topic, event)

    def admin_publishing(self, principal: Principal, topic: str) -> None:
        """An admin publishes to the absolute `topic`: audit it (no await)."""
        data = {"topic": topic, "by": _who(principal.identity)}
        self._spawn_audit(_audited_tenant(topic), "admin.publish", data)

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
        self, principal: Principal, relative: str, since: Position | str | None = None
    ) -> Subscription:
        """A bus subscription to the principal's `relative` pattern, once allowed."""
        absolute = principal.pattern(relative)
        self.check(principal, "subscribe", relative)
        return self.bus.subscribe(absolute, since)

    async def history(
        self,
        principal: Principal,
        relative: str,
        since: Position | str | None = None,
        limit: int = 1000,
    ) -> History:
        """The principal's view of the bus's history of `relative`, once allowed."""
        absolute = principal.pattern(relative)
        self.check(principal, "history", relative)
        return await self.bus.history(absolute, since, limit)

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

    async def audit(self, tenant: str, kind: str, data: dict[str, Any]) -> None:
        """Append an audit event on `$audit/<tenant>/<kind>`; failures are logged, not raised."""
        try:
            topic = validate_topic(f"{AUDIT_ROOT}/{tenant}/{kind}")
            event = Event(
                id=secrets.token_hex(12),
                source=self._source,
                type=f"io.hybridbus.audit.{kind}",
                data=data,
            )
            await self.bus.publish(topic, event)
        except Exception:
            log.exception("could not append the %s audit event", kind)

    def _spawn_audit(self, tenant: str, kind: str, data: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self.audit(tenant, kind, data))
        _background.add(task)
        task.add_done_callback(_background.discard)

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


# Audit appends started from synchronous code: held until done.
_background: set[asyncio.Task[None]] = set()


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
