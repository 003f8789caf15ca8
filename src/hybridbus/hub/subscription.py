"""A subscription: missed events from the log, then live ones, each exactly once.

Owns: one subscriber's bounded queue, its recovery from a resume token, the
hand-over from history to live, and its resume token (`position`). Must not
know which engine it reads from, nor route anything: the bus pushes live
deliveries in (`push`), the engine's pages come through `Reader`.

Theory of operation. A subscription is registered for live deliveries
*before* it reads history, so nothing can fall between the two. While it
recovers, live deliveries wait in `_pending`; history pages go to the queue
through a `Cursor`, which lets a delivery through only if it lies past the
last one seen in its shard. When a page reaches the head of the log, the
pending deliveries follow through the same cursor (those the page already
held are dropped), and from then on live deliveries go straight to the queue.
If `_pending` outgrows the queue bound while recovering, it is discarded and
recovery simply reads further: the log has everything pending had.

A filter (`core.filters`, given as `match`) is applied where a delivery
would enter the queue, after the cursor has moved past it: a delivery it
refuses is never handed out, and the position still passes it, so a resume
from any position handed out neither sends a matching delivery twice nor
skips one (a refused delivery read again is refused again).

States: RECOVERING → LIVE → ENDED (ENDED from any state).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from enum import Enum
from types import TracebackType

from hybridbus.core.filters import Match
from hybridbus.core.log import Cursor, Delivery, Page, Position
from hybridbus.engine.base import Clock
from hybridbus.errors import BusError, SubscriberTooSlow

__all__ = ["Reader", "Subscription"]

Reader = Callable[[str, Sequence[int], int], Awaitable[Page]]


class _State(Enum):
    RECOVERING = "recovering"
    LIVE = "live"
    ENDED = "ended"


_LIVE = _State.LIVE  # a global, not an attribute lookup, on the hot path


class Subscription:
    """Deliveries of one pattern, oldest first: `async for delivery in sub`.

    `recovered` is False when continuity from the `since` token could not be
    kept (another epoch, or retention removed missed events); it can turn
    False during recovery if retention removes events not yet read.
    `position` is the resume token after the last delivery handed out.
    """

    # One per subscriber, touched once per delivery: no __dict__.
    __slots__ = (
        "__weakref__",
        "_clock",
        "_closer",
        "_cursor",
        "_error",
        "_match",
        "_maxsize",
        "_notify",
        "_opener",
        "_overflowed",
        "_page_size",
        "_pending",
        "_queue",
        "_reader",
        "_state",
        "_waiter",
        "_yielded",
        "pattern",
        "recovered",
    )

    def __init__(
        self,
        pattern: str,
        *,
        reader: Reader,
        opener: Callable[[Subscription], Awaitable[None]],
        closer: Callable[[Subscription], None],
        clock: Clock,
        maxsize: int,
        page_size: int,
        match: Match | None = None,
    ) -> None:
        self.pattern = pattern
        self._match = match  # the filter's predicate; None: everything
        self.recovered = True
        self._reader = reader
        self._opener = opener
        self._closer = closer
        self._clock = clock
        self._maxsize = maxsize
        self._page_size = page_size
        self._state = _State.RECOVERING
        self._queue: deque[Delivery] = deque()
        self._pending: list[Delivery] = []
        self._overflowed = False
        self._cursor = Cursor("", ())
        self._yielded: list[int] = []
        self._waiter: asyncio.Future[None] | None = None
        self._notify: Callable[[], None] | None = None
        self._error: BusError | None = None

    # -- set-up, driven by the bus ------------------------------------------

    def begin(self, epoch: str, positions: tuple[int, ...], *, recovering: bool) -> None:
        """Start from `positions`: read history past them first if `recovering`."""
        self._cursor = Cursor(epoch, positions)
        self._yielded = list(positions)
        if not recovering:
            self._go_live()

    async def catch_up(self) -> None:
        """Read the next history page into the queue; go live at the head."""
        page = await self._reader(self.pattern, tuple(self._cursor.positions), self._page_size)
        if self._state is not _State.RECOVERING:
            return
        if not page.exact:
            self.recovered = False
        cursor = self._cursor
        queue = self._queue
        deliveries = page.deliveries
        match = self._match
        seen = cursor.positions
        if len(seen) == 1:
            # One shard: the page is in position order, so only a head of it
            # can have been seen already; the rest goes in at once.
            last = seen[0]
            skip = 0
            while skip < len(deliveries) and deliveries[skip].position <= last:
                skip += 1
            if skip < len(deliveries):
                fresh = deliveries[skip:] if skip else deliveries
                if match is None:
                    queue.extend(fresh)
                else:
                    queue.extend(d for d in fresh if match(d.event))
                seen[0] = deliveries[-1].position
        else:
            for delivery in deliveries:
                if cursor.advance(delivery) and (match is None or match(delivery.event)):
                    queue.append(delivery)
        # A page may end past its last delivery (a shared page ends at a block
        # boundary): nothing of the pattern lies in between.
        cursor.skip_to(page.positions)
        if page.more:
            return
        if self._overflowed or len(queue) + len(self._pending) > self._maxsize:
            # Live deliveries were dropped while reading, or handing them over
            # would overflow the queue: read on from the log, which has them.
            self._overflowed = False
            self._pending.clear()
            return
        self._go_live()

    def _go_live(self) -> None:
        pending, self._pending = self._pending, []
        self._state = _State.LIVE
        for delivery in pending:
            self.push(delivery)

    # -- fed by the bus -------------------------------------------------------

    def push(self, delivery: Delivery) -> bool:
        """Take a live delivery (called by the bus in log order).

        True if the queue is past half its bound: the publisher should yield.
        """
        state = self._state
        if state is _LIVE:
            # Cursor.advance, inlined: this runs once per delivery per subscriber.
            seen = self._cursor.positions
            shard = delivery.shard
            if delivery.position <= seen[shard]:
                return False
            seen[shard] = delivery.position
            match = self._match
            if match is not None and not match(delivery.event):
                return False  # passed, not handed out: the position is past it
            backlog = len(self._queue)
            if backlog >= self._maxsize:
                self.end(
                    SubscriberTooSlow(
                        f"subscriber of {self.pattern!r} fell {self._maxsize} deliveries behind; "
                        "resubscribe from its position"
                    )
                )
                return False
            self._queue.append(delivery)
            notify = self._notify
            if notify is not None:
                if not backlog:
                    notify()  # once per batch: the owner takes it all with take_nowait()
                return backlog * 2 >= self._maxsize
            waiter = self._waiter
            if waiter is not None:
                self._waiter = None  # wake it once; later pushes skip this
                if not waiter.done():
                    waiter.set_result(None)
            return backlog * 2 >= self._maxsize
        elif state is _State.RECOVERING:
            if self._overflowed:
                return False
            if len(self._pending) >= self._maxsize:
                self._overflowed = True
                self._pending.clear()
                return False
            self._pending.append(delivery)
        return False

    def end(self, error: BusError | None = None) -> None:
        """End the subscription; iteration raises `error`, or stops if None."""
        if self._state is _State.ENDED:
            return
        self._state = _State.ENDED
        if error is not None:
            self._error = error
            # Queued deliveries were never handed out: the token must not pass them.
            self._queue.clear()
        self._pending = []
        self._closer(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the application's side --------------------------------------------

    @property
    def position(self) -> Position:
        """The resume token: pass it as `since` to continue after the last delivery."""
        if not self._queue and self._error is None:
            return self._cursor.position()
        return Position(self._cursor.epoch, tuple(self._yielded))

    @property
    def epoch(self) -> str:
        """The epoch its positions belong to ("" until it began)."""
        return self._cursor.epoch

    @property
    def backlog(self) -> int:
        """Deliveries queued and not yet handed out: a writer batches that many."""
        return len(self._queue)

    @property
    def live(self) -> bool:
        """True once recovery is over and deliveries are live."""
        return self._state is _State.LIVE

    @property
    def queued(self) -> int:
        """Deliveries queued and not taken yet (just after recovery: its last page)."""
        return len(self._queue)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Delivery:
        queue = self._queue
        while True:
            if queue:
                delivery = queue.popleft()
                self._yielded[delivery.shard] = delivery.position
                if delivery.expires is not None and delivery.expired(self._clock()):
                    continue
                return delivery
            if not await self._wait():
                raise StopAsyncIteration

    async def take(self) -> list[Delivery]:
        """Every delivery queued now, oldest first, waiting for one if none is.

        An empty list means the subscription ended normally; an ended one
        raises its error, like iteration. Handing a batch out at once costs
        one await per batch instead of one per delivery.
        """
        while True:
            if self._queue:
                batch = self.take_nowait()
                if batch:
                    return batch
                continue  # all of them expired
            if not await self._wait():
                return []

    def take_nowait(self) -> list[Delivery]:
        """Every delivery queued now, oldest first (none: an empty list); never waits."""
        queue = self._queue
        if not queue:
            return []
        batch = list(queue)
        queue.clear()
        yielded = self._yielded
        for delivery in batch:
            yielded[delivery.shard] = delivery.position
        if any(delivery.expires is not None for delivery in batch):
            now = self._clock()
            batch = [d for d in batch if not d.expired(now)]
        return batch

    def attach(self, notify: Callable[[], None]) -> bool:
        """Call `notify()` when a live delivery lands in the empty queue, instead of waking.

        For an owner that drains many subscriptions from one task (a server
        connection): `notify` runs inside the publisher's route, so it must
        only note that this subscription has something and never raise; the
        owner then takes it all with `take_nowait()`, and waits for the end
        with `finished()`. Possible only once live with nothing queued
        (False otherwise: keep taking).
        """
        if self._state is not _State.LIVE or self._queue:
            return False
        self._notify = notify
        return True

    async def finished(self) -> None:
        """Wait until the subscription ends: return if it ended cleanly, else raise its error."""
        while True:
            if self._error is not None:
                raise self._error
            if self._state is _State.ENDED:
                return
            # Only `end` wakes an attached subscription's waiter.
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def _wait(self) -> bool:
        """Wait until the queue holds something: False once ended, raises its error."""
        if self._error is not None:
            raise self._error
        state = self._state
        if state is _State.ENDED:
            return False
        if state is _State.RECOVERING:
            await self.catch_up()
            return True
        # An idle subscriber legitimately waits for as long as nothing is
        # published; `end` always wakes it.
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        return True

    async def __aenter__(self) -> Subscription:
        await self._opener(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end()
