"""Revocations: which tokens, sessions and users may no longer connect, and until when.

Owns: the `Revocation` record (what an engine stores) and `RevocationSet`,
the in-memory index a node consults on every authentication and keeps in step
with its engine. Must not do I/O nor know where revocations are stored
(that is the engine's `revoke` / `revocations`), nor verify tokens (that is
`server.auth`).

A revocation names one key, `(kind, tenant, value)`:

- kind "token": `value` is a token's `jti` (`Identity.token_id`);
- kind "session": `value` is a `sid` (`Identity.session`): every token of the session;
- kind "user": `value` is a user id (`Identity.user`): every token of that user
  *issued at or before* the revocation's `at` (a token without `iat` counts as
  issued before), so the user can sign in again and get a new token.

`until` is when the revocation stops mattering — the latest expiry of the
tokens it names. After it, the revocation is forgotten (`prune`, the
engine's sweep). Revoking the same key again keeps the later `until` and the
later `at`: a revocation only ever widens.

Bounds. A server accepts no token living longer than a horizon (its
longest token lifetime plus the clock leeway): no token it accepts at `now`
expires after `now + horizon`. So `bounded` lowers an `until` past that to
it (storing longer buys nothing), and raises a user revocation's to it —
every token of the user issued up to `at` is then refused until the last of
them has expired, so a revoked long-lived token cannot come back. `until`
and `at` are finite numbers; `shorten` lowers stored ones past a bound (a
server whose horizon was lowered, or revocations stored before there was one).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator
from typing import Final, Literal

import msgspec

from hybridbus.core.identity import Identity

__all__ = ["REVOCATION_KINDS", "Revocation", "RevocationKind", "RevocationSet"]

RevocationKind = Literal["token", "session", "user"]
REVOCATION_KINDS: Final[frozenset[str]] = frozenset({"token", "session", "user"})

_Key = tuple[str, str, str]  # (kind, tenant, value)


class Revocation(msgspec.Struct, frozen=True, kw_only=True):
    """One revoked token, session or user of `tenant`; times are Unix seconds.

    `until`: after it the revocation may be forgotten. `at`: when it was made
    (for kind "user", tokens issued later are not revoked). `reason` is for
    people (logs, audits), never shown to the peer.
    """

    kind: RevocationKind
    tenant: str
    value: str
    until: float
    at: float
    reason: str = ""

    def __post_init__(self) -> None:
        # msgspec checks the Literal when decoding; this catches Python callers
        # (and rows read back from storage) before a bad kind is stored.
        if self.kind not in REVOCATION_KINDS:
            raise ValueError(f"revocation kind must be token, session or user, not {self.kind!r}")
        if not (math.isfinite(self.until) and math.isfinite(self.at)):
            raise ValueError("a revocation's until and at must be finite numbers (Unix seconds)")

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies it: revoking the same key again merges into it."""
        return (self.kind, self.tenant, self.value)

    def live(self, now: float) -> bool:
        """Whether it still applies at `now` (`until` is in the future)."""
        return self.until > now

    def bounded(self, now: float, horizon: float) -> Revocation:
        """This revocation made at `now`, held to the `horizon` (seconds; see the module docstring).

        `until` is at most `now + horizon`; a user revocation's is exactly that.
        """
        if not (math.isfinite(horizon) and horizon > 0):
            raise ValueError("the horizon must be a finite number of seconds > 0")
        cap = now + horizon
        until = cap if self.kind == "user" else min(self.until, cap)
        return self if until == self.until else msgspec.structs.replace(self, until=until)

    def merge(self, other: Revocation) -> Revocation:
        """This key revoked again by `other`: the later `until` and the later `at`.

        The reason is the one of the later revocation (`other` on a tie).
        """
        if other.key != self.key:
            raise ValueError(f"cannot merge revocations of {self.key} and {other.key}")
        newer = other if other.at >= self.at else self
        return Revocation(
            kind=self.kind,
            tenant=self.tenant,
            value=self.value,
            until=max(self.until, other.until),
            at=newer.at,
            reason=newer.reason,
        )


