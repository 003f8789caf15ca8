"""The tenant publish rate for the whole deployment: one token bucket per tenant in Redis.

Owns: the tenants' buckets in the Redis the nodes share (one Lua script
takes from one), this node's leases on them (tokens taken ahead of need and
spent locally), and the fallback while that Redis cannot be reached. Must
not block: `take` (the `SharedLimits` the guard calls on the publish path)
answers from what this node holds and asks Redis in the background.

Keys: `{<P>limit:<tenant>}`, a hash {level, at} per tenant (a key of its
own, so a Redis Cluster spreads tenants over its masters), with PX = the
time it takes to fill up: a missing key is a full bucket. Time is Redis's
`TIME`, so the nodes' clocks do not matter.

Theory of operation. The script refills the bucket (`rate` a second, up to
`burst`), subtracts what the node spent on credit since it last asked
(`owed`, even below zero), and grants up to `want` of what is left. Each
node holds, per tenant, the tokens granted and not yet spent (`held`, at
most a `chunk`) and may spend up to a `chunk` more on credit while the last
answer said the bucket had a chunk left (a tenant new to this node too, so
its first publish is never refused for want of a lease). When `held` falls
below half a chunk, or anything is owed, it asks again; every tenant due is
asked in one pipeline. `chunk` is what the rate gives in 50 ms, at most a
quarter of the burst and at least one publish (or the burst, if smaller):
one round trip per chunk of publishes per node.

How far over. Over any span T a deployment of N nodes accepts at most
`burst + rate x T + 2 x N x chunk` publishes of a tenant: each node may
hold a chunk taken before the span and owe a chunk taken on credit. The
credit is paid back (the bucket goes below zero), so over a long run the
rate holds exactly.

Redis unreachable (refused, or no answer within 1 s): each node falls back
to a bucket of its own per tenant at the full rate and burst — fail open, as
a node alone limits — so a deployment may then take N times the rate.
With the engine on that same Redis the publishes fail anyway (1301). It
tries Redis again every second and goes back to the shared buckets (with
fresh leases) once it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Final

from hybridbus.core.ratelimit import KeyedBuckets
from hybridbus.server.redis_shared import SharedRedis, connect, driver_errors
from hybridbus.tasks import stop

__all__ = ["RedisLimits"]

log = logging.getLogger("hybridbus.limits")

_TIMEOUT: Final = 1.0  # seconds one lease call may take before Redis counts as unreachable
_RETRY: Final = 1.0  # seconds between two tries while it is
_LEASE_SECONDS: Final = 0.05  # a chunk: what the rate gives in this long
_MAX_TENANTS: Final = 100_000  # accounts held; the least recently used go first

# KEYS[1] the bucket; ARGV rate, burst, owed, want. Returns {granted, level} as strings.
_LEASE: Final = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local owed, want = tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local stored = redis.call('HMGET', KEYS[1], 'level', 'at')
local level, at = burst, now
if stored[1] then
  level, at = tonumber(stored[1]), tonumber(stored[2])
  if now > at then
    level = math.min(burst, level + (now - at) * rate / 1000000)
    at = now
  end
end
level = level - owed
local granted = 0
if level > 0 then granted = math.min(want, level) end
level = level - granted
redis.call('HSET', KEYS[1], 'level', string.format('%.17g', level), 'at', string.format('%.0f', at))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - level) * 1000 / rate) + 1000)
return {string.format('%.17g', granted), string.format('%.17g', level)}
"""


class _Account:
    """One tenant on this node: tokens held, owed, the credit allowed, the last level heard."""

    __slots__ = ("asked", "credit", "held", "level", "owed", "quiet_until")

    def __init__(self, credit: float) -> None:
        self.held = 0.0  # granted by Redis, not yet spent
        self.owed = 0.0  # spent on credit, not yet told to Redis
        self.credit = credit  # how much may be owed now
        self.level = math.inf  # the bucket's level after the last grant (inf: unknown)
        self.asked = False  # a lease is in flight or due
        self.quiet_until = 0.0  # (monotonic) do not ask before: the bucket was empty


