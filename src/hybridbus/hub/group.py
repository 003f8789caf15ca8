"""One consumer group at work: reading the log into its window, handing out, settling, burying.

Owns: a running group (`Group`) around its pure `core.groups.GroupCore`:
reading the log past the group's cursor (pages while behind, the bus's live
deliveries once caught up), the dispatch pass (once per loop turn), the
timer that ends leases and waits, settling by delivery id (`ack`, `nack`,
`extend`, `term`), appending the dead to `$dlq/...` and its dead-letter list
(then calling its `on_dead` hook, if set, with each `DeadLetter`).
A member's view (`Member`, `GroupDelivery`) is `hub.member`. Must not write the engine's
group store itself (`hub.groups.Groups` batches every group's changes into
one write) nor know any wire protocol.

Reading. A group reads only while it has members and room: with nobody to
hand events to, it does not run ahead (its lag is then visible). Caught up,
it takes the bus's live deliveries straight away; when its window fills, it
stops and later reads the log from its cursor again. Deliveries routed while
a read is under way are kept aside and go through the cursor after the page,
so none is lost or taken twice (as `hub.subscription` does).

Delivery ids (`GroupDelivery.id`) are `<epoch>-<shard>.<position>.<attempt>`:
the event's place in the log and which delivery of it this is. `ack` of an
id whose entry is gone (acked already, dead) is a no-op; `nack`, `extend` and
`term` need the entry to be leased in that very attempt, else `DeliveryGone`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import msgspec

from hybridbus.core.codecs import encode_msgpack
from hybridbus.core.event import Event
from hybridbus.core.groups import LEASED, Entry, GroupCore, GroupSettings, MemberState
from hybridbus.core.log import MAX_POSITION, Delivery
from hybridbus.engine.base import Clock
from hybridbus.errors import BusClosed, DeliveryGone, EngineError, InvalidInput, NotCoordinator
from hybridbus.hub.member import GroupDelivery, Listener, Member, parse_delivery_id

if TYPE_CHECKING:
    from hybridbus.hub.groups import Groups

__all__ = ["DLQ_ROOT", "DeadLetter", "Group", "dead_letter_topic"]

log = logging.getLogger("hybridbus.groups")

DLQ_ROOT: Final = "$dlq"
_PAGE: Final = 1_000
_RETRY_BURY: Final = 1.0  # seconds before appending dead letters again after a failure


def dead_letter_topic(group: str, topic: str) -> str:
    """`$dlq/<tenant>/<group name>/<relative topic>` for group id `<tenant>/<name>`."""
    return f"{DLQ_ROOT}/{group}/{topic.partition('/')[2] or topic}"


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """An event a group gave up on: where its copy is on `$dlq/...` and why.

    `id` is `<shard>.<position>` of the copy; `topic` and `offset` are the
    original's; `reason` is `max_deliveries` or `term`; `error` the last
    error a member gave; times are Unix seconds.
    """

    id: str
    dlq_topic: str
    topic: str
    offset: int
    reason: str
    error: str
    attempts: int
    first: float
    last: float
    time: float


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


class Group:
    """A running consumer group (see the module docstring)."""

    def __init__(
        self,
        groups: Groups,
        gid: str,
        settings: GroupSettings,
        epoch: str,
        cursor: tuple[int, ...],
        created: float,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self.groups = groups
        self.id = gid
        self.tenant, _, self.name = gid.partition("/")
        self.settings = settings
        self.epoch = epoch
        self.created = created
        self.core = GroupCore(settings, cursor, rng)
        self.members: dict[str, Member] = {}
        self.dead: dict[str, DeadLetter] = {}
        self.dead_dirty: dict[str, DeadLetter | None] = {}
        self.state_dirty = True
        self.rewrite = False  # the last write failed: write everything next time
        self.dead_total = 0
        self.expired_total = 0
        self.acked_total = 0
        # Called with each dead letter once it is listed (outbound webhooks announce it).
        self.on_dead: Callable[[DeadLetter], None] | None = None
        # With leases (hub.group_leases): the fence of this node's lease on the group,
        # and why this node stopped coordinating it, once it did.
        self.fence: int | None = None
        self.lost: NotCoordinator | None = None
        self._clock = clock
        self._live = False
        self._reading: asyncio.Task[None] | None = None
        self._aside: list[Delivery] | None = None
        self._missed = False
        self._kicked = False
        self._ticker: asyncio.Task[None] | None = None
        self._timed = asyncio.Event()  # set when a timer may have started
        self._burying: list[tuple[Entry, asyncio.Future[None]]] = []
        self._bury_task: asyncio.Task[None] | None = None
        self._termed: set[Entry] = set()
        self._closed = False
        self._seq = 0
        # Delivery ids made (`issue`), the latest of each entry: an `ack` finds them at once.
        self._issued: dict[str, Entry] = {}

    # -- life ----------------------------------------------------------------

    def start(self) -> None:
        """Start the timer (the group reads once it has members)."""
        self._ticker = asyncio.get_running_loop().create_task(
            self._tick_forever(), name=f"group {self.id} timer"
        )

    def stop(self, error: BaseException) -> list[asyncio.Task[None]]:
        """End every member with `error` and stop; the tasks to await."""
        self._closed = True
        for member in list(self.members.values()):
            member.end(error)
        self.members.clear()
        tasks = [t for t in (self._ticker, self._reading, self._bury_task) if t is not None]
        for task in tasks:
            task.cancel()
        return tasks

    def reset(self, epoch: str, cursor: tuple[int, ...]) -> None:
        """Start over at `cursor` in `epoch`: every pending entry is dropped (seek, new epoch)."""
        self.epoch = epoch
        old = self.core
        self.core = GroupCore(self.settings, cursor, old.rng)
        self._issued = {}
        for name in self.members:
            self.core.join(name)
        self.rewrite = True
        self._live = False
        self._kick()

    @property
    def caught_up(self) -> bool:
        """True while the group takes the bus's live deliveries (it is not reading a backlog)."""
        return self._live

    # -- members ---------------------------------------------------------------

    def join(self, name: str | None = None, listener: Listener | None = None) -> Member:
        """A new member (a name is made up if none is given; a taken name is replaced)."""
        if self._closed:
            raise self.lost or BusClosed("the bus is closed")
        if name is None:
            self._seq += 1
            name = f"m{self._seq}-{random.getrandbits(32):08x}"
        old = self.members.get(name)
        if old is not None:
            old.close()
        member = self.members[name] = Member(self, name, listener)
        self.core.join(name)
        self._kick()
        return member

    def leave(self, member: Member, unsent: Iterable[GroupDelivery]) -> None:
        """`member` leaves; `unsent` deliveries (never handed out) go back at once."""
        if self.members.get(member.name) is member:
            del self.members[member.name]
            now = self._clock()
            core = self.core
            for d in unsent:
                entry = d._entry
                if (
                    core.lookup(entry.shard, entry.position) is entry
                    and entry.state == LEASED
                    and entry.attempts == d.attempt
                ):
                    core.release(entry, now)
            core.leave(member.name)
            self._kick()

    # -- reading the log ---------------------------------------------------------

    def route(self, delivery: Delivery) -> None:
        """A live delivery matching the pattern (the bus calls it on every append)."""
        if self._live:
            core = self.core
            if delivery.position <= core.cursor[delivery.shard]:
                return
            if core.room and self.members:
                core.take(delivery, self._clock())
                self._kick()
                return
            self._live = False  # read it from the log later
        elif self._aside is not None:
            if len(self._aside) < self.settings.max_pending:
                self._aside.append(delivery)
            else:
                self._missed = True

    def _read_soon(self) -> None:
        if (
            self._reading is None
            and not self._live
            and not self._closed
            and self.members
            and self.core.room
        ):
            self._reading = asyncio.get_running_loop().create_task(
                self._read(), name=f"group {self.id} reader"
            )

    async def _read(self) -> None:
        engine = self.groups.engine
        read_stored = getattr(engine, "read_stored", None)
        core = self.core
        try:
            while not self._closed and self.members and core.room and self.core is core:
                self._aside = []
                self._missed = False
                # Members that all take the stored bytes (MessagePack connections) need
                # no decoded events: the engine leaves them undecoded if it can.
                read = engine.read
                if read_stored is not None and all(m.stored for m in self.members.values()):
                    read = read_stored
                page = await read(self.settings.pattern, tuple(core.cursor), min(core.room, _PAGE))
                if self.core is not core:
                    return  # reset while reading
                if page.epoch != self.epoch:
                    self.groups.new_epoch(self, page.epoch)
                    return
                now = self._clock()
                core.take_many(page.deliveries, now)
                core.skip_to(page.positions)
                self._kick()
                if page.more:
                    continue
                aside, self._aside = self._aside, None
                if self._missed:
                    continue
                for delivery in aside:
                    if delivery.position <= core.cursor[delivery.shard]:
                        continue
                    if not core.room:
                        self._missed = True
                        break
                    core.take(delivery, now)
                if not self._missed:
                    self._live = True
                    return
        except EngineError as exc:
            log.warning("group %s could not read the log (%s); retrying in 1 s", self.id, exc)
            await asyncio.sleep(1.0)
        finally:
            self._aside = None
            self._reading = None
            self._kick()

    # -- handing out -------------------------------------------------------------

    def _kick(self) -> None:
        """Run a dispatch pass at the end of this loop turn (once, however often called)."""
        if not self._kicked and not self._closed:
            self._kicked = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._kicked = False
        if self._closed:
            return
        core = self.core
        now = self._clock()
        members = self.members
        # Each member gets what this pass leased it at once (on a connection: one push of many).
        handed: dict[MemberState, list[GroupDelivery]] = {}
        for state, entry in core.dispatch(now):
            delivery = entry.delivery
            if delivery is None:  # not loaded (cannot happen)
                core.release(entry, now)
                continue
            if delivery.expires is not None and delivery.expired(now):
                core.ack(entry, now)
                self.expired_total += 1
                continue
            batch = handed.get(state)
            if batch is None:
                batch = handed[state] = []
            batch.append(GroupDelivery(self, state.name, entry, delivery, entry.attempts))
        for state, batch in handed.items():
            name = state.name
            member = members.get(name)
            if member is not None:
                member.give_many(batch)
            else:  # gone, or a listener made it leave meanwhile: the leases were never seen
                for d in batch:
                    entry = d._entry
                    if entry.state == LEASED and entry.member == name:
                        core.release(entry, now)
        if core.timers:
            self._timed.set()  # wake the timer if it sleeps
        if core.dirty:
            self.groups.writer.flush_later()
        if not self._live:
            self._read_soon()

    async def _tick_forever(self) -> None:
        resolution = 0.01
        timed = self._timed
        while True:
            core = self.core
            if not core.timers:  # nothing to time: sleep until a dispatch pass starts a timer
                timed.clear()
                await timed.wait()
            await asyncio.sleep(resolution)
            core = self.core
            dead = core.tick(self._clock())
            if dead:
                self._bury(dead)
            self._kick()

    # -- settling ------------------------------------------------------------------

    def issue(self, entry: Entry, attempt: int) -> str:
        """The id of `entry`'s delivery `attempt` (module docstring), made once per delivery.

        The id of an entry's latest delivery is remembered (its earlier one
        forgotten), so that `ack_ids` finds the entry without reading the id:
        one made here is well formed. Ids of entries settled otherwise than by
        `ack_ids` are forgotten once there are twice `max_pending` of them.
        """
        delivery_id = f"{self.epoch}-{entry.shard}.{entry.position}.{attempt}"
        # Not an earlier delivery's id, nor one of an entry dropped by a reset (a seek
        # keeps the epoch: the id may be a new entry's at the same place).
        if (
            entry.attempts == attempt
            and self.core.entries.get((entry.shard, entry.position)) is entry
        ):
            issued = self._issued
            if entry.issued:
                issued.pop(entry.issued, None)
            entry.issued = delivery_id
            issued[delivery_id] = entry
            if len(issued) > 2 * self.settings.max_pending + 1024:
                entries = self.core.entries.values()
                self._issued = {e.issued: e for e in entries if e.issued}
        return delivery_id

    def _entry(self, delivery_id: str, leased: bool) -> Entry | None:
        epoch, shard, position, attempt = parse_delivery_id(delivery_id)
        entry = self.core.lookup(shard, position) if epoch == self.epoch else None
        if leased and (entry is None or entry.state != LEASED or entry.attempts != attempt):
            raise DeliveryGone(f"delivery {delivery_id} is no longer held (settled or handed on)")
        return entry

    async def ack(self, ids: Sequence[str]) -> None:
        """Settle these deliveries; returns once durable (unknown or settled ids: no-op)."""
        self.ack_ids(ids)
        await self.durable()

    def ack_ids(self, ids: Sequence[str]) -> None:
        """Settle these deliveries now (`durable` says when it is written).

        Every id is read first: a malformed one refuses them all (`InvalidInput`).
        """
        core = self.core
        entries = core.entries
        epoch = self.epoch
        prefix = epoch + "-"
        cut = len(prefix)
        issued = self._issued
        found: list[Entry] = []
        for delivery_id in ids:
            # Ids made by `issue` (all but those of earlier attempts): nothing to read.
            if type(delivery_id) is str:
                entry = issued.pop(delivery_id, None)
                if entry is not None:
                    found.append(entry)
                    continue
            # This epoch's ids (all of them, but after a reset): the epoch needs no reading.
            if isinstance(delivery_id, str) and delivery_id.startswith(prefix):
                parts = delivery_id[cut:].split(".")
                if len(parts) == 3:
                    shard, position, attempt = parts
                    if (
                        len(shard) <= 6
                        and len(position) <= 19
                        and len(attempt) <= 9
                        and shard.isdigit()  # (False when empty)
                        and position.isdigit()
                        and attempt.isdigit()
                        and delivery_id.isascii()
                    ):
                        at = int(position)
                        if at <= MAX_POSITION:
                            entry = entries.get((int(shard), at))
                            if entry is not None:
                                found.append(entry)
                            continue
            of, shard_, at, _ = parse_delivery_id(delivery_id)  # raises if malformed
            entry = entries.get((shard_, at)) if of == epoch else None
            if entry is not None:
                found.append(entry)
        self.acked_total += core.ack_many(found, self._clock())
        self._kick()

    async def durable(self) -> None:
        """Return once every change made to the group so far is durable.

        `NotCoordinator` if this node lost the group meanwhile: its changes were not written.
        """
        if self.lost is not None:
            raise self.lost
        await self.groups.writer.durable()
        if self.lost is not None:
            raise self.lost

    async def ack_deliveries(self, deliveries: Iterable[GroupDelivery]) -> None:
        """`ack` for deliveries of this process (no ids to parse)."""
        self.acked_total += self.core.ack_many([d._entry for d in deliveries], self._clock())
        self._kick()
        await self.durable()

    async def nack(self, delivery_id: str, delay: float | None, error: str) -> None:
        """The delivery failed: it comes back after `delay` (None: the backoff), or dies."""
        if delay is not None and not (math.isfinite(delay) and delay >= 0):
            raise InvalidInput(f"a nack's delay is a number of seconds >= 0, not {delay!r}")
        entry = self._entry(delivery_id, leased=True)
        assert entry is not None
        if self.core.nack(entry, self._clock(), delay, error[:1000]):
            self._bury([entry])
        self._kick()
        await self.durable()

    def extend(self, delivery_id: str) -> None:
        """Start the delivery's lease over."""
        entry = self._entry(delivery_id, leased=True)
        assert entry is not None
        self.core.extend(entry, self._clock())
        self._kick()

    async def term(self, delivery_id: str, reason: str) -> None:
        """Give up on the delivery now: it goes to the dead letters; returns once it is there."""
        entry = self._entry(delivery_id, leased=True)
        assert entry is not None
        self.core.term(entry, reason[:1000])
        self._termed.add(entry)
        await self._bury([entry])
        await self.durable()

    # -- dead letters ----------------------------------------------------------------

    def bury_stored(self) -> None:
        """Append the entries stored dead (a restart came before their dead letters were)."""
        dead = [e for e in self.core.pending() if e.due == math.inf and e.delivery is not None]
        for entry in dead:
            if entry.attempts < self.settings.max_deliveries:
                self._termed.add(entry)  # only `term` kills before max_deliveries
        if dead:
            self._bury(dead)

    def _bury(self, entries: list[Entry]) -> asyncio.Future[None]:
        """Append `entries` to the dead letters (in the background); resolved once they are."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        # Nobody awaits a burial that a nack or a lease's end started: retrieve its error.
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        for entry in entries:
            self._burying.append((entry, done))
        if self._bury_task is None:
            self._bury_task = loop.create_task(
                self._bury_pending(), name=f"group {self.id} dead letters"
            )
        return done

    async def _bury_pending(self) -> None:
        try:
            while self._burying and not self._closed:
                batch, self._burying = self._burying, []
                items = []
                for entry, _ in batch:
                    delivery = entry.delivery
                    assert delivery is not None
                    items.append(self._dead_event(entry, delivery))
                try:
                    acks = await self.groups.bus.append(items, dedupe=False)
                except (EngineError, BusClosed) as exc:
                    log.warning("group %s: dead letters not appended (%s); retrying", self.id, exc)
                    self._burying[:0] = batch
                    await asyncio.sleep(_RETRY_BURY)
                    continue
                now = self._clock()
                for (entry, done), ack in zip(batch, acks, strict=True):
                    reason = "term" if entry in self._termed else "max_deliveries"
                    self._termed.discard(entry)
                    original = entry.delivery
                    assert original is not None
                    dead = DeadLetter(
                        id=f"{ack.shard}.{ack.position}",
                        dlq_topic=ack.topic,
                        topic=original.topic,
                        offset=original.offset,
                        reason=reason,
                        error=entry.error,
                        attempts=entry.attempts,
                        first=entry.first,
                        last=entry.last,
                        time=now,
                    )
                    self.dead[dead.id] = dead
                    self.dead_dirty[dead.id] = dead
                    self.dead_total += 1
                    self.core.bury(entry, now)
                    if not done.done():
                        done.set_result(None)
                    if self.on_dead is not None:
                        try:
                            self.on_dead(dead)
                        except Exception:  # a hook's failure must not stop the burials
                            log.exception("group %s: the on_dead hook failed", self.id)
                self._kick()
        finally:
            self._bury_task = None
            for _, done in self._burying:
                if not done.done():
                    done.set_exception(BusClosed("the bus is closed"))

    def _dead_event(self, entry: Entry, delivery: Delivery) -> tuple[str, Event, bytes]:
        # `delivery` is the original: for a dead letter replayed into the group,
        # `entry` is at the copy's place on `$dlq/...`, its delivery the original.
        event = delivery.event
        extensions = dict(event.extensions)
        extensions.update(
            {
                "dlqgroup": self.name,
                "dlqtopic": delivery.topic.partition("/")[2],
                "dlqoffset": min(delivery.offset, 2**31 - 1),
                "dlqreason": "term" if entry in self._termed else "maxdeliveries",
                "dlqattempts": entry.attempts,
                "dlqerror": entry.error,  # a lease that ran out says "ack_wait passed"
                "dlqfirst": _iso(entry.first) if entry.first else "",
                "dlqlast": _iso(entry.last) if entry.last else "",
            }
        )
        dead = msgspec.structs.replace(event, extensions=extensions)
        return dead_letter_topic(self.id, delivery.topic), dead, encode_msgpack(dead)
