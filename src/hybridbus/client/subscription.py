"""One subscription of the Python client: a bounded queue the connection fills.

Owns: what the application iterates (`Received` deliveries, oldest first),
the resume token the connection resubscribes from after a reconnect, and how
gaps and endings reach the application (`ContinuityLost` once at the gap,
the ending error at the end). Must not do I/O: the connection feeds it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType

from hybridbus.core.log import Position
from hybridbus.errors import BusError, ContinuityLost, SubscriberTooSlow
from hybridbus.proto.client import Received

__all__ = ["ClientSubscription"]

_Gap = ContinuityLost


class ClientSubscription:
    """Deliveries of one pattern: `async for received in sub`.

    `position` is the resume token after the last delivery received from the
    server (queued ones included: they are not lost on a reconnect).
    `recovered` turns False for good once continuity was lost; each loss is
    also raised, once, by the iterator at the point of the gap.
    """

    def __init__(
        self,
        pattern: str,
        since: Position | None,
        maxsize: int,
        opener: Callable[[ClientSubscription], Awaitable[None]],
        closer: Callable[[ClientSubscription], Awaitable[None]],
    ) -> None:
        self.pattern = pattern
        self.position: Position | None = since
        self.recovered = True
        self._maxsize = maxsize
        self._opener = opener
        self._closer = closer
        self._queue: deque[Received | ContinuityLost] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BusError | None = None
        self._ended = False

    # -- fed by the connection ---------------------------------------------------

    def deliver(self, received: Received) -> None:
        """Queue a delivery and advance the resume token."""
        if self._ended:
            return
        if len(self._queue) >= self._maxsize:
            self.end(
                SubscriberTooSlow(
                    f"the application fell {self._maxsize} deliveries behind on {self.pattern!r}"
                )
            )
            return
        self.position = received.token
        self._queue.append(received)
        self._wake()

    def gap(self, reason: str) -> None:
        """Continuity was lost here: the iterator raises `ContinuityLost` at this point."""
        self.recovered = False
        self._queue.append(_Gap(reason))
        self._wake()

    def started(self, position: Position) -> None:
        """The server confirmed the subscription as of `position` (when nothing came yet)."""
        if self.position is None or self.position.epoch != position.epoch:
            self.position = position

    def end(self, error: BusError | None = None) -> None:
        """No more deliveries; iteration raises `error` once the queue is empty (or stops)."""
        if self._ended:
            return
        self._ended = True
        self._error = error
        self._wake()

    @property
    def ended(self) -> bool:
        return self._ended

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the application's side --------------------------------------------------

    def __aiter__(self) -> ClientSubscription:
        return self

    async def __anext__(self) -> Received:
        while True:
            if self._queue:
                item = self._queue.popleft()
                if isinstance(item, ContinuityLost):
                    raise item
                return item
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            # Waits as long as nothing is published; `end` always wakes it.
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def __aenter__(self) -> ClientSubscription:
        await self._opener(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._closer(self)
