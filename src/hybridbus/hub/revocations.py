"""The revocations a guard enforces: stored in the engine, bounded, and heard from other nodes.

Owns: the node's `RevocationSet` (loaded at start after shortening the
stored ones past the horizon), adding one (`revoke`: written ahead as its
mandatory audit event, then stored durably, then applied and told to the
listeners), a tenant caller's limits on revoking (count per tenant, rate per
tenant), and following the revocations other nodes make: every node sharing
the engine (Redis) follows the `revoke` audit events on `$audit/+/revoke` —
each carries its revocation — and applies them as they are appended (one
whose store then failed is applied too: it fails closed). Must not decide
who may revoke what (`hub.guard.Guard.revoke` does) nor write the audit
event itself (it is given the guard's `audit_first`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from hybridbus.core.event import Event
from hybridbus.core.identity import Identity
from hybridbus.core.ratelimit import KeyedBuckets
from hybridbus.core.revocation import Revocation, RevocationSet
from hybridbus.errors import RateLimited, TooManyRevocations
from hybridbus.hub.follow import Follower, head_of

if TYPE_CHECKING:
    from hybridbus.hub.bus import Bus

__all__ = ["Bounds", "Revocations"]

log = logging.getLogger("hybridbus.guard")


class Bounds(Protocol):
    """The limits a revocation is held to (the guard's `Limits` has them)."""

    @property
    def revocation_horizon(self) -> float: ...
    @property
    def max_revocations(self) -> int: ...
    @property
    def revoke_rate(self) -> float: ...
    @property
    def revoke_burst(self) -> float: ...


# `audit_first(tenant, kind, data, id=...)`: the mandatory audit event, or raise.
AuditFirst = Callable[..., Awaitable[None]]


class Revocations:
    """The revocations of one node (see the module docstring)."""

    def __init__(
        self,
        bus: Bus,
        bounds: Bounds,
        clock: Callable[[], float],
        audit_first: AuditFirst,
        audited_on: str,
    ) -> None:
        self.bus = bus
        self.bounds = bounds
        self._clock = clock
        self._audit_first = audit_first
        self._set = RevocationSet()
        self._listeners: list[Callable[[Revocation], None]] = []
        # Ids of the `revoke` audit events this node appended (its follower skips them).
        self._announced: set[str] = set()
        self._follower = Follower(bus, audited_on, self._heard, self._load)
        self._rates = (
            # At least one revocation fits in the burst: a wait is never "forever".
            KeyedBuckets(bounds.revoke_rate, max(1.0, bounds.revoke_burst or bounds.revoke_rate))
            if bounds.revoke_rate > 0
            else None
        )

    async def start(self) -> None:
        """Shorten the stored ones past the horizon, load them, follow other nodes' from now."""
        engine = self.bus.engine
        horizon = self.bounds.revocation_horizon
        shortened = await engine.shorten_revocations(self._clock() + horizon)
        if shortened:
            log.warning(
                "%d stored revocations lasted past the horizon of %g s: shortened to it",
                shortened,
                horizon,
            )
        # Follow from the head on, then load the stored ones: one made in between is
        # applied twice, which changes nothing.
        since = await head_of(self.bus)
        await self._load()
        self._follower.start(since)

    async def close(self) -> None:
        """Stop following other nodes' revocations (before the bus closes)."""
        await self._follower.close()

    def revoked(self, identity: Identity) -> Revocation | None:
        """The live revocation naming `identity`, if any."""
        return self._set.revoked(identity, self._clock())

    def on_revoke(self, listener: Callable[[Revocation], None]) -> None:
        """Call `listener(revocation)` after every revocation, this node's and others'."""
        self._listeners.append(listener)

    async def revoke(
        self, revocation: Revocation, by: dict[str, Any], *, limited: bool
    ) -> Revocation:
        """Audit, store, apply and tell `revocation` (held to the horizon); return it as stored.

        `limited`: a tenant's caller, held to the tenant's count and rate.
        """
        now = self._clock()
        revocations = self._set
        revocations.prune(now)
        revocation = revocation.bounded(now, self.bounds.revocation_horizon)
        if limited:
            self._admit(revocation, now)
        # Write-ahead: no revocation without its audit event; raises if it cannot be appended.
        # The event is also how other nodes hear of it (`_heard`), not this one.
        announced = secrets.token_hex(12)
        self._announced.add(announced)
        try:
            data = {**msgspec.to_builtins(revocation), "by": by}
            await self._audit_first(revocation.tenant, "revoke", data, id=announced)
        except BaseException:
            self._announced.discard(announced)
            raise
        await self.bus.engine.revoke(revocation)
        revocations.add(revocation)
        self._apply(revocation)
        return revocation

    def _admit(self, revocation: Revocation, now: float) -> None:
        """Raise unless a tenant's caller may add `revocation` now (count, then rate)."""
        tenant = revocation.tenant
        revocations = self._set
        held = revocations.count(tenant)
        new = revocations.get(*revocation.key) is None
        most = self.bounds.max_revocations
        if new and held >= most:
            raise TooManyRevocations(
                f"tenant {tenant!r} holds {held} live revocations, the most it may "
                f"(max_revocations_per_tenant = {most}); room comes back as they lapse"
            )
        if self._rates is not None:
            wait = self._rates.take(tenant, now)
            if wait:
                raise RateLimited(f"over the tenant's revocation rate; retry in {wait:.3f} s", wait)

    async def _load(self) -> None:
        self._set.extend(await self.bus.engine.revocations())

    async def _heard(self, event: Event) -> None:
        """A `revoke` audit event: apply the revocation it carries (unless this node made it)."""
        if event.id in self._announced:
            self._announced.discard(event.id)
            return
        try:
            revocation = msgspec.convert(event.data, Revocation)
        except (msgspec.ValidationError, ValueError, TypeError) as exc:
            log.warning("a revoke audit event %s carries no revocation: %s", event.id, exc)
            return
        self._apply(self._set.add(revocation))

    def _apply(self, revocation: Revocation) -> None:
        for listener in self._listeners:
            try:
                listener(revocation)
            except Exception:
                log.exception("a revocation listener failed")
