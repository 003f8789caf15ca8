"""A member's view of a consumer group: its deliveries, and settling them.

Owns: `Member` (what one consumer of a group holds: a queue of deliveries,
or a listener that takes each one, `fetch`, iteration, leaving), and
`GroupDelivery` (one delivery of an event to a member: its id, attempt and
dedupe key, and `ack` / `nack` / `extend` / `term`), and the delivery id's
text form (`parse_delivery_id`). Must not decide who gets what or when: the
running `hub.group.Group` does, and every settling goes through it.

Delivery ids are `<epoch>-<shard>.<position>.<attempt>`: the event's place in
the log and which delivery of it this is, so any connection can settle it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from hashlib import blake2s
from typing import TYPE_CHECKING, Final

import msgspec

from hybridbus.core.event import Event
from hybridbus.core.groups import Entry
from hybridbus.core.log import MAX_POSITION, Delivery
from hybridbus.core.topics import tenant_of
from hybridbus.errors import InvalidInput

if TYPE_CHECKING:
    from hybridbus.hub.group import Group

__all__ = ["GroupDelivery", "Listener", "Member", "dedupe_key", "parse_delivery_id"]


class GroupDelivery(msgspec.Struct, eq=False):
    """One delivery of a group's event to a member; settle it with `ack`, `nack`, `extend`, `term`.

    `attempt` counts from 1. `dedupe_key` is the same for every delivery of
    one event (and of a replay of it): what an idempotent handler remembers.
    The group makes them (`GroupDelivery(group, member, entry, delivery,
    entry.attempts)`): a struct, as one is made per delivery (a third of the
    cost of a class with `__init__`); compared by identity.
    """

    _group: Group
    member: str
    _entry: Entry
    delivery: Delivery
    attempt: int
    _id: str = ""

    @property
    def id(self) -> str:
        """The delivery id (`<epoch>-<shard>.<position>.<attempt>`): settles it from anywhere.

        Made once (`Group.issue`, which lets an `ack` of it find the entry without reading it).
        """
        id_ = self._id
        if not id_:
            id_ = self._id = self._group.issue(self._entry, self.attempt)
        return id_

    @property
    def event(self) -> Event:
        """The event."""
        return self.delivery.event

    @property
    def topic(self) -> str:
        """The event's topic (absolute)."""
        return self.delivery.topic

    @property
    def dedupe_key(self) -> str:
        """A key per event (tenant, `source`, `id`), the same on every delivery of it.

        Computed once per pending entry (kept on it), not per delivery.
        """
        entry = self._entry
        key = entry.dedupe
        if not key:
            key = entry.dedupe = dedupe_key(self.delivery)
        return key

    async def ack(self) -> None:
        """The event was handled: it is never delivered to this group again. Durable on return."""
        await self._group.ack_deliveries((self,))

    async def nack(self, delay: float | None = None, error: str = "") -> None:
        """Handling failed: deliver it again after `delay` seconds (None: the group's backoff)."""
        await self._group.nack(self.id, delay, error)

    async def extend(self) -> None:
        """The handler needs more time: the lease starts over (`ack_wait` from now)."""
        self._group.extend(self.id)

    async def term(self, reason: str = "") -> None:
        """Give up on the event now: it goes to the dead letters whatever its attempts."""
        await self._group.term(self.id, reason)

    def __repr__(self) -> str:
        d = self.delivery
        return f"<GroupDelivery {d.topic}#{d.offset} attempt={self.attempt}>"


# Takes the deliveries one dispatch pass handed the member, in order (never an empty list).
Listener = Callable[[list[GroupDelivery]], None]


