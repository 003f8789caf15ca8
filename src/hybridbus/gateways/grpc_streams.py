"""The gRPC gateway's streaming calls: how a held call ends early, and Subscribe's outbox.

Owns: `Ending` — a streaming call (`Subscribe`, `Ingest`) is held by its
principal for as long as it runs: its work runs as a task beside an `ending`
future the holder (the node) completes at revocation or expiry, and at
shutdown the gateway does (1210). Whichever finishes first wins; an ending
cancels the work and ends the call with the ending's status — even a write
stalled on a client that stopped reading. And `Outbox` — the responses of a
`Subscribe` waiting for its client, written in order by a task of their own
(each write waits for HTTP/2 flow control), counted in bytes so the call can
end when too many wait. Must not know the calls, the bus or statuses: those
are `gateways.grpc_bus`'s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable
from typing import Any

from hybridbus.errors import BusError

__all__ = ["Ending", "Outbox"]


class Outbox:
    """The responses of a Subscribe waiting to be written, and the task writing them in order."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._queue: collections.deque[tuple[Any, int]] = collections.deque()
        self.size = 0  # bytes of the responses not yet written
        self._ready = asyncio.Event()  # something to write
        self._moved = asyncio.Event()  # a write finished
        self._task = asyncio.ensure_future(self._write())

    def add(self, message: Any, size: int) -> None:
        self._queue.append((message, size))
        self.size += size
        self._ready.set()

    async def below(self, size: int) -> None:
        """Wait until at most `size` bytes wait (0: none); the writer's failure is raised here."""
        moved = self._moved
        while True:
            moved.clear()
            if self.size <= size and (size or not self._queue):
                return
            if self._task.done():
                self._task.result()  # raises why the writer stopped
                return
            await moved.wait()

    async def _write(self) -> None:
        queue = self._queue
        try:
            while True:
                if not queue:
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                message, size = queue[0]
                await self._context.write(message)
                queue.popleft()
                self.size -= size
                self._moved.set()
        finally:
            self._moved.set()  # wakes a waiter when the writer stops, for whatever reason

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._queue.clear()
        self.size = 0


class Ending:
    """How a held call ends early: the holder's `end(error)`, or the gateway's shutdown."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[BusError] = asyncio.get_running_loop().create_future()

    def end(self, error: BusError) -> None:
        if not self.future.done():
            self.future.set_result(error)

    async def run(self, work: Awaitable[Any]) -> Any:
        """`work`'s result, or the ending's error raised if it comes first (work cancelled)."""
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait((task, self.future), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if self.future.done() and not (task.done() and not task.cancelled()):
            raise self.future.result()
        return task.result()
