"""The awareness states of one Yjs room: whose each is, and which change wins.

Owns: `RoomAwareness` — the newest state of every awareness client of a
room, the OWNER of each (a local socket of this node, or another node when
the client is connected there), and the rules that decide whether an entry
changes anything: it returns the entries that did, for the room to send to
its sockets and, for those of its own sockets, to the other nodes. Must not
send anything, know sockets or Redis (`server.rooms`, `server.rooms_relay`).

Rules (y-protocols' own, plus owners):
- Only a newer clock wins, and its sender becomes the owner. An equal clock
  changes nothing: y-websocket providers send back every state they are
  sent, at its clock, so an equal clock is usually an echo, never a claim.
- A removal (`"null"`) is taken with a newer clock, or with the same clock
  from the owner of the state.
- A socket that closes removes its clients' states (clock + 1); a node that
  dies or leaves removes its clients' states; a node's `full` list replaces
  what this room held from it.

A client that moved (its socket died, it reconnected elsewhere with the same
clock) is still owned by its old socket or node until that one's removal
comes; the removal reaches the client too, and a y-protocols client that
sees its own state removed sends it again with clock + 1: it is then owned
where it is. Its cursor blinks once, and nothing lingers.

A removal is remembered (its clock, for the last `_TOMBSTONES` clients of the
room): the others' providers keep that clock too and would ignore a state
sent again at the clock it had (a provider reconnecting does that). Such a
state is refused and its sender is sent the removal instead, which makes it
send its state again with a clock above it, which everybody takes.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Final

from hybridbus.core.yjs_protocol import MAX_VARUINT, AwarenessEntry
from hybridbus.errors import YjsMessageInvalid

__all__ = ["Remote", "RoomAwareness"]

_TOMBSTONES: Final = 10_000  # removals remembered per room (the oldest go first)


class Remote(str):
    """The owner of a state held on another node: that node's id."""

    __slots__ = ()


class RoomAwareness:
    """The awareness states of one room and their owners (see the module docstring)."""

    __slots__ = ("_by_owner", "_owners", "_removed", "max_bytes", "states")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.states: dict[int, AwarenessEntry] = {}
        self._owners: dict[int, Hashable] = {}
        self._by_owner: dict[Hashable, set[int]] = {}
        self._removed: dict[int, int] = {}  # client -> the clock of its removal

    def __len__(self) -> int:
        return len(self.states)

    def __bool__(self) -> bool:
        return bool(self.states)

    def values(self) -> list[AwarenessEntry]:
        """Every current state."""
        return list(self.states.values())

    def owned(self, owner: Hashable) -> Iterator[AwarenessEntry]:
        """The states `owner` holds."""
        for client in self._by_owner.get(owner, ()):
            yield self.states[client]

    def local(self) -> list[AwarenessEntry]:
        """The states this node's sockets hold (what a `full` answer carries)."""
        return [
            entry for c, entry in self.states.items() if not isinstance(self._owners[c], Remote)
        ]

    # -- changes -----------------------------------------------------------------

    def apply(
        self,
        owner: Hashable,
        entries: Iterable[AwarenessEntry],
        refused: list[AwarenessEntry] | None = None,
    ) -> list[AwarenessEntry]:
        """`owner` says `entries`; the ones that changed a state (raises `YjsMessageInvalid`).

        States at or below the clock of their removal are not taken: the
        removals to send their owner instead are added to `refused`.
        """
        changed: list[AwarenessEntry] = []
        limit = self.max_bytes
        for entry in entries:
            if len(entry.state) > limit:
                raise YjsMessageInvalid(
                    f"the awareness state of client {entry.client} is over {limit} bytes"
                )
            client = entry.client
            current = self.states.get(client)
            held = self._owners.get(client)
            if entry.removed:
                if current is None or entry.clock < current.clock:
                    continue
                if held != owner and entry.clock == current.clock:
                    continue  # an echo of another owner's state, or a goodbye not its own
                self._remove(client, entry.clock)
            else:
                if current is not None and entry.clock <= current.clock:
                    continue
                if current is None:
                    removal = self._removed.get(client)
                    if removal is not None and entry.clock <= removal:
                        if refused is not None:
                            refused.append(AwarenessEntry(client, removal, "null"))
                        continue
                self._set(owner, entry)
            changed.append(entry)
        return changed

    def leave(self, owner: Hashable) -> list[AwarenessEntry]:
        """`owner` is gone: its states are removed; the removals (clock + 1) to tell."""
        removals: list[AwarenessEntry] = []
        for client in list(self._by_owner.get(owner, ())):
            clock = _after(self.states[client].clock)
            self._remove(client, clock)
            removals.append(AwarenessEntry(client, clock, "null"))
        return removals

    def replace(self, owner: Remote, entries: list[AwarenessEntry]) -> list[AwarenessEntry]:
        """`owner` holds exactly `entries` (a node's full list); the changes to tell."""
        keep = {entry.client for entry in entries}
        removals: list[AwarenessEntry] = []
        for client in list(self._by_owner.get(owner, ())):
            if client not in keep:
                clock = _after(self.states[client].clock)
                self._remove(client, clock)
                removals.append(AwarenessEntry(client, clock, "null"))
        return removals + self.apply(owner, [entry for entry in entries if not entry.removed])

    def _set(self, owner: Hashable, entry: AwarenessEntry) -> None:
        client = entry.client
        held = self._owners.get(client)
        if held is not None and held != owner:
            self._disown(held, client)
        self.states[client] = entry
        self._removed.pop(client, None)
        self._owners[client] = owner
        self._by_owner.setdefault(owner, set()).add(client)

    def _remove(self, client: int, clock: int) -> None:
        del self.states[client]
        self._disown(self._owners.pop(client), client)
        removed = self._removed
        removed[client] = clock
        if len(removed) > _TOMBSTONES:
            del removed[next(iter(removed))]

    def _disown(self, owner: Hashable, client: int) -> None:
        clients = self._by_owner.get(owner)
        if clients is not None:
            clients.discard(client)
            if not clients:
                del self._by_owner[owner]


def _after(clock: int) -> int:
    """The clock of a removal following a state at `clock`: one more, at most what a varuint
    holds (y-protocols takes a removal at the state's own clock too)."""
    return min(clock + 1, MAX_VARUINT)
