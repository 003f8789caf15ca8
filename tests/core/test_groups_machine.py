"""GroupCore under a hypothesis state machine: members join, leave, crash, ack, nack, time runs.

An independent model follows what a group promises and checks every hand-out:
per-key order (ordered groups: no entry is leased while an earlier entry of
its key is unsettled), one lease per entry at a time (a new lease only once
the last one was nacked, released or ran out), the member and group in-flight
limits, attempts never past `max_deliveries`, redelivery never before its
wait, nothing acked handed out again; at the end, everything taken is drained
and must be acked or dead, never both, never lost.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from hybridbus.core.event import Event
from hybridbus.core.groups import LEASED, Entry, GroupCore, GroupSettings, Redelivery
from hybridbus.core.log import Delivery

NAMES = [f"m{i}" for i in range(8)]
KEYS = ["k0", "k1", "k2", "k3"]
T0 = 1_000.0


@dataclass
class Lease:
    member: str
    attempt: int
    expires: float


class GroupMachine(RuleBasedStateMachine):
    """The model: taken, acked, dead, leases, redelivery waits, live members."""

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.next_position = 1
        self.keys: dict[int, str] = {}  # position -> key, for everything taken
        self.acked: set[int] = set()
        self.dead: set[int] = set()
        self.to_bury: list[Entry] = []  # dead, the edge appends them to the dead letters later
        self.leases: dict[int, Lease] = {}
        self.not_before: dict[int, float] = {}
        self.alive: set[str] = set()
        self.handed: dict[str, list[int]] = {}  # key -> positions handed out (first deliveries)

    @initialize(
        ordered=st.booleans(),
        member_in_flight=st.integers(1, 3),
        max_in_flight=st.integers(1, 8),
        max_deliveries=st.integers(1, 4),
        max_pending=st.integers(1, 12),
        ack_wait=st.sampled_from([0.5, 1.0, 3.0]),
        schedule=st.lists(st.sampled_from([0.0, 0.05, 0.5, 2.0]), min_size=1, max_size=3),
        seed=st.integers(0, 100),
    )
    def setup(
        self,
        ordered: bool,
        member_in_flight: int,
        max_in_flight: int,
        max_deliveries: int,
        max_pending: int,
        ack_wait: float,
        schedule: list[float],
        seed: int,
    ) -> None:
        self.settings = GroupSettings(
            pattern="acme/#",
            ordered=ordered,
            member_in_flight=member_in_flight,
            max_in_flight=max_in_flight,
            max_deliveries=max_deliveries,
            max_pending=max_pending,
            ack_wait=ack_wait,
            redelivery=Redelivery(schedule=tuple(schedule)),
        )
        self.core = GroupCore(self.settings, [0], random.Random(seed))

    # -- the log and members ----------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), topic=st.sampled_from(["acme/a", "acme/b"]))
    def take(self, key: str, topic: str) -> None:
        if not self.core.room:
            return
        position = self.next_position
        self.next_position += 1
        event = Event(id=f"e{position}", source="/m", type="t", partitionkey=key)
        self.core.take(Delivery(topic, position, 0, position, T0, event), self.now)
        self.keys[position] = key

    @rule(name=st.sampled_from(NAMES))
    def join(self, name: str) -> None:
        self.core.join(name)
        self.alive.add(name)

    @rule(name=st.sampled_from(NAMES))
    def leave(self, name: str) -> None:
        """A member leaves cleanly: what it holds and never saw goes back at once."""
        if name not in self.alive:
            return
        for position, lease in list(self.leases.items()):
            entry = self.core.lookup(0, position)
            if lease.member == name and self._holds(entry, lease):
                assert entry is not None
                self.core.release(entry, self.now)
                del self.leases[position]
        self.core.leave(name)
        self.alive.discard(name)

    @rule(name=st.sampled_from(NAMES))
    def crash(self, name: str) -> None:
        """A member vanishes: it settles nothing, its leases end by themselves."""
        self.core.leave(name)
        self.alive.discard(name)

    # -- time and hand-out ---------------------------------------------------------------

    @rule(seconds=st.sampled_from([0.0, 0.01, 0.3, 1.0, 2.5]))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.to_bury.extend(self.core.tick(self.now))

    @rule()
    def dispatch(self) -> None:
        settings = self.settings
        for member, entry in self.core.dispatch(self.now):
            position = entry.position
            assert member.name in self.alive, "handed to a member that is gone"
            assert position not in self.acked, "an acked entry was handed out again"
            assert position not in self.dead, "a dead entry was handed out again"
            assert entry.attempts <= settings.max_deliveries
            previous = self.leases.get(position)
            assert previous is None or self.now >= previous.expires, "two leases at once"
            assert self.now >= self.not_before.get(position, -math.inf), "redelivered early"
            if settings.ordered:
                key = self.keys[position]
                for earlier, other in self.keys.items():
                    if earlier < position and other == key:
                        assert earlier in self.acked or earlier in self.dead, (
                            f"{position} leased while {earlier} of key {key} is unsettled"
                        )
            if entry.attempts == 1:
                self.handed.setdefault(self.keys[position], []).append(position)
            self.leases[position] = Lease(member.name, entry.attempts, self.now + settings.ack_wait)

    # -- settling --------------------------------------------------------------------------

    def _holds(self, entry: Entry | None, lease: Lease) -> bool:
        """Whether the lease is still the entry's current one (else `DeliveryGone`)."""
        return (
            entry is not None
            and entry.state == LEASED
            and entry.attempts == lease.attempt
            and entry.member == lease.member
        )

    def _pick(self, data: st.DataObject) -> tuple[int, Entry] | None:
        held = sorted(
            (p, lease)
            for p, lease in self.leases.items()
            if lease.member in self.alive and self._holds(self.core.lookup(0, p), lease)
        )
        if not held:
            return None
        position, _ = data.draw(st.sampled_from(held))
        entry = self.core.lookup(0, position)
        assert entry is not None
        return position, entry

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        picked = self._pick(data)
        if picked is not None:
            position, entry = picked
            self.core.ack(entry, self.now)
            self.acked.add(position)
            del self.leases[position]

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def ack_many(self, data: st.DataObject) -> None:
        """Several deliveries acked at once (one `ack` of many), some maybe twice or late."""
        positions = data.draw(
            st.lists(st.sampled_from(sorted(self.leases)), min_size=1, max_size=6)
        )
        entries = [self.core.lookup(0, p) for p in positions]
        pairs = list(zip(positions, entries, strict=True))
        expected = {p for p, e in pairs if e is not None and p not in self.dead}
        acked = [e for p, e in pairs if p in expected]
        assert self.core.ack_many(acked, self.now) == len(expected)
        for position in expected:
            self.acked.add(position)
            self.leases.pop(position, None)

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def late_ack(self, data: st.DataObject) -> None:
        """A handler finishes after its lease ran out: the ack still settles the entry."""
        position = data.draw(st.sampled_from(sorted(self.leases)))
        entry = self.core.lookup(0, position)
        if entry is not None and position not in self.dead:
            self.core.ack(entry, self.now)
            self.acked.add(position)
            self.leases.pop(position, None)

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), delay=st.none() | st.sampled_from([0.0, 0.2, 1.5]))
    def nack(self, data: st.DataObject, delay: float | None) -> None:
        picked = self._pick(data)
        if picked is None:
            return
        position, entry = picked
        attempt = entry.attempts
        if self.core.nack(entry, self.now, delay, "nack"):
            assert attempt == self.settings.max_deliveries
            self.to_bury.append(entry)
        else:
            assert attempt < self.settings.max_deliveries
            schedule = self.settings.redelivery.schedule
            wait = delay if delay is not None else schedule[min(attempt, len(schedule)) - 1]
            self.not_before[position] = self.now + wait
        del self.leases[position]

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def extend(self, data: st.DataObject) -> None:
        picked = self._pick(data)
        if picked is not None:
            position, entry = picked
            self.core.extend(entry, self.now)
            self.leases[position].expires = self.now + self.settings.ack_wait

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def term(self, data: st.DataObject) -> None:
        picked = self._pick(data)
        if picked is not None:
            position, entry = picked
            self.core.term(entry, "poison")
            self.to_bury.append(entry)
            del self.leases[position]

    @precondition(lambda self: self.to_bury)
    @rule()
    def bury(self) -> None:
        entry = self.to_bury.pop(0)
        self.core.bury(entry, self.now)
        if entry.position not in self.acked:  # a late ack can win the race
            self.dead.add(entry.position)

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def limits_hold(self) -> None:
        core = getattr(self, "core", None)
        if core is None:
            return
        seen: set[int] = set()
        leased = 0
        for name, member in core.members.items():
            assert len(member.held) <= self.settings.member_in_flight
            for entry in member.held:
                assert entry.state == LEASED and entry.member == name
                assert entry.position not in seen, "an entry leased to two members"
                seen.add(entry.position)
            leased += len(member.held)
        assert leased == core.leased <= self.settings.max_in_flight
        assert len(core.entries) <= self.settings.max_pending
        for entry in core.pending():
            assert entry.attempts <= self.settings.max_deliveries

    @invariant()
    def keys_first_handed_in_log_order(self) -> None:
        if getattr(self, "core", None) is not None and self.settings.ordered:
            for positions in self.handed.values():
                assert positions == sorted(positions)

    def teardown(self) -> None:
        """Drain: one member acks everything; every taken entry ends acked or dead."""
        if getattr(self, "core", None) is None:
            return
        self.join("drain")
        longest = self.settings.ack_wait + max(self.settings.redelivery.schedule) + 1
        for _ in range(200):
            while self.to_bury:
                self.bury()
            if not self.core.entries:
                break
            self.advance(longest)
            self.dispatch()
            self.limits_hold()
            for position, lease in list(self.leases.items()):
                entry = self.core.lookup(0, position)
                if lease.member == "drain" and self._holds(entry, lease):
                    assert entry is not None
                    self.core.ack(entry, self.now)
                    self.acked.add(position)
                    del self.leases[position]
        assert not self.core.entries, f"not drained: {list(self.core.pending())}"
        assert self.core.leased == 0 and self.core.timers == 0
        assert not (self.acked & self.dead)
        assert self.acked | self.dead == set(self.keys), "an entry was lost"


GroupMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestGroupMachine = GroupMachine.TestCase
