"""Which consumer groups this node coordinates: a lease per group, claimed and kept alive.

Owns: `Coordination`, this node's side of the engine's `Leases` (Kafka's
group coordinator, without a protocol of our own): claiming a group's lease
the first time an operation reaches it here, renewing every held lease each
`ttl`/3, telling the registry (`on_lost`) when one is lost — refused at a
renewal, or not renewed within `ttl` of the last claim that went out (so
this node stops before Redis lets another take it) — and releasing them at
a graceful close. Must not load or run groups (`hub.groups` does) nor know
where nodes listen: `locate` (set by the server from its node registry)
turns a holder's node id into its URL for the `NotCoordinator` answer.

An engine without leases (memory, sqlite) makes this node the coordinator
of every group: `enabled` is False and nothing here runs.

Timing. A claim sent at local time t holds until t + ttl at the latest as
far as this node knows (Redis counts its ttl from when it ran the script,
later). Renewals go out every ttl/3; a lease not confirmed by t + ttl is
dropped here, before any other node can have it. A node paused past that
(SIGSTOP, a long GC) comes back to a lease that may be another's: its writes
carry the old fence and the engine refuses them (`engine.base.Leases`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Final

from hybridbus.engine.base import Leases
from hybridbus.errors import EngineError, NotCoordinator
from hybridbus.tasks import stop

__all__ = ["DEFAULT_TTL", "Coordination", "default_node_id"]

log = logging.getLogger("hybridbus.groups")

DEFAULT_TTL: Final = 10.0  # seconds (the `group_lease_ttl` setting)
_RELEASE_TIMEOUT: Final = 2.0  # seconds a graceful close gives the releases

# A holder's node id -> its HTTP base URL ("http://host:port"; "" if not registered).
Locate = Callable[[str], Awaitable[str]]
# A lease was lost: (group id, the holder now: "" if unknown).
OnLost = Callable[[str, str], None]


def default_node_id() -> str:
    """An id for a bus that no server names: `<hostname>-<pid>-<random>` (unique per bus)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class _Held:
    """A lease held: its fence, when it lapses as far as this node knows, when to renew it."""

    __slots__ = ("deadline", "fence", "renew")

    def __init__(self, fence: int, sent: float, ttl: float) -> None:
        self.fence = fence
        self.deadline = sent + ttl
        self.renew = sent + ttl / 3


class Coordination:
    """This node's group leases (see the module docstring)."""

    def __init__(self, engine: object) -> None:
        self.engine: Leases | None = engine if isinstance(engine, Leases) else None
        self.node = default_node_id()
        self.ttl = DEFAULT_TTL
        self.locate: Locate | None = None
        self.on_lost: OnLost = lambda gid, holder: None
        self._held: dict[str, _Held] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def enabled(self) -> bool:
        """True if the engine has leases: groups are coordinated one node each."""
        return self.engine is not None

    def fence(self, gid: str) -> int | None:
        """The fence of the lease held on `gid` (None: not held, or no leases)."""
        held = self._held.get(gid)
        return None if held is None else held.fence

    def lock(self, gid: str) -> asyncio.Lock:
        """One claim of `gid` at a time on this node."""
        lock = self._locks.get(gid)
        if lock is None:
            if len(self._locks) > 4096:  # forget the idle ones
                for key in [k for k, v in self._locks.items() if not v.locked()]:
                    del self._locks[key]
            lock = self._locks[gid] = asyncio.Lock()
        return lock

    # -- life ----------------------------------------------------------------------

    def start(self) -> None:
        """Start renewing (nothing to do without leases)."""
        if self.engine is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._renew_forever(), name="group leases"
            )

    async def close(self) -> None:
        """Stop renewing and give every lease up (the next operation anywhere claims it)."""
        task, self._task = self._task, None
        if task is not None:
            await stop(task)
        held, self._held = self._held, {}
        engine = self.engine
        if engine is None or not held:
            return
        with contextlib.suppress(EngineError, TimeoutError):
            async with asyncio.timeout(_RELEASE_TIMEOUT):
                await asyncio.gather(
                    *(engine.release(gid, self.node, h.fence) for gid, h in held.items())
                )

    # -- claiming --------------------------------------------------------------------

    async def claim(self, gid: str) -> int:
        """Take the lease of `gid` (held already: its fence); `NotCoordinator` if another has it."""
        held = self._held.get(gid)
        if held is not None:
            return held.fence
        engine = self.engine
        assert engine is not None
        loop = asyncio.get_running_loop()
        sent = loop.time()
        ok, holder, fence = await engine.claim(gid, self.node, self.ttl)
        if not ok:
            raise await self.not_coordinator(gid, holder)
        self._held[gid] = _Held(fence, sent, self.ttl)
        self._wake.set()
        return fence

    async def release(self, gid: str) -> None:
        """Give the lease of `gid` up now (a deleted group, a claim that found nothing)."""
        held = self._held.pop(gid, None)
        if held is not None and self.engine is not None:
            with contextlib.suppress(EngineError):
                await self.engine.release(gid, self.node, held.fence)

    def forget(self, gid: str) -> None:
        """Stop renewing `gid` (lost: its writes were fenced off)."""
        self._held.pop(gid, None)

    async def not_coordinator(self, gid: str, holder: str) -> NotCoordinator:
        """The answer for an operation on `gid`, which `holder` coordinates."""
        url = ""
        if holder and self.locate is not None:
            try:
                url = await self.locate(holder)
            except Exception:  # the registry is not ours to fail on: no URL then
                log.debug("cannot locate node %s", holder, exc_info=True)
        if holder:
            message = f"node {holder} coordinates group {gid!r:.140}: ask it"
        else:
            message = f"no node coordinates group {gid!r:.140} now: try again"
        return NotCoordinator(message, node=holder, url=url)

    # -- renewing ----------------------------------------------------------------------

    async def _renew_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            due = [t for h in self._held.values() for t in (h.renew, h.deadline)]
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(due) - now) if due else None):
                    await self._wake.wait()
                continue  # a new lease: look at the times again
            await self._renew(loop.time())

    async def _renew(self, now: float) -> None:
        engine = self.engine
        assert engine is not None
        for gid, held in list(self._held.items()):
            if held.deadline <= now:
                self._lose(gid, "", "its lease could not be renewed in time")
        due = [(gid, h) for gid, h in self._held.items() if h.renew <= now + self.ttl / 6]
        if not due:
            return
        for _, held in due:  # tried again this much later if the engine does not answer
            held.renew = now + min(1.0, self.ttl / 6)
        sent = asyncio.get_running_loop().time()
        answers = await asyncio.gather(
            *(engine.claim(gid, self.node, self.ttl, h.fence) for gid, h in due),
            return_exceptions=True,
        )
        for (gid, held), answer in zip(due, answers, strict=True):
            if self._held.get(gid) is not held:
                continue  # released or lost meanwhile
            if isinstance(answer, BaseException):
                if not isinstance(answer, EngineError):
                    log.error("group %s: renewing its lease failed", gid, exc_info=answer)
                continue  # dropped at its deadline unless a retry gets through
            ok, holder, _ = answer
            if ok:
                held.deadline = sent + self.ttl
                held.renew = sent + self.ttl / 3
            else:
                self._lose(gid, holder, "its lease passed to another node")

    def _lose(self, gid: str, holder: str, why: str) -> None:
        self._held.pop(gid, None)
        log.warning("group %s: this node no longer coordinates it (%s)", gid, why)
        self.on_lost(gid, holder)