class RedisLimits:
    """Per-tenant buckets shared by every node: a `SharedLimits` for `Guard.share_tenant_limits`."""

    def __init__(self, shared: SharedRedis, *, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.chunk = max(min(1.0, burst), min(rate * _LEASE_SECONDS, burst / 4))
        self._shared = shared
        self._accounts: OrderedDict[Hashable, _Account] = OrderedDict()
        self._fallback = KeyedBuckets(rate, burst)
        self.reachable = True  # False: this node limits on its own (module docstring)
        self._due: list[Hashable] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._redis: Any = None
        self._script: Any = None
        self._errors = driver_errors()

    def _key(self, tenant: Hashable) -> str:
        return "{" + f"{self._shared.prefix}limit:{tenant}" + "}"

    async def start(self) -> None:
        if self._task is None:
            self._redis = connect(self._shared, _TIMEOUT, "hybridbus-limits")
            self._script = self._redis.register_script(_LEASE)
            self._task = asyncio.get_running_loop().create_task(
                self._lease_loop(), name="limits: leases"
            )

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await stop(task)
        if self._redis is not None:
            with contextlib.suppress(*self._errors):
                await self._redis.aclose()

    # -- the publish path ---------------------------------------------------------------

    def take(self, key: Hashable, now: float, cost: float = 1.0) -> float:
        """Take `cost` publishes of tenant `key`: 0.0, or the seconds to wait (none taken)."""
        if not self.reachable:
            return self._fallback.take(key, now, cost)
        if cost > self.burst:
            return math.inf
        accounts = self._accounts
        account = accounts.get(key)
        if account is None:
            if len(accounts) >= _MAX_TENANTS:
                accounts.popitem(last=False)
            account = accounts[key] = _Account(self.chunk)
        else:
            accounts.move_to_end(key)
        if account.held >= cost:
            account.held -= cost
        elif account.held + account.credit - account.owed >= cost:
            account.owed += cost - account.held
            account.held = 0.0
        else:
            self._ask(key, account)
            short = cost - max(0.0, account.held + account.credit - account.owed)
            behind = -account.level if account.level < 0 else 0.0
            return max(0.001, (short + behind) / self.rate)
        if account.held < self.chunk / 2 or account.owed > 0:
            self._ask(key, account)
        return 0.0

    def _ask(self, key: Hashable, account: _Account) -> None:
        if account.asked or time.monotonic() < account.quiet_until:
            return
        account.asked = True
        self._due.append(key)
        self._wake.set()

    # -- leases -------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.reachable:
                await self._retry()
                continue
            try:
                await self._lease()
            except self._errors as exc:
                log.warning("the shared tenant limits cannot reach Redis: each node limits "
                            "on its own until it answers: %s", exc)  # fmt: skip
                self.reachable = False
                self._wake.set()

    async def _lease(self) -> None:
        """Ask for every tenant due, in one pipeline; spread what comes back."""
        due, self._due = self._due, []
        asked: list[tuple[_Account, float]] = []
        async with asyncio.timeout(_TIMEOUT):
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in due:
                    account = self._accounts.get(key)
                    if account is None:  # forgotten meanwhile
                        continue
                    owed = account.owed
                    want = max(0.0, self.chunk - account.held)
                    asked.append((account, owed))
                    args = [self.rate, self.burst, owed, want]
                    await self._script(keys=[self._key(key)], args=args, client=pipe)
                try:
                    answers = await pipe.execute()
                finally:
                    for account, _ in asked:
                        account.asked = False
        now = time.monotonic()
        for (account, owed), (granted, level) in zip(asked, answers, strict=True):
            account.owed -= owed
            account.held += float(granted)
            account.level = float(level)
            account.credit = self.chunk if account.level >= self.chunk else 0.0
            if account.level < self.chunk:  # nearly empty: ask again once a chunk is back
                account.quiet_until = now + min(_RETRY, (self.chunk - account.level) / self.rate)

    async def _retry(self) -> None:
        """Unreachable: try Redis every second; once it answers, lease afresh."""
        await asyncio.sleep(_RETRY)
        try:
            async with asyncio.timeout(_TIMEOUT):
                await self._redis.ping()
        except self._errors:
            self._wake.set()
            return
        log.info("the shared tenant limits reach Redis again")
        self._accounts.clear()  # what was held or owed before is forgotten
        self._due.clear()
        self.reachable = True
