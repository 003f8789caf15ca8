"""What the sqlite engine's event loop queues for its writer thread.

Owns: the request kinds on the writer's deque (an append, an `append_many`,
a `write_groups` call, a revocation, a command) and how many events each
counts toward `batch_max`. Must not run SQL or touch the event loop: the
loop side (`engine.sqlite`) creates them and resolves their futures, the
writer thread only reads them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from hybridbus.core.event import Event
from hybridbus.core.log import Ack
from hybridbus.core.revocation import Revocation
from hybridbus.engine.base import GroupWrite

if TYPE_CHECKING:
    from hybridbus.engine._sqlite_store import Store

__all__ = ["Append", "AppendMany", "Command", "GroupWrites", "Item", "Request", "Revoke"]

Item = tuple[str, Event, bytes]
# What `append` queues: the item and the future of its ack (a bare tuple: the
# hot path, no object to build).
Append = tuple[Item, "asyncio.Future[Ack]"]


class AppendMany:
    """What `append_many` queues: its items, committed together, and the future of their acks.

    `dedupe=False` (a replay) appends every item even if its key is in the window.
    """

    __slots__ = ("dedupe", "future", "items")

    def __init__(
        self, items: Sequence[Item], future: asyncio.Future[list[Ack]], dedupe: bool = True
    ) -> None:
        self.items = items
        self.future = future
        self.dedupe = dedupe


class GroupWrites:
    """What `write_groups` queues: its writes, committed with the appends around them.

    Counts as one event per write toward `batch_max`.
    """

    __slots__ = ("future", "writes")

    def __init__(self, writes: Sequence[GroupWrite], future: asyncio.Future[None]) -> None:
        self.writes = writes
        self.future = future


class Command:
    """Work for the writer thread other than the group commit (sweep, reset, stop)."""

    __slots__ = ("fn", "future", "on_loop")

    def __init__(
        self,
        fn: Callable[[Store], Any] | None,
        future: asyncio.Future[Any] | None,
        on_loop: Callable[[Any], None] | None = None,
    ) -> None:
        self.fn = fn  # None: stop the writer
        self.future = future
        self.on_loop = on_loop  # runs on the loop with the result, before the future resolves


class Revoke:
    """A revocation for the writer thread; resolves once committed."""

    __slots__ = ("future", "revocation")

    def __init__(self, revocation: Revocation, future: asyncio.Future[None]) -> None:
        self.revocation = revocation
        self.future = future


Request = Append | AppendMany | GroupWrites | Command | Revoke
