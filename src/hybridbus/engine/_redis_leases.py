"""The Redis engine's coordination leases (`engine.base.Leases`): one node per consumer group.

Owns: `claim`, `release`, `holder` and the fresh read of one group (`group`)
as a mixin of `engine.redis.RedisEngine`, and reading a group write's
stale-fence answer (`stale_fences`). The Lua scripts and the key layout
(the leases beside the groups, in their Cluster slot) are
`engine._redis_scripts`'s. Must not decide who coordinates what: the hub
does (`hub.group_leases`).
"""

from __future__ import annotations

from typing import Any

from hybridbus.engine import _redis_io as rio
from hybridbus.engine import _redis_scripts as lua
from hybridbus.engine import _redis_store as store
from hybridbus.engine.base import StoredGroup
from hybridbus.errors import NotCoordinator

__all__ = ["RedisLeases", "stale_fences"]


def stale_fences(answer: Any) -> NotCoordinator | None:
    """The refusal of a GROUPS_WRITE answer `{0, group...}` (None: it was written)."""
    if not (isinstance(answer, list) and answer and answer[0] == 0):
        return None
    stale = tuple(g.decode() if isinstance(g, bytes) else str(g) for g in answer[1:])
    return NotCoordinator(
        f"this node no longer holds the lease of {', '.join(stale)}", groups=stale
    )


class RedisLeases:
    """`engine.base.Leases` on Redis (see the module docstring)."""

    client: rio.Client
    _target: rio.RedisTarget

    def _check_open(self) -> None:
        raise NotImplementedError

    async def claim(
        self, name: str, holder: str, ttl: float, fence: int = 0
    ) -> tuple[bool, str, int]:
        self._check_open()
        prefix = self._target.prefix
        keys = [store.lease_key(prefix, name), store.fences_key(prefix)]
        args = [name, holder, max(1, round(ttl * 1000)), fence]
        try:
            held, who, now = await rio.call(self.client, lua.LEASE_CLAIM, keys, args)
        except Exception as exc:
            raise rio.wrap(exc, "cannot claim a lease") from exc
        return bool(held), who.decode() if isinstance(who, bytes) else str(who), int(now)

    async def release(self, name: str, holder: str, fence: int) -> None:
        self._check_open()
        key = store.lease_key(self._target.prefix, name)
        try:
            await rio.call(self.client, lua.LEASE_RELEASE, [key], [holder, fence])
        except Exception as exc:
            raise rio.wrap(exc, "cannot release a lease") from exc

    async def holder(self, name: str) -> str | None:
        self._check_open()
        try:
            value = await self.client.get(store.lease_key(self._target.prefix, name))
        except Exception as exc:
            raise rio.wrap(exc, "cannot read a lease") from exc
        if value is None:
            return None
        text = value.decode() if isinstance(value, bytes) else str(value)
        return text.partition("\n")[0]

    async def group(self, name: str) -> StoredGroup | None:
        self._check_open()
        try:
            return await store.read_group(self.client, self._target.prefix, name)
        except Exception as exc:
            raise rio.wrap(exc, "cannot read a group") from exc
