"""Consumer groups as a pure state machine: which member gets which event, and when it comes back.

Owns: what happens to a group's pending entries (events taken from the log
and not yet settled; the `Entry` itself is `core.group_entry`, the settings
and stored forms `core.group_settings`): per-key order, members and their
in-flight limits, leases, redelivery waits, the step to a dead letter after
`max_deliveries`, and which changes a store must persist (`Changes`).
Must not do I/O, read a clock or sleep: every method that depends on time
takes `now`, and randomness comes from the `random.Random` it is given, so a
schedule is reproducible from a seed.

Theory of operation. The edge (`hub.groups`) reads the log past the group's
cursor and hands each matching delivery to `take` (a page at once to
`take_many`), in log order, while `room` allows. An entry (`core.group_entry`)
is WAITING (due at `due`) or LEASED (to a member, until `due`). `dispatch`
hands every WAITING entry that is due and *eligible* to a member with room:
in an ordered group an entry is eligible only while no earlier entry of its
key (`partitionkey`, else the topic) is unsettled, so a key's events are
handled one at a time, in log order; in an unordered group every entry is. A
lease ends with `ack` (the entry is settled and leaves; `ack_many` for
several), `nack` (it waits `delay` or the redelivery wait, then comes back),
`extend` (the lease starts over) or `term` (dead at once). A lease that runs
out counts as a failure, as a nack does, once `tick` sees it.
After `max_deliveries` failed deliveries an entry is dead: `tick` / `nack`
return it, and the edge appends it to the dead letters and calls `bury`.

The redelivery wait after failed delivery n (n = 1, 2, ...) is the explicit
`schedule[n - 1]` (its last value repeating) when a schedule is given, else
uniform in [0, min(max, base * factor**(n - 1))] (full jitter).

Persistence. `changes()` returns what to write since the last call, so that
a store holds enough to rebuild the group after a crash without writing
every event: per shard the `cursor` (every matching event up to it was
taken), the `floor` (every entry at or below it that is unsettled is written
on its own) and `settled` (positions above the floor already settled), and
the entries to put on their own or delete. An entry is written on its own
only once it failed a delivery (its attempt count must survive), was
replayed into the group, or held the floor back while more than
`MAX_SETTLED` later ones were settled. Everything else between floor and
cursor that is not settled is pending and is read back from the log. So a
group that keeps up writes its state, not its events: an entry taken and
settled between two calls costs nothing but a position in `settled`. After a
crash, an entry never written comes back with its attempts at 0, handed out
at once (its lease is forgotten).
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

from hybridbus.core.group_entry import LEASED, SETTLED, WAITING, Entry, MemberState, fresh_entry
from hybridbus.core.group_settings import (
    Changes,
    GroupSettings,
    PendingRecord,
    Redelivery,
    entry_key,
)
from hybridbus.core.log import Delivery
from hybridbus.core.wheel import Wheel

__all__ = [
    "LEASED",
    "SETTLED",
    "WAITING",
    "Changes",
    "Entry",
    "GroupCore",
    "GroupSettings",
    "MemberState",
    "PendingRecord",
    "Redelivery",
    "entry_key",
]

# Timers are kept to this many seconds (a lease or a wait may end this much late).
RESOLUTION: Final = 0.01
# The most leases and the most waits one `tick` ends: a herd of them is spread over
# passes (the rest come next pass, oldest first) instead of stalling the loop in one.
TICK_LIMIT: Final = 5_000
# The most positions settled above the floor kept in the state (see `changes`).
MAX_SETTLED: Final = 2048


def _log_order(entry: Entry) -> tuple[int, int]:
    return entry.position, entry.shard


def _by_due(entry: Entry) -> float:
    return entry.due


def _failed(entry: Entry) -> bool:
    """Whether an entry must be written on its own: it failed a delivery (its count matters)."""
    return entry.attempts >= 2 or (entry.attempts >= 1 and entry.state == WAITING)


class GroupCore:
    """One group's pending entries, members and timers (see the module docstring)."""

    def __init__(
        self,
        settings: GroupSettings,
        cursor: tuple[int, ...] | list[int],
        rng: random.Random,
    ) -> None:
        self.settings = settings
        self.cursor = list(cursor)
        self._rng = rng
        self.entries: dict[tuple[int, int], Entry] = {}
        self.members: dict[str, MemberState] = {}
        # Entries that are due and eligible, oldest first.
        self._ready: deque[Entry] = deque()
        # Ordered groups: each key's unsettled entries in log order; only the first is eligible.
        self._keys: dict[str, deque[Entry]] = {}
        self._timers: Wheel[Entry] = Wheel(RESOLUTION)  # redelivery waits
        # Leases, by when they end: every lease lasts `ack_wait`, so the order they
        # began in is the order they end in (an extended one moves to the end).
        self._leases: OrderedDict[Entry, None] = OrderedDict()
        self._turn: deque[str] = deque()  # members in round-robin order
        self.leased = 0
        self.redelivered = 0  # deliveries after the first, ever
        self._dirty: dict[tuple[int, int], Entry | None] = {}
        self._cursor_moved = False
        # Persistence (see `changes`): per shard, the floor written last, the entries
        # taken and never written (in log order), the positions settled above the floor.
        self.floor = list(cursor)
        self._fresh: list[deque[Entry]] = [deque() for _ in cursor]
        self._settled: list[list[int]] = [[] for _ in cursor]

    # -- the window ------------------------------------------------------------

    @property
    def room(self) -> int:
        """How many more entries `take` accepts now."""
        return max(0, self.settings.max_pending - len(self.entries))

    def take(self, delivery: Delivery, now: float) -> Entry:
        """Add the next matching delivery of the log (in log order) as a WAITING entry."""
        partitionkey = delivery.identity()[2]
        entry = fresh_entry(delivery, delivery.topic if partitionkey is None else partitionkey, now)
        self._add(entry, now)
        shard = delivery.shard
        self._fresh[shard].append(entry)
        if delivery.position > self.cursor[shard]:
            self.cursor[shard] = delivery.position
            self._cursor_moved = True
        return entry

    def take_many(self, deliveries: Iterable[Delivery], now: float) -> int:
        """`take` of each delivery past the cursor (a page of the log, read for `room`).

        Those at or before the cursor are skipped (taken already); returns how
        many were taken. (What `take` and `_add` do for a fresh entry, inline:
        this runs once per event.)
        """
        cursor = self.cursor
        fresh = self._fresh
        entries = self.entries
        ready = self._ready
        keys = self._keys if self.settings.ordered else None
        taken = 0
        for delivery in deliveries:
            shard = delivery.shard
            position = delivery.position
            if position <= cursor[shard]:
                continue
            partitionkey = delivery.identity()[2]
            key = delivery.topic if partitionkey is None else partitionkey
            entry = Entry(shard, position, delivery.topic, delivery.offset, key, delivery, now)
            entries[shard, position] = entry
            if keys is None:
                ready.append(entry)  # fresh: WAITING, due now
            else:
                queue = keys.get(key)
                if queue is None:
                    queue = keys[key] = deque()
                queue.append(entry)
                if len(queue) == 1:
                    ready.append(entry)  # else it waits for the earlier entries of its key
            fresh[shard].append(entry)
            cursor[shard] = position
            taken += 1
        if taken:
            self._cursor_moved = True
        return taken

    def inject(self, delivery: Delivery, key: str, now: float) -> Entry:
        """Add a delivery from outside the pattern (a replayed dead letter); the cursor stays."""
        entry = fresh_entry(delivery, key, now)
        entry.pinned = True
        self._dirty[entry.shard, entry.position] = entry
        self._add(entry, now)
        return entry

    def advance(self, shard: int, position: int) -> None:
        """Move the cursor of `shard` forward to `position` (never back)."""
        if position > self.cursor[shard]:
            self.cursor[shard] = position
            self._cursor_moved = True

    def skip_to(self, positions: Iterable[int]) -> None:
        """Move the cursor forward to `positions` (e.g. the head a read ended at)."""
        for shard, position in enumerate(positions):
            self.advance(shard, position)

    def restore(self, record: PendingRecord, now: float) -> Entry:
        """Add an entry as a store kept it (after a restart); its delivery is loaded later.

        Restore in log order. A lease held before the restart runs to its end
        (its member is gone; nobody else gets the entry before then). An entry
        stored dead (`due` infinite: its dead letter was being appended) stays
        dead: the edge appends it to the dead letters again and calls `bury`.
        """
        entry = Entry.restored(record)
        self._add(entry, now)
        return entry

    def _add(self, entry: Entry, now: float) -> None:
        self.entries[entry.shard, entry.position] = entry
        if entry.state == LEASED:
            self.leased += 1
            member = self.members.get(entry.member)
            if member is None:  # a ghost: held until the lease ends
                member = self.members[entry.member] = MemberState(entry.member)
            member.held.add(entry)
            leases = self._leases
            if leases and next(reversed(leases)).due > entry.due:  # restored out of order
                ordered = sorted([*leases, entry], key=_by_due)
                leases.clear()
                leases.update(dict.fromkeys(ordered))
            else:
                leases[entry] = None
        if self.settings.ordered:
            queue = self._keys.get(entry.key)
            if queue is None:
                queue = self._keys[entry.key] = deque()
            queue.append(entry)
            if len(queue) > 1:
                return  # waits for the earlier entries of its key
        if entry.state == WAITING:
            self._wait(entry, entry.due, now)

    def _wait(self, entry: Entry, due: float, now: float) -> None:
        entry.state = WAITING
        entry.due = due
        if due == math.inf:
            return  # dead (restored while its dead letter was appended): waits for `bury`
        if due <= now:
            self._ready.append(entry)
        else:
            self._timers.schedule(entry, due)

    # -- members ---------------------------------------------------------------

    def join(self, name: str) -> MemberState:
        """Add a member (or return the one of that name); it gets entries at the next dispatch."""
        member = self.members.get(name)
        if member is None:
            member = self.members[name] = MemberState(name)
        if name not in self._turn:
            self._turn.append(name)
        return member

    def leave(self, name: str) -> None:
        """A member goes: it gets nothing more; what it holds comes back when each lease ends."""
        if name in self._turn:
            self._turn.remove(name)
        member = self.members.get(name)
        if member is not None and not member.held:
            del self.members[name]

    def dispatch(self, now: float) -> list[tuple[MemberState, Entry]]:
        """Lease every eligible due entry to a member with room, round-robin; what was leased.

        Round-robin by entry: the members with room, in turn order, get one
        entry each per round, and the next pass starts after the last one served.
        """
        out: list[tuple[MemberState, Entry]] = []
        ready = self._ready
        turn = self._turn
        if not ready or not turn:
            return out
        settings = self.settings
        per_member = settings.member_in_flight
        members = self.members
        dirty = self._dirty
        leases = self._leases
        due = now + settings.ack_wait
        budget = settings.max_in_flight - self.leased
        last = ""
        while ready and budget > 0:
            open_ = [m for m in map(members.__getitem__, turn) if len(m.held) < per_member]
            if not open_:
                break  # every member is full
            # Rounds that leave every open member with room: no member fills up before the last.
            rounds = max(1, min(min(per_member - len(m.held) for m in open_), budget // len(open_)))
            for _ in range(rounds):
                for member in open_:
                    while ready:
                        entry = ready.popleft()
                        # Not settled (SETTLED) while it was ready, nor given up (term).
                        if entry.state == WAITING and entry.due <= now:
                            break
                    else:
                        break  # nothing (valid) left
                    name = last = member.name
                    entry.state = LEASED
                    entry.member = name
                    attempts = entry.attempts = entry.attempts + 1
                    if attempts > 1:
                        self.redelivered += 1
                        dirty[entry.shard, entry.position] = entry
                    elif entry.stored:
                        dirty[entry.shard, entry.position] = entry
                    if not entry.first:
                        entry.first = now
                    entry.last = now
                    entry.due = due
                    leases[entry] = None
                    member.held.add(entry)
                    out.append((member, entry))
                    budget -= 1
                    if not budget or not ready:
                        break
                else:
                    continue
                break
        self.leased += len(out)
        if last:
            turn.rotate(-(turn.index(last) + 1))  # the next pass starts after the last served
        return out

    def release(self, entry: Entry, now: float) -> None:
        """Take a lease back as if it never happened (the member never saw the entry)."""
        if entry.state != LEASED:
            raise ValueError("only a leased entry can be released")
        self._release(entry)
        entry.attempts -= 1
        if entry.attempts == 0:
            entry.first = 0.0
        self._mark(entry)
        self._wait(entry, now, now)

    @property
    def rng(self) -> random.Random:
        """The random source of redelivery waits."""
        return self._rng

    # -- settling --------------------------------------------------------------

    def lookup(self, shard: int, position: int) -> Entry | None:
        """The pending entry at that log position, if any."""
        return self.entries.get((shard, position))

    def ack(self, entry: Entry, now: float) -> None:
        """The entry was handled: it leaves the group (its key's next entry becomes eligible)."""
        self._settle(entry, now)

    def ack_many(self, acked: Iterable[Entry], now: float) -> int:
        """`ack` of each entry (those settled already are skipped); how many it settled.

        A leased entry of an unordered group, never written on its own, the
        common case, is settled inline (what `_settle` and `_release` do).
        """
        entries = self.entries
        leases = self._leases
        members = self.members
        turn = self._turn
        dirty = self._dirty
        floor = self.floor
        settled = self._settled
        simple = not self.settings.ordered
        count = 0
        inline = 0
        moved = False
        for entry in acked:
            if simple and entry.state == LEASED and not entry.stored and not entry.pinned:
                ident = (entry.shard, entry.position)
                found = entries.pop(ident, None)
                if found is not entry:  # a stale entry of an earlier life of this place
                    if found is not None:
                        entries[ident] = found
                    continue
                del leases[entry]
                name = entry.member
                member = members.get(name)
                if member is not None:
                    held = member.held
                    held.discard(entry)
                    if not held and name not in turn:
                        del members[name]  # a member that left, or a ghost
                inline += 1
                entry.member = ""
                entry.state = SETTLED
                dirty.pop(ident, None)
                if entry.position > floor[entry.shard]:
                    settled[entry.shard].append(entry.position)
                    moved = True
            elif entries.get((entry.shard, entry.position)) is entry:
                count += 1
                self._settle(entry, now)
            # else: settled already, or a stale entry of an earlier life of this place
        self.leased -= inline
        self._cursor_moved = self._cursor_moved or moved
        return count + inline

    def extend(self, entry: Entry, now: float) -> None:
        """Start the entry's lease over (the handler needs more time)."""
        if entry.state != LEASED:
            raise ValueError("only a leased entry can be extended")
        entry.due = now + self.settings.ack_wait
        self._leases.move_to_end(entry)
        self._mark(entry)

    def nack(self, entry: Entry, now: float, delay: float | None, error: str) -> bool:
        """The delivery failed: release it to come back later; True if it is now dead instead.

        `delay` overrides the redelivery wait. A dead entry stays until `bury`.
        """
        if entry.state != LEASED:
            raise ValueError("only a leased entry can be nacked")
        self._release(entry)
        entry.error = error
        self._dirty[entry.shard, entry.position] = entry
        if entry.attempts >= self.settings.max_deliveries:
            entry.state = WAITING
            entry.due = math.inf
            return True
        wait = (
            delay if delay is not None else self.settings.redelivery.wait(entry.attempts, self._rng)
        )
        self._wait(entry, now + wait, now)
        return False

    def term(self, entry: Entry, error: str) -> None:
        """Give up on the entry now: it is to be buried (a dead letter) whatever its attempts."""
        if entry.state == LEASED:
            self._release(entry)
        else:
            self._timers.cancel(entry)
        entry.state = WAITING
        entry.due = math.inf
        entry.error = error
        self._dirty[entry.shard, entry.position] = entry

    def bury(self, entry: Entry, now: float) -> None:
        """The dead entry is in the dead letters: it leaves the group."""
        self._settle(entry, now)

    def tick(self, now: float) -> list[Entry]:
        """Handle the leases and waits that ended by `now`; return the entries now dead.

        At most `TICK_LIMIT` leases and `TICK_LIMIT` waits a call: the rest next call.
        """
        dead: list[Entry] = []
        leases = self._leases
        ended: list[Entry] = []
        for entry in leases:
            if entry.due > now or len(ended) == TICK_LIMIT:
                break
            ended.append(entry)
        for entry in ended:
            if self.nack(entry, now, None, "ack_wait passed"):
                dead.append(entry)
        due = self._timers.due(now, TICK_LIMIT)
        if len(due) > 1:  # the wheel's order is a set's: make it the log's (reproducible)
            due.sort(key=_log_order)
        for entry in due:
            if self.entries.get((entry.shard, entry.position)) is not entry:
                continue
            if entry.due <= now and self._eligible(entry):
                self._ready.append(entry)
            elif entry.due > now:
                self._timers.schedule(entry, entry.due)
        return dead

    @property
    def timers(self) -> int:
        """How many leases and waits are running."""
        return len(self._timers) + len(self._leases)

    def _mark(self, entry: Entry) -> None:
        """Note the entry for `changes` if a store must hear of it."""
        if entry.stored or entry.pinned or _failed(entry):
            self._dirty[entry.shard, entry.position] = entry

    def _eligible(self, entry: Entry) -> bool:
        if not self.settings.ordered:
            return True
        queue = self._keys.get(entry.key)
        return queue is not None and queue[0] is entry

    def _release(self, entry: Entry) -> None:
        del self._leases[entry]
        member = self.members.get(entry.member)
        if member is not None:
            member.held.discard(entry)
            if not member.held and entry.member not in self._turn:
                del self.members[entry.member]  # a member that left, or a ghost
        self.leased -= 1
        entry.member = ""

    def _settle(self, entry: Entry, now: float) -> None:
        ident = (entry.shard, entry.position)
        if self.entries.get(ident) is not entry:
            return  # settled already, or a stale entry of an earlier life of this place
        del self.entries[ident]
        if entry.state == LEASED:
            self._release(entry)
        elif entry.wheel_slot >= 0:
            self._timers.cancel(entry)
        entry.state = SETTLED
        if entry.stored:
            self._dirty[ident] = None
        else:
            self._dirty.pop(ident, None)
        if not entry.pinned and entry.position > self.floor[entry.shard]:
            self._settled[entry.shard].append(entry.position)
            self._cursor_moved = True
        if self.settings.ordered:
            queue = self._keys[entry.key]
            if queue[0] is entry:
                queue.popleft()
                if queue and queue[0].state == WAITING:
                    self._wait(queue[0], queue[0].due, now)
            else:
                queue.remove(entry)
            if not queue:
                del self._keys[entry.key]

    # -- persistence -----------------------------------------------------------

    def changes(self) -> Changes:
        """What to write since the last call (see the module docstring); resets the marks."""
        put: list[tuple[str, PendingRecord]] = []
        delete: list[str] = []
        for ident, entry in self._dirty.items():
            if entry is None:
                delete.append(entry_key(*ident))
            elif entry.stored or entry.pinned or _failed(entry):
                entry.stored = True
                put.append((entry_key(*ident), entry.record()))
        self._dirty = {}
        for shard, fresh in enumerate(self._fresh):
            settled = self._settled[shard]
            while fresh and (fresh[0].stored or fresh[0].state == SETTLED):
                fresh.popleft()
            if len(settled) > MAX_SETTLED:
                # An old entry holds the floor back: write the oldest fresh ones until it moves.
                settled.sort()
                while fresh and len(settled) - bisect_right(settled, fresh[0].position - 1) > (
                    MAX_SETTLED // 2
                ):
                    entry = fresh.popleft()
                    if entry.state != SETTLED and not entry.stored:
                        entry.stored = True
                        put.append((entry.id, entry.record()))
            floor = fresh[0].position - 1 if fresh else self.cursor[shard]
            if floor != self.floor[shard]:
                self.floor[shard] = floor
                self._cursor_moved = True
            if settled:
                settled.sort()
                del settled[: bisect_right(settled, floor)]
        if not self._cursor_moved:
            return Changes(None, put, delete)
        self._cursor_moved = False
        return Changes(
            tuple(self.cursor),
            put,
            delete,
            floor=tuple(self.floor),
            settled=tuple(tuple(s) for s in self._settled),
        )

    def load_state(self, floor: Sequence[int], settled: Sequence[Sequence[int]]) -> None:
        """Take a stored floor and settled positions back (before restoring any entry)."""
        self.floor = list(floor)
        if settled:
            self._settled = [sorted(s) for s in settled]

    def settled_positions(self) -> tuple[tuple[int, ...], ...]:
        """The positions settled above the floor, per shard (what `changes` last said)."""
        return tuple(tuple(s) for s in self._settled)

    @property
    def dirty(self) -> bool:
        """True if `changes()` has something to write."""
        return self._cursor_moved or bool(self._dirty)

    def pending(self) -> Iterator[Entry]:
        """Every unsettled entry, in no set order."""
        return iter(self.entries.values())
