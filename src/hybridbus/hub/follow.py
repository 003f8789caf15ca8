"""Following a bus topic for ever: what a node does to hear what the other nodes append.

Owns: `Follower`, one task that hands every event appended on a pattern
after a start position to a handler, in order, and when its subscription is
lost (a full queue, a new epoch) calls a `resync` (load again what the
events would have said), then follows on from the log's head of that
moment; `close` stops it. Must not know what the events mean: the guard
follows revocations with it (`hub.guard`), the registries their changes
(`hub.changes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from hybridbus.core.event import Event
from hybridbus.core.log import Position
from hybridbus.errors import BusClosed, BusError

if TYPE_CHECKING:
    from hybridbus.hub.bus import Bus

__all__ = ["Follower", "head_of"]

log = logging.getLogger("hybridbus.follow")

_RETRY: Final = 1.0  # seconds between a lost subscription and the resync


async def head_of(bus: Bus) -> Position:
    """The resume token at the log's head now (what was appended before is not followed)."""
    engine = bus.engine
    return Position(engine.epoch, await engine.head())


class Follower:
    """`handle(event)` for every event on `pattern` after `since` (see the module docstring)."""

    def __init__(
        self,
        bus: Bus,
        pattern: str,
        handle: Callable[[Event], Awaitable[None]],
        resync: Callable[[], Awaitable[None]],
    ) -> None:
        self.bus = bus
        self.pattern = pattern
        self._handle = handle
        self._resync = resync
        self._task: asyncio.Task[None] | None = None

    def start(self, since: Position) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(since), name=f"follow {self.pattern}"
        )

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, since: Position) -> None:
        token: Position | None = since
        while True:
            try:
                if token is None:
                    token = await head_of(self.bus)
                    await self._resync()
                async with self.bus.subscribe(self.pattern, since=token) as sub:
                    token = None
                    async for delivery in sub:
                        await self._handle(delivery.event)
            except BusClosed:
                return
            except BusError as exc:
                log.warning("following %s: %s; again in %g s", self.pattern, exc, _RETRY)
                token = None
                await asyncio.sleep(_RETRY)