class RevocationSet:
    """Revocations by key, with O(1) checks of an identity and cheap pruning.

    Not thread-safe; one owner (a node, the memory engine) updates it.
    """

    __slots__ = ("_by_key", "_expiry", "_per_tenant")

    def __init__(self, revocations: Iterable[Revocation] = ()) -> None:
        self._by_key: dict[_Key, Revocation] = {}
        # (until, kind, tenant, value), a min-heap. Re-adding a key with a later
        # `until` pushes a new entry; the stale one is skipped when popped.
        self._expiry: list[tuple[float, str, str, str]] = []
        self._per_tenant: dict[str, int] = {}
        self.extend(revocations)

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Revocation]:
        return iter(list(self._by_key.values()))

    def add(self, revocation: Revocation) -> Revocation:
        """Store `revocation`, merged with an earlier one of the same key; return what is kept."""
        key = revocation.key
        old = self._by_key.get(key)
        kept = revocation if old is None else old.merge(revocation)
        self._by_key[key] = kept
        if old is None:
            tenant = revocation.tenant
            self._per_tenant[tenant] = self._per_tenant.get(tenant, 0) + 1
        if old is None or kept.until > old.until:
            heapq.heappush(self._expiry, (kept.until, *key))
        return kept

    def extend(self, revocations: Iterable[Revocation]) -> None:
        """`add` each of `revocations`."""
        for revocation in revocations:
            self.add(revocation)

    def count(self, tenant: str) -> int:
        """How many revocations of `tenant` are held (live or not yet pruned)."""
        return self._per_tenant.get(tenant, 0)

    def shorten(self, latest: float) -> list[Revocation]:
        """Lower every `until` past `latest` to `latest`; return the revocations changed."""
        changed = [
            msgspec.structs.replace(r, until=latest)
            for r in self._by_key.values()
            if r.until > latest
        ]
        if changed:
            for revocation in changed:
                self._by_key[revocation.key] = revocation
            # Rebuilt, not pushed onto: the entries of the old untils would stay forever.
            self._expiry = [(r.until, *r.key) for r in self._by_key.values()]
            heapq.heapify(self._expiry)
        return changed

    def get(self, kind: str, tenant: str, value: str) -> Revocation | None:
        """The revocation stored for this key, live or not (None: none)."""
        return self._by_key.get((kind, tenant, value))

    def revoked(self, identity: Identity, now: float) -> Revocation | None:
        """The live revocation that applies to `identity` at `now` (None: none does).

        Checked in order token, session, user; the first that applies is returned.
        """
        by_key = self._by_key
        if not by_key:
            return None
        tenant = identity.tenant
        if identity.token_id is not None:
            found = by_key.get(("token", tenant, identity.token_id))
            if found is not None and found.until > now:
                return found
        if identity.session is not None:
            found = by_key.get(("session", tenant, identity.session))
            if found is not None and found.until > now:
                return found
        if identity.user is not None:
            found = by_key.get(("user", tenant, identity.user))
            if (
                found is not None
                and found.until > now
                and (identity.issued is None or identity.issued <= found.at)
            ):
                return found
        return None

    def prune(self, now: float) -> int:
        """Forget the revocations no longer live at `now`; return how many."""
        expiry = self._expiry
        by_key = self._by_key
        removed = 0
        while expiry and expiry[0][0] <= now:
            until, kind, tenant, value = heapq.heappop(expiry)
            key = (kind, tenant, value)
            current = by_key.get(key)
            if current is not None and current.until == until:
                del by_key[key]
                removed += 1
                left = self._per_tenant[tenant] - 1
                if left:
                    self._per_tenant[tenant] = left
                else:
                    del self._per_tenant[tenant]
        return removed

    def clear(self) -> None:
        """Forget every revocation."""
        self._by_key.clear()
        self._expiry.clear()
        self._per_tenant.clear()
