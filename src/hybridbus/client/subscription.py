"""One subscription of the Python client: a bounded queue the connection fills.

Owns: what the application iterates (`Received` deliveries, oldest first),
the resume token the connection resubscribes from after a reconnect, and how
gaps and endings reach the application (`ContinuityLost` once at the gap,
the ending error at the end). Must not do I/O: the connection feeds it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType

from hybridbus.client.inbox import Inbox
from hybridbus.core.filters import Filter
from hybridbus.core.log import Position
from hybridbus.errors import ContinuityLost, SubscriberTooSlow
from hybridbus.proto.client import Received

__all__ = ["ClientSubscription", "Filter"]  # Filter: what `filter=` takes (core.filters)

_Gap = ContinuityLost


class ClientSubscription(Inbox[Received | ContinuityLost]):
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
        *,
        filter: Filter | None = None,
    ) -> None:
        super().__init__()
        self.pattern = pattern
        self.filter = filter  # sent with every subscribe, the resubscribes too
        self.position: Position | None = since
        self.recovered = True
        self._maxsize = maxsize
        self._opener = opener
        self._closer = closer

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
        self._put(received)

    def gap(self, reason: str) -> None:
        """Continuity was lost here: the iterator raises `ContinuityLost` at this point."""
        self.recovered = False
        self._put(_Gap(reason))

    def started(self, position: Position) -> None:
        """The server confirmed the subscription as of `position` (when nothing came yet)."""
        if self.position is None or self.position.epoch != position.epoch:
            self.position = position

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
            await self._wait()  # as long as nothing is published; `end` always wakes it

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
