"""Recovery pages: one read of the log shared by every subscription that catches up through it.

Owns: the bus's cache of recent history per pattern, the single-flight of the
engine reads that fill it, keeping the newest block of a pattern current from
the bus's route, and the bound on its memory. Must not know which engine it
reads (it is given an `Engine`), nor hand anything to subscribers itself: a
`Subscription` reads its pages through `SharedPages.read`, a `Reader`.

Theory of operation. The log (of a one-shard engine) is cut into *blocks* of
`block` positions: block k holds positions (k*block, (k+1)*block]. For every
pattern some subscription recovers, a *chain* keeps blocks of it:

- a *complete* block holds every delivery of the pattern in its range as the
  log held it when the block was read (or routed), and whether retention had
  removed anything past the block's start by then (`exact`, as `Page.exact`);
- the chain's *tail* is the block that holds the head of the log. From the
  moment the read that found it was issued, the bus's route hands every
  delivery to `routed`, which appends the pattern's ones to the tail (and
  completes it when the log moves past it). So the tail holds every delivery
  of the pattern up to the newest one routed, whoever reads it and whenever:
  a subscription registered for live deliveries before it reads gets the rest
  through its own queue, as with an engine read.

A read for position s serves block s // block onward from the cache (the
first block cut to what lies past s), and on a miss issues ONE engine read
from the block's start for everyone who asks for that block meanwhile, then
caches every block the answer covers. Subscriptions that start from nearby
positions thus share the engine read, the decoded deliveries (the very same
objects), and — their pages being equal — the encoding the server makes of
them. A block that says retention removed something past its start cannot
tell whether that was past s too: a read from inside it goes to the engine.

What is cached may outlive retention for a while: a subscription may receive
events retention removed after they were read or routed, never fewer than an
engine read would give; so a gap is still always reported. Chains unread for
`idle` seconds are dropped; the blocks' estimated size (MessagePack bytes plus
a fixed overhead per delivery) stays under `max_size`, least recently used
blocks evicted first (a tail evicted stops following the log). An engine with
more than one shard, or a read smaller than a block, is passed through.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final

import msgspec

from hybridbus.core.log import Delivery, Page
from hybridbus.core.topics import matches
from hybridbus.engine.base import Engine

__all__ = ["SharedPages"]

# Python's objects for a small delivery weigh far more than its MessagePack bytes.
_OVERHEAD: Final = 512
# Past this many blocks at once (positions far apart), a tail stops following the log.
_MAX_JUMP: Final = 1024

_encoder = msgspec.msgpack.Encoder()


def _size(deliveries: Sequence[Delivery]) -> int:
    """The estimated memory of `deliveries`: MessagePack bytes plus a fixed overhead each."""
    encode = _encoder.encode
    return sum([len(encode(d.event)) for d in deliveries]) + _OVERHEAD * len(deliveries)


class _Block:
    __slots__ = ("deliveries", "exact", "size")

    def __init__(self, deliveries: list[Delivery], exact: bool) -> None:
        self.deliveries = deliveries
        self.exact = exact
        self.size = _size(deliveries)


class _Recorder:
    """What was routed while a read was in flight: the pattern's deliveries, and the head."""

    __slots__ = ("deliveries", "head")

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.head = 0


class _Chain:
    """The cached blocks of one pattern."""

    __slots__ = ("blocks", "flights", "head", "memo", "pattern", "recorders", "tail", "used")

    def __init__(self, pattern: str, now: float) -> None:
        self.pattern = pattern
        self.blocks: dict[int, _Block] = {}
        self.tail: int | None = None  # the index of the tail block (in `blocks`), if live
        self.head = 0  # with a tail: the newest position routed (or read)
        self.flights: dict[int, asyncio.Future[None]] = {}
        self.recorders: list[_Recorder] = []
        self.memo: dict[str, bool] = {}  # topic -> does the pattern match it
        self.used = now

    def match(self, topic: str) -> bool:
        found = self.memo.get(topic)
        if found is None:
            if len(self.memo) >= 4096:
                self.memo.clear()
            found = self.memo[topic] = matches(self.pattern, topic)
        return found


