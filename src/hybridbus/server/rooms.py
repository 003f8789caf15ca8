"""Yjs rooms: one pycrdt document per loaded room, its clients, its awareness, its log.

Owns: `Room` (the
document, the awareness states of its clients, what is sent to them, the
durability of its updates). Must not read sockets, decide who may do what
(the gateway says whether a peer may write) nor edit a document itself: the
server never edits by index (pycrdt's `Text` indices are UTF-8 byte offsets,
the clients' are UTF-16 units), it only applies and merges updates.

Theory of operation. A room of tenant `t` named `r` is the log topic
`t/docs/r`: every update a client sends is appended there as an event of
type `hybridbus.yjs.update` (its `data` the update's bytes) BEFORE it is
applied to the room's document, broadcast, or echoed back to its sender
(the echo is the acknowledgement: an update the sender saw come back is in
the log). Updates arriving together (what the sockets sent while the previous
append was stored) are merged into one update (`rooms_peers.merge_all`, in
order) and appended as one event by the room's writer task, then applied once
and broadcast as one message: per edit, the log, the document and the sockets
cost a fraction of what one event per update did. A group stays under half
`max_event_size` (larger batches: several events, one engine call); a group
that does not merge (an update that does not decode) is appended update by
update, as before, and the one that does not apply closes its sender 4400.
A room follows its topic
through a bus subscription, so updates another node appended (or anybody
published with that type) reach its document and its clients; its own come
back that way too and are skipped by their `source`, unique per room object.

Loading: the newest snapshot (an event of type `hybridbus.yjs.snapshot` on
`t/docs/r/snapshots`: the whole document as one update, and in its extension
`yjscovers` the resume token up to which it holds every update), then a
subscription from that token, recovering what came after it and going on
live. Yjs updates are idempotent and commute, so an update applied twice or
out of order is harmless: a token of another epoch just reads the topic
from its start. Compaction writes a snapshot once `compact_every` updates
came AND their bytes reach the last snapshot's size (proportional: snapshots
cost no more than the updates, a load reads at most about two snapshots'
worth), `compact_interval` seconds after the first update since the last
one, and when the room unloads; never while an append of its own is in
flight, so the token it records never passes an update its document lacks.

Order: a sync step 1 arriving while updates wait for the writer is queued
behind them (`rooms_peers.Backlog`, bounded: past it the gateway stops
reading), so its step 2 holds every update sent before it.

Sending: replies (sync step 2, the awareness states a query asks for) go to
their peer at once; broadcasts are gathered and sent once per loop turn: the
turn's updates merged a few at a time (`rooms_peers.encode_updates`), then
one awareness message with the newest state of each client that changed.
Each is one bytes object for every peer (framed once).

Awareness (`server.rooms_awareness`: which state wins, whose it is) crosses
nodes through the `AwarenessRelay` (`server.rooms_relay`), when the node
shares a Redis: a room sends its own sockets' changes to it, and `Rooms`
(`server.rooms_node`: the rooms of one node) is its target for the other nodes' (`heard`, `drop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from collections.abc import Iterable
from typing import Any, Final

from pycrdt import Doc

from hybridbus.core.event import Event
from hybridbus.core.log import Delivery, Position, is_exact
from hybridbus.core.yjs_protocol import (
    AwarenessEntry,
    AwarenessUpdate,
    Message,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    YjsCloseCode,
    encode_awareness,
    encode_permission_denied,
    encode_sync_step1,
    encode_sync_step2,
)
from hybridbus.errors import BusClosed, BusError, EventTooLarge, YjsMessageInvalid
from hybridbus.hub.bus import Bus, Prepared
from hybridbus.hub.subscription import Subscription
from hybridbus.server.rooms_awareness import Remote, RoomAwareness
from hybridbus.server.rooms_peers import (
    Backlog,
    Peer,
    RoomsConfig,
    Sink,
    encode_updates,
    merge_all,
    room_topic,
)
from hybridbus.server.rooms_relay import AwarenessRelay

__all__ = [
    "SNAPSHOT_TYPE",
    "UPDATE_TYPE",
    "Peer",
    "Room",
    "RoomsConfig",
    "Sink",
    "room_topic",
]

log = logging.getLogger("hybridbus.server.rooms")

UPDATE_TYPE: Final = "hybridbus.yjs.update"
SNAPSHOT_TYPE: Final = "hybridbus.yjs.snapshot"
_COVERS: Final = "yjscovers"  # the snapshot's extension: the token it holds everything up to
_CONTENT_TYPE: Final = "application/octet-stream"
_HISTORY_PAGE: Final = 100  # snapshots read per page while looking for the newest
_UNLOAD_SNAPSHOT_TIMEOUT: Final = 5.0
_NOT_APPLIED: Final = "an update that does not apply"
_UPDATES: Final = (SyncUpdate, SyncStep2)  # a tuple: `A | B` makes a union at each call

# One log event of a batch: the peers whose updates it holds, its update (merged),
# how many client updates it holds, the event as `Bus.append` takes it.
_Row = tuple[list[Peer], bytes, int, Prepared]


class Room:
    """One loaded room (see the module docstring)."""

    def __init__(
        self, bus: Bus, topic: str, config: RoomsConfig, relay: AwarenessRelay | None = None
    ) -> None:
        self.bus = bus
        self.relay = relay  # the other nodes' clients' awareness (None: this node alone)
        self.topic = topic
        self.snapshots = topic + "/snapshots"
        self.config = config
        self.doc: Doc[Any] = Doc()
        self.peers: set[Peer] = set()
        self.awareness = RoomAwareness(config.max_awareness_bytes)
        self.source = f"/hybridbus/yjs/{secrets.token_hex(6)}"
        self.loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.snapshot_skipped = False
        self.since_snapshot = 0  # updates applied since the last snapshot
        self.bytes_since_snapshot = 0  # their size
        self.snapshot_bytes = 0  # the size of the last snapshot written (or loaded)
        self._incoming = Backlog()
        self._writer: asyncio.Task[None] | None = None
        self._appending = False
        self._compact_due = False
        self._compacting: asyncio.Task[None] | None = None
        self._compact_timer: asyncio.TimerHandle | None = None
        self._follower: asyncio.Task[None] | None = None
        self._sub: Subscription | None = None
        self._out_updates: list[bytes] = []
        self._out_awareness: dict[int, AwarenessEntry] = {}
        self._flush: asyncio.Handle | None = None
        self.idle: asyncio.TimerHandle | None = None

    # -- life ------------------------------------------------------------------

    async def load(self) -> None:
        """Read the newest snapshot and every update after it; then follow the topic live."""
        try:
            covers = await self._load_snapshot()
            engine = self.bus.engine
            start = Position(engine.epoch, (0,) * engine.shards)
            if covers is not None and is_exact(covers, engine.epoch, engine.shards):
                start = covers
            sub = self.bus.subscribe(self.topic, start)
            await sub.__aenter__()
            self._sub = sub
            while not sub.live:
                await sub.catch_up()
                self._apply_deliveries(sub.take_nowait(), skip_own=False)
            self._apply_deliveries(sub.take_nowait(), skip_own=False)
            self._follower = asyncio.create_task(self._follow(), name=f"yjs-follow {self.topic}")
            if self.relay is not None:
                self.relay.loaded(self.topic)  # the states the other nodes' clients hold here
        except BaseException as exc:
            if self._sub is not None:
                self._sub.end()
            if not self.loaded.done():
                self.loaded.set_exception(exc)
                self.loaded.exception()  # retrieved: joiners see it through `join`
            raise
        self.loaded.set_result(None)

    async def _load_snapshot(self) -> Position | None:
        newest: Delivery | None = None
        since: Position | None = None
        while True:
            page = await self.bus.history(self.snapshots, since, _HISTORY_PAGE)
            for delivery in page.deliveries:
                if delivery.event.type == SNAPSHOT_TYPE:
                    newest = delivery
            since = page.position
            if not page.more:
                break
        if newest is None:
            return None
        event = newest.event
        try:
            state = _bytes(event.data)
            self.doc.apply_update(state)
            self.snapshot_bytes = len(state)
            return Position.parse(str(event.extensions[_COVERS]))
        except (ValueError, KeyError, TypeError, BusError):
            log.warning("room %s: snapshot %s unusable: reading every update", self.topic, event.id)
            return None

    async def close(self) -> None:
        """Unload: write a last snapshot if updates came since the last one, stop following."""
        self.closed = True
        self._incoming.release()
        for handle in (self._flush, self._compact_timer, self.idle):
            if handle is not None:
                handle.cancel()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer
        if self._compacting is not None:
            with contextlib.suppress(Exception):
                await self._compacting
        if self.since_snapshot and self.loaded.done() and self.loaded.exception() is None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_UNLOAD_SNAPSHOT_TIMEOUT):
                    await self._compact()
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._follower
        if self._sub is not None:
            self._sub.end()

    # -- clients -----------------------------------------------------------------

    def join(self, peer: Peer) -> None:
        """Add `peer`: it gets sync step 1 and every awareness state at once."""
        self.peers.add(peer)
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        peer.sink.send(encode_sync_step1(self.doc.get_state()))
        if self.awareness:
            peer.sink.send(encode_awareness(self.awareness.values()))

    def leave(self, peer: Peer) -> None:
        """Remove `peer`; the awareness states it spoke for go, and the others are told."""
        self.peers.discard(peer)
        self._local_awareness(self.awareness.leave(peer))

    def receive(self, peer: Peer, messages: Iterable[Message]) -> bool:
        """Handle what `peer` sent; raises `YjsMessageInvalid` (close the socket 4400).

        True when the writer's queue is at its bound: read nothing more from
        the sockets before `room_for_more` returns.
        """
        for message in messages:
            if isinstance(message, _UPDATES):
                if not peer.writable:
                    peer.sink.send(
                        encode_permission_denied(f"read-only: no publish on {self.topic}")
                    )
                    continue
                self._enqueue(peer, message.update)
            elif isinstance(message, SyncStep1):
                if self._writer is not None:  # answered after the updates before it
                    self._enqueue(peer, message)
                else:
                    self._answer_step1(peer, message)
            elif isinstance(message, AwarenessUpdate):
                self._awareness(peer, message.entries)
            elif isinstance(message, QueryAwareness):
                peer.sink.send(encode_awareness(self.awareness.values()))
            # AuthToken after the handshake, PermissionDenied from a client: nothing to do.
        return self._incoming.full

    def update(self, peer: Peer, update: bytes) -> bool:
        """One update from `peer`, which may write: the common message, without `receive`'s
        dispatch. True when the writer's queue is at its bound (as `receive`)."""
        incoming = self._incoming
        incoming.add((peer, update))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name=f"yjs {self.topic}")
        return incoming.full

    def _enqueue(self, peer: Peer, message: bytes | SyncStep1) -> None:
        self._incoming.add((peer, message))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name=f"yjs {self.topic}")

    async def room_for_more(self) -> None:
        """Wait until the writer's queue is under its bound (the gateway reads on then)."""
        await self._incoming.room_for_more()

    def _answer_step1(self, peer: Peer, message: SyncStep1) -> None:
        try:
            update = self.doc.get_update(message.state_vector)
        except ValueError:
            peer.sink.close(YjsCloseCode.BAD_MESSAGE, "sync step 1: not a state vector")
            return
        peer.sink.send(encode_sync_step2(update))

    def _awareness(self, peer: Peer, entries: list[AwarenessEntry]) -> None:
        refused: list[AwarenessEntry] = []
        self._local_awareness(self.awareness.apply(peer, entries, refused))
        if refused:  # stale clocks (rooms_awareness): the removal makes it send them again
            peer.sink.send(encode_awareness(refused))

    def _local_awareness(self, changed: list[AwarenessEntry]) -> None:
        """Changes of this node's clients: to this room's sockets and to the other nodes."""
        for entry in changed:
            self._broadcast_awareness(entry)
        if changed and self.relay is not None:
            self.relay.publish(self.topic, changed)

    def heard(self, node: str, entries: list[AwarenessEntry], full: bool) -> None:
        """Another node's clients' states (`full`: every one it holds here), to the sockets."""
        owner = Remote(node)
        try:
            changed = (
                self.awareness.replace(owner, entries)
                if full
                else self.awareness.apply(owner, entries)
            )
        except YjsMessageInvalid as exc:  # that node's limit is larger: skip its message
            log.warning("room %s: awareness from node %s skipped: %s", self.topic, node, exc)
            return
        for entry in changed:
            self._broadcast_awareness(entry)

    def drop(self, node: str) -> None:
        """Another node is gone: its clients' states go, and the sockets are told."""
        for entry in self.awareness.leave(Remote(node)):
            self._broadcast_awareness(entry)

    # -- durability --------------------------------------------------------------

    async def _write(self) -> None:
        """Append what clients sent (one engine call a batch), then apply and broadcast it.

        A batch's updates are merged into one (`_rows`): one log event, one
        apply, one broadcast message for the lot. A sync step 1 queued
        behind updates is answered once they are applied, so its step 2
        holds every update its sender (or anybody) sent before it.
        """
        bus = self.bus
        try:
            while self._incoming and not self._appending:
                batch = self._incoming.take()
                kept: list[tuple[Peer, bytes]] = []
                steps1: list[tuple[Peer, SyncStep1]] = []
                for peer, message in batch:
                    if isinstance(message, SyncStep1):
                        steps1.append((peer, message))
                    else:
                        kept.append((peer, message))
                rows = self._rows(kept)
                self._appending = True
                try:
                    await bus.append([prepared for _, _, _, prepared in rows])
                except BusError as exc:
                    # Not durable: not applied, not echoed. The senders reconnect and sync again.
                    log.warning("room %s: appending updates failed: %s", self.topic, exc)
                    for peer in {peer for peer, _ in kept}:
                        peer.sink.close(YjsCloseCode.SERVER_ERROR, "the update was not stored")
                    for peer, step1 in steps1:
                        self._answer_step1(peer, step1)
                    continue
                finally:
                    self._appending = False
                applied: list[bytes] = []
                count = 0
                for peers, update, holds, _ in rows:
                    try:
                        self.doc.apply_update(update)
                    except ValueError:
                        for peer in set(peers):
                            peer.sink.close(YjsCloseCode.BAD_MESSAGE, _NOT_APPLIED)
                        continue
                    applied.append(update)
                    count += holds
                self._applied(applied, count)
                for peer, step1 in steps1:
                    self._answer_step1(peer, step1)
                if self._compact_due:
                    self._compact_due = False
                    self._start_compaction()
        finally:
            self._writer = None
            if self._incoming and not self.closed:
                self._writer = asyncio.create_task(self._write(), name=f"yjs {self.topic}")

    def _rows(self, kept: list[tuple[Peer, bytes]]) -> list[_Row]:
        """The log events of a batch's updates: merged into one, if they merge and fit.

        Updates are grouped in order up to half `max_event_size` of bytes (a
        merged update is no larger than its parts, give or take a header);
        a group that does not merge (an update that does not decode) or whose
        event is still too large is stored update by update, as sent.
        """
        rows: list[_Row] = []
        budget = self.bus.config.max_event_size // 2
        start = size = 0
        for at, (_, update) in enumerate(kept):
            if at > start and size + len(update) > budget:
                self._group(kept[start:at], rows)
                start, size = at, 0
            size += len(update)
        if start < len(kept):
            self._group(kept[start:], rows)
        return rows

    def _group(self, group: list[tuple[Peer, bytes]], rows: list[_Row]) -> None:
        if len(group) > 1:
            merged = merge_all([update for _, update in group])
            if merged is not None:
                with contextlib.suppress(EventTooLarge):
                    prepared = self.bus.prepare(self.topic, self._event(UPDATE_TYPE, merged))
                    rows.append(([peer for peer, _ in group], merged, len(group), prepared))
                    return
        for peer, update in group:
            try:
                prepared = self.bus.prepare(self.topic, self._event(UPDATE_TYPE, update))
            except EventTooLarge as exc:
                peer.sink.close(YjsCloseCode.MESSAGE_TOO_LARGE, str(exc))
                continue
            rows.append(([peer], update, 1, prepared))

    def _event(self, type: str, data: bytes, **extensions: Any) -> Event:
        return Event(
            id=uuid.uuid4().hex,
            source=self.source,
            type=type,
            datacontenttype=_CONTENT_TYPE,
            data=data,
            extensions=extensions,
        )

    async def _follow(self) -> None:
        """Apply what others appended to the topic, for as long as the room is loaded."""
        while True:
            sub = self._sub
            assert sub is not None
            try:
                batch = await sub.take()
            except BusClosed:
                return
            except BusError as exc:  # too slow, or a new epoch: go on from where it was
                log.info("room %s: following again after %s", self.topic, exc)
                position = sub.position
                engine = self.bus.engine
                if not is_exact(position, engine.epoch, engine.shards):
                    position = Position(engine.epoch, (0,) * engine.shards)
                try:
                    self._sub = self.bus.subscribe(self.topic, position)
                    await self._sub.__aenter__()
                except BusClosed:
                    return
                except BusError as again:
                    log.warning("room %s: cannot follow its topic: %s", self.topic, again)
                    await asyncio.sleep(1.0)
                continue
            if not batch:
                return
            self._apply_deliveries(batch, skip_own=True)

    def _apply_deliveries(self, deliveries: list[Delivery], *, skip_own: bool) -> None:
        applied: list[bytes] = []
        for delivery in deliveries:
            event = delivery.event
            if event.type != UPDATE_TYPE or (skip_own and event.source == self.source):
                continue
            try:
                update = _bytes(event.data)
                self.doc.apply_update(update)
            except (ValueError, TypeError):
                log.warning("room %s: event %s is not a Yjs update", self.topic, event.id)
                continue
            applied.append(update)
        if applied:
            self._applied(applied)

    def _applied(self, updates: list[bytes], count: int | None = None) -> None:
        """`updates` (holding `count` client updates, default one each) are in the document."""
        if not updates:
            return
        self._out_updates.extend(updates)
        self._schedule_flush()
        first = self.since_snapshot == 0
        self.since_snapshot += len(updates) if count is None else count
        self.bytes_since_snapshot += sum(map(len, updates))
        # Proportional: a snapshot costs its size, so one is due only once the updates
        # since the last are as large as it (and `compact_every` of them came).
        if (
            self.since_snapshot >= self.config.compact_every
            and self.bytes_since_snapshot >= self.snapshot_bytes
        ):
            self._start_compaction()
        elif first and self._compact_timer is None:
            self._compact_timer = asyncio.get_running_loop().call_later(
                self.config.compact_interval, self._start_compaction
            )

    def _start_compaction(self) -> None:
        self._compact_timer = None
        if self.closed or self._compacting is not None or not self.since_snapshot:
            return
        if self._appending:  # after the batch in flight is applied (see the docstring)
            self._compact_due = True
            return
        self._compacting = asyncio.create_task(self._compact_logged(), name=f"yjs {self.topic}")

    async def _compact_logged(self) -> None:
        try:
            await self._compact()
        except BusError as exc:
            log.warning("room %s: writing a snapshot failed: %s", self.topic, exc)
        finally:
            self._compacting = None

    async def _compact(self) -> None:
        """Write the document as one update, with the token it covers, to the snapshots topic."""
        sub = self._sub
        if sub is None or self._appending:
            return
        # Taken together, synchronously: every update up to `covers` is in `state`.
        state = self.doc.get_update()
        covers = sub.position
        count, size = self.since_snapshot, self.bytes_since_snapshot
        if self._compact_timer is not None:
            self._compact_timer.cancel()
            self._compact_timer = None
        try:
            prepared = self.bus.prepare(
                self.snapshots, self._event(SNAPSHOT_TYPE, state, **{_COVERS: str(covers)})
            )
        except EventTooLarge as exc:
            if not self.snapshot_skipped:
                log.warning("room %s: no snapshot (%s): the log keeps it all", self.topic, exc)
                self.snapshot_skipped = True
            self.since_snapshot = self.bytes_since_snapshot = 0
            return
        await self.bus.append([prepared])
        self.since_snapshot = max(0, self.since_snapshot - count)
        self.bytes_since_snapshot = max(0, self.bytes_since_snapshot - size)
        self.snapshot_bytes = len(state)

    # -- broadcasts ---------------------------------------------------------------

    def _broadcast_awareness(self, entry: AwarenessEntry) -> None:
        self._out_awareness[entry.client] = entry
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self._send_out)

    def _send_out(self) -> None:
        self._flush = None
        parts: list[bytes] = []
        updates = self._out_updates
        if updates:
            self._out_updates = []
            parts.extend(encode_updates(updates))
        if self._out_awareness:
            parts.append(encode_awareness(list(self._out_awareness.values())))
            self._out_awareness = {}
        if not parts:
            return
        peers = list(self.peers)
        for payload in parts:  # one object each: the gateway frames it once for every peer
            for peer in peers:
                peer.sink.send(payload)


def _bytes(data: object) -> bytes:
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError("the event's data is not bytes")
