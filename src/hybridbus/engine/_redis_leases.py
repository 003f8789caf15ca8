"""The Redis engine's coordination leases (`engine.base.Leases`): one node per consumer group.

Owns: `claim`, `release`, `holder` and the fresh read of one group (`group`)
as a mixin of `engine.redis.RedisEngine`, the lease scripts, and reading a
group write's stale-fence answer (`stale_fences`). The key layout (the
leases beside the groups, in their Cluster slot) and the group scripts are
`engine._redis_scripts`'s. Must not decide who coordinates what: the hub
does (`hub.group_leases`).
"""

from __future__ import annotations

from typing import Any, Final

from hybridbus.engine import _redis_io as rio
from hybridbus.engine import _redis_store as store
from hybridbus.engine.base import StoredGroup
from hybridbus.errors import NotCoordinator

__all__ = ["LEASE_CLAIM", "LEASE_RELEASE", "RedisLeases", "stale_fences"]

# KEYS[1] = G:l:<name>, KEYS[2] = G:f. ARGV: name, holder, ttl (ms), fence.
# Fence 0 takes a free lease, or the holder's own (a restarted node of that id),
# with a new fence; fence > 0 renews the holder's lease of that fence only.
# Returns {held (1/0), holder ('' if none), fence}.
LEASE_CLAIM: Final = """
local v = redis.call('GET', KEYS[1])
local fence = tonumber(ARGV[4])
if v then
  local i = string.find(v, '\\n', 1, true)
  local holder = string.sub(v, 1, i - 1)
  local current = tonumber(string.sub(v, i + 1))
  if holder == ARGV[2] and current == fence then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return {1, holder, current}
  end
  if holder ~= ARGV[2] or fence ~= 0 then return {0, holder, current} end
elseif fence ~= 0 then
  return {0, '', 0}
end
local new = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('SET', KEYS[1], ARGV[2] .. '\\n' .. new, 'PX', ARGV[3])
return {1, ARGV[2], new}
"""

# KEYS[1] = G:l:<name>. ARGV: holder, fence. Deletes the lease if it is theirs.
LEASE_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] .. '\\n' .. ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


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
            held, who, now = await rio.call(self.client, LEASE_CLAIM, keys, args)
        except Exception as exc:
            raise rio.wrap(exc, "cannot claim a lease") from exc
        return bool(held), who.decode() if isinstance(who, bytes) else str(who), int(now)

    async def release(self, name: str, holder: str, fence: int) -> None:
        self._check_open()
        key = store.lease_key(self._target.prefix, name)
        try:
            await rio.call(self.client, LEASE_RELEASE, [key], [holder, fence])
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
