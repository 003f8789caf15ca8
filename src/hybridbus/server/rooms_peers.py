"""What a Yjs room is made of: its settings, its topic, the sockets in it.

Owns: `RoomsConfig` (the `yjs_*` settings as the rooms take them),
`room_topic` (a room's log topic), `Sink` (how a room reaches one socket),
`Peer` (one socket in a room), `Backlog` (what its sockets sent, waiting for
the room's writer: bounded), `merge_all` (a batch's updates as one) and
`encode_updates` (a turn's updates as messages). Must not hold documents or states (`server.rooms`,
`server.rooms_awareness`) nor do I/O.
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

import msgspec
from pycrdt import merge_updates

from hybridbus.core.topics import validate_topic
from hybridbus.core.yjs_protocol import SyncStep1, encode_sync_update
from hybridbus.errors import InvalidTopic

__all__ = [
    "Backlog",
    "Peer",
    "RoomsConfig",
    "Sink",
    "encode_updates",
    "merge_all",
    "room_topic",
]

MAX_BACKLOG: Final = 1024  # messages queued for a room's writer before its sockets are not read
MERGE_CHUNK: Final = 32  # updates merged in one call (merge_updates is superlinear)


class RoomsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the Yjs rooms (docs/configuration.md, `yjs_*`). Seconds, counts, bytes."""

    compact_every: int = 500  # updates since the last snapshot that make a new one
    compact_interval: float = 60.0  # at most this long after an update before a snapshot
    idle_unload: float = 30.0  # a room without clients unloads after this
    max_awareness_bytes: int = 64 << 10  # one client's awareness state, as JSON


def room_topic(tenant: str, room: str) -> str:
    """The log topic of `room` in `tenant`; raises `InvalidTopic` for a bad room name."""
    if not room or "/" in room:
        raise InvalidTopic(f"a room name is one topic segment, not {room!r}")
    return validate_topic(f"{tenant}/docs/{room}")


class Sink(Protocol):
    """How a room reaches one client: the gateway's socket."""

    def send(self, payload: bytes) -> None:
        """Send one binary WebSocket message; never waits (a reader too slow is cut)."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Close the socket with `code` (a `YjsCloseCode`), in the background."""
        ...


class Peer:
    """One client socket in a room, and whether it may write (it owns awareness states)."""

    __slots__ = ("sink", "writable")

    def __init__(self, sink: Sink, writable: bool) -> None:
        self.sink = sink
        self.writable = writable


Queued = tuple[Peer, bytes | SyncStep1]  # an update (of a sync update or step 2), or a step 1


class Backlog:
    """The updates (and sync steps 1 behind them) a room's sockets sent, in order.

    Bounded: at `limit` the gateway stops reading its sockets (`room_for_more`)
    until the writer takes the lot, so a client sending faster than the log
    stores holds no more than one batch here, and each append stays bounded.
    """

    __slots__ = ("_items", "_limit", "_open", "full")

    def __init__(self, limit: int = MAX_BACKLOG) -> None:
        self._items: list[Queued] = []
        self._limit = limit
        self._open = asyncio.Event()
        self._open.set()
        self.full = False  # at the bound, until the writer takes the lot (or the room closes)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Queued) -> None:
        self._items.append(item)
        if len(self._items) >= self._limit:
            self._open.clear()
            self.full = True

    def take(self) -> list[Queued]:
        """Everything queued, in order; the sockets are read again."""
        items, self._items = self._items, []
        self._open.set()
        self.full = False
        return items

    def release(self) -> None:
        """Read the sockets again whatever is queued (the room is closing)."""
        self._open.set()
        self.full = False

    async def room_for_more(self) -> None:
        """Wait until the backlog is under its bound."""
        await self._open.wait()


def merge_all(updates: list[bytes]) -> bytes | None:
    """`updates` as one update, or None when one of them does not decode.

    Merged `MERGE_CHUNK` at a time, then the merged chunks the same way:
    pycrdt's `merge_updates` costs more than linearly in its input (a call
    on 1,024 one-character updates: 3.3 µs an update; by 32s, then the 32
    results: 0.7), and the merged update applies in a tenth of the time the
    updates take one by one (docs/benchmarks.md §13, session 7).
    """
    if len(updates) == 1:
        return updates[0]
    try:
        while len(updates) > MERGE_CHUNK:
            updates = [
                merge_updates(*updates[at : at + MERGE_CHUNK])
                for at in range(0, len(updates), MERGE_CHUNK)
            ]
        return updates[0] if len(updates) == 1 else merge_updates(*updates)
    except ValueError:
        return None


def encode_updates(updates: list[bytes]) -> list[bytes]:
    """`updates` as sync-update messages: merged `MERGE_CHUNK` at a time.

    One merge of a turn's thousands of updates took seconds (pycrdt's
    `merge_updates` costs more than linearly in its input), with the loop held.
    """
    out: list[bytes] = []
    for at in range(0, len(updates), MERGE_CHUNK):
        chunk = updates[at : at + MERGE_CHUNK]
        if len(chunk) == 1:
            out.append(encode_sync_update(chunk[0]))
            continue
        try:
            out.append(encode_sync_update(merge_updates(*chunk)))
        except ValueError:  # one would not merge: send each on its own
            out.extend(encode_sync_update(update) for update in chunk)
    return out