class SharedPages:
    """History pages for recovering subscriptions, shared (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        *,
        block: int,
        max_size: int,
        idle: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._block = max(block, 1)
        self._max_size = max_size
        self._idle = idle
        self._monotonic = monotonic
        self._chains: dict[str, _Chain] = {}
        self._epoch = ""
        # (pattern, block index) -> size, least recently used first.
        self._lru: OrderedDict[tuple[str, int], int] = OrderedDict()
        self.size = 0
        # True while some chain follows the log: the bus then calls `routed`.
        self.active = False

    @property
    def blocks(self) -> int:
        """How many blocks are cached (for tests and metrics)."""
        return len(self._lru)

    # -- reading ---------------------------------------------------------------

    async def read(self, pattern: str, after: Sequence[int], limit: int) -> Page:
        """What `engine.read(pattern, after, limit)` gives a recovering subscription.

        The page may hold fewer deliveries than an engine read's (it ends at a
        block boundary) and is shared: callers never change it.
        """
        engine = self._engine
        if self._max_size <= 0 or len(after) != 1 or limit < self._block or engine.shards != 1:
            return await engine.read(pattern, after, limit)
        now = self._monotonic()
        self._check_epoch()
        self._drop_idle(now)
        chain = self._chains.get(pattern)
        if chain is None:
            chain = self._chains[pattern] = _Chain(pattern, now)
        chain.used = now
        start = after[0]
        page = self._serve(chain, start, limit)
        if page is not None:
            return page
        index = start // self._block
        flight = chain.flights.get(index)
        if flight is not None:
            await asyncio.shield(flight)
        else:
            await self._fetch(chain, index)
        page = self._serve(chain, start, limit) if self._chains.get(pattern) is chain else None
        if page is not None:
            return page
        # Evicted meanwhile, or retention leaves it unclear whether `start` lost anything.
        return await engine.read(pattern, after, limit)

    def _serve(self, chain: _Chain, start: int, limit: int) -> Page | None:
        """The page from `start` out of the cache; None if its first block is not cached."""
        size = self._block
        index = start // size
        found: list[Delivery] = []
        exact = True
        lru = self._lru
        pattern = chain.pattern
        while True:
            block = chain.blocks.get(index)
            if block is None:
                if not found and index == start // size:
                    return None
                return Page(self._epoch, found, (index * size,), True, exact)
            deliveries = block.deliveries
            if index == start // size and start != index * size:
                if not block.exact:
                    return None
                # The first block: only what lies past `start`.
                skip = 0
                while skip < len(deliveries) and deliveries[skip].position <= start:
                    skip += 1
                deliveries = deliveries[skip:]
            elif found and len(found) + len(deliveries) > limit:
                return Page(self._epoch, found, (index * size,), True, exact)
            lru.move_to_end((pattern, index))
            exact = exact and block.exact
            found.extend(deliveries)
            if index == chain.tail:
                return Page(self._epoch, found, (max(chain.head, start),), False, exact)
            index += 1

    async def _fetch(self, chain: _Chain, index: int) -> None:
        """Read block `index` (and whatever else the answer covers) from the engine, once."""
        flight: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        chain.flights[index] = flight
        recorder = _Recorder()
        chain.recorders.append(recorder)
        self.active = True
        try:
            page = await self._engine.read(chain.pattern, (index * self._block,), self._block)
            if page.epoch == self._epoch and self._chains.get(chain.pattern) is chain:
                self._install(chain, index, page, recorder)
        finally:
            chain.recorders.remove(recorder)
            del chain.flights[index]
            if not flight.done():
                flight.set_result(None)
            self._update_active()

    def _install(self, chain: _Chain, index: int, page: Page, recorder: _Recorder) -> None:
        """Cache the blocks `page` (read from block `index`) covers completely; maybe a tail."""
        size = self._block
        deliveries = page.deliveries
        covered = page.positions[0]  # everything of the pattern up to here was read
        end = covered // size  # blocks index..end-1 are complete
        if chain.tail is not None:
            end = min(end, chain.tail)  # the live tail knows better from there on
        cut = 0
        for number in range(index, end):
            limit = (number + 1) * size
            first = cut
            while cut < len(deliveries) and deliveries[cut].position <= limit:
                cut += 1
            if number not in chain.blocks:
                self._put(chain, number, _Block(deliveries[first:cut], page.exact))
        if page.more or chain.tail is not None or end < index:
            return
        # The head lies in block `end`: it becomes the tail, brought up to date with what
        # was routed since the read was issued, and follows the log from now on.
        chain.tail = end
        chain.head = covered
        self._put(chain, end, _Block(deliveries[cut:], page.exact))
        late = [d for d in recorder.deliveries if d.position > covered]
        self._follow(chain, late, max(recorder.head, covered))

    # -- following the log -----------------------------------------------------

    def routed(self, deliveries: Sequence[Delivery]) -> None:
        """The bus routed `deliveries` (log order): record them, extend the tails."""
        if self._epoch != self._engine.epoch:
            self._check_epoch()
            return
        self._drop_idle(self._monotonic())
        last = deliveries[-1].position if deliveries else 0
        for chain in list(self._chains.values()):
            if not chain.recorders and chain.tail is None:
                continue
            match = chain.match
            mine = [d for d in deliveries if d.shard == 0 and match(d.topic)]
            for recorder in chain.recorders:
                recorder.deliveries.extend(mine)
                recorder.head = max(recorder.head, last)
            if chain.tail is not None:
                self._follow(chain, [d for d in mine if d.position > chain.head], last)

    def _follow(self, chain: _Chain, deliveries: list[Delivery], head: int) -> None:
        """Append the pattern's `deliveries` (past the head) to the tail; move the head."""
        tail = chain.tail
        assert tail is not None
        size = self._block
        pattern = chain.pattern
        if head // size - tail > _MAX_JUMP:
            self._drop_tail(chain)
            return
        for delivery in deliveries:
            while delivery.position > (tail + 1) * size:
                tail += 1
                self._put(chain, tail, _Block([], True))
            block = chain.blocks.get(tail)
            if block is None:  # evicted while being put
                self._drop_tail(chain)
                return
            block.deliveries.append(delivery)
            grown = _size((delivery,))
            block.size += grown
            self.size += grown
            self._lru[(pattern, tail)] = block.size
            self._lru.move_to_end((pattern, tail))
        while head >= (tail + 1) * size:
            tail += 1
            self._put(chain, tail, _Block([], True))
        if chain.tail is None or (pattern, tail) not in self._lru:
            self._drop_tail(chain)
            return
        chain.tail = tail
        chain.head = max(chain.head, head)
        self._evict()

    # -- memory ----------------------------------------------------------------

    def _put(self, chain: _Chain, index: int, block: _Block) -> None:
        key = (chain.pattern, index)
        old = self._lru.pop(key, None)
        if old is not None:
            self.size -= old
        chain.blocks[index] = block
        self._lru[key] = block.size
        self.size += block.size
        self._evict()

    def _evict(self) -> None:
        lru = self._lru
        while self.size > self._max_size and lru:
            (pattern, index), size = lru.popitem(last=False)
            self.size -= size
            chain = self._chains.get(pattern)
            if chain is None:
                continue
            chain.blocks.pop(index, None)
            if chain.tail is not None and index >= chain.tail:
                chain.tail = None
        self._update_active()

    def _drop_tail(self, chain: _Chain) -> None:
        if chain.tail is not None:
            self._forget(chain.pattern, chain.blocks.pop(chain.tail, None), chain.tail)
            chain.tail = None
        self._update_active()

    def _forget(self, pattern: str, block: _Block | None, index: int) -> None:
        if block is not None and self._lru.pop((pattern, index), None) is not None:
            self.size -= block.size

    def _drop_idle(self, now: float) -> None:
        for pattern, chain in list(self._chains.items()):
            if now - chain.used > self._idle and not chain.flights:
                for index, block in chain.blocks.items():
                    self._forget(pattern, block, index)
                del self._chains[pattern]
        self._update_active()

    def _check_epoch(self) -> None:
        """Forget everything when the log began a new epoch (positions start over)."""
        epoch = self._engine.epoch
        if epoch != self._epoch:
            self._epoch = epoch
            self._chains.clear()
            self._lru.clear()
            self.size = 0
            self.active = False

    def _update_active(self) -> None:
        self.active = any(
            chain.recorders or chain.tail is not None for chain in self._chains.values()
        )
