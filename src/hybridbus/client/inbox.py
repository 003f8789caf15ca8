"""What the client's connection hands the application, queued until it is taken.

Owns: `Inbox`, the queue of one subscription or group membership, the one
task waiting on it, and how it ends (with an error, or quietly). Must not
know what is queued nor talk to the server: `ClientSubscription` and
`ClientGroup` build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Generic, TypeVar

from hybridbus.errors import BusError

__all__ = ["Inbox"]

T = TypeVar("T")


class Inbox(Generic[T]):
    """A queue the connection fills and the application empties; `end` closes it."""

    def __init__(self) -> None:
        self._queue: deque[T] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BusError | None = None
        self._ended = False

    def end(self, error: BusError | None = None) -> None:
        """No more items; the application gets `error` once the queue is empty (or stops)."""
        if self._ended:
            return
        self._ended = True
        self._error = error
        self._wake()

    @property
    def ended(self) -> bool:
        """True once ended (queued items may still be taken)."""
        return self._ended

    def _put(self, item: T) -> None:
        self._queue.append(item)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, wait: float | None = None) -> None:
        """Until an item is queued or the inbox ends (or `wait` seconds pass; None: no limit)."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            if wait is None:
                await self._waiter
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._waiter), wait)
        finally:
            self._waiter = None
