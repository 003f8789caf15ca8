"""The subscriptions of one connection: from the bus into the session's outbox.

Owns: opening a bus subscription for a client's (relative) pattern, answering
the subscribe, turning deliveries into encoded pushes (shared bytes from the
node's cache), `exclude_self`, presence membership of plain-topic
subscriptions, unsubscribing (also while a subscribe is still being set up),
and ending a subscription the bus ended (too slow, continuity lost). A
subscribe's `filter` goes to the bus (the hub's subscription applies it); a
filtered subscription's batches are never shared as a run of its pattern's
stream (`Pushes.push_batch(whole=False)`). Must not
write to the transport (the connection does) nor encode events itself (the
node does, once for everyone).

Each subscription has a task (its pump) that opens it, answers the
subscribe, and takes recovered history in batches until it is live with
nothing queued; then it `attach`es the subscription to the connection and
only waits for its end. From then on a delivery costs no task switch: the
bus's route queues it and, for the first of a batch, tells the connection
(`Connection.ready`), which the node's write pass has `drain` every ready
subscription once per loop turn. The subscribe reply comes before any push, because the pump
answers before it takes or attaches.

An unsubscribe of a pattern still being set up waits for that answer, then
ends it: both commands are answered, in order. Entries are keyed by the
pattern text; an entry being torn down after an unsubscribe never touches a
newer one for the same pattern.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import TYPE_CHECKING

from hybridbus.core.log import Delivery
from hybridbus.core.topics import is_pattern
from hybridbus.errors import BusError, ErrorCode
from hybridbus.hub.subscription import Subscription
from hybridbus.hub.tracing import trace_delivered
from hybridbus.proto.frames import Subscribe, SubscribeResult, Unsubscribe, UnsubscribeResult

if TYPE_CHECKING:
    from hybridbus.server.connection import Connection

__all__ = ["Entry", "Origin", "Subscriptions"]

log = logging.getLogger("hybridbus.server")


class Origin:
    """Who published an event with `exclude_self`: the connection, or its whole device."""

    __slots__ = ("connection", "device", "topic")

    def __init__(self, topic: str, connection: Connection, device: tuple[object, ...] | None):
        self.topic = topic
        self.connection = connection
        self.device = device

    def excludes(self, connection: Connection) -> bool:
        """True if `connection` must not receive the live push of this event."""
        if connection is self.connection:
            return True
        return self.device is not None and connection.device_key == self.device


class Entry:
    """One subscription of the connection."""

    __slots__ = (
        "absolute",
        "answered",
        "filtered",
        "id",
        "pattern",
        "ready",
        "subscription",
        "task",
    )

    def __init__(
        self,
        id: int,
        pattern: str,
        absolute: str,
        subscription: Subscription,
        answered: asyncio.Future[None],
    ) -> None:
        self.id = id
        self.pattern = pattern  # as the client wrote it (relative)
        self.absolute = absolute
        self.subscription = subscription
        self.ready = False  # the subscribe was answered with success
        self.answered = answered  # resolved once the subscribe is answered, either way
        self.task: asyncio.Task[None] | None = None
        # A filter leaves out deliveries: its batches are not the pattern's whole stream.
        self.filtered = False

    def settle(self) -> None:
        if not self.answered.done():
            self.answered.set_result(None)


class Subscriptions:
    """The subscriptions of one connection (see the module docstring)."""

    __slots__ = ("_connection", "_entries", "_gauge")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._entries: dict[str, Entry] = {}
        self._gauge = connection.node.metrics.subscriptions.labels(connection.transport_name)

    def __len__(self) -> int:
        return len(self._entries)

    def subscribe(self, command: Subscribe) -> None:
        """Start a subscription; raises `BusError` (bad pattern or `since`) before any task."""
        connection = self._connection
        principal = connection.admitted
        absolute = principal.pattern(command.pattern)
        subscription = connection.node.guard.subscribe(
            principal, command.pattern, command.since, filter=command.filter
        )
        answered = asyncio.get_running_loop().create_future()
        entry = Entry(command.id, command.pattern, absolute, subscription, answered)
        entry.filtered = command.filter is not None and not command.filter.empty()
        self._entries[command.pattern] = entry
        entry.task = connection.spawn(self._pump(entry))

    def unsubscribe(self, command: Unsubscribe) -> None:
        """End the subscription to `command.pattern` and answer the command."""
        entry = self._entries.pop(command.pattern, None)
        if entry is None or entry.answered.done():
            self._end(entry)
            self._connection.session.reply(command.id, UnsubscribeResult())
            return
        self._connection.spawn(self._unsubscribe_later(entry, command.id))

    async def _unsubscribe_later(self, entry: Entry, id: int) -> None:
        # Bounded by the subscription's set-up (one history page); closing cancels it.
        await entry.answered
        self._end(entry)
        self._connection.session.reply(id, UnsubscribeResult())
        self._connection.flush()

    def close(self) -> None:
        """The connection is closing: leave every topic (the pumps are cancelled with it)."""
        presence = self._connection.node.presence
        for entry in self._entries.values():
            presence.leave(entry.absolute, entry)
        self._entries.clear()

    def _end(self, entry: Entry | None) -> None:
        if entry is not None:
            if entry.task is not None:
                entry.task.cancel()
            self._connection.node.presence.leave(entry.absolute, entry)

    async def _pump(self, entry: Entry) -> None:
        """Open the subscription, answer the subscribe, then push every delivery."""
        connection = self._connection
        session = connection.session
        node = connection.node
        subscription = entry.subscription
        counted = False
        try:
            async with subscription:
                position = subscription.position
                recovered = subscription.recovered
                session.reply(
                    entry.id,
                    SubscribeResult(
                        epoch=position.epoch, position=str(position), recovered=recovered
                    ),
                )
                entry.ready = True
                entry.settle()
                self._gauge.inc()
                counted = True
                info = connection.info
                if not is_pattern(entry.pattern) and info is not None:
                    node.presence.join(entry.absolute, entry, info)
                connection.flush()
                # Recovery: take batches here until live with nothing queued; then
                # the connection drains this subscription, woken by `notify`.
                notify = partial(connection.ready, entry)
                while not subscription.attach(notify):
                    batch = await subscription.take()
                    if not batch:
                        return
                    if recovered and not subscription.recovered:
                        self._ended(
                            entry,
                            ErrorCode.SUBSCRIPTION_ENDED,
                            "continuity was lost during recovery; subscribe again",
                        )
                        return
                    await self._push_paced(entry, batch)
                    if session.closed:
                        return
                await subscription.finished()
        except BusError as exc:
            if entry.ready:
                if exc.code is ErrorCode.SUBSCRIBER_TOO_SLOW:
                    node.metrics.drops.labels("subscriber_too_slow").inc()
                self._ended(entry, exc, str(exc))
            else:
                self._failed(entry, exc)
        except Exception as exc:
            log.exception("subscription %r of %s failed", entry.pattern, connection.id)
            if entry.ready:
                self._ended(entry, exc, "internal error")
            else:
                self._failed(entry, exc)
        finally:
            entry.settle()
            node.presence.leave(entry.absolute, entry)
            if counted:
                self._gauge.dec()

    def drain(self, entries: list[Entry]) -> None:
        """Push what the live subscriptions of `entries` have queued (the write pass)."""
        session = self._connection.session
        for entry in entries:
            subscription = entry.subscription
            if not subscription.live:  # ended (unsubscribed) since it was ready
                continue
            batch = subscription.take_nowait()
            if batch:
                self._push(entry, batch)
                if session.closed:
                    return

    def _push(self, entry: Entry, batch: list[Delivery]) -> None:
        """Queue `batch` for the client as encoded pushes (bar its own `exclude_self` events)."""
        pushes, batch = self._encode(entry, batch, cached=True)
        if pushes:
            connection = self._connection
            connection.session.push_many(pushes)
            connection.pushed(len(batch), batch[0].time)
            info = connection.info  # its connect's: pushes follow it
            client = connection.id if info is None else info.client
            trace_delivered(connection.node.bus.tracer, batch, connection.transport_name, client)

    def _encode(
        self, entry: Entry, batch: list[Delivery], *, cached: bool
    ) -> tuple[list[bytes], list[Delivery]]:
        """The encoded pushes of `batch` (bar the client's own `exclude_self` events), and it.

        `cached`: through the node's per-delivery caches (live pushes, shared);
        recovered batches (the pump's) are encoded in one go.
        """
        connection = self._connection
        node = connection.node
        # A filtered batch is not a run of the pattern's stream: never shared whole.
        whole = not entry.filtered
        if node.origins:
            kept = [d for d in batch if not self._excluded(d)]
            if not kept:
                return [], kept
            whole = whole and len(kept) == len(batch)
            batch = kept
        codec = connection.session.codec
        prefix = connection.admitted.prefix
        pushes = node.pushes.push_batch(
            codec, entry.absolute, entry.pattern, prefix, batch, whole=whole, cached=cached
        )
        return pushes, batch

    async def _push_paced(self, entry: Entry, batch: list[Delivery]) -> None:
        """Queue a recovered `batch` at the pace the client reads it.

        A page of history may be far larger than the outbox bound (a page of
        big events): it goes out in slices of about a quarter of the bound,
        each once the outbox has been written to the socket, so recovery never
        trips the bound that cuts off a slow live reader.
        """
        connection = self._connection
        session = connection.session
        pushes, batch = self._encode(entry, batch, cached=False)
        budget = max(1, session.config.max_pending_bytes // 4)
        start, size = 0, 0
        for i, push in enumerate(pushes):
            size += len(push)
            if size < budget and i < len(pushes) - 1:
                continue
            session.push_many(pushes[start : i + 1])
            connection.pushed(i + 1 - start, batch[start].time)
            connection.flush()
            start, size = i + 1, 0
            if session.closed:
                return
            if start < len(pushes):
                await connection.written()

    def _excluded(self, delivery: Delivery) -> bool:
        """True if `delivery` was published by this connection with `exclude_self`."""
        origin = self._connection.node.origin_of(delivery)
        return origin is not None and origin.excludes(self._connection)

    def _failed(self, entry: Entry, error: BaseException) -> None:
        """The subscribe failed before it was answered: answer it with the error."""
        if self._entries.get(entry.pattern) is entry:
            del self._entries[entry.pattern]
        self._connection.session.error(entry.id, error)
        self._connection.flush()

    def _ended(self, entry: Entry, error: BaseException | ErrorCode, reason: str) -> None:
        """The server ends a live subscription: tell the client (`unsubscribed`)."""
        # Only the current holder of the pattern may end it in the session: an
        # older subscription torn down after an unsubscribe may not.
        if self._entries.get(entry.pattern) is entry:
            del self._entries[entry.pattern]
            self._connection.session.end_subscription(entry.pattern, error, reason)
            self._connection.flush()