class Member:
    """A member of a group: `async for d in member` (or `fetch`) yields its deliveries.

    With a `listener`, deliveries go to it instead of the queue, a dispatch
    pass's at once (the server pushes them down a connection). `close`
    leaves the group: deliveries it got but never handed out go back at
    once; those handed out come back when their lease ends (unless settled).
    """

    def __init__(self, group: Group, name: str, listener: Listener | None = None) -> None:
        self.group = group
        self.name = name
        self._listener = listener
        self._queue: deque[GroupDelivery] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.closed = False
        # Told when the group or the bus ends the member (`end`), e.g. to tell a client.
        self.on_end: Callable[[BaseException], None] | None = None
        # True if the member takes events as their stored bytes (`Delivery.payload`; a
        # MessagePack connection): a group all of whose members do reads the log
        # without decoding the events (`core.log.StoredDelivery`).
        self.stored = False

    def give(self, delivery: GroupDelivery) -> None:
        """Hand `delivery` to this member (e.g. back into its queue)."""
        self.give_many([delivery])

    def give_many(self, deliveries: list[GroupDelivery]) -> None:
        """Hand `deliveries` (one dispatch pass's, in order) to this member (the group calls it)."""
        if self._listener is not None:
            self._listener(deliveries)
            return
        self._queue.extend(deliveries)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def end(self, error: BaseException) -> None:
        """The group or bus ended: iteration raises `error` once the queue is empty."""
        self._error = error
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.on_end is not None:
            self.on_end(error)

    async def fetch(self, limit: int = 100, wait: float | None = None) -> list[GroupDelivery]:
        """Up to `limit` deliveries: waits up to `wait` seconds (None: forever) for the first."""
        if not self._queue and not self.closed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                if wait is None:
                    await self._waiter
                else:
                    await asyncio.wait_for(asyncio.shield(self._waiter), wait)
            except TimeoutError:
                pass
            finally:
                self._waiter = None
        if not self._queue and self._error is not None:
            raise self._error
        out: list[GroupDelivery] = []
        queue = self._queue
        while queue and len(out) < limit:
            out.append(queue.popleft())
        return out

    def __aiter__(self) -> Member:
        return self

    async def __anext__(self) -> GroupDelivery:
        while True:
            got = await self.fetch(1)
            if got:
                return got[0]
            if self.closed:
                raise StopAsyncIteration

    async def ack(self, *deliveries: GroupDelivery) -> None:
        """Ack many deliveries in one durable write."""
        await self.group.ack_deliveries(deliveries)

    def close(self) -> None:
        """Leave the group (see the class docstring)."""
        if self.closed and self._error is not None:
            return
        self.closed = True
        unsent = list(self._queue)
        self._queue.clear()
        self.group.leave(self, unsent)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def __aenter__(self) -> Member:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


_BLAKE2S_16: Final = blake2s(digest_size=16)  # copied, never updated


def dedupe_key(delivery: Delivery) -> str:
    """The dedupe key of `delivery`'s event: a hash of its tenant, `source` and `id`.

    32 hex digits: BLAKE2s with a 16-byte digest of `<tenant>\x1f<source>\x1f<id>`
    (UTF-8), the same for every delivery of the event, in every process. (BLAKE2s,
    built into Python, takes half the instructions SHA-256 through OpenSSL took.)
    """
    source, id_, _ = delivery.identity()
    digest = _BLAKE2S_16.copy()  # half the cost of a new one with its digest size
    digest.update(f"{tenant_of(delivery.topic)}\x1f{source}\x1f{id_}".encode())
    return digest.hexdigest()


def parse_delivery_id(text: str) -> tuple[str, int, int, int]:
    """(epoch, shard, position, attempt) of a delivery id; `InvalidInput` if malformed.

    The id is `<epoch>-<shard>.<position>.<attempt>`: the epoch 1-64 of
    `[A-Za-z0-9_]`, then 1-6, 1-19 (at most `MAX_POSITION`) and 1-9 ASCII
    digits. Read with `str` methods, not a regular expression: an `ack` reads
    one per delivery.
    """
    if isinstance(text, str):
        try:
            epoch, rest = text.split("-")
            shard, position, attempt = rest.split(".")
        except ValueError:
            pass
        else:
            if (
                len(shard) <= 6
                and len(position) <= 19
                and len(attempt) <= 9
                and rest.isascii()
                and shard.isdigit()  # (False when empty)
                and position.isdigit()
                and attempt.isdigit()
                and len(epoch) <= 64
                and epoch.isascii()
                and epoch.replace("_", "a").isalnum()  # (False when empty)
            ):
                at = int(position)
                if at <= MAX_POSITION:
                    return epoch, int(shard), at, int(attempt)
    raise InvalidInput(f"not a delivery id: {text!r:.100}")
